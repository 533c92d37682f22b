"""The regime where plain fine-tuning overfits: before a study's sweeps, plain fine-tuning on the selection seed with
each schedule tried, evaluated after every epoch (a "regime probe", one ``addrop train`` run). A schedule reaches the
regime when the held-out loss is at its lowest in the first half of the epochs and ends at least ``OVERFIT_RATIO``
times that lowest value, and the held-out score peaks before the last epoch: the model keeps fitting its training
set well past the point where held-out data stops gaining, the condition under which a regularizer can show a gain.
The score's condition rules out a curve whose loss rises from overconfidence while its score is still climbing
(MRPC on 500 pairs for 6 epochs at lr 5e-5 did that: loss lowest at epoch 1, score best at epoch 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evidence_record import finished_probe

from addrop_cli.training.run_dir import read_history

OVERFIT_RATIO = 1.15  # held-out loss at the end / its lowest
REGIME_DIR = "regime"


def schedule_label(schedule: tuple[str, ...]) -> str:
    """A folder name for a schedule's options (epochs, learning rate, and whatever else a probe varies, such as the
    training set's size): ``("--epochs", "6", "--lr", "5e-5")`` -> ``epochs6_lr5e-5``; a ``--set train.KEY=V`` pair
    becomes ``KEYV``."""
    parts = []
    for flag, value in zip(schedule[::2], schedule[1::2], strict=True):
        key, _, setting = value.partition("=") if flag == "--set" else (flag.lstrip("-"), "", value)
        parts.append(f"{key.rsplit('.', 1)[-1]}{setting}")
    return "_".join(parts)


def schedule_text(schedule: tuple[str, ...]) -> str:
    """A schedule as the report writes it: "500 training examples, 6 epochs, lr 5e-5, warmup_ratio 0.1"."""
    text = []
    for flag, value in zip(schedule[::2], schedule[1::2], strict=True):
        if flag == "--set":
            text.append(value.replace("train.", "").replace("=", " "))
        elif flag == "--max-train-samples":
            text.append(f"{int(value):,} training examples")
        else:
            text.append({"--epochs": f"{value} epochs", "--lr": f"lr {value}"}.get(flag, f"{flag} {value}"))
    return ", ".join(text)


def probe_arguments(fixed: list[str], schedule: tuple[str, ...], seed: int) -> list[str]:
    """``addrop train``'s arguments for a probe: plain fine-tuning with the schedule, evaluated every epoch."""
    return [*fixed, *schedule, "--seed", str(seed), "--no-addrop"]


@dataclass
class Curve:
    """A finished probe's held-out curve: its schedule and, per epoch, train loss, held-out loss and score (%)."""

    schedule: tuple[str, ...]
    rows: list[dict]

    @property
    def lowest(self) -> dict:
        return min(self.rows, key=lambda row: row["eval_loss"])

    @property
    def best(self) -> dict:
        return max(self.rows, key=lambda row: row["score"])

    @property
    def ratio(self) -> float:
        """Held-out loss at the last epoch over its lowest."""
        return self.rows[-1]["eval_loss"] / self.lowest["eval_loss"]

    @property
    def reached(self) -> bool:
        """Lowest held-out loss in the first half of the epochs, the last at least OVERFIT_RATIO times it, and the
        best held-out score before the last epoch (the first of equal scores counts)."""
        last_epoch = self.rows[-1]["epoch"]
        return (self.lowest["epoch"] <= last_epoch / 2 and self.ratio >= OVERFIT_RATIO
                and self.best["epoch"] < last_epoch)


def read_curve(directory: Path, schedule: tuple[str, ...], metric: str) -> Curve | None:
    """The probe in ``directory``, or None before it has finished."""
    if not finished_probe(directory):
        return None
    rows = [{"epoch": row["epoch"], "train_loss": row["train_loss"], "eval_loss": row["eval_loss"],
             "score": 100 * row["eval"][metric]} for row in read_history(directory) if "eval" in row]
    return Curve(schedule, rows)


def verdict(ratio: float) -> str:
    """Whether a held-out loss that ended at ``ratio`` times its lowest counts as overfitting, with the ratio."""
    return f"{'yes' if ratio >= OVERFIT_RATIO else 'no'}, {ratio:.2f}×"


def regime_table(probes: list[tuple[str, Curve]]) -> list[str]:
    """One row per probe: the study, its schedule, the held-out loss's lowest (epoch) and end, and the score's."""
    lines = ["| study | schedule | held-out loss: lowest (epoch) → last | last / lowest | best held-out score "
             "(epoch) → last | train loss, last | regime reached |", "|---" * 7 + "|"]
    for title, curve in probes:
        lowest, best, last = curve.lowest, curve.best, curve.rows[-1]
        lines.append(f"| {title} | {schedule_text(curve.schedule)} | {lowest['eval_loss']:.3f} ({lowest['epoch']}) → "
                     f"{last['eval_loss']:.3f} | {curve.ratio:.2f}× | {best['score']:.1f} ({best['epoch']}) → "
                     f"{last['score']:.1f} | {last['train_loss']:.3f} | {'yes' if curve.reached else 'no'} |")
    return lines


def curve_table(curve: Curve) -> list[str]:
    """A probe's curve epoch by epoch."""
    lines = ["| epoch | train loss | held-out loss | held-out score |", "|---|---|---|---|"]
    lines += [f"| {row['epoch']} | {row['train_loss']:.3f} | {row['eval_loss']:.3f} | {row['score']:.1f} |"
              for row in curve.rows]
    return lines
