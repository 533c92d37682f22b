"""Relative cost of an AD-DROP step against a plain fine-tuning step (the paper's Table 7, measured here).

Plain and AD-DROP steps (GA on all layers and on the first layer, AA, RD, IGA) and the R-Drop and HiddenCut
baselines (``rdrop``, ``hiddencut``, at their defaults) are interleaved in one process on the same batches, so
drift in machine load hits every variant alike. A step is what the training loop does:
forward, backward, clip-free fused AdamW update. Peak memory per variant is measured in a fresh subprocess
(CPU: peak RSS above the loaded model and optimizer state; CUDA: max_memory_allocated).

    python benchmarks/step_cost.py                      # MiniLM-L6, MRPC batches of 16, CPU
    python benchmarks/step_cost.py --json step_cost.json
    python benchmarks/step_cost.py --model bert-base-random --device cuda   # a BERT-base-sized random model
    python benchmarks/step_cost.py --model deberta-v3-base-random --device cuda   # the module-hook route
    python benchmarks/step_cost.py --agreement 8     # + bf16-vs-fp32 candidate agreement on 8 batches
    python benchmarks/step_cost.py --model mpnet-base --variants ga_all,ga_first,aa_all,rd_all,rdrop,hiddencut
    python benchmarks/step_cost.py --model smollm2-135m --batch-size 8 --lora-r 8 \
        --variants ga_first,ga_all,ga_first_bf16attr,ga_all_bf16attr,rdrop     # + --gradient-checkpointing

A decoder-only language model (``architectures`` ending in ForCausalLM, e.g. smollm2-135m) is measured as
generative fine-tuning: SST-2 sentences of the bundled subset through recipes/llm/sst2_smollm2_generate.yaml's
chat prompt, the answer word as completion, the loss and AD-DROP's target on the answer tokens only.

``*_bf16attr`` run the attribution pass under bf16 autocast (``addrop.attribution_precision: bf16``) and the
masked pass in fp32; ``plain_bf16`` is a plain step under bf16 autocast. Every ratio is to the plain fp32 step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from addrop_cli import ADDrop, ADDropConfig
from addrop_cli.core.methods.registry import make_regularizer
from addrop_cli.core.settings import CLASSIFICATION, GENERATION
from addrop_cli.errors import UserError
from addrop_cli.recipe import LoraConfig, find_recipe, load_yaml
from addrop_cli.tasks.generation_data import completion_collator, encode_completions, render_examples
from addrop_cli.tasks.glue_data import make_collator, read_examples
from addrop_cli.tasks.models import resolve_model
from addrop_cli.tasks.registry import get_task
from addrop_cli.training.lora import apply_lora

SHARED_MRPC = Path(__file__).resolve().parents[2] / "shared" / "data" / "MRPC" / "train.tsv"
BUNDLED_SST2 = Path(__file__).resolve().parents[1] / "addrop_cli" / "demo_data" / "sst2" / "train.tsv"
GENERATE_RECIPE = "sst2_smollm2_generate"
VARIANTS = {
    "ga_all": {"attribution": "ga", "layers": "all"},
    "ga_first": {"attribution": "ga", "layers": "first"},
    "aa_all": {"attribution": "aa", "layers": "all"},
    "rd_all": {"attribution": "rd", "layers": "all"},
    "iga_all": {"attribution": "iga", "layers": "all"},
    "ga_all_bf16attr": {"attribution": "ga", "layers": "all", "attribution_precision": "bf16"},
    "ga_first_bf16attr": {"attribution": "ga", "layers": "first", "attribution_precision": "bf16"},
}
PLAIN_BF16 = "plain_bf16"  # a plain step under bf16 autocast: what bf16 matmul is worth on this device
BASELINES = ("rdrop", "hiddencut")  # the paper's Table 1 baselines at their default settings


def random_base_model(name: str):
    """A base-sized random classifier: BERT-base, DeBERTa-v3-base (module-hook route) or MPNet-base (likewise)."""
    import transformers

    if name == "deberta-v3-base-random":  # microsoft/deberta-v3-base's config
        config = transformers.DebertaV2Config(
            vocab_size=128100, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
            position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
            type_vocab_size=0, num_labels=2)
        return transformers.DebertaV2ForSequenceClassification(config)
    if name == "mpnet-base-random":
        return transformers.MPNetForSequenceClassification(transformers.MPNetConfig(num_labels=2))
    return transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2))


RANDOM_MODELS = ("bert-base-random", "deberta-v3-base-random", "mpnet-base-random")


def is_language_model(name: str) -> bool:
    """Whether ``name`` is a decoder-only language model checkpoint (measured as generative fine-tuning)."""
    if name in RANDOM_MODELS:
        return False
    config = json.loads((Path(resolve_model(name)) / "config.json").read_text())
    return any(arch.endswith("ForCausalLM") for arch in config.get("architectures") or [])


def load_model_and_tokenizer(name: str, device: str, lora_r: int | None = None, checkpointing: bool = False):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    minilm = resolve_model("minilm")
    if name in RANDOM_MODELS:  # base shapes, random weights, MiniLM's (BERT uncased) vocabulary
        tokenizer = AutoTokenizer.from_pretrained(minilm)
        model = random_base_model(name)
    elif is_language_model(name):
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
        model = AutoModelForCausalLM.from_pretrained(resolve_model(name))
        model.config.use_cache = False
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model(name), num_labels=2)
    if checkpointing:
        model.activation_checkpointing_enable()
    if lora_r:
        task = GENERATION if is_language_model(name) else CLASSIFICATION
        model = apply_lora(model, LoraConfig(r=lora_r, alpha=2 * lora_r, dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]), task)
    return model.to(device).train(), tokenizer


def make_generation_batches(tokenizer, batch_size: int, count: int, max_length: int, seed: int):
    """SST-2 sentences of the bundled subset as the generative recipe's chat prompts, answer word as completion."""
    settings = load_yaml(find_recipe(GENERATE_RECIPE))["generation"]
    examples = read_examples(BUNDLED_SST2, get_task("sst2"))
    random.Random(seed).shuffle(examples)
    rows = render_examples(examples[: batch_size * count], settings["template"], settings["answers"])
    features = encode_completions(rows, tokenizer, max_length=max_length, chat=settings["chat"])
    collate = completion_collator(tokenizer)
    batches = [collate(features[i * batch_size:(i + 1) * batch_size]) for i in range(count)]
    return batches, f"SST-2 sentences as {GENERATE_RECIPE} prompts"


