"""Generate the reference pages at build time (mkdocs-gen-files): the CLI from the Typer app, the recipe schema from
the recipe dataclasses and their validation, so neither can drift from the code."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import tokenize
import typing

import click
import mkdocs_gen_files
import typer
from typer.cli import get_docs_for_click

from addrop_cli.cli import app
from addrop_cli.core.methods.registry import method_names, method_spec
from addrop_cli.recipe import Recipe

CONFIG_MODULES = ("addrop_cli.recipe", "addrop_cli.core.settings")


def cli_page() -> str:
    command = typer.main.get_command(app)
    return get_docs_for_click(obj=command, ctx=click.Context(command), name="addrop", title="CLI reference")


def validation_messages(module_name: str) -> dict[str, str]:
    """Recipe key -> what its ``require(...)`` call in ``module_name`` says is valid (f-strings evaluated in the
    module, loops over constant tuples unrolled)."""
    module = importlib.import_module(module_name)
    found: dict[str, str] = {}

    def visit(node: ast.AST, names: dict[str, str]) -> None:
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and isinstance(node.iter, ast.Tuple):
            for item in node.iter.elts:
                if isinstance(item, ast.Constant):
                    for child in node.body:
                        visit(child, {**names, node.target.id: item.value})
            return
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "require" and len(node.args) == 4:
            key, message = (_text(arg, module, names) for arg in (node.args[1], node.args[3]))
            if key and message:
                found.setdefault(key, message)
        for child in ast.iter_child_nodes(node):
            visit(child, names)

    visit(ast.parse(inspect.getsource(module)), {})
    return found


def _text(node: ast.AST, module, names: dict[str, str]) -> str | None:
    try:
        return str(eval(compile(ast.Expression(node), "<recipe>", "eval"), vars(module), dict(names)))
    except Exception:  # refers to the value being checked: not a fixed text
        return None


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line in the class source."""
    comments, source = {}, inspect.getsource(cls)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            line = token.line.strip()
            name = line.split(":", 1)[0].strip()
            if name.isidentifier() and ":" in line.split("#", 1)[0]:
                comments[name] = token.string.lstrip("# ").strip()
    return comments


def section_table(name: str, cls: type, valid: dict[str, str]) -> str:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    rows = [f"## `{name}`", "", (inspect.getdoc(cls) or "").split("\n\n")[0], "",
            "| Key | Type | Default | Valid values and notes |", "|---|---|---|---|"]
    defaults = cls()
    for item in dataclasses.fields(cls):
        key = f"{name}.{item.name}"
        hint = hints[item.name]
        type_text = getattr(hint, "__name__", None) if not typing.get_args(hint) else str(hint)
        type_text = str(type_text).replace("typing.", "").replace("NoneType", "None")
        notes = "; ".join(text for text in (valid.get(key), comments.get(item.name)) if text)
        value = getattr(defaults, item.name)
        notes = notes.replace("|", "\\|")  # a pipe inside a table cell
        rows.append(f"| `{key}` | `{type_text}` | `{value!r}` | {notes} |")
    return "\n".join(rows) + "\n"


def recipe_page() -> str:
    valid: dict[str, str] = {}
    for module in CONFIG_MODULES:
        valid.update(validation_messages(module))
    recipe = Recipe()
    parts = ["# Recipe reference", "",
             "Every key a recipe YAML may hold, as `addrop` reads it: generated from the recipe dataclasses and the "
             "checks they run on construction. Set any of them from the command line with `--set KEY=VALUE`.", "",
             "| Key | Type | Default |", "|---|---|---|"]
    for item in dataclasses.fields(Recipe):
        if not dataclasses.is_dataclass(getattr(recipe, item.name)) and item.name != "methods":
            parts.append(f"| `{item.name}` | `{typing.get_type_hints(Recipe)[item.name].__name__}` | "
                         f"`{getattr(recipe, item.name)!r}` |")
    parts.append("")
    for item in dataclasses.fields(Recipe):
        section = getattr(recipe, item.name)
        if dataclasses.is_dataclass(section):
            parts.append(section_table(item.name, type(section), valid))
    for name in method_names():
        spec = method_spec(name)
        if spec.recipe_section != "addrop":  # a method with a recipe section of its own (R-Drop, HiddenCut)
            parts.append(section_table(spec.recipe_section, spec.config,
                                       validation_messages(spec.config.__module__)))
    return "\n".join(parts)


with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    page.write(cli_page())
with mkdocs_gen_files.open("reference/recipe.md", "w") as page:
    page.write(recipe_page())
