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
import json
import math
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import evidence_overview
import evidence_record
import evidence_regime

from addrop_cli.outputs import write_text
from addrop_cli.sweep import summary as sweep_summary
from addrop_cli.sweep.plan import TRIALS_DIR, read_results
from addrop_cli.training.run_dir import read_history

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SELECTION_SEED, TEST_SEEDS = 1, (2, 3, 4, 5, 6)
SELECTION_GRID = ["--p", "0.1,0.3", "--q", "0.1,0.3", "--grid", "layers=first,all"]
# At base size the budget allows AD-DROP in the first layer only (the paper's choice for SST-2), and R-Drop's α
# from {1, 4}: 1 as in its README example, 4 what its BERT GLUE code's summed KL weighs at batch 16 (α = B / 4).
BASE_SELECTION_GRID = ["--method", "addrop,rdrop", "--p", "0.1,0.3", "--q", "0.1,0.3", "--grid", "rdrop.alpha=1,4"]
COMMON = ["--batch-size", "16", "--set", "data.holdout_fraction=0.1", "--set", "data.group_by_length=true",
          "--set", "train.patience=null", "--set", "train.save_total_limit=1"]
# minilm: the first study; mpnet-base: at base size with R-Drop; mpnet-base-overfit: base size again, with schedules
# where plain fine-tuning overfits and AD-DROP's layers in the grid; smollm2: a decoder LLM trained generatively.
SUITES = ("minilm", "mpnet-base", "mpnet-base-overfit", "smollm2")
OVERVIEW_SUITES = SUITES[1:]  # reported together in docs/results.md
# AD-DROP's p, q and layers (the paper picks the layers per task) and R-Drop's alpha, as in the base-size grid.
OVERFIT_SELECTION_GRID = ["--method", "addrop,rdrop", "--p", "0.1,0.3", "--q", "0.1,0.3", "--grid",
                          "layers=first,all", "--grid", "rdrop.alpha=1,4"]
# MRPC's trials cost three times the few-shot ones: q at 0.3 only, the value every earlier MRPC selection chose.
MRPC_OVERFIT_GRID = ("--method", "addrop,rdrop", "--p", "0.1,0.3", "--q", "0.3", "--grid", "layers=first,all",
                     "--grid", "rdrop.alpha=1,4")
# The overfit and LLM studies' trials checkpoint only after their last epoch (save_every above any schedule's
# epochs): at MPNet-base's 1.3 GB a checkpoint took about as long to write as a few-shot epoch to train, and a sweep
# deletes a finished trial's checkpoints anyway.
LAST_EPOCH_CHECKPOINT = ("--set", "train.save_every=100")
# The overfit studies' notes say why they evaluate every epoch, though evaluating every second one saves time.
EVERY_EPOCH = ("evaluated after every epoch: every second one (train.eval_every=2) would, with cross-tuning, have "
               "chosen the regularized arms' checkpoints among regularized epochs only (a first run of SST-2 16-shot "
               "did, and was discarded)")
MINILM_REPORT, MINILM_FIGURE = "results-minilm.md", "results-minilm.png"  # the first study's own report
OVERVIEW = "results.md"  # every suite, written by any suite but MiniLM's


@dataclass
class Study:
    name: str
    title: str
    recipe: str
    train_file: str
    test_file: str
    metric: str
    options: list[str]
    paper: tuple[float, float] | None  # (FT, AD-DROP) from the paper, in percent
    paper_source: str = ""
    notes: str = ""
    selection_from: str | None = None  # reuse another study's selected setting instead of sweeping
    model: str = "minilm"
    selection_grid: tuple[str, ...] = tuple(SELECTION_GRID)
    # The overfitting-regime studies keep epochs and learning rate apart from the other options: the schedule
    # chosen by the regime probes (evidence_regime.py), after the ones tried before it.
    schedule: tuple[str, ...] = ()
    tried: tuple[tuple[str, ...], ...] = ()
    checkpointing: tuple[str, ...] = ()  # options for how often the sweeps' trials checkpoint (not the results)

    def fixed(self, data: Path) -> list[str]:
        """The options every run of the study shares, schedule aside."""
        return ["--recipe", self.recipe, "--train-file", str(data / self.train_file),
                "--test-file", str(data / self.test_file), "--model", self.model, *COMMON, *self.options]

    def base(self, data: Path) -> list[str]:
        return [*self.fixed(data), *self.schedule, *self.checkpointing]

    @property
    def probes(self) -> list[tuple[str, ...]]:
        """The schedules its regime probes try, the chosen one last (none for a study without probes)."""
        return [*self.tried, self.schedule] if self.schedule else []

    @property
    def arms(self) -> tuple[str, ...]:
        """The methods the study compares: FT and AD-DROP, and R-Drop where the selection sweeps it."""
        return ("ft", "addrop", "rdrop") if "rdrop" in " ".join(self.selection_grid) else ("ft", "addrop")

    def selection_arms(self) -> dict[str, int]:
        """Trials per arm of the selection sweep (one seed): FT once, AD-DROP's p x q (x layers when swept),
        R-Drop's alphas."""
        words = list(zip(self.selection_grid[::2], self.selection_grid[1::2], strict=True))
        grid = {flag: value for flag, value in words if flag != "--grid"}
        swept = dict(value.split("=", 1) for flag, value in words if flag == "--grid")
        addrop = len(grid["--p"].split(",")) * len(grid["--q"].split(","))
        addrop *= len(swept["layers"].split(",")) if "layers" in swept else 1
        if "rdrop" not in self.arms:
            return {"ft": 1, "addrop": addrop}
        return {"ft": 1, "addrop": addrop, "rdrop": len(swept.get("rdrop.alpha", "1").split(","))}


def studies(suite: str = "minilm") -> list[Study]:
    """In running order: the cheap few-shot studies first, the overfitting regime last (it reuses MRPC's choice)."""
    if suite != "minilm":
        return {"mpnet-base": base_studies, "mpnet-base-overfit": overfit_studies, "smollm2": llm_studies}[suite]()

    def k_shot(k: int, epochs: int, paper: tuple[float, float]) -> Study:
        return Study(f"sst2-{k}shot", f"SST-2 {k}-shot", "sst2", "SST-2/train.tsv", "SST-2/dev.tsv", "accuracy",
                     ["--max-length", "64", "--epochs", str(epochs), "--lr", "1e-4", "--set", f"data.k_shot={k}",
                      "--set", "data.max_eval_samples=500", "--set", "train.warmup_ratio=0.1"],
                     paper, "Table 5, RoBERTa-base",
                     f"{k} sentences per class drawn with the seed from the 90 % left after the hold-out, "
                     f"{epochs} epochs at lr 1e-4; the selection set is the first 500 held-out sentences, the test "
                     "set the first 500 of the 872 dev sentences (data.max_eval_samples caps both)")

    return [
        k_shot(16, 20, (74.5, 80.2)),
        k_shot(64, 15, (89.1, 91.6)),
        k_shot(256, 10, (91.4, 92.6)),
        Study("cola", "CoLA", "cola", "CoLA/train.tsv", "CoLA/dev.tsv", "mcc",
              ["--max-length", "64", "--epochs", "3", "--lr", "5e-5"], (61.8, 63.4), "Table 3, BERT-base",
              "the 7,696 sentences left after the hold-out, 3 epochs at lr 5e-5 (at 2e-5 MiniLM was still "
              "improving after 3 epochs, MCC 0.28 on the held-out set)"),
        Study("mrpc", "MRPC", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv", "accuracy",
              ["--max-length", "128", "--epochs", "3", "--lr", "5e-5"], (85.2, 87.4), "Table 3, BERT-base",
              "the 3,302 pairs left after the hold-out, 3 epochs at lr 5e-5 (at 2e-5 plain fine-tuning was still "
              "improving after 3 epochs, 71.1 % on the held-out set, where always answering \"paraphrase\" scores "
              "65 %; those three selection trials were discarded)"),
        Study("mrpc-1000-overfit", "MRPC, 1,000 pairs, 10 epochs", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv",
              "accuracy", ["--max-length", "128", "--epochs", "10", "--lr", "5e-5", "--max-train-samples", "1000"],
              None, "", "a small-data regime meant to make plain fine-tuning overfit: 10 epochs on the first 1,000 "
              "training pairs left after the hold-out, lr 5e-5; to fit the time budget it takes the p, q and "
              "layers selected for MRPC rather than running its own selection sweep", selection_from="mrpc"),
    ]


