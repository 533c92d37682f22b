"""The method table: each method once, what the layers above read from it, and plugins from the ``addrop.methods``
entry points — a broken one is named in one line and skipped, the built-in methods and ``--help`` unaffected."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from helpers import one_line_error, write
from tiny_models import tiny_classifier

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.methods.hiddencut import HiddenCut
from addrop_cli.core.methods.rdrop import RDrop
from addrop_cli.core.methods.registry import (
    BUILT_IN,
    RESERVED_SECTIONS,
    MethodSpec,
    key_owner,
    make_regularizer,
    method_spec,
    methods,
)
from addrop_cli.core.settings import ADDropConfig, HiddenCutConfig, RDropConfig
from addrop_cli.recipe import Recipe, plain_keys, recipe_sections


def test_each_built_in_method_is_registered_once_with_its_section_and_settings():
    assert list(methods())[: len(BUILT_IN)] == [spec.name for spec in BUILT_IN]  # then installed plugins, if any
    table = {spec.name: (spec.display_name, spec.recipe_section, spec.config, spec.load()) for spec in BUILT_IN}
    assert table == {"addrop": ("AD-DROP", "addrop", ADDropConfig, ADDrop),
                     "rdrop": ("R-Drop", "rdrop", RDropConfig, RDrop),
                     "hiddencut": ("HiddenCut", "hiddencut", HiddenCutConfig, HiddenCut)}


def test_the_reserved_sections_are_the_recipes_own():
    own = [name for name in [*plain_keys(), *recipe_sections()] if name not in ("rdrop", "hiddencut")]
    assert sorted(RESERVED_SECTIONS) == sorted(own)


def test_make_regularizer_builds_the_named_method_with_its_settings():
    model = tiny_classifier("bert")
    assert type(make_regularizer(model, ADDropConfig())) is ADDrop
    rdrop = make_regularizer(model, ADDropConfig(method="rdrop"), settings=RDropConfig(alpha=0.2))
    assert type(rdrop) is RDrop and rdrop.config.alpha == 0.2
    assert make_regularizer(model, ADDropConfig(method="rdrop")).config == RDropConfig()


def test_special_ids_reach_the_methods_that_ask_for_them():
    cut = make_regularizer(tiny_classifier("bert"), ADDropConfig(method="hiddencut"), special_ids=[0, 7])
    assert cut.special_ids.tolist() == [0, 7]


def test_an_unknown_method_or_settings_of_another_method_is_one_line():
    model = tiny_classifier("bert")
    one_line_error(lambda: make_regularizer(model, ADDropConfig(method="dropout")),
                   "addrop.method='dropout' is invalid: choose one of addrop, rdrop, hiddencut")
    one_line_error(lambda: make_regularizer(model, ADDropConfig(method="rdrop"), settings=HiddenCutConfig()),
                   "addrop.method='rdrop' takes RDropConfig settings, not HiddenCutConfig")
    one_line_error(lambda: Recipe(addrop=ADDropConfig(method="dropout")), "addrop.method='dropout' is invalid")


def test_each_recipe_key_belongs_to_its_method_or_to_all():
    assert key_owner("addrop.p").name == "addrop"
    assert key_owner("rdrop.alpha").name == "rdrop"
    assert key_owner("hiddencut.layers").name == "hiddencut"
    for shared in ("addrop.method", "addrop.cross_tuning", "addrop.enabled", "train.lr", "lora.alpha"):
        assert key_owner(shared) is None, shared


@pytest.mark.parametrize(("name", "settings", "cross_tuning", "line"), [
    ("addrop", ADDropConfig(p=0.1, layers="all"), True, "AD-DROP p 0.1 q 0.3 layers all (ga, cross-tuning)"),
    ("rdrop", RDropConfig(alpha=0.5), False, "R-Drop alpha 0.5 (every epoch)"),
    ("hiddencut", HiddenCutConfig(), True,
     "HiddenCut ratio 0.1, start among the top 0.4, layers all, JS weight 0.5 (cross-tuning)"),
])
def test_the_header_line_of_each_method(name, settings, cross_tuning, line):
    assert method_spec(name).header(settings, cross_tuning) == line


@dataclasses.dataclass
class Scale:
    factor: float = 2.0
    layers: str = "first"


def test_a_spec_without_describe_shows_every_setting_and_is_checked_on_construction():
    spec = MethodSpec("scale", "Scale", Scale, "somewhere.module:Scale")
    assert spec.header(Scale(), True) == "Scale factor 2, layers first (cross-tuning)"
    assert spec.own_keys() == ["scale.factor", "scale.layers"]
    with pytest.raises(ValueError, match="lower case identifiers"):
        MethodSpec("Scale!", "Scale", Scale, "somewhere.module:Scale")
    with pytest.raises(TypeError, match="is not a dataclass"):
        MethodSpec("scale", "Scale", dict, "somewhere.module:Scale")
    with pytest.raises(ValueError, match=r"is not 'package\.module:Class'"):
        MethodSpec("scale", "Scale", Scale, "somewhere.module.Scale")
    one_line_error(lambda: spec.load(), "addrop.method='scale': its implementation somewhere.module:Scale cannot be "
                   "loaded (ModuleNotFoundError")


BROKEN_SPECS = '''
from dataclasses import dataclass

from addrop_cli.core.methods.registry import MethodSpec


@dataclass
class Strict:
    rate: float = -1.0

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError("rate must be >= 0")


@dataclass
class Fine:
    rate: float = 0.1


RENAMED = MethodSpec("other", "Other", Fine, "broken_specs:Nothing")
CLASH = MethodSpec("clash", "Clash", Fine, "broken_specs:Nothing", section="train")
BAD_CONFIG = MethodSpec("badconfig", "Bad", Strict, "broken_specs:Nothing")
BROKEN_IMPL = MethodSpec("brokenimpl", "Broken", Fine, "no_such_addrop_impl:Thing")
PLAIN = MethodSpec("ft", "Plain", Fine, "broken_specs:Nothing")
NOISE = MethodSpec("noise", "Noise", Fine, "broken_specs:Nothing", section="noise_cfg")
NOISE_CFG = MethodSpec("noise_cfg", "Noise config", Fine, "broken_specs:Nothing")  # a name another's section holds
'''
ENTRY_POINTS = """[addrop.methods]
missing = no_such_addrop_plugin:METHOD
notaspec = json:dumps
renamed = broken_specs:RENAMED
clash = broken_specs:CLASH
badconfig = broken_specs:BAD_CONFIG
brokenimpl = broken_specs:BROKEN_IMPL
ft = broken_specs:PLAIN
noise = broken_specs:NOISE
noise_cfg = broken_specs:NOISE_CFG
"""


@pytest.fixture(scope="module")
def broken_env(tmp_path_factory) -> dict[str, str]:
    """An environment where a distribution declares nine plugins: seven broken when loaded, one whose implementation
    cannot be imported, and ``noise`` (settings in section ``noise_cfg``), which is sound."""
    root = tmp_path_factory.mktemp("broken_plugins")
    write(root / "broken_specs.py", BROKEN_SPECS)
    info = root / "broken_plugins-0.1.dist-info"
    info.mkdir()
    write(info / "METADATA", "Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.1\n")
    write(info / "entry_points.txt", ENTRY_POINTS)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}


def run(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_broken_plugins_are_named_in_one_line_each_and_skipped(broken_env):
    process = run(broken_env, "-c", "from addrop_cli.core.methods.registry import method_names; print(method_names())")
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "['addrop', 'rdrop', 'hiddencut', 'brokenimpl', 'noise']"
    lines = process.stderr.strip().splitlines()
    expected = {"badconfig": "ValueError: rate must be >= 0", "clash": "recipe section 'train' is taken",
                "ft": "its name 'ft' or recipe section 'ft' is taken",
                "missing": "ModuleNotFoundError",
                "noise_cfg": "its name 'noise_cfg' or recipe section 'noise_cfg' is taken",
                "notaspec": "gives a function, not an addrop MethodSpec",
                "renamed": "is named 'renamed' but its MethodSpec 'other'"}
    assert len(lines) == len(expected), process.stderr
    for line, (name, reason) in zip(lines, sorted(expected.items()), strict=True):
        assert line.startswith(f"addrop: method plugin '{name}' (") and "is skipped" in line and reason in line, line


def test_the_help_works_beside_broken_plugins(broken_env):
    process = run({**broken_env, "COLUMNS": "200"}, "-m", "addrop_cli", "train", "--help")
    assert process.returncode == 0 and "Usage" in process.stdout, process.stderr
    assert "addrop|rdrop|hiddencut|brokenimpl|noise" in process.stdout


def test_asking_for_a_skipped_plugin_says_why_it_was_skipped(broken_env):
    code = "from addrop_cli.core.methods.registry import method_spec; method_spec('missing')"
    process = run(broken_env, "-c", code)
    assert "addrop.method='missing' is invalid: choose one of addrop, rdrop, hiddencut, brokenimpl, noise (its " \
           "plugin was skipped: ModuleNotFoundError: No module named 'no_such_addrop_plugin')" in process.stderr


def test_built_in_methods_train_beside_broken_plugins_and_a_broken_implementation_is_one_line(
        broken_env, tmp_path, tiny_checkpoint, shared_data):
    sample = str(shared_data / "RTE-sample/dev-sample.tsv")
    args = ["-m", "addrop_cli", "train", "--task", "rte", "--model", str(tiny_checkpoint), "--train-file", sample,
            "--validation-file", sample, "--epochs", "1", "--no-cross-tuning", "--batch-size", "8",
            "--max-length", "32"]
    built_in = run(broken_env, *args, "--method", "rdrop", "--output-dir", str(tmp_path / "rdrop"))
    assert built_in.returncode == 0, built_in.stderr
    broken = run(broken_env, *args, "--method", "brokenimpl", "--output-dir", str(tmp_path / "broken"))
    assert broken.returncode == 2, broken.stderr
    last = broken.stderr.strip().splitlines()[-1]
    assert last.startswith("error: addrop.method='brokenimpl': its implementation no_such_addrop_impl:Thing cannot "
                           "be loaded (ModuleNotFoundError"), broken.stderr
    assert not (tmp_path / "broken").exists()