def make_batches(tokenizer, batch_size: int, count: int, max_length: int, seed: int) -> list[dict]:
    """Real MRPC pairs when ../shared/data is there, random word pairs of MRPC-like length otherwise; for a
    language model, generation batches (:func:`make_generation_batches`)."""
    if tokenizer.chat_template and is_language_model(tokenizer.name_or_path):
        return make_generation_batches(tokenizer, batch_size, count, max_length, seed)
    rng = random.Random(seed)
    if SHARED_MRPC.is_file():
        examples = read_examples(SHARED_MRPC, get_task("mrpc"))
        pairs = [(e.text_a, e.text_b, e.label) for e in examples]
        rng.shuffle(pairs)
        source = "MRPC train pairs"
    else:
        words = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2]
        pairs = [(" ".join(rng.choices(words, k=rng.randint(12, 30))),
                  " ".join(rng.choices(words, k=rng.randint(12, 30))), rng.randint(0, 1))
                 for _ in range(batch_size * count)]
        source = "random word pairs"
    collate = make_collator(tokenizer)
    batches = []
    for i in range(count):
        chunk = pairs[i * batch_size : (i + 1) * batch_size]
        encoded = tokenizer([a for a, _, _ in chunk], [b for _, b, _ in chunk], truncation=True,
                            max_length=max_length)
        features = [{**{k: encoded[k][j] for k in encoded}, "labels": chunk[j][2]} for j in range(len(chunk))]
        batches.append(collate(features))
    return batches, source


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Stepper:
    """One optimizer step per call, plain or AD-DROP, on a shared model and optimizer."""

    def __init__(self, model, device: str, iga_steps: int, special_ids: list[int]):
        self.model, self.device = model, device
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-6, fused=True)
        self.addrop = {name: ADDrop(model, ADDropConfig(iga_steps=iga_steps, **settings))
                       for name, settings in VARIANTS.items()}
        for method in BASELINES:
            try:
                self.addrop[method] = make_regularizer(model, ADDropConfig(method=method), special_ids=special_ids)
            except UserError:  # HiddenCut refuses decoder-only models
                continue

    def step(self, variant: str, batch: dict) -> None:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if variant == PLAIN_BF16:
            with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16):
                loss = self.model(**batch).loss
        else:
            loss = self.model(**batch).loss if variant == "plain" else self.addrop[variant].loss(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def time_steps(args) -> dict:
    torch.manual_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.lora_r, args.gradient_checkpointing)
    batches, source = make_batches(tokenizer, args.batch_size, args.steps + args.warmup, args.max_length, args.seed)
    stepper = Stepper(model, args.device, args.iga_steps, tokenizer.all_special_ids)
    names = ["plain", *[v for v in [PLAIN_BF16, *VARIANTS, *BASELINES] if v != "iga_all" and v in args.variants
                        and (v in VARIANTS or v == PLAIN_BF16 or v in stepper.addrop)]]
    times: dict[str, list[float]] = {name: [] for name in [*names, "iga_all"]}  # iga_all stays empty unless asked
    for index, batch in enumerate(batches):
        order = names[index % len(names):] + names[: index % len(names)]  # rotate who goes first
        for name in order:
            sync(args.device)
            start = time.perf_counter()
            stepper.step(name, batch)
            sync(args.device)
            if index >= args.warmup:
                times[name].append(time.perf_counter() - start)
        timing_iga = "iga_all" in args.variants and index >= args.warmup
        if timing_iga and len(times["iga_all"]) < args.iga_batches:
            start = time.perf_counter()
            stepper.step("iga_all", batch)
            sync(args.device)
            times["iga_all"].append(time.perf_counter() - start)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches) / (len(batches) * args.batch_size)
    padded = statistics.mean(b["input_ids"].shape[1] for b in batches)
    return {"times": times, "source": source, "mean_tokens": real_tokens, "padded_length": padded}


