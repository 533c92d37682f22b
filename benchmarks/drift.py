"""Why does an AD-DROP epoch push MiniLM on MRPC toward always answering "paraphrase"?

From one set of starting weights (two plain epochs), one more epoch of each variant is trained with ``addrop
train`` (no cross-tuning, so that epoch drops), and the resulting models are compared on the MRPC dev set:
accuracy, share of "paraphrase" predictions, the classifier bias and the mean logit margin. The same is repeated
from a class-balanced training set (``data.k_shot`` = the minority count). Then, on the starting model, what AD-DROP
selects: the share of candidate keys that are [CLS] / [SEP], and how the masked forward moves the logits of
examples of each class.

    python benchmarks/drift.py    # about an hour on 2 CPU cores; finished runs are reused, so it resumes
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from addrop_cli.training.run_dir import BEST_DIR, METRICS_FILE, read_history

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "MRPC"
MRPC_MINORITY = 1194  # "not paraphrase" pairs in MRPC train: k_shot at this count balances the classes
COMMON = ["--task", "mrpc", "--model", "minilm", "--max-length", "128", "--batch-size", "16", "--seed", "1",
          "--set", "train.save_total_limit=1", "--no-cross-tuning"]
# The starting point: two plain epochs (one at lr 2e-5 leaves MiniLM answering "paraphrase" to nearly every pair).
START = ["--no-addrop", "--epochs", "2", "--lr", "5e-5", "--set", "train.warmup_ratio=0.1"]
# Each variant: one more epoch from those weights.
VARIANT_SCHEDULE = ["--epochs", "1", "--lr", "2e-5", "--set", "train.warmup_ratio=0"]
VARIANTS = {  # name -> options of the second epoch (from the epoch-1 weights)
    "plain": ["--no-addrop"],
    "ga-all-q0.3": ["--layers", "all", "--p", "0.3", "--q", "0.3"],
    "ga-all-q0.1": ["--layers", "all", "--p", "0.3", "--q", "0.1"],
    "ga-first-q0.3": ["--layers", "first", "--p", "0.3", "--q", "0.3"],
    "rd-all-q0.3": ["--layers", "all", "--p", "0.3", "--q", "0.3", "--attribution", "rd"],
    "low-all-q0.3": ["--layers", "all", "--p", "0.3", "--q", "0.3", "--set", "addrop.strategy=low"],
    "gold-all-q0.3": ["--layers", "all", "--p", "0.3", "--q", "0.3", "--labels", "gold"],
    "ga-all-q0.3-unmasked0.5": ["--layers", "all", "--p", "0.3", "--q", "0.3", "--set", "addrop.unmasked_weight=0.5"],
}
BALANCED_VARIANTS = ("plain", "ga-all-q0.3", "ga-all-q0.3-unmasked0.5")


def train(out: Path, *options: str, data: Path) -> dict:
    """One ``addrop train`` run (skipped when finished); returns its last history row."""
    command = [sys.executable, "-m", "addrop_cli", "train", *COMMON, "--train-file", str(data / "train.tsv"),
               "--validation-file", str(data / "dev.tsv"), "--output-dir", str(out), *options]
    if not (out / METRICS_FILE).is_file():
        print("$ " + shlex.join(["addrop", *command[3:]]), flush=True)
        subprocess.run(command, check=True)
    return read_history(out)[-1]


def dev_batches(tokenizer, data: Path, batch_size: int = 32):
    from addrop_cli.tasks.glue_data import encode_examples, make_collator, read_examples
    from addrop_cli.tasks.registry import get_task

    examples = read_examples(str(data / "dev.tsv"), get_task("mrpc"))
    features = encode_examples(examples, tokenizer, 128)
    collate = make_collator(tokenizer)
    return [collate(features[i:i + batch_size]) for i in range(0, len(features), batch_size)]


@torch.no_grad()
def margins(model_dir: Path, data: Path) -> dict:
    """Dev share of "paraphrase" predictions, mean logit margin z1 - z0, and the classifier bias difference."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    logits = torch.cat([model(**batch).logits for batch in dev_batches(tokenizer, data)])
    bias = model.classifier.bias
    return {"paraphrase_share": (logits.argmax(-1) == 1).float().mean().item(),
            "mean_margin": (logits[:, 1] - logits[:, 0]).mean().item(), "bias_margin": (bias[1] - bias[0]).item()}


