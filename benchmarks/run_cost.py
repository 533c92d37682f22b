"""End-to-end cost of a cross-tuned AD-DROP run against plain fine-tuning with the same epochs.

Runs ``addrop train`` twice on MRPC with MiniLM-L6 (cross-tuned GA on all layers, then ``--no-addrop``), each in
its own process, and reports the wall-time ratio and the per-epoch training seconds (the plain epoch time is
the "MRPC plain epoch on 2 CPU cores" figure).

    python benchmarks/run_cost.py --epochs 2 --json run_cost.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from addrop_cli.training.run_dir import read_history

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "MRPC"


def train(out: Path, args, *extra: str) -> dict:
    command = [sys.executable, "-m", "addrop_cli", "train", "--task", "mrpc", "--model", "minilm",
               "--train-file", str(args.data / "train.tsv"), "--validation-file", str(args.data / "dev.tsv"),
               "--epochs", str(args.epochs), "--max-length", str(args.max_length), "--lr", "2e-5",
               "--layers", "all", "--output-dir", str(out), "--set", "train.patience=null", *extra]
    if args.max_train_samples:
        command += ["--max-train-samples", str(args.max_train_samples)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    history = read_history(out)
    return {"seconds": seconds, "epochs": [{k: h[k] for k in ("epoch", "phase", "seconds", "eval")} for h in history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED, help="folder with MRPC train.tsv and dev.tsv")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cross = train(Path(tmp) / "cross", args)
        plain = train(Path(tmp) / "plain", args, "--no-addrop")
    ratio = cross["seconds"] / plain["seconds"]
    for name, run in (("cross-tuned AD-DROP", cross), ("plain (--no-addrop)", plain)):
        epochs = ", ".join(f"{e['phase']} {e['seconds']:.1f}s" for e in run["epochs"])
        print(f"{name:<22} {run['seconds']:7.1f} s   epochs: {epochs}")
    print(f"ratio cross-tuned / plain: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"cross_tuned": cross, "plain": plain, "ratio": ratio, **vars(args)},
                                        indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