def candidate_agreement(args) -> dict[str, list[float]]:
    """Per attribution method and layer: mean Jaccard overlap of the candidate regions (Eq. 6) from bf16 and
    fp32 attribution on the same weights, dropout off, over the benchmark's batches."""
    torch.manual_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, args.device)
    model.eval()
    batches, _ = make_batches(tokenizer, args.batch_size, args.agreement, args.max_length, args.seed)
    overlap: dict[str, list[list[float]]] = {}
    for method in ("ga", "aa"):
        exact = ADDrop(model, ADDropConfig(attribution=method, layers="all"))
        fast = ADDrop(model, ADDropConfig(attribution=method, layers="all", attribution_precision="bf16"))
        for batch in batches:
            batch = {k: v.to(args.device) for k, v in batch.items()}
            reference, regions = exact.candidates(batch), fast.candidates(batch)
            overlap.setdefault(method, []).append(
                [((reference[c] & regions[c]).sum() / (reference[c] | regions[c]).sum()).item() for c in regions])
    return {method: [statistics.fmean(layer) for layer in zip(*rows, strict=True)] for method, rows in overlap.items()}


def native_bf16() -> str:
    """Whether the CPU multiplies bf16 natively (AMX or AVX512-BF16), from its flags."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [flag for flag in ("amx_bf16", "avx512_bf16") if f" {flag}" in flags]
    return ", ".join(found) if found else "no (no AMX-BF16 or AVX512-BF16 flag)"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def peak_memory(args, variant: str) -> float:
    """Peak bytes of one step of ``variant`` above the loaded model and optimizer, in a fresh process."""
    code = f"""
