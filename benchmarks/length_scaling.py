"""Step time and peak memory of AD-DROP against a plain step as sequences grow (256 to 4,096 tokens).

Models: ``llama-random``, a random Llama-like classifier (hidden 256, 6 layers, 8 query heads over 2 KV heads,
intermediate 1,024, vocabulary 32,000), and ``smollm2-135m``, SmolLM2-135M-Instruct with a classification head
(skipped unless ``addrop assemble smollm2-135m`` has run). Batch 1 of random token ids, full fine-tuning, a step
being what the training loop does: forward, backward, fused AdamW update. Variants: ``plain``, ``ga_first`` and
``ga_all`` (AD-DROP, GA, p = q = 0.3, the first or every layer).

Each (model, length, variant) runs in a fresh process: one plain step (the optimizer state then exists),
``--warmup`` steps of the variant, then ``--steps`` pairs of a plain and a variant step, alternating which goes
first; the time ratio is of the two medians, so that drift in the machine's speed (±15 % here, over seconds) hits
both alike. Memory is the peak RSS above the process after its first plain step (CUDA: ``max_memory_allocated``
above the allocated memory then), so a variant's is at least the plain step's. Run it alone.

    python benchmarks/length_scaling.py                              # llama-random, 256 to 4,096 tokens
    python benchmarks/length_scaling.py --models llama-random,smollm2-135m --lengths 256,1024,2048
    python benchmarks/length_scaling.py --json length_scaling.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("plain", "ga_first", "ga_all")
MODELS = ("llama-random", "smollm2-135m")


def build_model(name: str) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    if name == "llama-random":
        config = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
                             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=8192,
                             pad_token_id=0, num_labels=2, use_cache=False)
        return LlamaForSequenceClassification(config).train()
    from addrop_cli.tasks.models import resolve_model

    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(name), num_labels=2)
    model.config.pad_token_id, model.config.use_cache = 0, False
    return model.train()


def measure(model_name: str, length: int, variant: str, steps: int, warmup: int, device: str) -> dict:
    """One variant's and the plain step's median times, and the peak memory above the post-plain-step state (this
    process)."""
    from addrop_cli import ADDrop, ADDropConfig

    model = build_model(model_name).to(device)
    vocabulary = model.config.vocab_size
    generator = torch.Generator().manual_seed(length)
    ids = torch.randint(1, vocabulary, (1, length), generator=generator)
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
             "labels": torch.tensor([1], device=device)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    addrop = None if variant == "plain" else ADDrop(model, ADDropConfig(p=0.3, q=0.3, layers=variant[3:]))

    def step(plain: bool) -> None:
        loss = model(**batch).loss if plain or addrop is None else addrop.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step(plain=True)
    if device.startswith("cuda"):
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
        base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(warmup):
        step(plain=False)
    times: dict[bool, list[float]] = {True: [], False: []}
    for index in range(steps):
        for plain in (True, False) if index % 2 else (False, True):
            start = time.perf_counter()
            step(plain)
            times[plain].append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, base_peak) - base
    return {"seconds": statistics.median(times[False]), "plain_seconds": statistics.median(times[True]),
            "peak_bytes": peak}


def in_fresh_process(args, model_name: str, length: int, variant: str) -> dict:
    command = [sys.executable, __file__, "--one", f"{model_name}:{length}:{variant}", "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def table(results: list[dict]) -> str:
    """Markdown: plain time and memory, then each AD-DROP variant's ratios to them (time: to the plain steps of
    its own process)."""
    lines = ["| model | tokens | plain step | plain peak | GA first: time, memory | GA all: time, memory |",
             "|---|---|---|---|---|---|"]
    for row in results:
        plain = row["plain"]
        cells = [f"{row[v]['seconds'] / row[v]['plain_seconds']:.2f}×, "
                 f"{row[v]['peak_bytes'] / plain['peak_bytes']:.2f}×" for v in VARIANTS[1:]]
        lines.append(f"| {row['model']} | {row['length']:,} | {plain['seconds']:.2f} s | "
                     f"{plain['peak_bytes'] / 2**20:,.0f} MB | {' | '.join(cells)} |")
    return "\n".join(lines)


def assembled(model_name: str) -> bool:
    if model_name == "llama-random":
        return True
    from addrop_cli.tasks.models import resolve_model

    return (Path(resolve_model(model_name)) / "config.json").exists()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-random", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--lengths", default="256,512,1024,2048,4096")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # model:length:variant, in the fresh process
    args = parser.parse_args()
    if args.one:
        model_name, length, variant = args.one.split(":")
        print(json.dumps(measure(model_name, int(length), variant, args.steps, args.warmup, args.device)))
        return
    results = []
    for model_name in args.models.split(","):
        if not assembled(model_name):
            print(f"skipping {model_name}: run `addrop assemble {model_name}` first", file=sys.stderr)
            continue
        for length in map(int, args.lengths.split(",")):
            row = {"model": model_name, "length": length}
            for variant in VARIANTS:
                row[variant] = in_fresh_process(args, model_name, length, variant)
                print(f"{model_name} {length} {variant}: {row[variant]['seconds']:.3f} s (plain "
                      f"{row[variant]['plain_seconds']:.3f} s), {row[variant]['peak_bytes'] / 2**20:.0f} MB",
                      file=sys.stderr, flush=True)
            results.append(row)
    summary = {"cpu": cpu_model(), "device": args.device, "torch": torch.__version__, "results": results}
    print(table(results))
    print(f"\n{summary['device']}: {summary['cpu']}, torch {summary['torch']}, batch 1, "
          f"medians of {args.steps} interleaved plain and AD-DROP steps after {args.warmup} warm-up")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
