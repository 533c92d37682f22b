"""Does AD-DROP beat plain fine-tuning on real data? Five-seed comparisons on CPU, in suites.

Protocol (honest selection): every run holds out a seeded 10 % of its training set as the selection set
(``data.holdout_fraction=0.1``) for the best epoch and for each method's settings; the GLUE dev file is the test
set, scored once with the selected checkpoint. For each study:

1. selection: ``addrop sweep`` over the method's grid plus plain fine-tuning, on one seed (SELECTION_SEED), scored on
   the held-out set;
2. test: the best setting of each method and plain fine-tuning on five other seeds (TEST_SEEDS), scored on the dev
   file.

Suites: ``minilm`` (all-MiniLM-L6-v2, AD-DROP only), ``mpnet-base`` (all-mpnet-base-v2 with R-Drop, short
schedules), ``mpnet-base-overfit`` (the same on schedules where plain fine-tuning overfits, chosen first by regime
probes, see evidence_regime.py) and ``smollm2`` (SmolLM2-135M-Instruct, generative, LoRA). Everything runs through
``addrop train`` and ``addrop sweep``, so a suite resumes where it stopped (run this script again) and can be spread
over several sittings. The finished trials' and probes' small files are kept in the committed record
``benchmarks/evidence-runs/SUITE`` (see evidence_record.py), so it also resumes from a fresh checkout. At the end it
writes ``docs/results-minilm.md`` (and .png) for MiniLM, or, for any other suite, the overview ``docs/results.md``
(and a figure per suite) from every suite's record.

Modules: evidence_studies.py (the studies and their commands), evidence_regime.py (the regime probes),
evidence_record.py (the committed record and the command log), evidence_results.py (what finished sweeps say),
evidence_report.py (tables, figure, MiniLM's report), evidence_overview.py (docs/results.md); this file runs them.

    python benchmarks/evidence.py                                # the MiniLM suite (about six hours on 2 CPU cores)
    python benchmarks/evidence.py --suite mpnet-base             # base size with R-Drop (about 5.5 hours)
    python benchmarks/evidence.py --suite mpnet-base-overfit     # base size where FT overfits (about 8.5 hours)
    python benchmarks/evidence.py --suite smollm2 --probes-only  # only the regime probes
    python benchmarks/evidence.py --only mrpc                    # one study
    python benchmarks/evidence.py --suite mpnet-base --status       # what is done, and the time left
    python benchmarks/evidence.py --suite mpnet-base --save-record  # record finished work while it runs
    python benchmarks/evidence.py --suite mpnet-base --report-only  # rewrite docs/ from what has finished
"""

from __future__ import annotations

import argparse
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import evidence_record
import evidence_regime
from evidence_overview import load_suite, write_overview
from evidence_record import CommandLog
from evidence_report import MINILM_FIGURE, MINILM_REPORT, OVERVIEW, write_report
from evidence_results import collect
from evidence_studies import (
    OVERVIEW_SUITES,
    ROOT,
    SHARED,
    SUITES,
    TEST_SEEDS,
    Study,
    arm_of,
    probe_command,
    probe_dir,
    run_folder,
    studies,
    sweep_command,
    sweeps_of,
)

from addrop_cli.sweep.plan import read_results


def sweep(out: Path, arguments: list[str], log: CommandLog) -> None:
    """Run (or resume) one ``addrop sweep``."""
    launch(sweep_command(arguments, out), log)


def launch(command: list[str], log: CommandLog) -> None:
    """Run one ``addrop`` command. Ctrl-C or SIGTERM lets it checkpoint, logs the time, and stops."""
    print(f"\n$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "addrop_cli", *command[1:]])
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)  # the sweep checkpoints its running trial
        process.wait()
        code = None
    log.add(shlex.join(command), time.perf_counter() - started)
    if code != 0:
        raise SystemExit("stopped; run the same command again to resume" if code is None else code)


def run_probes(study: Study, out: Path, data: Path, log: CommandLog) -> None:
    """Run (or resume) the study's regime probes."""
    for schedule in study.probes:
        directory = probe_dir(study, out, schedule)
        if not evidence_record.finished_probe(directory):
            resume = ["--resume"] if (directory / "recipe.yaml").is_file() else []
            launch([*probe_command(study, out, data, schedule), *resume], log)


