"""Wall time of plain fine-tuning through ``addrop train --no-addrop`` against HF ``Trainer.train()``.

Same model (MiniLM-L6), same MRPC pairs, batch size, max length, epochs, optimizer settings and per-epoch
evaluation with best-checkpoint saving. Each side runs in its own subprocess, one after the other. The addrop
figure times the whole ``train()`` call (reading and tokenizing the data, loading the model, training,
evaluating, saving); the Trainer figure times ``trainer.train()`` alone (data and model prepared before the clock
starts), so the comparison is conservative for addrop. Trainer runs twice: with its default random sampler and
with ``train_sampling_strategy="group_by_length"`` (addrop groups by length by default).

    python benchmarks/vs_trainer.py --max-train-samples 1000 --epochs 1 --json vs_trainer.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "MRPC"

ADDROP_RUN = """
import json, sys, time
from addrop_cli.cli.common import quiet_libraries
from addrop_cli.recipe import resolve_recipe
from addrop_cli.training.loop import train
quiet_libraries()
args = json.loads(sys.argv[1])
recipe = resolve_recipe(task="mrpc", flags={{
    "model": "minilm",
    "data": {{"train_file": args["train"], "validation_file": args["dev"], "max_length": args["max_length"],
              "max_train_samples": args["max_train_samples"]}},
    "train": {{"output_dir": args["out"], "epochs": args["epochs"], "lr": 2e-5, "batch_size": args["batch_size"],
               "eval_batch_size": args["batch_size"], "patience": None, "seed": 42}},
    "addrop": {{"enabled": False}},
}})
start = time.perf_counter()
result = train(recipe, overwrite=True)
print(json.dumps({{"seconds": time.perf_counter() - start, "eval": result.best_eval,
                  "epoch_seconds": [h["seconds"] for h in result.history]}}))
"""

TRAINER_RUN = """
import json, sys, time
import numpy as np, transformers
from datasets import Dataset
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)
from addrop_cli.tasks.glue_data import read_examples
from addrop_cli.tasks.splits import select_samples
from addrop_cli.tasks.models import resolve_model
from addrop_cli.tasks.registry import get_task
transformers.logging.set_verbosity_error()
args = json.loads(sys.argv[1])
task = get_task("mrpc")
path = resolve_model("minilm")
tokenizer = AutoTokenizer.from_pretrained(path)
def dataset(file, limit):
    examples = select_samples(read_examples(file, task), limit)
    encoded = tokenizer([e.text_a for e in examples], [e.text_b for e in examples], truncation=True,
                        max_length=args["max_length"])
    return Dataset.from_dict({{**encoded, "labels": [e.label for e in examples]}})
train_set, dev_set = dataset(args["train"], args["max_train_samples"]), dataset(args["dev"], None)
transformers.set_seed(42)
model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
training_args = TrainingArguments(
    output_dir=args["out"], num_train_epochs=args["epochs"], learning_rate=2e-5, weight_decay=0.01,
    adam_epsilon=1e-6, per_device_train_batch_size=args["batch_size"], per_device_eval_batch_size=args["batch_size"],
    eval_strategy="epoch", save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True,
    metric_for_best_model="accuracy", report_to="none", disable_tqdm=True, seed=42, use_cpu=True,
    train_sampling_strategy=args["sampling"], logging_strategy="no",
)
accuracy = lambda p: {{"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}}
trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=dev_set,
                  data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
start = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "eval": {{"accuracy": trainer.evaluate()["eval_accuracy"]}}}}))
"""


def run(code: str, settings: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code, json.dumps(settings)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED, help="folder with MRPC train.tsv and dev.tsv")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.data / "train.tsv").is_file():
        raise SystemExit(f"MRPC files not found in {args.data} (pass --data)")

    with tempfile.TemporaryDirectory() as tmp:
        settings = {"train": str(args.data / "train.tsv"), "dev": str(args.data / "dev.tsv"),
                    "max_train_samples": args.max_train_samples, "epochs": args.epochs,
                    "batch_size": args.batch_size, "max_length": args.max_length}
        addrop = run(ADDROP_RUN.format(), {**settings, "out": f"{tmp}/addrop"})
        trainer = run(TRAINER_RUN.format(), {**settings, "out": f"{tmp}/trainer", "sampling": "random"})
        grouped = run(TRAINER_RUN.format(), {**settings, "out": f"{tmp}/grouped", "sampling": "group_by_length"})

    rows = [("addrop train --no-addrop", addrop), ("Trainer (random sampler)", trainer),
            ("Trainer (group_by_length)", grouped)]
    print(f"MiniLM-L6, MRPC {args.max_train_samples or 'all'} pairs, batch {args.batch_size}, "
          f"max length {args.max_length}, {args.epochs} epoch(s)")
    for name, row in rows:
        print(f"{name:<28} {row['seconds']:8.1f} s   dev accuracy {row['eval']['accuracy']:.4f}")
    ratio, ratio_grouped = addrop["seconds"] / trainer["seconds"], addrop["seconds"] / grouped["seconds"]
    print(f"ratio addrop / Trainer: {ratio:.2f} (random sampler), {ratio_grouped:.2f} (group_by_length)")
    if args.json:
        args.json.write_text(json.dumps({"addrop": addrop, "trainer": trainer, "trainer_grouped": grouped,
                                         "ratio": ratio, "ratio_grouped": ratio_grouped, **vars(args)},
                                        indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
