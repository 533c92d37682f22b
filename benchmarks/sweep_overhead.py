"""Per-trial overhead of the sweep backends: the same small sweep run in this process, as local processes and
as Ray tasks (Ray started by the driver on this machine), timed from outside.

For each backend: the sweep's wall time per trial with its slots kept busy (wall × slots / trials), the mean
``seconds`` a result row reports (the attempt, measured where it ran: process start, model load, training,
evaluation, saving) and the mean ``train_seconds`` (the epochs alone). Overhead per trial = wall × slots /
trials − mean train seconds; of it, the driver's share (scheduling, Ray's start, the summary) = wall × slots /
trials − mean row seconds. Ray starts servers: run it inside a private network namespace,

    unshare --net --pid --fork --mount-proc bash -c \\
        'ip link set lo up && python benchmarks/sweep_overhead.py --trials 4'
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import BertConfig, BertForSequenceClassification

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import SPECIAL_TOKENS, WORDS  # noqa: E402 - the tests' offline vocabulary

BACKENDS = {"in-process": ["--workers", "1"], "local processes": ["--workers", "2"],
            "ray": ["--backend", "ray", "--cpus-per-trial", "1"]}
SLOTS = {"in-process": 1, "local processes": 2, "ray": 2}


def tiny_model(folder: Path) -> Path:
    """A 2-layer random BERT and a word-level tokenizer, saved where the trials can load them."""
    from transformers import BertTokenizerFast

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL_TOKENS + WORDS) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    model_dir = folder / "model"
    BertForSequenceClassification(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def run(backend: str, model: Path, out: Path, trials: int) -> dict[str, float]:
    p_values = ",".join(f"{0.1 * (i + 1):.1f}" for i in range(trials))
    command = [sys.executable, "-m", "addrop_cli", "sweep", "--model", str(model), "--max-train-samples", "48",
               "--max-eval-samples", "24", "--max-length", "24", "--epochs", "1", "--batch-size", "8",
               "--p", p_values, "--q", "0.5", "--output-dir", str(out), *BACKENDS[backend]]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    seconds = statistics.fmean(row["seconds"] for row in rows)
    train = statistics.fmean(row["train_seconds"] for row in rows)
    per_trial = wall * SLOTS[backend] / trials
    return {"wall_s": round(wall, 1), "wall_x_slots_per_trial_s": round(per_trial, 2),
            "row_seconds_mean": round(seconds, 2), "train_seconds_mean": round(train, 2),
            "overhead_per_trial_s": round(per_trial - train, 2), "driver_share_s": round(per_trial - seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = tiny_model(Path(folder))
        results = {name: run(name, model, Path(folder) / name.replace(" ", "-"), args.trials)
                   for name in args.backends.split(",")}
    print(json.dumps({"cpu": cpu_model(), "trials": args.trials, **results}, indent=2))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
