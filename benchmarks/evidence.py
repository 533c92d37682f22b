"""Does AD-DROP beat plain fine-tuning on real data? A five-seed comparison with all-MiniLM-L6-v2 on CPU.

Protocol (honest selection): every run holds out a seeded 10 % of its training set as the selection set
(``data.holdout_fraction=0.1``) for the best epoch and for p, q and layers; the GLUE dev file is the test set,
scored once with the selected checkpoint. For each study:

1. selection: ``addrop sweep`` over p x q x layers (8 settings) plus plain fine-tuning, on one seed
   (SELECTION_SEED), scored on the held-out set;
2. test: the best setting and plain fine-tuning on five other seeds (TEST_SEEDS), scored on the dev file.

Everything runs through ``addrop sweep``, so the study resumes where it stopped (run this script again) and
can be spread over several sittings. At the end it writes ``docs/results.md`` and ``docs/results.png``.

    python benchmarks/evidence.py                      # the whole study (about six hours on 2 CPU cores)
    python benchmarks/evidence.py --only mrpc          # one study
    python benchmarks/evidence.py --report-only        # rewrite docs/ from what has finished
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from addrop_cli.sweep import read_results
from addrop_cli.training import read_history

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SELECTION_SEED, TEST_SEEDS = 1, (2, 3, 4, 5, 6)
SELECTION_GRID = ["--p", "0.1,0.3", "--q", "0.1,0.3", "--grid", "layers=first,all"]
COMMON = ["--model", "minilm", "--batch-size", "16", "--set", "data.holdout_fraction=0.1",
          "--set", "data.group_by_length=true", "--set", "train.patience=null", "--set", "train.save_total_limit=1"]


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

    def base(self, data: Path) -> list[str]:
        return ["--recipe", self.recipe, "--train-file", str(data / self.train_file),
                "--test-file", str(data / self.test_file), *COMMON, *self.options]


def studies() -> list[Study]:
    """In running order: the cheap few-shot studies first, the overfitting regime last (it reuses MRPC's choice)."""

    def k_shot(k: int, epochs: int, paper: tuple[float, float]) -> Study:
        return Study(f"sst2-{k}shot", f"SST-2 {k}-shot", "sst2", "SST-2/train.tsv", "SST-2/dev.tsv", "accuracy",
                     ["--max-length", "64", "--epochs", str(epochs), "--lr", "1e-4", "--set", f"data.k_shot={k}",
                      "--set", "data.max_eval_samples=500", "--set", "train.warmup_ratio=0.1"],
                     paper, "Table 5 (RoBERTa-base)",
                     f"{k} sentences per class drawn with the seed from the 90 % left after the hold-out, "
                     f"{epochs} epochs at lr 1e-4; the selection set is the first 500 held-out sentences")

    return [
        k_shot(16, 20, (74.5, 80.2)),
        k_shot(64, 15, (89.1, 91.6)),
        k_shot(256, 10, (91.4, 92.6)),
        Study("cola", "CoLA", "cola", "CoLA/train.tsv", "CoLA/dev.tsv", "mcc",
              ["--max-length", "64", "--epochs", "3", "--lr", "2e-5"], (61.8, 63.4), "Table 3 (BERT-base)",
              "the 7,696 sentences left after the hold-out, 3 epochs at lr 2e-5"),
        Study("mrpc", "MRPC", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv", "accuracy",
              ["--max-length", "128", "--epochs", "3", "--lr", "2e-5"], (85.2, 87.4), "Table 3 (BERT-base)",
              "the 3,302 pairs left after the hold-out, 3 epochs at lr 2e-5"),
        Study("mrpc-1000-overfit", "MRPC, 1,000 pairs, 10 epochs", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv",
              "accuracy", ["--max-length", "128", "--epochs", "10", "--lr", "5e-5", "--max-train-samples", "1000"],
              None, "", "a regime where plain fine-tuning overfits: 10 epochs on the first 1,000 training pairs "
              "left after the hold-out, lr 5e-5; to fit the time budget it takes the p, q and layers selected "
              "for MRPC rather than running its own selection sweep", selection_from="mrpc"),
    ]


# ------------------------------------------------------------------------------------------- running


def sweep(out: Path, arguments: list[str], log: list[dict]) -> float:
    """Run (or resume) one ``addrop sweep``; returns its wall seconds in this sitting."""
    command = ["addrop", "sweep", *arguments, "--output-dir", str(out)]
    print(f"\n$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "addrop_cli", *command[1:]], check=True)
    seconds = time.perf_counter() - started
    log.append({"command": shlex.join(command), "seconds": round(seconds, 1)})
    return seconds


def best_setting(selection: Path) -> list[str]:
    """The p, q and layers of the selection sweep's best AD-DROP setting, as sweep options."""
    rows = read_results(selection)
    groups: dict[str, list[float]] = {}
    for row in rows:
        if not row["baseline"] and row["status"] == "ok":
            groups.setdefault(json.dumps(row["settings"], sort_keys=True), []).append(row["eval"][row["metric"]])
    settings = json.loads(max(groups, key=lambda key: statistics.fmean(groups[key])))
    return ["--p", str(settings["addrop.p"]), "--q", str(settings["addrop.q"]),
            "--grid", f"layers={settings['addrop.layers']}"]


def run_study(study: Study, out: Path, data: Path, log: list[dict]) -> None:
    selection, test = out / (study.selection_from or study.name) / "selection", out / study.name / "test"
    if study.selection_from is None:
        sweep(selection, [*study.base(data), *SELECTION_GRID, "--seeds", str(SELECTION_SEED), "--baseline"], log)
    elif not read_results(selection):
        raise SystemExit(f"{study.name} reuses the {study.selection_from} selection; run that study first")
    sweep(test, [*study.base(data), *best_setting(selection), "--seeds", ",".join(map(str, TEST_SEEDS)),
                 "--baseline"], log)


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
    rows = read_results(out / study.name / "test")
    rows = [row for row in rows if row["status"] == "ok" and row.get("test")]
    by_seed: dict[str, dict[int, float]] = {"ft": {}, "addrop": {}}
    for row in rows:
        by_seed["ft" if row["baseline"] else "addrop"][row["seed"]] = 100 * row["test"][study.metric]
    seeds = sorted(set(by_seed["ft"]) & set(by_seed["addrop"]))
    if not seeds:
        return None
    plain, addrop = [by_seed["ft"][s] for s in seeds], [by_seed["addrop"][s] for s in seeds]
    chosen = next(row["settings"] for row in rows if not row["baseline"])
    selection_rows = read_results(out / study.name / "selection")
    seconds = sum(row["seconds"] for row in rows + selection_rows)
    drift = prediction_drift(out / study.name / "test", rows)
    return {"seeds": seeds, "ft": plain, "addrop": addrop, "chosen": chosen, "seconds": seconds,
            "complete": len(seeds) == len(TEST_SEEDS), "drift": drift,
            **(paired_statistics(plain, addrop) if len(seeds) > 1 else {})}


def prediction_drift(test: Path, rows: list[dict]) -> dict[str, float]:
    """Mean share of the most predicted class on the selection set after plain and after AD-DROP epochs."""
    shares: dict[str, list[float]] = {"ft": [], "addrop": []}
    for row in rows:
        if row["baseline"]:
            continue
        for epoch in read_history(test / "trials" / row["trial"]):
            counts = epoch.get("eval_predictions") or {}
            if counts:
                shares[epoch["phase"]].append(max(counts.values()) / sum(counts.values()))
    return {phase: statistics.fmean(values) for phase, values in shares.items() if values}


def _mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else \
        f"{values[0]:.1f}"


def write_report(found: dict[str, dict], all_studies: list[Study], docs: Path, log: list[dict]) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    lines = ["# Evidence: AD-DROP vs plain fine-tuning with all-MiniLM-L6-v2 (CPU)", "",
             "Generated by `python benchmarks/evidence.py`; do not edit by hand.", "",
             "Protocol: a seeded 10 % of each training set is held out and used to select the epoch and AD-DROP's "
             "p, q and layers (grid p, q ∈ {0.1, 0.3} × layers ∈ {first, all}, on seed "
             f"{SELECTION_SEED}); the GLUE dev file is the test set, scored once per run with the selected "
             f"checkpoint, on seeds {', '.join(map(str, TEST_SEEDS))}. Scores in percent (MCC × 100 for CoLA); "
             "Δ is AD-DROP − FT, with a paired t-test over seeds and a 95 % bootstrap interval of the mean "
             "difference. Cross-tuning (plain and AD-DROP epochs alternate), GA attribution, pseudo labels.", "",
             "| study | metric | FT | AD-DROP | Δ [95 % CI] | paired p | chosen p, q, layers | seeds | hours | "
             "paper FT → AD-DROP |", "|---" * 10 + "|"]
    for study in all_studies:
        result = found.get(study.name)
        paper = f"{study.paper[0]} → {study.paper[1]} ({study.paper_source})" if study.paper else "–"
        if result is None:
            lines.append(f"| {study.title} | {study.metric} | not run yet | | | | | | | {paper} |")
            continue
        chosen = result["chosen"]
        setting = f"{chosen['addrop.p']}, {chosen['addrop.q']}, {chosen['addrop.layers']}"
        if "difference" in result:
            delta = f"{result['difference']:+.1f} [{result['ci_low']:+.1f}, {result['ci_high']:+.1f}]"
            p_value = "–" if math.isnan(result["p_value"]) else f"{result['p_value']:.2f}"
        else:
            delta, p_value = "–", "–"
        seeds = f"{len(result['seeds'])}" + ("" if result["complete"] else " (incomplete)")
        lines.append(f"| {study.title} | {study.metric} | {_mean_std(result['ft'])} | {_mean_std(result['addrop'])} "
                     f"| {delta} | {p_value} | {setting} | {seeds} | {result['seconds'] / 3600:.2f} | {paper} |")
    total = sum(result["seconds"] for result in found.values())
    lines += ["", f"Total training wall time of the finished trials: {total / 3600:.1f} h on 2 CPU cores.", "",
              "![per-seed scores](results.png)", "", "## Prediction drift", "",
              "Share of the most-predicted class on the selection set, averaged over the AD-DROP runs' epochs, "
              "after plain (ft) and after AD-DROP epochs:", "", "| study | after ft epochs | after AD-DROP epochs |",
              "|---|---|---|"]
    for study in all_studies:
        drift = (found.get(study.name) or {}).get("drift") or {}
        if drift:
            lines.append(f"| {study.title} | {drift.get('ft', math.nan):.2f} | {drift.get('addrop', math.nan):.2f} |")
    lines += ["", "## Studies", ""]
    for study in all_studies:
        if study.notes:
            lines.append(f"- {study.title}: {study.notes}.")
    lines += ["", "## Commands", "", "```"] + [f"{entry['command']}" for entry in log] + ["```", ""]
    (docs / "results.md").write_text("\n".join(lines), encoding="utf-8")
    draw(found, all_studies, docs / "results.png")


def draw(found: dict[str, dict], all_studies: list[Study], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [study for study in all_studies if study.name in found]
    if not shown:
        return
    figure, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 3.2), dpi=100, squeeze=False)
    for axis, study in zip(axes[0], shown, strict=True):
        result = found[study.name]
        for plain, addrop in zip(result["ft"], result["addrop"], strict=True):
            axis.plot([0, 1], [plain, addrop], color="0.7", linewidth=0.8, zorder=1)
        axis.scatter([0] * len(result["ft"]), result["ft"], color="tab:blue", s=14, zorder=2)
        axis.scatter([1] * len(result["addrop"]), result["addrop"], color="tab:red", s=14, zorder=2)
        axis.set_xticks([0, 1], ["FT", "AD-DROP"])
        axis.set_xlim(-0.4, 1.4)
        axis.set_title(study.title, fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0][0].set_ylabel("test score (%)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED, help="the GLUE folder (default ../shared/data)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "evidence", help="where the sweeps go")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where results.md and results.png go")
    parser.add_argument("--only", action="append", help="run only this study (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report")
    args = parser.parse_args()
    chosen = [study for study in studies() if not args.only or study.name in args.only]
    log_path = args.out / "commands.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else []
    if not args.report_only:
        for index, study in enumerate(chosen, 1):
            print(f"\n=== study {index}/{len(chosen)}: {study.title} ===", flush=True)
            run_study(study, args.out, args.data, log)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(json.dumps(log, indent=1))
    found = {study.name: result for study in studies() if (result := collect(study, args.out)) is not None}
    unique = list({entry["command"]: entry for entry in log}.values())
    write_report(found, studies(), args.docs, unique)
    print(f"\nwrote {args.docs / 'results.md'} and {args.docs / 'results.png'}")


if __name__ == "__main__":
    main()