def base_studies() -> list[Study]:
    """all-mpnet-base-v2 (12 layers, 110 M): FT, AD-DROP (first layer) and R-Drop, sized to about six hours of
    2 CPU cores (the plan and its measured per-epoch costs are in the issue note)."""
    model, grid = "mpnet-base", tuple(BASE_SELECTION_GRID)

    def k_shot(k: int, epochs: int, lr: str, paper: tuple[float, float]) -> Study:
        return Study(f"sst2-{k}shot", f"SST-2 {k}-shot", "sst2", "SST-2/train.tsv", "SST-2/dev.tsv", "accuracy",
                     ["--max-length", "64", "--epochs", str(epochs), "--lr", lr, "--layers", "first", "--set",
                      f"data.k_shot={k}", "--set", "data.max_eval_samples=500", "--set", "train.warmup_ratio=0.1"],
                     paper, "Table 5, RoBERTa-base",
                     f"{k} sentences per class drawn with the seed from the 90 % left after the hold-out, {epochs} "
                     f"epochs at lr {lr}; the selection set is the first 500 held-out sentences, the test set the "
                     "first 500 of the 872 dev sentences (data.max_eval_samples caps both)", model=model,
                     selection_grid=grid)

    return [
        k_shot(16, 20, "5e-5", (74.5, 80.2)),
        k_shot(64, 10, "3e-5", (89.1, 91.6)),
        Study("mrpc-1000", "MRPC, 1,000 pairs", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv", "accuracy",
              ["--max-length", "128", "--epochs", "3", "--lr", "5e-5", "--layers", "first",
               "--max-train-samples", "1000"], (85.2, 87.4), "Table 3, BERT-base, full MRPC",
              "the first 1,000 training pairs left after the hold-out (a subset, to fit the budget), 3 epochs at "
              "lr 5e-5; the selection set is the 367 held-out pairs", model=model, selection_grid=grid),
    ]


def overfit_studies() -> list[Study]:
    """all-mpnet-base-v2 again, each study on a schedule where plain fine-tuning overfits (found by the regime
    probes, evidence_regime.py), AD-DROP's layers in the grid; sized to about eight hours of 2 CPU cores with the
    probes (the plan is in the issue note)."""
    model, grid = "mpnet-base", tuple(OVERFIT_SELECTION_GRID)

    def k_shot(k: int, schedule: tuple[str, ...], tried: tuple[tuple[str, ...], ...], paper: tuple[float, float],
               why: str) -> Study:
        return Study(f"sst2-{k}shot", f"SST-2 {k}-shot", "sst2", "SST-2/train.tsv", "SST-2/dev.tsv", "accuracy",
                     ["--max-length", "64", "--set", f"data.k_shot={k}", "--set", "data.max_eval_samples=500"],
                     paper, "Table 5, RoBERTa-base",
                     f"{k} sentences per class drawn with the seed from the 90 % left after the hold-out; the "
                     "selection set is the first 500 held-out sentences, the test set the first 500 of the 872 dev "
                     f"sentences; {why}; {EVERY_EPOCH}", model=model, selection_grid=grid, schedule=schedule,
                     tried=tried, checkpointing=LAST_EPOCH_CHECKPOINT)

    warmup = ("--set", "train.warmup_ratio=0.1")
    return [
        k_shot(16, ("--epochs", "20", "--lr", "1e-4", *warmup), (("--epochs", "40", "--lr", "1e-4", *warmup),),
               (74.5, 80.2), "40 epochs overfitted as well (held-out loss lowest at epoch 9, 1.79× that at the end, "
               "moving by less than 0.01 over its last ten epochs), so the study takes 20, half the cost"),
        k_shot(64, ("--epochs", "15", "--lr", "5e-5", *warmup), (("--epochs", "30", "--lr", "5e-5", *warmup),),
               (89.1, 91.6), "30 epochs overfitted as well (held-out loss lowest at epoch 5, 1.78× that at the "
               "end), so the study takes 15, half the cost"),
        Study("mrpc-500", "MRPC, 500 pairs", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv", "accuracy",
              ["--max-length", "128"], (85.2, 87.4), "Table 3, BERT-base, full MRPC",
              "the first 500 training pairs left after the hold-out; the selection set is the 367 held-out pairs; "
              "1,000 pairs overfitted too (held-out loss lowest at epoch 3 of 6, 1.26× that at the end) but at "
              "17 to 22 minutes a trial the study alone would have taken seven of the eight hours, so it takes 500; "
              f"{EVERY_EPOCH}",
              model=model, selection_grid=MRPC_OVERFIT_GRID, checkpointing=LAST_EPOCH_CHECKPOINT,
              schedule=("--max-train-samples", "500", "--epochs", "6", "--lr", "5e-5"),
              tried=(("--max-train-samples", "1000", "--epochs", "6", "--lr", "5e-5"),)),
    ]


def llm_studies() -> list[Study]:
    """SmolLM2-135M-Instruct answering "positive" or "negative" (the bundled generative recipe: LoRA r 8, loss on
    the answer tokens), FT, AD-DROP in the first layer and R-Drop, in what the budget left."""
    return [Study("sst2-16shot-generate", "SST-2 16-shot, generative", "sst2_smollm2_generate", "SST-2/train.tsv",
                  "SST-2/dev.tsv", "accuracy", ["--set", "data.validation_file=null", "--set", "data.k_shot=16",
                                                "--set", "data.max_eval_samples=200", "--layers", "first"],
                  (74.5, 80.2), "Table 5, RoBERTa-base; the paper tried no decoder LLM",
                  "16 sentences per class drawn with the seed from the 90 % left after the hold-out; the selection "
                  "set is the first 200 held-out sentences, the test set the first 200 dev sentences, each scored "
                  "by the greedy answer", model="smollm2-135m",
                  selection_grid=("--method", "addrop,rdrop", "--p", "0.1,0.3", "--q", "0.3", "--grid",
                                  "rdrop.alpha=1"),
                  schedule=("--epochs", "20", "--lr", "2e-4"), checkpointing=LAST_EPOCH_CHECKPOINT)]


# ------------------------------------------------------------------------------------------- running


