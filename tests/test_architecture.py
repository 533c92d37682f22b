"""The package's layering, read from the code with ``ast``: each layer imports only the layers below it, no
import cycle (TYPE_CHECKING and in-function imports included), no function over 80 lines, and the CLI's help
imports neither torch nor transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "addrop_cli"
MAX_FUNCTION_LINES = 80

# Bottom to top. A module may import modules of lower layers, and modules of its own layer only when they
# share a folder (or both are foundation modules).
LAYERS = [
    {"errors", "outputs", "interrupts", "locks", "version", "plots"},  # foundation: no torch, no other layer
    {"core"},
    {"recipe"},
    {"tasks"},
    {"training"},
    {"sweep", "attribute", "predict", "ood", "integrations"},
    {"cli"},
    {"__init__", "__main__"},
]


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (``addrop_cli.core`` for a folder's __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The package module a dotted import name refers to (``addrop_cli.tasks.registry.get_task`` -> its file)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Package modules ``module`` imports anywhere in its file (a ``from P import m`` of a submodule counts
    as importing ``P.m``; importing names from ``P`` counts as importing ``P``)."""
    targets = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name if name in MODULES else node.module for name in submodules]
        else:
            continue
        targets |= {owner for name in names if (owner := _owner(name)) and owner != module}
    return {target for target in targets if target.startswith("addrop_cli")}


GRAPH = {module: _imports(module) for module in MODULES}


def _group(module: str) -> str:
    """``addrop_cli.tasks.registry`` -> ``tasks``; ``addrop_cli.recipe`` -> ``recipe``; the package -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    group = _group(module)
    return next(index for index, groups in enumerate(LAYERS) if group in groups)


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        assert any(_group(module) in groups for groups in LAYERS), f"{module} is in no layer"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_only_downward(module: str) -> None:
    for target in GRAPH[module]:
        below = _layer(target) < _layer(module)
        same_folder = _group(target) == _group(module)
        both_foundation = _layer(target) == _layer(module) == 0
        assert below or same_folder or both_foundation, f"{module} imports {target}, which is not below it"


def test_no_import_cycle() -> None:
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            assert state.get(target) != "open", "import cycle: " + " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [])


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {node.end_lineno - start + 1} lines")
    assert not long, long


def test_help_and_the_package_import_no_torch() -> None:
    code = """
import sys
import addrop_cli
from typer.testing import CliRunner
from addrop_cli.cli import app
for args in (["--help"], ["train", "--help"], ["eval", "--help"], ["sweep", "--help"], ["attribute", "--help"],
             ["plot", "--help"], ["assemble", "--help"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
    assert "Usage" in result.output, args
heavy = sorted(name for name in ("torch", "transformers", "accelerate", "datasets", "matplotlib")
               if name in sys.modules)
print("heavy:", heavy)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "heavy: []"


def test_library_entry_points_load_on_first_use() -> None:
    code = "import addrop_cli, sys; assert 'torch' not in sys.modules; from addrop_cli import ADDrop, ADDropConfig, " \
           "epoch_phase; assert 'torch' in sys.modules; print(ADDrop.__module__, ADDropConfig.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["addrop_cli.core.methods.addrop", "addrop_cli.core.settings"]


# -- inside core: the two seams ---------------------------------------------------------------------------------

SEAM_PROTOCOLS = {"base", "connect", "registry", "__init__"}  # the modules of a seam that are not implementations


def _implementations(seam: str) -> set[str]:
    """The modules of ``core/<seam>/`` that implement it (one route or one method each)."""
    prefix = f"addrop_cli.core.{seam}."
    return {module for module in MODULES if module.startswith(prefix)
            and module.removeprefix(prefix) not in SEAM_PROTOCOLS}


def test_each_seam_has_its_implementations_one_module_each():
    assert _implementations("routes") == {"addrop_cli.core.routes.interface", "addrop_cli.core.routes.hooks"}
    assert _implementations("methods") == {"addrop_cli.core.methods.addrop", "addrop_cli.core.methods.rdrop",
                                           "addrop_cli.core.methods.hiddencut"}


@pytest.mark.parametrize("seam", ["routes", "methods"])
def test_no_implementation_of_a_seam_imports_another(seam):
    implementations = _implementations(seam)
    for module in implementations:
        assert not GRAPH[module] & implementations, f"{module} imports {GRAPH[module] & implementations}"


# Modules that import a method module for what that method is, not to build the regularizer a run names.
METHOD_IMPORTERS = {"addrop_cli.attribute": "draws AD-DROP's own attribution pass (ADDrop.attribute)"}


def test_only_the_registry_names_method_modules_and_nothing_else_imports_one():
    methods = _implementations("methods")
    importers = {module for module in MODULES if GRAPH[module] & methods} - methods
    assert importers == set(METHOD_IMPORTERS), importers  # the registry loads them by name, when one is built
    from addrop_cli.core.methods.registry import BUILT_IN

    assert {spec.implementation.partition(":")[0] for spec in BUILT_IN} == methods


def test_methods_reach_a_route_only_through_its_base_and_connect():
    allowed = {"addrop_cli.core.routes.base", "addrop_cli.core.routes.connect"}
    for module in MODULES:
        if module.startswith("addrop_cli.core.methods"):
            routes = {target for target in GRAPH[module] if target.startswith("addrop_cli.core.routes")}
            assert routes <= allowed, f"{module} imports {routes - allowed}"


def test_routes_know_nothing_of_methods():
    for module in MODULES:
        if module.startswith("addrop_cli.core.routes"):
            assert not any(target.startswith("addrop_cli.core.methods") for target in GRAPH[module]), module


@pytest.mark.parametrize("module", ["addrop_cli.core.settings", "addrop_cli.core.methods.registry"])
def test_the_settings_and_the_method_table_import_no_torch(module):
    code = f"import sys, {module}; print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_module_but_the_method_table_names_a_method():
    """Outside the table, code asks the table: no string constant is another method's name or display name (AD-DROP's
    name is also its recipe section's and the project's, so it is left out)."""
    from addrop_cli.core.methods.registry import BUILT_IN, DEFAULT_METHOD

    names = {word for spec in BUILT_IN if spec.name != DEFAULT_METHOD for word in (spec.name, spec.display_name)}
    found = []
    for module, path in MODULES.items():
        if module == "addrop_cli.core.methods.registry":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{module}:{node.lineno} {node.value!r}")
    assert not found, found
