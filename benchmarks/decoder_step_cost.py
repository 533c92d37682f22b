"""Relative cost of an AD-DROP step on a decoder-only classifier, full fine-tuning and LoRA (peft).

A Qwen2-like random model (hidden 256, 4 layers, 8 query heads over 2 KV heads, vocabulary 32,000), random
token ids, batch 8 of 128 tokens. Plain and AD-DROP steps (GA on the first layer and on all layers) are
interleaved on the same batches, as in step_cost.py; a step is forward, backward and a fused AdamW update over
the trainable parameters. LoRA: rank 16 on q, k, v and o projections; the classification head trains in full.

    python benchmarks/decoder_step_cost.py
    python benchmarks/decoder_step_cost.py --steps 20 --json decoder_step_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForSequenceClassification

from addrop_cli import ADDrop, ADDropConfig
from addrop_cli.recipe import LoraConfig
from addrop_cli.training.lora import apply_lora

VARIANTS = {"ga_first": "first", "ga_all": "all"}


def build_model(lora: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                         num_labels=2, use_cache=False)
    model = Qwen2ForSequenceClassification(config).train()
    if lora:
        model = apply_lora(model, LoraConfig(r=16, alpha=32, dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
                           "classification")
    return model


def time_setting(lora: bool, batches: list[dict], warmup: int) -> dict[str, list[float]]:
    model = build_model(lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, fused=True)
    addrop = {name: ADDrop(model, ADDropConfig(p=0.3, q=0.3, layers=layers)) for name, layers in VARIANTS.items()}
    names = ["plain", *VARIANTS]
    times: dict[str, list[float]] = {name: [] for name in names}
    for index, batch in enumerate(batches):
        for name in names[index % len(names):] + names[: index % len(names)]:  # rotate who goes first
            start = time.perf_counter()
            loss = model(**batch).loss if name == "plain" else addrop[name].loss(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed batches per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1, 32000, (args.batch_size, args.length), generator=generator),
                "attention_mask": torch.ones(args.batch_size, args.length, dtype=torch.long),
                "labels": torch.randint(0, 2, (args.batch_size,), generator=generator)}
               for _ in range(args.steps + args.warmup)]
    cpu = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"Qwen2-like random model (hidden 256, 4 layers, GQA 8/2), batch {args.batch_size} x {args.length}, {cpu}")
    results = {}
    for setting, lora in (("full", False), ("lora", True)):
        times = time_setting(lora, batches, args.warmup)
        plain = statistics.median(times["plain"])
        results[setting] = {"plain_step_s": plain,
                            "ratios": {name: statistics.median(times[name]) / plain for name in VARIANTS},
                            "times_s": times}
        ratios = ", ".join(f"{name} {ratio:.2f}x" for name, ratio in results[setting]["ratios"].items())
        print(f"{setting:<5} plain step {plain:.3f} s | {ratios}")
    if args.json:
        args.json.write_text(json.dumps({"device": cpu, "steps": args.steps, **results}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