def check_regime(study: Study, out: Path) -> None:
    """Stop unless the study's chosen schedule reached the regime (a study without probes passes)."""
    if not study.probes:
        return
    chosen = evidence_regime.read_curve(probe_dir(study, out, study.schedule), study.schedule, study.metric)
    if not chosen.reached:
        raise SystemExit(f"{study.name}: plain fine-tuning with {evidence_regime.schedule_text(study.schedule)} "
                         f"does not overfit (held-out loss lowest at epoch {chosen.lowest['epoch']} of "
                         f"{chosen.rows[-1]['epoch']}, ending at {chosen.ratio:.2f}× it); choose another schedule")


def run_study(study: Study, out: Path, data: Path, log: CommandLog, probes_only: bool = False) -> None:
    run_probes(study, out, data, log)
    if probes_only:
        return
    check_regime(study, out)
    if study.selection_from is None:
        sweep(*sweeps_of(study, out, data)[0], log)
    test = [call for call in sweeps_of(study, out, data) if call[0].name == "test"]
    if not test:
        raise SystemExit(f"{study.name}: the selection sweep in {out / (study.selection_from or study.name)} is not "
                         f"complete, or no trial of some arm ({', '.join(study.arms)}) finished; run that study "
                         "first, or see the summary.md there for the trials that failed")
    sweep(*test[0], log)


def _trial_costs(study: Study, out: Path) -> dict[str, float]:
    """Seconds per finished trial of each arm in the study (a sweep's trials of one method cost alike)."""
    rows = [row for kind in ("selection", "test") for row in read_results(out / study.name / kind)]
    return {arm: statistics.fmean(max(r["seconds"], r.get("train_seconds", 0)) for r in rows if arm_of(r) == arm)
            for arm in study.arms if any(arm_of(r) == arm for r in rows)}


def _probe_cost(study: Study, out: Path, log: CommandLog) -> float | None:
    """Seconds the chosen schedule's regime probe took (plain fine-tuning on the selection seed: an FT trial's
    work), or None before it has finished."""
    if not study.probes or not evidence_record.finished_probe(probe_dir(study, out, study.schedule)):
        return None
    return log.seconds_of([probe_command(study, out, SHARED, study.schedule)]) or None