def run_folder(suite: str) -> Path:
    """Where a suite's sweeps run: runs/evidence for MiniLM, runs/evidence-SUITE for the others."""
    return ROOT / "runs" / ("evidence" if suite == "minilm" else f"evidence-{suite}")


class CommandLog:
    """Every ``addrop sweep`` call with its wall seconds, saved after each call (interrupted ones too)."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: list[dict] = json.loads(path.read_text()) if path.is_file() else []

    def add(self, command: str, seconds: float) -> None:
        self.entries.append({"command": command, "seconds": round(seconds, 1)})
        write_text(self.path, json.dumps(self.entries, indent=1))

    def hours(self) -> float:
        return sum(entry["seconds"] for entry in self.entries) / 3600

    def seconds_of(self, commands) -> float:
        """Wall seconds of the logged calls of any of ``commands`` (paths compared by their last two parts)."""
        wanted = {_command_key(command) for command in commands}
        return sum(entry["seconds"] for entry in self.entries if _command_key(shlex.split(entry["command"])) in wanted)


def sweep_command(arguments: list[str], directory: Path) -> list[str]:
    return ["addrop", "sweep", *arguments, "--output-dir", str(directory)]


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


def best_setting(selection: Path) -> list[str]:
    """The selection sweep's best setting per method, as sweep options: AD-DROP's p, q (and layers when swept), as
    in its best-recipe.yaml; with R-Drop in the sweep, its best alpha too (each the highest held-out mean, the
    first in grid order on a tie)."""
    summary = sweep_summary.collect(selection)[0]
    best: dict[str, sweep_summary.SettingStats] = {}
    for row in summary.rows:
        if not row.baseline and row.seeds and (row.method not in best
                                              or row.mean(summary.metric) > best[row.method].mean(summary.metric)):
            best[row.method] = row
    settings = best["addrop"].settings
    options = ["--p", str(settings["addrop.p"]), "--q", str(settings["addrop.q"])]
    if "addrop.layers" in settings:
        options += ["--grid", f"layers={settings['addrop.layers']}"]
    if "rdrop" in best:
        alpha = best["rdrop"].settings["rdrop.alpha"]
        options = ["--method", "addrop,rdrop", *options, "--grid", f"rdrop.alpha={alpha}"]
    return options


def sweeps_of(study: Study, out: Path, data: Path) -> list[tuple[Path, list[str]]]:
    """The study's ``addrop sweep`` calls as (output directory, arguments); the test call needs the selected
    settings, so it is left out until the selection sweep is complete."""
    selection, test = out / (study.selection_from or study.name) / "selection", out / study.name / "test"
    calls = []
    if study.selection_from is None:
        calls.append((selection, [*study.base(data), *study.selection_grid, "--seeds", str(SELECTION_SEED),
                                  "--baseline"]))
    if selection_complete(study, selection):
        calls.append((test, [*study.base(data), *best_setting(selection), "--seeds", ",".join(map(str, TEST_SEEDS)),
                             "--baseline"]))
    return calls


def selection_complete(study: Study, selection: Path) -> bool:
    """Whether every planned selection trial has ended (its grid is the study's) and every arm has one that
    finished, so each arm has a setting to test."""
    rows = read_results(selection)
    ended = {arm: sum(arm_of(row) == arm for row in rows) for arm in study.arms}
    finished = {arm_of(row) for row in rows if row["status"] == "ok"}
    return all(ended[arm] >= count for arm, count in study.selection_arms().items()) and set(study.arms) <= finished


def probe_dir(study: Study, out: Path, schedule: tuple[str, ...]) -> Path:
    return out / study.name / evidence_regime.REGIME_DIR / evidence_regime.schedule_label(schedule)


def probe_command(study: Study, out: Path, data: Path, schedule: tuple[str, ...]) -> list[str]:
    fixed = [*study.fixed(data), *study.checkpointing]
    return ["addrop", "train", *evidence_regime.probe_arguments(fixed, schedule, SELECTION_SEED),
            "--output-dir", str(probe_dir(study, out, schedule))]


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


def commands(all_studies: list[Study], out: Path) -> list[str]:
    """The exact commands behind the report, as run from the repository root."""
    shown = str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
    lines = [shlex.join(word.replace(str(out), shown, 1) for word in command)
             for study in all_studies for command in planned_commands(study, out, Path("../shared/data"))]
    return list(dict.fromkeys(lines))  # the overfit study's reused selection appears once


def planned_commands(study: Study, out: Path, data: Path) -> list[list[str]]:
    """The study's regime probes and sweeps, as commands (the test sweep once the selection is complete)."""
    return [*(probe_command(study, out, data, schedule) for schedule in study.probes),
            *(sweep_command(arguments, directory) for directory, arguments in sweeps_of(study, out, data))]


# ------------------------------------------------------------------------------------------ reporting


def paired_statistics(plain: list[float], addrop: list[float]) -> dict[str, float]:
    """Mean difference, paired t-test p-value and a seeded 95 % bootstrap interval over seeds."""
    import numpy as np
    from scipy import stats

    differences = np.array(addrop) - np.array(plain)
    rng = np.random.default_rng(0)
    resampled = rng.choice(differences, size=(10_000, len(differences)), replace=True).mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    p_value = float(stats.ttest_rel(addrop, plain).pvalue) if np.ptp(differences) > 0 else math.nan
    return {"difference": float(differences.mean()), "p_value": p_value, "ci_low": float(low),
            "ci_high": float(high)}


def collect(study: Study, out: Path) -> dict | None:
    test_dir = out / study.name / "test"
    rows = [row for row in read_results(test_dir) if row["status"] == "ok" and row.get("test")]
    by_seed: dict[str, dict[int, float]] = {arm: {} for arm in study.arms}
    for row in rows:
        by_seed[arm_of(row)][row["seed"]] = 100 * row["test"][study.metric]
    seeds = sorted(set.intersection(*(set(scores) for scores in by_seed.values())))
    if not seeds:
        return None
    plain, addrop = [by_seed["ft"][s] for s in seeds], [by_seed["addrop"][s] for s in seeds]
    chosen = next(row["settings"] for row in rows if arm_of(row) == "addrop")
    histories = {row["trial"]: read_history(test_dir / TRIALS_DIR / row["trial"]) for row in rows}
    selection_rows = finished_selection(study, out)
    return {"seeds": seeds, "ft": plain, "addrop": addrop, "chosen": chosen,
            "selection_hours": trial_hours(selection_rows), "test_hours": trial_hours(rows),
            "complete": len(seeds) == len(TEST_SEEDS), "drift": prediction_drift(histories, rows),
            "curves": epoch_curves(histories, rows, study.metric), "best_phases": best_phases(histories, rows),
            "ft_best_epochs": sorted(row["best_epoch"] for row in rows if row["baseline"]),
            **(paired_statistics(plain, addrop) if len(seeds) > 1 else {}), **_rdrop_arm(by_seed, seeds, rows)}


def _rdrop_arm(by_seed: dict[str, dict[int, float]], seeds: list[int], rows: list[dict]) -> dict:
    """R-Drop's scores, chosen alpha and paired statistics against FT, for a study that has the arm."""
    if "rdrop" not in by_seed:
        return {}
    plain, rdrop = [by_seed["ft"][s] for s in seeds], [by_seed["rdrop"][s] for s in seeds]
    chosen = next(row["settings"] for row in rows if arm_of(row) == "rdrop")
    return {"rdrop": rdrop, "rdrop_chosen": chosen,
            "rdrop_stats": paired_statistics(plain, rdrop) if len(seeds) > 1 else {}}


def arm_of(row: dict) -> str:
    """A result row's arm: ``ft``, ``addrop`` or ``rdrop``."""
    return "ft" if row["baseline"] else row["settings"].get("addrop.method", "addrop")


def finished_trials(sweep_dir: Path) -> list[dict]:
    """The rows of a sweep's finished trials (none before the sweep has started)."""
    return [row for row in read_results(sweep_dir) if row["status"] == "ok"]


def finished_selection(study: Study, out: Path) -> list[dict]:
    """The study's own selection sweep's finished trials (none for a study that reuses another's)."""
    return finished_trials(out / study.name / "selection")


def trial_hours(rows: list[dict]) -> float:
    """Hours the trials took. A trial resumed in a later sitting reports only that sitting's seconds, so its epochs'
    own seconds (``train_seconds``, summed from history.jsonl) count when they are more."""
    return sum(max(row["seconds"], row.get("train_seconds", 0)) for row in rows) / 3600


def selection_scores(rows: list[dict]) -> list[tuple[str, float]]:
    """(setting, held-out score in percent) of a selection sweep, best first (R-Drop's settings prefixed)."""
    scored = [("FT" if row["baseline"] else ("R-Drop " if arm_of(row) == "rdrop" else "") + _setting(row["settings"]),
               100 * row["eval"][row["metric"]]) for row in rows]
    return sorted(scored, key=lambda item: -item[1])


def best_phases(histories: dict[str, list[dict]], rows: list[dict]) -> list[str]:
    """The phase ("ft" or "addrop") of each AD-DROP run's selected epoch."""
    phases = []
    for row in rows:
        if arm_of(row) == "addrop":
            history = {record["epoch"]: record["phase"] for record in histories[row["trial"]]}
            phases.append(history[row["best_epoch"]])
    return phases


def _setting(settings: dict) -> str:
    """A setting as the report writes it: "p 0.3, q 0.1, first" (layers when swept), or "α 4" for R-Drop."""
    if settings.get("addrop.method") == "rdrop":
        return f"α {settings['rdrop.alpha']}"
    layers = [str(settings["addrop.layers"])] if "addrop.layers" in settings else []
    return ", ".join([f"p {settings['addrop.p']}", f"q {settings['addrop.q']}", *layers])


def prediction_drift(histories: dict[str, list[dict]], rows: list[dict]) -> dict[str, float]:
    """Mean share of the most predicted class on the selection set after plain and after AD-DROP epochs."""
    shares: dict[str, list[float]] = {"ft": [], "addrop": []}
    for row in rows:
        if arm_of(row) != "addrop":
            continue
        for epoch in histories[row["trial"]]:
            counts = epoch.get("eval_predictions") or {}
            if counts:
                shares[epoch["phase"]].append(max(counts.values()) / sum(counts.values()))
    return {phase: statistics.fmean(values) for phase, values in shares.items() if values}


def epoch_curves(histories: dict[str, list[dict]], rows: list[dict], metric: str) -> dict[str, list[dict]]:
    """Per arm ("ft", "addrop", "rdrop") and epoch: the phase, mean train loss, held-out loss and held-out score over
    seeds."""
    epochs: dict[str, dict[int, list[dict]]] = {}
    for row in rows:
        for record in histories[row["trial"]]:
            if "eval" in record:  # epochs train.eval_every skipped have no held-out numbers
                epochs.setdefault(arm_of(row), {}).setdefault(record["epoch"], []).append(record)
    return {arm: [{"epoch": epoch, "phase": records[0]["phase"],
                   "train_loss": statistics.fmean(r["train_loss"] for r in records),
                   "eval_loss": statistics.fmean(r["eval_loss"] for r in records),
                   "score": 100 * statistics.fmean(r["eval"][metric] for r in records)}
                  for epoch, records in sorted(by_epoch.items())]
            for arm, by_epoch in epochs.items()}


def _mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else \
        f"{values[0]:.1f}"


def _difference(stats: dict) -> tuple[str, str]:
    """A method's difference from FT as the tables print it: "+0.1 [-0.4, +0.7]" and the paired p-value."""
    if "difference" not in stats:
        return "–", "–"
    p_value = "–" if math.isnan(stats["p_value"]) else f"{stats['p_value']:.2f}"
    return f"{stats['difference']:+.1f} [{stats['ci_low']:+.1f}, {stats['ci_high']:+.1f}]", p_value


def results_table(found: dict[str, dict], all_studies: list[Study], overfitted: bool = False) -> list[str]:
    """One row per study: FT and AD-DROP (and R-Drop where the studies have it) with each method's difference
    from FT, the chosen settings, seeds, hours, (with ``overfitted``) whether plain fine-tuning overfitted, and the
    paper's numbers."""
    with_rdrop = any("rdrop" in study.arms for study in all_studies)
    header = ["study", "metric", "FT", "AD-DROP", "Δ [95 % CI]", "paired p",
              *(["R-Drop", "Δ [95 % CI]", "paired p", "chosen: AD-DROP; R-Drop"] if with_rdrop
                else ["chosen p, q, layers"]), "seeds", "hours",
              *(["FT overfitted? (held-out loss last / lowest)"] if overfitted else []), "paper FT → AD-DROP"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for study in all_studies:
        result = found.get(study.name)
        paper = f"{study.paper[0]} → {study.paper[1]} ({study.paper_source})" if study.paper else "–"
        if result is None:
            lines.append(f"| {study.title} | {study.metric} | not run yet |" + " |" * (len(header) - 4) + f" {paper} |")
            continue
        chosen = _setting(result["chosen"])
        rdrop = []
        if with_rdrop:
            chosen += "; " + _setting(result["rdrop_chosen"]) if "rdrop_chosen" in result else ""
            rdrop = [_mean_std(result["rdrop"]) if "rdrop" in result else "–",
                     *_difference(result.get("rdrop_stats", {}))]
        seeds = f"{len(result['seeds'])}" + ("" if result["complete"] else " (incomplete)")
        hours = result["selection_hours"] + result["test_hours"]
        cells = [study.title, study.metric, _mean_std(result["ft"]), _mean_std(result["addrop"]),
                 *_difference(result), *rdrop, chosen, seeds, f"{hours:.2f}",
                 *([evidence_regime.verdict(loss_growth(result))] if overfitted else []), paper]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def budget_lines(found: dict[str, dict], all_studies: list[Study], log: CommandLog, out: Path,
                 data: Path, label: str = "") -> list[str]:
    """Hours per study (regime probes, selection, test) and in all logged calls; nothing before any has run."""
    probed = any(study.probes for study in all_studies)
    rows, total = [], 0.0
    for study in all_studies:
        probes = log.seconds_of(probe_command(study, out, data, schedule) for schedule in study.probes) / 3600
        selection_rows = finished_selection(study, out)
        if result := found.get(study.name):
            selection_hours, test_hours = result["selection_hours"], result["test_hours"]
        elif probes or selection_rows:  # the test not (or not all) run
            selection_hours = trial_hours(selection_rows)
            test_hours = trial_hours(finished_trials(out / study.name / "test"))
        else:
            continue
        selection = (f"– (uses {study.selection_from})" if study.selection_from is not None else
                     f"{selection_hours:.2f}" if selection_hours else "not run yet")
        test = f"{test_hours:.2f}" if result else (f"{test_hours:.2f} so far" if test_hours else "not run yet")
        rows.append(f"| {study.title} | " + (f"{probes:.2f} | " if probed else "")
                    + f"{selection} | {test} | {probes + selection_hours + test_hours:.2f} |")
        total += probes + selection_hours + test_hours
    if not rows:
        return []
    kept = log.seconds_of(command for study in all_studies for command in planned_commands(study, out, data)) / 3600
    return [f"## Where the time went{label}", "",
            "Hours of training and evaluation per study (one process on 2 CPU cores, runs one after another):", "",
            "| study | " + ("regime probes | " if probed else "") + "selection sweep | five-seed test | total |",
            "|---" * (5 if probed else 4) + "|", *rows, "",
            f"Total: {total:.1f} h in " + ("probes and " if probed else "") + f"trials; {kept:.1f} h of wall time in "
            "these `addrop` calls, over the sittings (a resumed call adds only what it ran), and "
            f"{log.hours() - kept:.1f} h more in calls with earlier settings that were discarded (see Studies).", ""]


PATH_OPTIONS = {"--train-file", "--test-file", "--output-dir"}


def _command_key(words: list[str]) -> tuple[str, ...]:
    """A command with each path cut to its last two parts (``MRPC/train.tsv``, ``mrpc/test``) and without
    ``--resume`` or ``--set train.save_every=N`` (neither changes what runs), so calls logged from another checkout
    or data folder, resumed, or checkpointing less often, still match."""
    saving = {i for i, word in enumerate(words) if word.startswith("train.save_every=")}
    kept = [word for i, word in enumerate(words) if i not in saving and i + 1 not in saving and word != "--resume"]
    return tuple("/".join(Path(word).parts[-2:]) if previous in PATH_OPTIONS else word
                 for previous, word in zip(["", *kept], kept, strict=False))


def selection_lines(all_studies: list[Study], out: Path, label: str = "") -> list[str]:
    lines = [f"## Selection sweeps{label} (held-out 10 %, seed 1)", ""]
    for study in all_studies:
        rows = finished_selection(study, out)
        if rows:
            scores = "; ".join(f"{setting} {score:.1f}" for setting, score in selection_scores(rows))
            lines.append(f"- {study.title}: {scores}.")
    return [*lines, ""] if len(lines) > 2 else []  # nothing selected yet: no section


def loss_growth(result: dict) -> float:
    """Plain fine-tuning's mean held-out loss at the last epoch over its lowest."""
    ft = result["curves"]["ft"]
    return ft[-1]["eval_loss"] / min(row["eval_loss"] for row in ft)


def overfit_cells(result: dict) -> list[str]:
    """Plain runs' held-out curve in one table row: epochs, best score (epoch), last score, the fall between them,
    held-out loss from its lowest (epoch) to the last epoch, and the last train loss."""
    ft = result["curves"]["ft"]
    best, last = max(ft, key=lambda row: row["score"]), ft[-1]
    lowest = min(ft, key=lambda row: row["eval_loss"])
    return [str(last["epoch"]), f"{best['score']:.1f} ({best['epoch']})", f"{last['score']:.1f}",
            f"{best['score'] - last['score']:.1f}", f"{lowest['eval_loss']:.3f} ({lowest['epoch']}) → "
            f"{last['eval_loss']:.3f}", f"{last['train_loss']:.3f}"]


OVERFIT_HEADER = ("epochs | best held-out score (epoch) | last epoch | fall | held-out loss: lowest (epoch) → last | "
                  "train loss, last |")


def _fall_and_growth(cells: list[str]) -> tuple[float, float]:
    """The score's fall and the held-out loss's last / lowest ratio, read back from :func:`overfit_cells`."""
    lowest, last = cells[4].split(" → ")
    return float(cells[3]), float(last) / float(lowest.split()[0])


def overfit_lines(found: dict[str, dict], all_studies: list[Study]) -> list[str]:
    """Per study, how far plain fine-tuning's held-out curve falls after its peak as its train loss keeps dropping."""
    lines = ["## Does plain fine-tuning overfit?", "",
             "Plain runs' held-out curves, means over the test seeds: the best epoch's score against the last "
             "epoch's, and the held-out loss from its lowest to the last epoch.", "",
             "| study | " + OVERFIT_HEADER, "|---" * 7 + "|"]
    measured = {}
    for study in all_studies:
        if result := found.get(study.name):
            cells = overfit_cells(result)
            measured[study.title] = _fall_and_growth(cells)
            lines.append(f"| {study.title} | " + " | ".join(cells) + " |")
    if not measured:
        return []
    steepest = max(measured, key=lambda title: measured[title][0])
    growth = [ratio for _, ratio in measured.values()]
    lines += ["", f"Held-out loss ends more than 20 % above its lowest point in "
              f"{sum(ratio > 1.2 for ratio in growth)} of {len(measured)} studies (up to {max(growth):.1f}×), but "
              f"the held-out score falls by at most {measured[steepest][0]:.1f} points ({steepest}): plain "
              "fine-tuning overfits in confidence (loss) far more than in accuracy here, which leaves a regularizer "
              "little score to win back."]
    return [*lines, ""]


ARM_NAMES = {"ft": "FT", "addrop": "AD-DROP", "rdrop": "R-Drop"}


def curve_lines(found: dict[str, dict], study: Study, label: str = "") -> list[str]:
    """The per-epoch table that shows whether plain fine-tuning overfits (held-out score falls as loss drops), with
    each regularized arm beside it (the evaluated epochs, where train.eval_every skipped some)."""
    result = found.get(study.name)
    if not result:
        return []
    arms = [arm for arm in study.arms if arm in result["curves"]]
    ft = result["curves"]["ft"]
    header = ["epoch", "FT train loss", "FT held-out loss", "FT held-out"]
    for arm in arms[1:]:
        name = ARM_NAMES[arm]
        header += [*([f"{name} phase"] if arm == "addrop" else []), f"{name} train loss", f"{name} held-out loss",
                   f"{name} held-out"]
    lines = [f"## Epoch by epoch: {label}{study.title}", "",
             f"Means over the test seeds; held-out {study.metric} (the selection split), not the dev file.", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for index, plain in enumerate(ft):
        cells = [str(plain["epoch"])]
        for arm in arms:
            row = result["curves"][arm][index]
            cells += [*([row["phase"]] if arm == "addrop" else []), f"{row['train_loss']:.3f}",
                      f"{row['eval_loss']:.3f}", f"{row['score']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    best = max(ft, key=lambda row: row["score"])
    lines += ["", f"Plain fine-tuning peaks at epoch {best['epoch']} ({best['score']:.1f}) and ends at "
              f"{ft[-1]['score']:.1f} while its train loss goes {ft[0]['train_loss']:.3f} → "
              f"{ft[-1]['train_loss']:.3f} and its held-out loss {ft[0]['eval_loss']:.3f} → {ft[-1]['eval_loss']:.3f} "
              f"(lowest {min(row['eval_loss'] for row in ft):.3f}); the epochs its seeds' checkpoints were selected "
              f"at (best held-out {study.metric}): {', '.join(map(str, result['ft_best_epochs']))} of "
              f"{ft[-1]['epoch']}.", ""]
    return lines


def drift_lines(found: dict[str, dict], all_studies: list[Study], drift_json: Path) -> list[str]:
    lines = ["## Prediction drift", "",
             "Share of the most-predicted class on the selection set, averaged over the AD-DROP runs' epochs, "
             "after plain (ft) and after AD-DROP epochs:", "", "| study | after ft epochs | after AD-DROP epochs |",
             "|---|---|---|"]
    for study in all_studies:
        drift = (found.get(study.name) or {}).get("drift") or {}
        if drift:
            lines.append(f"| {study.title} | {drift.get('ft', math.nan):.2f} | {drift.get('addrop', math.nan):.2f} |")
    if not drift_json.is_file():
        return [*lines, ""]
    measured = json.loads(drift_json.read_text())
    variants, balanced, selected = measured["variants"], measured["balanced"], measured["selection"]

    def accuracy(runs: dict, name: str) -> str:
        return f"{100 * runs[name]['accuracy']:.1f} %"

    def share(runs: dict, name: str) -> str:
        return f"{runs[name]['paraphrase_share']:.2f}"

    pseudo, gold = selected["pseudo"], selected["gold"]
    bias = max(abs(run["bias_margin"]) for run in [*variants.values(), *balanced.values()])
    lines += ["", "### Why AD-DROP epochs drift (MRPC, from `benchmarks/drift.py`, one seed)", "",
              "From one starting model (two plain epochs, dev accuracy "
              f"{accuracy(variants, 'start')}), one more epoch of each variant; dev accuracy and share of pairs "
              "answered \"paraphrase\" (68 % of dev pairs are paraphrases). Full tables: [drift.md](drift.md).", "",
              f"- Plain epoch: {accuracy(variants, 'plain')}, share {share(variants, 'plain')}. "
              f"AD-DROP on all layers, p = q = 0.3 (the pilot's setting): {accuracy(variants, 'ga-all-q0.3')}, "
              f"share {share(variants, 'ga-all-q0.3')}. With gold instead of pseudo labels: "
              f"{accuracy(variants, 'gold-all-q0.3')}, share {share(variants, 'gold-all-q0.3')}. The pilot's "
              "observation holds with this implementation, and pseudo labels are not the cause.",
              f"- Dropping less, or not by attribution, shrinks it: q 0.1 {accuracy(variants, 'ga-all-q0.1')}, "
              f"first layer only {accuracy(variants, 'ga-first-q0.3')}, a random region of the same size (RD) "
              f"{accuracy(variants, 'rd-all-q0.3')}; dropping the lowest-attribution positions instead moves the "
              f"predictions the other way (share {share(variants, 'low-all-q0.3')}, "
              f"{accuracy(variants, 'low-all-q0.3')}).",
              f"- Not the attention sinks: [CLS]/[SEP] are {100 * pseudo['special_candidate_share']:.1f} % of the "
              f"candidates and {100 * pseudo['special_key_share']:.1f} % of the real keys.",
              f"- Not the classifier bias: b1 − b0 stays within {bias:.4f} of zero in every run while the mean dev "
              "margin z1 − z0 "
              f"goes {variants['start']['mean_margin']:+.2f} → {variants['ga-all-q0.3']['mean_margin']:+.2f}; the "
              "shift is in the representation.",
              "- The mechanism: the masked forward moves the logit margin a lot and unevenly across classes "
              f"(pseudo labels: {pseudo['margin_shift_class1']:+.2f} on paraphrase pairs, "
              f"{pseudo['margin_shift_class0']:+.2f} on the others; gold labels: "
              f"{gold['margin_shift_class1']:+.2f} / {gold['margin_shift_class0']:+.2f}). The AD-DROP loss is "
              "computed only on that masked forward, so the epoch teaches the model to offset the shift, and the "
              "offset is also applied to unmasked inputs at test time. Which way it tips depends on the data: "
              f"on a class-balanced training set the same epoch collapses toward \"not paraphrase\" (share "
              f"{share(balanced, 'ga-all-q0.3')}, {accuracy(balanced, 'ga-all-q0.3')}, plain "
              f"{accuracy(balanced, 'plain')}).",
              "- The option `addrop.unmasked_weight` (default 0, the paper's loss) adds a plain forward's loss with "
              f"weight w; at w = 0.5 it softened the drift ({accuracy(variants, 'ga-all-q0.3-unmasked0.5')}, share "
              f"{share(variants, 'ga-all-q0.3-unmasked0.5')}; balanced {accuracy(balanced, 'ga-all-q0.3-unmasked0.5')})"
              " but did not remove it, at the cost of a third forward and backward. The grid's q = 0.1 and "
              "first-layer settings shrink it within the method itself.", ""]
    phases = [phase for result in found.values() for phase in result["best_phases"]]
    if phases:
        lines.insert(-1, f"- In this study's AD-DROP runs, the selected (best held-out) epoch was a plain "
                         f"cross-tuning epoch in {phases.count('ft')} of {len(phases)} runs.")
    return lines


def write_report(found: dict[str, dict], all_studies: list[Study], out: Path, data: Path, docs: Path,
                 log: CommandLog) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    lines = ["# Evidence: AD-DROP vs plain fine-tuning with all-MiniLM-L6-v2 (CPU)", "",
             "Generated by `python benchmarks/evidence.py`; do not edit by hand.", "",
             "Protocol: a seeded 10 % of each training set is held out and used to select the epoch and AD-DROP's "
             "p, q and layers (grid p, q ∈ {0.1, 0.3} × layers ∈ {first, all}, on seed "
             f"{SELECTION_SEED}); the GLUE dev file is the test set, scored once per run with the selected "
             f"checkpoint, on seeds {', '.join(map(str, TEST_SEEDS))}. Scores in percent (MCC × 100 for CoLA); "
             "Δ is AD-DROP − FT, with a paired t-test over seeds and a 95 % bootstrap interval of the mean "
             "difference. Cross-tuning (plain and AD-DROP epochs alternate), GA attribution, pseudo labels, "
             "batch 16, length-grouped batches.", "",
             *results_table(found, all_studies), "", f"![per-seed scores]({MINILM_FIGURE})", "",
             *selection_lines(all_studies, out), *budget_lines(found, all_studies, log, out, data)]
    lines += overfit_lines(found, all_studies)
    for study in all_studies:
        if study.name.endswith("overfit"):
            lines += curve_lines(found, study)
    lines += drift_lines(found, all_studies, ROOT / "docs" / "drift.json")
    lines += ["## Why these numbers differ from the paper", "",
              "- Model: all-MiniLM-L6-v2 has 6 layers, 384 hidden units and 22 M parameters and was distilled for "
              "sentence embeddings; the paper's rows use BERT-base (110 M) and, for few-shot SST-2, RoBERTa-base "
              "(125 M). Both its FT and its AD-DROP numbers start from a stronger model.",
              "- Protocol: the paper picks p, q and the epoch on the same dev set it reports, which favours the "
              "method with more knobs (AD-DROP has two more than FT). Here they are picked on a held-out tenth "
              "of the training set and the dev file is scored once; the training set is 10 % smaller.",
              "- Budget: 2 CPU cores allow 3 epochs on MRPC and CoLA and short few-shot schedules; the grid is "
              "p, q ∈ {0.1, 0.3} × layers, chosen on one seed, so a setting that won by noise on seed 1 is then "
              "tested on five others.",
              "- Power: with five seeds, the bootstrap interval of Δ shows the smallest difference each study "
              "can resolve; the paper's gains (about 1–2 points on GLUE) are within reach only where that "
              "interval is narrower than them.", ""]
    lines += ["## Studies", "", *(f"- {study.title}: {study.notes}." for study in all_studies if study.notes), "",
              "## Commands", "", "Run from the repository root (what `python benchmarks/evidence.py` runs):", "", "```",
              *commands(all_studies, out), "```", ""]
    write_text(docs / MINILM_REPORT, "\n".join(lines))
    draw(found, all_studies, docs / MINILM_FIGURE)


# ------------------------------------------------------------------- the overview: both models (issue 30)


def selection_entries(found: dict[str, dict], all_studies: list[Study], out: Path,
                      model: str) -> list[evidence_overview.SelectionEntry]:
    """Per study and regularized arm: the best of its selection settings against FT on the held-out split, with
    FT's seed spread and the chosen setting's five-seed test difference (studies whose test sweep finished)."""
    entries = []
    for study in all_studies:
        rows, result = finished_selection(study, out), found.get(study.name)
        plain = [row for row in rows if row["baseline"]]
        if not plain or not result or len(result["ft"]) < 2:
            continue
        for arm, stats in (("addrop", result), ("rdrop", result.get("rdrop_stats"))):
            arm_rows = [row for row in rows if arm_of(row) == arm]
            if not arm_rows or stats is None:
                continue
            top = max(row["eval"][row["metric"]] for row in arm_rows)
            tied = [row for row in arm_rows if row["eval"][row["metric"]] == top]
            chosen = result["chosen"] if arm == "addrop" else result.get("rdrop_chosen")
            best = next((row for row in tied if row["settings"] == chosen), tied[0])  # a tie: the one tested
            entries.append(evidence_overview.SelectionEntry(
                model, study.title, ARM_NAMES[arm], len(arm_rows), 100 * plain[0]["eval"][plain[0]["metric"]],
                100 * best["eval"][best["metric"]], _setting(best["settings"]), statistics.stdev(result["ft"]),
                _difference(stats)[0], statistics.stdev(
                    [score - plain for score, plain in zip(result[arm], result["ft"], strict=True)]) / math.sqrt(2)))
    return entries


def overfit_comparison_lines(suites: list[Suite], minilm: dict[str, evidence_overview.MiniLMStudy]) -> list[str]:
    """Plain fine-tuning's held-out curves in every study of every suite, MiniLM's beside them, and in how many
    plain fine-tuning overfitted."""
    ratio = evidence_regime.OVERFIT_RATIO
    lines = ["## Did plain fine-tuning overfit?", "",
             "Plain runs' held-out curves, means over the five test seeds: the best epoch's score against the last "
             "epoch's, and the held-out loss from its lowest to the last epoch (MiniLM's rows from "
             f"[{MINILM_REPORT}]({MINILM_REPORT})). A study counts as overfitting when the held-out loss ends at "
             f"least {ratio}× its lowest: the model keeps growing confident on its training set after held-out data "
             "stopped gaining, which is what a regularizer is meant to prevent.", "",
             "| model | study | " + OVERFIT_HEADER + " overfitted? |", "|---" * 9 + "|"]
    rows = [(suite.label, study.title, overfit_cells(suite.found[study.name]))
            for suite in suites for study in suite.studies if study.name in suite.found]
    rows += [("MiniLM", study.title, study.overfit[1:]) for study in minilm.values() if study.overfit]
    growth = {(label, title): _fall_and_growth(cells)[1] for label, title, cells in rows}
    lines += [f"| {label} | {title} | " + " | ".join(cells) + f" | {evidence_regime.verdict(growth[label, title])} |"
              for label, title, cells in rows]
    overfitted = [f"{label} {title} ({value:.2f}×)" for (label, title), value in growth.items() if value >= ratio]
    lines += ["", f"Plain fine-tuning overfitted in {len(overfitted)} of {len(rows)} studies"
              + (": " + "; ".join(overfitted) if overfitted else "") + ".", ""]
    return lines


@dataclass
class Suite:
    """One suite as the overview reports it: its studies, their results, its run folder and command log."""

    name: str
    studies: list[Study]
    found: dict[str, dict]
    out: Path
    log: CommandLog

    @property
    def label(self) -> str:
        return SUITE_TEXT[self.name][0]


# Per suite: its label in shared tables, its section's heading and what its grid was.
SUITE_TEXT = {
    "mpnet-base": ("MPNet-base", "all-mpnet-base-v2 (12 layers, 768 hidden, 110 M parameters): short schedules",
                   "Grid on the held-out split: AD-DROP p, q ∈ {0.1, 0.3} in the first layer only (the paper's choice "
                   "for SST-2; all layers did not fit the budget), R-Drop α ∈ {1, 4} (1 as in R-Drop's README, 4 "
                   "what its BERT GLUE code's summed KL weighs at batch 16). Plain fine-tuning was still improving "
                   "when these schedules ended (see \"Did plain fine-tuning overfit?\"), so they cannot show what a "
                   "regularizer does against overfitting; the next section can."),
    "mpnet-base-overfit": ("MPNet-base, overfitting", "all-mpnet-base-v2 where plain fine-tuning overfits",
                           "Each study's schedule (epochs, learning rate) was chosen before any regularized run, by "
                           "plain fine-tuning on the selection seed evaluated after every epoch (Finding the regime, "
                           "below), so that the held-out loss is lowest in the first half of the epochs and ends at "
                           f"least {evidence_regime.OVERFIT_RATIO}× that. Grid on the held-out split: AD-DROP p, q ∈ "
                           "{0.1, 0.3} × layers ∈ {first, all} (the paper picks the layers per task; on MRPC q 0.3 "
                           "only, the value every earlier MRPC selection chose, to fit the budget), R-Drop α ∈ "
                           "{1, 4}."),
    "smollm2": ("SmolLM2", "SmolLM2-135M-Instruct (decoder LLM, 30 layers, 135 M parameters), generative with LoRA",
                "SST-2 as generation: the model answers \"positive\" or \"negative\" in its chat format, LoRA r 8 on "
                "the attention projections, loss on the answer tokens; AD-DROP's target is minus the cross-entropy "
                "of the model's own (argmax) answer tokens, in the first layer. Grid on the held-out split: "
                "AD-DROP p ∈ {0.1, 0.3} at q 0.3, R-Drop α 1 (a smaller grid: the budget left)."),
}


def load_suite(suite: str, out: Path | None = None) -> Suite:
    """The results of a suite's studies in ``out``, or in its run folder brought up to its committed record."""
    if out is None:
        out = run_folder(suite)
        evidence_record.restore(evidence_record.RECORDS / suite, out)
    all_studies = studies(suite)
    found = {study.name: result for study in all_studies if (result := collect(study, out)) is not None}
    return Suite(suite, all_studies, found, out, CommandLog(out / evidence_record.COMMANDS_FILE))


def regime_lines(suite: Suite) -> list[str]:
    """The regime probes of a suite's studies: every schedule tried, and the chosen one's curve epoch by epoch."""
    tried = [(study, schedule, evidence_regime.read_curve(probe_dir(study, suite.out, schedule), schedule,
                                                          study.metric))
             for study in suite.studies for schedule in study.probes]
    finished = [(study, schedule, curve) for study, schedule, curve in tried if curve is not None]
    if not finished:
        return []
    lines = ["### Finding the regime", "",
             f"Plain fine-tuning on seed {SELECTION_SEED}, evaluated on the held-out split after every epoch, for each "
             "schedule tried (the last one per study is the one used). A schedule reaches the regime when the "
             "held-out loss is at its lowest within the first half of its epochs and ends at least "
             f"{evidence_regime.OVERFIT_RATIO}× that; the overfitting column and table below ask only the second, "
             "of the test seeds' mean curves:", "",
             *evidence_regime.regime_table([(study.title, curve) for study, _, curve in finished]), ""]
    for study, schedule, curve in finished:
        if schedule == study.schedule:
            lines += [f"#### {study.title}: {evidence_regime.schedule_text(schedule)}", "",
                      *evidence_regime.curve_table(curve), ""]
    return lines


def suite_section(suite: Suite, data: Path) -> list[str]:
    """A suite's heading, grid, regime probes (where it has them), results table and per-seed figure."""
    _, heading, grid = SUITE_TEXT[suite.name]
    figure = f"results-{suite.name}.png"
    return [f"## {heading}", "", grid, "", *regime_lines(suite),
            *results_table(suite.found, suite.studies, overfitted=True), "",
            *([f"![per-seed scores]({figure})", ""] if suite.found else [])]


def write_overview(suites: list[Suite], data: Path, docs: Path) -> None:
    """docs/results.md: every base-size and LLM suite in full, MiniLM's table beside them, the selection-protocol
    arithmetic for all, and whether plain fine-tuning overfitted in each study."""
    minilm_report = (docs / MINILM_REPORT).read_text(encoding="utf-8")
    minilm = evidence_overview.read_minilm(minilm_report)
    entries = [*evidence_overview.minilm_selection_entries(minilm),
               *(entry for suite in suites for entry in selection_entries(suite.found, suite.studies, suite.out,
                                                                          suite.label))]
    lines = ["# Evidence: does AD-DROP help? Plain fine-tuning, AD-DROP and R-Drop on 2 CPU cores", "",
             "Generated by `python benchmarks/evidence.py --suite SUITE` for any suite but minilm, from the sweeps of "
             + ", ".join(f"`{suite.name}`" for suite in suites) + " (their small files are kept in "
             "`benchmarks/evidence-runs/SUITE/`) and, for all-MiniLM-L6-v2, from "
             f"[{MINILM_REPORT}]({MINILM_REPORT}), which `python benchmarks/evidence.py` generated from that "
             "study's sweeps; do not edit by hand.", "",
             "Protocol (every suite): a seeded 10 % of each training set is held out and used to select the epoch "
             "and each method's settings on seed "
             f"{SELECTION_SEED}; the GLUE dev file is the test set, scored once per run with the selected "
             f"checkpoint, on seeds {', '.join(map(str, TEST_SEEDS))}. Scores in percent; Δ is the method − FT "
             "with a paired t-test over seeds and a 95 % bootstrap interval of the mean difference. AD-DROP: GA "
             "attribution, pseudo labels. Both regularizers use cross-tuning (odd epochs plain, even epochs "
             "regularized), so they get the same regularized epochs. Batch 16, length-grouped batches.", ""]
    for suite in suites:
        lines += suite_section(suite, data)
    lines += ["## all-MiniLM-L6-v2 (6 layers, 384 hidden, 22 M parameters)", "",
              "Grid: AD-DROP p, q ∈ {0.1, 0.3} × layers ∈ {first, all}; no R-Drop arm. Details, curves and the "
              f"drift analysis: [{MINILM_REPORT}]({MINILM_REPORT}).", "",
              *evidence_overview.first_table(minilm_report), "",
              *evidence_overview.selection_protocol_lines(entries), *overfit_comparison_lines(suites, minilm)]
    for suite in suites:
        lines += [line for study in suite.studies for line in curve_lines(suite.found, study, f"{suite.label}, ")]
    for suite in suites:
        label = f": {suite.label}"
        lines += [*selection_lines(suite.studies, suite.out, label),
                  *budget_lines(suite.found, suite.studies, suite.log, suite.out, data, label),
                  f"## Studies{label}", "", *(f"- {study.title}: {study.notes}." for study in suite.studies), "",
                  f"## Commands{label}", "", "Run from the repository root (what `python benchmarks/evidence.py "
                  f"--suite {suite.name}` runs):", "", "```", *commands(suite.studies, suite.out), "```", ""]
    write_text(docs / OVERVIEW, "\n".join(lines))
    for suite in suites:
        draw(suite.found, suite.studies, docs / f"results-{suite.name}.png")


ARM_COLOURS = {"ft": "tab:blue", "addrop": "tab:red", "rdrop": "tab:green"}


def draw(found: dict[str, dict], all_studies: list[Study], path: Path) -> None:
    """Per study, each test seed's score under every arm, joined by a grey line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [study for study in all_studies if study.name in found]
    if not shown:
        return
    figure, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 3.2), dpi=100, squeeze=False)
    for axis, study in zip(axes[0], shown, strict=True):
        arms = [arm for arm in study.arms if arm in found[study.name]]
        scores = [found[study.name][arm] for arm in arms]
        for per_seed in zip(*scores, strict=True):
            axis.plot(range(len(arms)), per_seed, color="0.7", linewidth=0.8, zorder=1)
        for x, (arm, values) in enumerate(zip(arms, scores, strict=True)):
            axis.scatter([x] * len(values), values, color=ARM_COLOURS[arm], s=14, zorder=2)
        axis.set_xticks(range(len(arms)), [ARM_NAMES[arm] for arm in arms], fontsize=7)
        axis.set_xlim(-0.4, len(arms) - 0.6)
        axis.set_title(study.title, fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0][0].set_ylabel("test score (%)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _trial_costs(study: Study, out: Path) -> dict[str, float]:
    """Seconds per finished trial of each arm in the study (a sweep's trials of one method cost alike)."""
    rows = [row for kind in ("selection", "test") for row in read_results(out / study.name / kind)]
    return {arm: statistics.fmean(max(r["seconds"], r.get("train_seconds", 0)) for r in rows if arm_of(r) == arm)
            for arm in study.arms if any(arm_of(r) == arm for r in rows)}


def status_lines(all_studies: list[Study], out: Path) -> list[str]:
    """What is done per study and sweep, and the time left at the measured cost of each method's finished trials
    in that study; an arm not yet timed there costs FT's time there times its ratio to FT where both were timed.
    The test sweep's count is known before it starts."""
    costs = {study.name: _trial_costs(study, out) for study in all_studies}
    ratios = {arm: statistics.fmean(cost[arm] / cost["ft"] for cost in costs.values() if arm in cost and "ft" in cost)
              for arm in ("addrop", "rdrop") if any(arm in cost and "ft" in cost for cost in costs.values())}
    lines, left_total, unknown = [], 0.0, []
    for study in all_studies:
        cost = dict(costs[study.name])
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
        lines.append("  per trial: " + ", ".join(f"{arm} {seconds / 60:.1f} min" + (" (from its ratio to FT in "
                                                  "another study)" if arm in guessed else "")
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