def selection_statistics(model_dir: Path, data: Path, labels: str = "pseudo") -> dict:
    """What GA (all layers, p = q = 0.3) selects on the dev set with the given model.

    Returns the share of candidate keys that are [CLS] or [SEP] against their share of real keys, and the mean
    change of the margin z1 - z0 caused by the masked forward, for gold class 0 and class 1 examples.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from addrop_cli import ADDrop, ADDropConfig
    from addrop_cli.core.masking import sample_drops
    from addrop_cli.core.routes.base import ForwardState

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    addrop = ADDrop(model, ADDropConfig(p=0.3, q=0.3, layers="all", labels=labels))
    special_ids = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id])
    special_candidates = candidates_total = special_keys = keys_total = 0.0
    shift = {0: [], 1: []}
    for batch in dev_batches(tokenizer, data):
        attribution = addrop.attribute(batch)
        regions = addrop.candidates(batch, attribution)
        special = torch.isin(batch["input_ids"], special_ids)  # (B, K)
        real = batch["attention_mask"].bool()
        for region in regions.values():  # (B, H, Q, K)
            special_candidates += (region & special[:, None, None, :]).sum().item()
            candidates_total += region.sum().item()
            rows = region.shape[1] * real.sum(-1)  # real query rows per example x heads
            special_keys += (rows * (special & real).sum(-1)).sum().item()
            keys_total += (rows * real.sum(-1)).sum().item()
        drops = {call: sample_drops(region, 0.3) for call, region in regions.items()}
        with torch.no_grad():
            masked = model(**batch, addrop_state=ForwardState(drops=drops)).logits
        change = (masked[:, 1] - masked[:, 0]) - (attribution.logits[:, 1] - attribution.logits[:, 0])
        for label in (0, 1):
            shift[label] += change[batch["labels"] == label].tolist()
    return {"special_candidate_share": special_candidates / candidates_total,
            "special_key_share": special_keys / keys_total,
            "margin_shift_class0": sum(shift[0]) / len(shift[0]), "margin_shift_class1": sum(shift[1]) / len(shift[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "drift")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "drift.json")
    args = parser.parse_args()
    report: dict = {"variants": {}, "balanced": {}}
    for regime, extra, names in (("variants", [], list(VARIANTS)),
                                 ("balanced", ["--set", f"data.k_shot={MRPC_MINORITY}"], BALANCED_VARIANTS)):
        start = args.out / regime / "start"
        first = train(start, *START, *extra, data=args.data)
        report[regime]["start"] = {"accuracy": first["eval"]["accuracy"], **margins(start / BEST_DIR, args.data)}
        for name in names:
            row = train(args.out / regime / name, "--model", str(start / BEST_DIR), *VARIANT_SCHEDULE,
                        *VARIANTS[name], *extra, data=args.data)
            report[regime][name] = {"accuracy": row["eval"]["accuracy"], "train_loss": row["train_loss"],
                                    **margins(args.out / regime / name / BEST_DIR, args.data)}
            print(name, report[regime][name], flush=True)
    start = args.out / "variants" / "start" / BEST_DIR
    report["selection"] = {labels: selection_statistics(start, args.data, labels) for labels in ("pseudo", "gold")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    args.json.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


def markdown(report: dict) -> str:
    """The measurements as tables (the interpretation lives in docs/results.md)."""
    lines = ["# Drift measurements (generated by `python benchmarks/drift.py`)", "",
             "MRPC dev (408 pairs, 279 paraphrases = 68.4 %). Start: two plain epochs (lr 5e-5); each row: one more "
             "epoch from the start weights (lr 2e-5, no warmup; AD-DROP in that epoch for the AD-DROP rows).", ""]
    for regime, title in (("variants", "Full training set (67.4 % paraphrases)"),
                          ("balanced", "Class-balanced training set (1,194 pairs per class)")):
        lines += [f"## {title}", "", "| run | dev accuracy | paraphrase share | mean margin z1 − z0 | bias b1 − b0 | "
                  "train loss |", "|---|---|---|---|---|---|"]
        for name, row in report[regime].items():
            loss = f"{row['train_loss']:.4f}" if "train_loss" in row else "–"
            lines.append(f"| {name} | {row['accuracy']:.4f} | {row['paraphrase_share']:.3f} | "
                         f"{row['mean_margin']:+.3f} | {row['bias_margin']:+.5f} | {loss} |")
        lines.append("")
    lines += ["## What GA (all layers, p = q = 0.3) selects on the start model", "",
              "| labels | [CLS]/[SEP] share of candidates | their share of real keys | masked-forward margin shift, "
              "class 0 | class 1 |", "|---|---|---|---|---|"]
    for labels, row in report["selection"].items():
        lines.append(f"| {labels} | {row['special_candidate_share']:.3f} | {row['special_key_share']:.3f} | "
                     f"{row['margin_shift_class0']:+.3f} | {row['margin_shift_class1']:+.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