def status_lines(all_studies: list[Study], out: Path) -> list[str]:
    """What is done per study and sweep, and the time left at the measured cost of each method's finished trials
    in that study; before any FT trial there, FT costs what its regime probe took; an arm not yet timed there costs
    FT's time there times its ratio to FT where both were timed. The test sweep's count is known before it starts."""
    costs = {study.name: _trial_costs(study, out) for study in all_studies}
    ratios = {arm: statistics.fmean(cost[arm] / cost["ft"] for cost in costs.values() if arm in cost and "ft" in cost)
              for arm in ("addrop", "rdrop") if any(arm in cost and "ft" in cost for cost in costs.values())}
    lines, left_total, unknown = [], 0.0, []
    log = CommandLog(out / evidence_record.COMMANDS_FILE)
    for study in all_studies:
        cost = dict(costs[study.name])
        probed = "ft" not in cost and (probe_seconds := _probe_cost(study, out, log)) is not None
        if probed:
            cost["ft"] = probe_seconds
        if study.probes:
            done = sum(evidence_record.finished_probe(probe_dir(study, out, schedule)) for schedule in study.probes)
            lines.append(f"{study.name}/regime: {done}/{len(study.probes)} probes done")
        guessed = {arm for arm in study.arms if arm not in cost and "ft" in cost and arm in ratios}
        cost.update({arm: cost["ft"] * ratios[arm] for arm in guessed})
        planned = {"selection": study.selection_arms() if study.selection_from is None else {},
                   "test": {arm: len(TEST_SEEDS) for arm in study.arms}}
        for kind, arms in planned.items():
            done = {arm: sum(1 for r in read_results(out / study.name / kind) if arm_of(r) == arm) for arm in arms}
            remaining = {arm: arms[arm] - done[arm] for arm in arms}
            if any(remaining[arm] and arm not in cost for arm in arms):
                unknown.append(f"{study.name}/{kind}")
            left = sum(remaining[arm] * cost.get(arm, 0.0) for arm in arms) / 3600
            left_total += left
            lines.append(f"{study.name}/{kind}: {sum(done.values())}/{sum(arms.values())} trials done ("
                         + ", ".join(f"{arm} {done[arm]}/{arms[arm]}" for arm in arms) + f"); {left:.2f} h left"
                         + ("" if f"{study.name}/{kind}" not in unknown else " + trials of a method not yet timed"))
        notes = {arm: " (from its ratio to FT in another study)" for arm in guessed}
        notes.update({"ft": " (from its regime probe)"} if probed else {})
        lines.append("  per trial: " + ", ".join(f"{arm} {seconds / 60:.1f} min{notes.get(arm, '')}"
                                                 for arm, seconds in cost.items()) if cost else
                     "  no trial finished yet")
    lines.append(f"time left: {left_total:.2f} h at the measured costs (and ratios, where marked)"
                 + (f", more for {', '.join(unknown)} (no trial of some method finished there yet)" if unknown else ""))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=SUITES, default="minilm", help="minilm (the first study), mpnet-base (FT, "
                        "AD-DROP and R-Drop at base size), mpnet-base-overfit (the same where plain fine-tuning "
                        "overfits) or smollm2 (a decoder LLM, generatively)")
    parser.add_argument("--data", type=Path, default=SHARED, help="the GLUE folder (default ../shared/data)")
    parser.add_argument("--out", type=Path, help="where the sweeps go (default runs/evidence, runs/evidence-SUITE "
                        "for other suites, kept in step with the committed record benchmarks/evidence-runs/SUITE; "
                        "another folder has no record)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where results.md and results.png go")
    parser.add_argument("--only", action="append", help="run only this study (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report")
    parser.add_argument("--probes-only", action="store_true", help="run only the regime probes (plain fine-tuning "
                        "on the selection seed with each schedule, evaluated every epoch), then report")
    parser.add_argument("--status", action="store_true", help="only say what is done and the time left")
    parser.add_argument("--save-record", action="store_true", help="only copy the finished trials into the "
                        "committed record (benchmarks/evidence-runs/SUITE); safe while the study runs")
    args = parser.parse_args()
    out = args.out or run_folder(args.suite)
    record = evidence_record.RECORDS / args.suite if args.out is None else None
    if args.save_record:
        if record is None:
            parser.error("--save-record keeps the record of the default run folder; leave out --out")
        print(f"recorded {evidence_record.save(out, record)} more finished trials and probes in {record}")
        return
    if record is not None and (restored := evidence_record.restore(record, out)):
        print(f"restored {restored} finished trials and probes from {record}")
    all_studies = studies(args.suite)
    chosen = [study for study in all_studies if not args.only or study.name in args.only]
    if args.status:
        print("\n".join(status_lines(chosen, out)))
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: checkpoint, log, exit
    log = CommandLog(out / evidence_record.COMMANDS_FILE)
    if not args.report_only:
        try:
            for index, study in enumerate(chosen, 1):
                print(f"\n=== study {index}/{len(chosen)}: {study.title} ===", flush=True)
                run_study(study, out, args.data, log, probes_only=args.probes_only)
        finally:
            if record is not None:
                evidence_record.save(out, record)
    if args.suite == "minilm":
        found = {study.name: result for study in all_studies if (result := collect(study, out)) is not None}
        write_report(found, all_studies, out, args.data, args.docs, log)
        print(f"\nwrote {args.docs / MINILM_REPORT} and {args.docs / MINILM_FIGURE}")
    else:
        write_overview([load_suite(suite, args.out if suite == args.suite else None) for suite in OVERVIEW_SUITES],
                       args.data, args.docs)
        print("\n".join(status_lines(all_studies, out)))
        print(f"\nwrote {args.docs / OVERVIEW} and its figures")


if __name__ == "__main__":
    main()
