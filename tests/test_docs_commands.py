"""Every ``addrop ...`` command shown in README.md and docs/ names a real subcommand and real options (checked
against the Typer app's parser, nothing run)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from addrop_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# A command runs from "addrop" (or "python -m addrop_cli") to the end of its shell command: a pipe " | ", "&&", ";"
# or a comment (a "|" without spaces separates a synopsis' alternatives).
COMMAND = re.compile(r"(?:^|[\s`(])(?:addrop|python3? -m addrop_cli)\s+([a-z][a-z-]*|--[a-z-]+)"
                     r"((?:(?! \| |&&|;|`| #).)*)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def shown_commands() -> list[tuple[str, str, str]]:
    """(page, subcommand, the rest) of every command in a code block or code span."""
    found = []
    for page in PAGES:
        # A line continued with a backslash, or a synopsis line indented under its command, is one line.
        text = re.sub(r"\\\n|\n(?=\s+[\[-])", " ", page.read_text(encoding="utf-8"))
        in_block = False
        for line in text.splitlines():
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            pieces = [re.split(r"\s#\s", line)[0]] if in_block else re.findall(r"`([^`]+)`", line)  # no comments
            for piece in pieces:
                for match in COMMAND.finditer(" " + piece):
                    found.append((str(page.relative_to(ROOT)), match[1], match[2]))
    return found


def test_every_command_shown_in_the_docs_exists_with_its_options():
    group = typer.main.get_command(app)
    shown = shown_commands()
    assert len(shown) > 100  # the pages really were read: README and the guides show well over a hundred
    wrong = []
    for where, name, rest in shown:
        if name.startswith("--"):  # options of addrop itself (--version, --help)
            command, rest = group, f"{name} {rest}"
        elif name in group.commands:
            command = group.commands[name]
        else:
            wrong.append(f"{where}: no command 'addrop {name}'")
            continue
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
        wrong += [f"{where}: 'addrop {name}' has no option {option}" for option in OPTION.findall(rest)
                  if option not in known]
    assert not wrong, "\n".join(wrong)


def test_a_wrong_option_in_a_page_would_be_found(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("```bash\naddrop train --epochs 3 --no-such-option  # not --lr\naddrop trian\n```\n")
    monkeypatch.setattr(f"{__name__}.PAGES", [page])
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    found = shown_commands()
    assert [(name, rest.split()) for _, name, rest in found] == [("train", ["--epochs", "3", "--no-such-option"]),
                                                                  ("trian", [])]