import resource, sys, torch
sys.argv = ['x']
sys.path.insert(0, {str(Path(__file__).parent)!r})
import step_cost as sc
model, tok = sc.load_model_and_tokenizer({args.model!r}, {args.device!r}, {args.lora_r!r},
                                         {args.gradient_checkpointing!r})
batches, _ = sc.make_batches(tok, {args.batch_size}, 3, {args.max_length}, {args.seed})
stepper = sc.Stepper(model, {args.device!r}, {args.iga_steps}, tok.all_special_ids)
stepper.step('plain', batches[0])  # optimizer state now exists
if {args.device!r}.startswith('cuda'):
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
else:
    import gc; gc.collect(); base = int(open('/proc/self/statm').read().split()[1]) * 4096
    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
for batch in batches[1:]:
    stepper.step({variant!r}, batch)
if {args.device!r}.startswith('cuda'):
    torch.cuda.synchronize(); print(torch.cuda.max_memory_allocated() - base)
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(max(peak, base_peak) - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="minilm, mpnet-base, a checkpoint path, or a random "
                        "base-sized model: " + ", ".join(RANDOM_MODELS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed batches per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iga-steps", type=int, default=20, help="m in Eq. 3")
    parser.add_argument("--iga-batches", type=int, default=2, help="timed IGA steps (each costs ~m x layers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--agreement", type=int, default=0, metavar="N",
                        help="also measure bf16-vs-fp32 candidate agreement on N batches")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--lora-r", type=int, help="LoRA adapters of this rank on q, k, v, o (alpha 2r)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="activation checkpointing on")
    every = [PLAIN_BF16, *VARIANTS, *BASELINES]
    parser.add_argument("--variants", default=",".join(every),
                        help="comma-separated variants timed against plain (default all): " + ", ".join(every))
    args = parser.parse_args()
    args.variants = [name.strip() for name in args.variants.split(",")]
    unknown = sorted(set(args.variants) - set(every))
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(every)}")

    result = time_steps(args)
    times = result["times"]
    plain = statistics.median(times["plain"])
    ratios = {name: statistics.median(values) / plain for name, values in times.items() if name != "plain" and values}
    memory_ratios = {}
    if not args.no_memory:
        plain_peak = peak_memory(args, "plain")
        memory_ratios = {name: peak_memory(args, name) / plain_peak
                         for name in ("ga_all", "ga_first", *BASELINES) if name in args.variants and name in times}

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU {cpu_model()} (native bf16: {native_bf16()}), {torch.get_num_threads()} threads"
    extras = "".join([f", LoRA r {args.lora_r}" if args.lora_r else "",
                      ", gradient checkpointing" if args.gradient_checkpointing else ""])
    print(f"model {args.model}{extras}, batch {args.batch_size}, {result['source']}, mean real length "
          f"{result['mean_tokens']:.1f}, mean padded length {result['padded_length']:.1f}, device {device}")
    print(f"{'variant':<10} {'relative time':>14} {'median s':>10} {'spread (min-max) s':>20} {'steps':>6}")
    for name in ["plain", *ratios]:
        values = times[name]
        ratio = 1.0 if name == "plain" else ratios[name]
        print(f"{name:<10} {ratio:>13.2f}x {statistics.median(values):>10.4f} "
              f"{min(values):>9.4f}-{max(values):<10.4f} {len(values):>6}")
    for name, value in memory_ratios.items():
        print(f"peak memory {name} / plain: {value:.2f}")
    agreement = candidate_agreement(args) if args.agreement else {}
    for method, layers in agreement.items():
        print(f"candidate agreement (Jaccard) bf16 vs fp32, {method}: mean {statistics.fmean(layers):.4f}, per layer "
              + " ".join(f"{value:.4f}" for value in layers))
    if args.json:
        payload = {"plain_step_s": plain, "ratios": ratios, "memory_ratios": memory_ratios, "model": args.model,
                   "lora_r": args.lora_r, "gradient_checkpointing": args.gradient_checkpointing,
                   "agreement": agreement,
                   "batch_size": args.batch_size, "device": device, "data": result["source"],
                   "steps": args.steps, "times_s": times}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
