"""Bundled recipes: finding them (checkout or installed wheel) and resolving a run's configuration."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from addrop_cli.config import Recipe, build, load_yaml, merge, parse_override
from addrop_cli.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_PREFIX = "package:"
DEMO = "demo"


def recipes_dir() -> Path:
    """``addrop_cli/recipes`` in a wheel; the checkout's top-level ``recipes/`` otherwise."""
    shipped = PACKAGE_DIR / "recipes"
    return shipped if shipped.is_dir() else PACKAGE_DIR.parent / "recipes"


def bundled_recipes() -> dict[str, Path]:
    """Recipe name (file stem, e.g. ``mrpc``, ``demo``) -> path."""
    return {path.stem: path for path in sorted(recipes_dir().rglob("*.yaml"))}


def _key(name: str) -> str:
    """Recipe and task names match ignoring case, dashes and underscores (wmt16-en-ro is wmt16_en_ro)."""
    return name.lower().replace("-", "").replace("_", "")


def find_recipe(name_or_path: str) -> Path:
    """A recipe file path, or the bundled recipe of that name."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"recipe file {path} does not exist")
        return path
    recipes = bundled_recipes()
    for name, recipe_path in recipes.items():
        if _key(name) == _key(name_or_path):
            return recipe_path
    close = difflib.get_close_matches(name_or_path, list(recipes), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UserError(
        f"unknown recipe '{name_or_path}'{hint} (bundled: {', '.join(recipes)}; or give a path to a .yaml file)"
    )


def resolve_path(value: str | None) -> str | None:
    """Expand ``package:relative/path`` (files shipped inside addrop_cli) to an absolute path."""
    if value and value.startswith(PACKAGE_PREFIX):
        return str(PACKAGE_DIR / value[len(PACKAGE_PREFIX) :])
    return value


def resolve_recipe(
    recipe: str | None = None,
    task: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> Recipe:
    """Recipe file < command-line flags < ``--set`` overrides, validated into a :class:`Recipe`.

    With neither ``recipe`` nor ``task`` the demo recipe is used; with only ``task`` its bundled recipe
    (``--task mrpc`` means ``recipes/glue/mrpc.yaml``).
    """
    if recipe is None:
        recipe = task if task is not None else DEMO
        if task is not None and _key(task) not in {_key(name) for name in bundled_recipes()}:
            recipe = None  # a task without a bundled recipe starts from the defaults
    values = load_yaml(find_recipe(recipe)) if recipe is not None else {}
    if task is not None:
        values["task"] = task
    values = merge(values, flags or {})
    for assignment in overrides or []:
        values = merge(values, parse_override(assignment))
    return build(Recipe, values)
