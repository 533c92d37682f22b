"""What an evidence study's finished sweeps say: per arm and test seed the scores, the paired statistics against
plain fine-tuning, the held-out curves epoch by epoch, the hours, and the selection sweep's scores."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from evidence_studies import TEST_SEEDS, Study, arm_of

from addrop_cli.sweep.plan import TRIALS_DIR, read_results
from addrop_cli.training.run_dir import read_history


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
    scored = [("FT" if row["baseline"] else ("R-Drop " if arm_of(row) == "rdrop" else "")
               + setting_text(row["settings"]), 100 * row["eval"][row["metric"]]) for row in rows]
    return sorted(scored, key=lambda item: -item[1])


def best_phases(histories: dict[str, list[dict]], rows: list[dict]) -> list[str]:
    """The phase ("ft" or "addrop") of each AD-DROP run's selected epoch."""
    phases = []
    for row in rows:
        if arm_of(row) == "addrop":
            history = {record["epoch"]: record["phase"] for record in histories[row["trial"]]}
            phases.append(history[row["best_epoch"]])
    return phases


def setting_text(settings: dict) -> str:
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


def loss_growth(result: dict) -> float:
    """Plain fine-tuning's mean held-out loss at the last epoch over its lowest."""
    ft = result["curves"]["ft"]
    return ft[-1]["eval_loss"] / min(row["eval_loss"] for row in ft)
