"""Does a bf16 attribution pass change what AD-DROP does? One MRPC run with ``attribution_precision: same`` and
one with ``bf16``, same seed and everything else, side by side per epoch.

The setting is the evidence study's choice for MRPC (``benchmarks/evidence.py``: all-MiniLM-L6-v2, p 0.3, q 0.3,
first layer, 3 epochs at lr 5e-5, batch 16, a seeded 10 % of train held out for selection, the dev file scored
once as the test set). Both runs are ``addrop train`` commands, so an interrupted one resumes when this script
runs again.

    python benchmarks/attribution_precision_run.py --seed 2       # about 25 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from addrop_cli.training.run_dir import read_history, read_metrics

ROOT = Path(__file__).resolve().parents[1]
MRPC = ROOT.parent / "shared" / "data" / "MRPC"
SETTING = ["--recipe", "mrpc", "--model", "minilm", "--batch-size", "16", "--max-length", "128", "--epochs", "3",
           "--lr", "5e-5", "--p", "0.3", "--q", "0.3", "--layers", "first", "--set", "data.holdout_fraction=0.1",
           "--set", "data.group_by_length=true", "--set", "train.patience=null"]


def run(precision: str, seed: int, out: Path) -> float:
    command = [sys.executable, "-m", "addrop_cli", "train", *SETTING, "--train-file", str(MRPC / "train.tsv"),
               "--test-file", str(MRPC / "dev.tsv"), "--seed", str(seed), "--attribution-precision", precision,
               "--output-dir", str(out)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def majority_share(counts: dict[str, int]) -> float:
    return max(counts.values()) / max(sum(counts.values()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "attribution-precision")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not MRPC.is_dir():
        sys.exit(f"needs the MRPC files in {MRPC}")
    results = {}
    for precision in ("same", "bf16"):
        out = args.output_dir / f"{precision}-seed{args.seed}"
        seconds = run(precision, args.seed, out)
        history = read_history(out)
        results[precision] = {
            "seconds_this_call": round(seconds, 1), "test": read_metrics(out).get("test"),
            "epochs": [{"epoch": h["epoch"], "phase": h["phase"], "heldout_accuracy": h["eval"]["accuracy"],
                        "majority_share": round(majority_share(h["eval_predictions"]), 4),
                        "train_seconds": round(h["seconds"], 1)} for h in history]}
    print("| epoch | phase | held-out acc. (same) | held-out acc. (bf16) | most-predicted share (same) | (bf16) |")
    print("|---|---|---|---|---|---|")
    for same, fast in zip(results["same"]["epochs"], results["bf16"]["epochs"], strict=True):
        print(f"| {same['epoch']} | {same['phase']} | {same['heldout_accuracy']:.4f} | {fast['heldout_accuracy']:.4f} "
              f"| {same['majority_share']:.3f} | {fast['majority_share']:.3f} |")
    print(f"test (dev file, best epoch): same {results['same']['test']}, bf16 {results['bf16']['test']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
