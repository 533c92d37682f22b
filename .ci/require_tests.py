"""Fail a CI test stage that tested nothing, from the JUnit XML report pytest wrote for it.

pytest exits 0 when every selected test skips (Ray absent, no private namespace, data missing): the stage would
look green having checked nothing. This exits 1 unless at least one test passed; with --no-skips (a stage whose
tests must all run, such as the Ray stage) any skipped test fails it too.

Usage: python3 .ci/require_tests.py [--no-skips] REPORT.xml
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ElementTree


def outcomes(report: str) -> dict[str, int]:
    """passed, skipped and failed test cases of a pytest JUnit report (errors count as failed)."""
    counts = {"passed": 0, "skipped": 0, "failed": 0}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("--no-skips", action="store_true", help="fail on any skipped test")
    args = parser.parse_args(argv)
    counts = outcomes(args.report)
    summary = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    if counts["passed"] == 0:
        print(f"error: {args.report}: no test passed ({summary}): the stage tested nothing", file=sys.stderr)
        return 1
    if args.no_skips and counts["skipped"]:
        print(f"error: {args.report}: {counts['skipped']} test(s) skipped in a stage that must run them all "
              f"({summary})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
