"""The ``addrop attribute`` engine: what AD-DROP sees on given inputs (paper Fig. 1).

For each example and selected encoder self-attention layer: the attention probabilities, the attribution
scores (GA, IGA or AA, to the pseudo or gold label), the candidate discard region (Eq. 6) and one seeded
drop mask (Eq. 7), each (heads, n, n) over the example's n tokens. The numbers come from
:meth:`ADDrop.attribute` and :meth:`ADDrop.candidates`, the same code that training uses.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from addrop_cli import plots
from addrop_cli.core.masking import sample_drops
from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.settings import (
    CLASSIFICATION,
    GENERATION,
    IGNORE_INDEX,
    REGRESSION,
    SEQ2SEQ,
    TOKEN,
    ADDropConfig,
)
from addrop_cli.errors import UserError
from addrop_cli.outputs import write_dir, write_json, write_text
from addrop_cli.recipe import Recipe
from addrop_cli.tasks.generation_pipeline import generate
from addrop_cli.tasks.models import ensure_pad_token, load_tokenizer
from addrop_cli.tasks.pipelines import pipeline_for

KEY_TOKENS = 5


@dataclass
class LayerAttribution:
    """One self-attention layer of one example; tensors are (heads, n, n), heads as selected, and ``visible``
    (n, n), the keys each query row can see (all of them in an encoder, the earlier ones in a causal model). The
    attribution is zero where a row cannot see the key: AD-DROP never ranks those positions."""

    layer: int
    attention: torch.Tensor
    attribution: torch.Tensor
    candidates: torch.Tensor
    dropped: torch.Tensor
    visible: torch.Tensor


@dataclass
class ExampleAttribution:
    """One example: its tokens, the model's prediction, the gold label if any, and its selected layers."""

    tokens: list[str]
    text: str
    prediction: dict[str, Any]
    gold: Any
    layers: list[LayerAttribution]


def token_attribution(attribution: torch.Tensor) -> torch.Tensor:
    """Total attribution of each token as a key: the sum over heads and query rows.

    Args:
        attribution: (H, n, n) scores of one layer.
    Returns:
        (n,) one value per key token.
    """
    return attribution.sum(dim=(0, 1))


def row_ranks(scores: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Each score's rank within its row, scaled to [0, 1]: the share of the row's other visible scores it is >= to
    (0 where the row cannot see the key).

    Eq. 6 only compares scores within a query row, over the keys it can see, so figures shade by this rank: the
    darkest cells of a row are its candidates whatever the row's scale (gradients of different rows differ by
    orders of magnitude). Tied scores share the highest of their ranks, as ties share candidacy in Eq. 6.

    Args:
        scores: (n, n).
        visible: (n, n) bool, the keys each row can see; every key when None.
    Returns:
        (n, n) float.
    """
    visible = torch.ones_like(scores, dtype=torch.bool) if visible is None else visible
    at_or_below = ((scores[..., None, :] <= scores[..., :, None]) & visible[..., None, :]).sum(-1) - 1
    others = (visible.sum(-1, keepdim=True) - 1).clamp(min=1)
    return (at_or_below.float() / others).masked_fill(~visible, 0.0)


def rows_without_attribution(attribution: torch.Tensor) -> torch.Tensor:
    """Query rows whose attribution is exactly zero in every shown head: rows that cannot reach the target
    (in a sequence classifier's last layer, every row but the pooled [CLS] one). Eq. 6 ties all their keys, so
    they would look like one block of candidates; figures show them as "no attribution" instead.

    Args:
        attribution: (H, n, n).
    Returns:
        (n,) bool.
    """
    return (attribution == 0).all(dim=-1).all(dim=0)


def describe_prediction(prediction: dict[str, Any]) -> str:
    """A prediction in words: ``positive (p 0.97)``, ``score 3.21``, tags, or a translation."""
    if "label" in prediction:
        return f"{prediction['label']} (p {prediction['probability']:.2f})"
    if "score" in prediction:
        return f"score {prediction['score']:.3f}"
    if "labels" in prediction:
        return " ".join(prediction["labels"])
    if "first_token" in prediction:
        return f"{prediction['text']} (first token {prediction['first_token']!r}, p {prediction['probability']:.2f})"
    return f"{prediction['text']} (mean p {prediction['probability']:.2f})"


def key_tokens(attribution: torch.Tensor, tokens: list[str], count: int = KEY_TOKENS) -> list[dict[str, Any]]:
    """The ``count`` tokens with the highest total attribution (see :func:`token_attribution`), highest first."""
    totals = token_attribution(attribution)
    top = totals.topk(min(count, len(tokens))).indices.tolist()
    return [{"position": i, "token": tokens[i], "attribution": totals[i].item()} for i in top]


def select_heads(tensor: torch.Tensor, heads: list[int] | None) -> torch.Tensor:
    """(H, n, n) -> (len(heads), n, n); every head when ``heads`` is None."""
    return tensor if heads is None else tensor[heads]


def attribute_checkpoint(
    checkpoint: str,
    recipe: Recipe,
    *,
    text: str | None = None,
    text_pair: str | None = None,
    heads: list[int] | None = None,
    seed: int = 42,
) -> list[ExampleAttribution]:
    """Attribute ``text`` (and ``text_pair``), or else the recipe's test split, with the checkpoint's model.

    ``recipe.addrop`` sets the method, labels, layers, p and q; ``recipe.data.test_file`` and
    ``max_eval_samples`` the examples when no text is given. A generation checkpoint is attributed on each
    prompt alone, to the first token of the answer it generates.
    """
    pipeline = pipeline_for(recipe)
    tokenizer = load_tokenizer(checkpoint)
    if text is not None:
        features = [pipeline.encode_text(text, text_pair, tokenizer, recipe)]
    else:
        features = pipeline.encode(pipeline.read(recipe, "test"), tokenizer, recipe)
        if pipeline.task_type == GENERATION:
            features = [pipeline.inputs_only(feature) for feature in features]
    model = pipeline.load_model(checkpoint)
    ensure_pad_token(model, tokenizer)
    return attribute_examples(model, tokenizer, features, pipeline.collator(tokenizer), recipe.addrop,
                              pipeline.task_type, heads=heads, seed=seed,
                              max_target_length=recipe.data.max_target_length,
                              max_new_tokens=recipe.generation.max_new_tokens)


def attribute_examples(
    model: torch.nn.Module,
    tokenizer,
    features: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    config: ADDropConfig,
    task_type: str,
    *,
    heads: list[int] | None = None,
    seed: int = 42,
    max_target_length: int = 128,
    max_new_tokens: int = 16,
) -> list[ExampleAttribution]:
    """Attribute each feature (one at a time, so tensors cover real tokens only) on the selected layers.

    ``config`` sets the method, labels, layers, p and q; drop masks come from one generator seeded with ``seed``.
    A seq2seq example without a target is attributed on the translation the model generates for it; a
    generation prompt on the first token of its greedy answer (up to ``max_new_tokens`` are shown).
    Raises UserError for gold labels without labelled input, and for head indices out of range.
    """
    if task_type == GENERATION and config.labels == "gold":
        raise UserError("--labels gold: a generation checkpoint is attributed to the first token of the answer it "
                        "generates for each prompt, its pseudo label; use --labels pseudo")
    labelled = bool(features) and "labels" in features[0]
    if config.labels == "gold" and not labelled:
        raise UserError("--labels gold needs labelled input: give an --input-file with labels "
                        "(--text has none), or use --labels pseudo")
    if task_type == REGRESSION and not labelled:
        raise UserError("a regression model is attributed to its gold score (paper footnote 3): give a labelled "
                        "--input-file")
    model.eval()
    addrop = ADDrop(model, config, task_type)
    for call in addrop.selected:
        num_heads = addrop.sites[call].num_heads
        if heads is not None and max(heads) >= num_heads:
            raise UserError(f"--heads {','.join(map(str, heads))} is out of range: this model has {num_heads} heads "
                            f"per layer, valid indices are 0 to {num_heads - 1} (or mean)")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # RD scores and the random strategy's region draw from the global generator
    examples = []
    for feature in features:
        batch = collate([feature])
        prediction = None
        if task_type == SEQ2SEQ:
            prediction, generated = _translate(model, tokenizer, batch, max_target_length)
            if batch.get("labels") is None:  # the seq2seq collator gives None for examples without a target
                batch["labels"] = generated
        elif task_type == GENERATION:
            prediction, batch = _first_answer_token(model, tokenizer, batch, max_new_tokens)
        result = addrop.attribute(batch)
        regions = addrop.candidates(batch, result)
        layers = []
        for call in addrop.selected:
            candidates, visible = regions[call], result.visible[call][0, 0]
            dropped = sample_drops(candidates, config.q, generator)
            layers.append(LayerAttribution(
                addrop.sites[call].layer, select_heads(result.attention[call][0], heads).float(),
                select_heads(result.scores[call][0] * visible, heads).float(),
                *(select_heads(tensor[0], heads) for tensor in (candidates, dropped)), visible,
            ))
        input_ids = batch["input_ids"][0].tolist()
        examples.append(ExampleAttribution(
            tokens=tokenizer.convert_ids_to_tokens(input_ids),
            text=tokenizer.decode(input_ids, skip_special_tokens=True),
            prediction=prediction or _prediction(result.logits[0], model.config, task_type),
            gold=_gold(batch.get("labels") if labelled else None, model.config, task_type, tokenizer),
            layers=layers,
        ))
    return examples


def _prediction(logits: torch.Tensor, model_config, task_type: str) -> dict[str, Any]:
    """The predicted label and its probability (per token for token tasks; the score for regression)."""
    if task_type == REGRESSION:
        return {"score": logits.squeeze(-1).item()}
    probabilities = logits.float().softmax(-1)
    best = probabilities.max(-1)
    if task_type == CLASSIFICATION:
        return {"label": model_config.id2label[best.indices.item()], "probability": best.values.item()}
    return {"labels": [model_config.id2label[i] for i in best.indices.tolist()],
            "probabilities": best.values.tolist()}


def _gold(labels: torch.Tensor | None, model_config, task_type: str, tokenizer) -> Any:
    """The gold label in words: a class name, a score, a tag per token (None where unlabelled), a target text."""
    if labels is None:
        return None
    labels = labels[0]
    if task_type == REGRESSION:
        return labels.item()
    if task_type == CLASSIFICATION:
        return model_config.id2label[labels.item()]
    if task_type == TOKEN:
        return [None if i == IGNORE_INDEX else model_config.id2label[i] for i in labels.tolist()]
    return tokenizer.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=True)


def _translate(model, tokenizer, batch, max_length: int) -> tuple[dict[str, Any], torch.Tensor]:
    """Greedy translation: its text and mean token probability, and its ids as (1, T) decoder labels."""
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=1,
                             max_length=max_length, output_scores=True, return_dict_in_generate=True)
    log_probs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    generated = out.sequences[:, 1:]  # without the decoder start token, which the model prepends itself
    text = tokenizer.decode(generated[0], skip_special_tokens=True)
    return {"text": text, "probability": log_probs.exp().mean().item()}, generated


def _first_answer_token(model, tokenizer, batch, max_new_tokens: int) -> tuple[dict[str, Any], dict]:
    """Greedy answer to a one-prompt batch: its text, first token and that token's probability; and the batch
    to attribute, the prompt followed by that token, labelled there alone (so F is its log-probability)."""
    prompt = batch["input_ids"][0][batch["attention_mask"][0].bool()][None]
    with torch.no_grad():
        out = generate(model, tokenizer, prompt.tolist(), max_new_tokens, output_scores=True,
                       return_dict_in_generate=True)
    answer = out.sequences[0]
    first = int(answer[0])
    ids = torch.cat([prompt, answer[None, :1]], dim=1)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, -1] = first
    prediction = {"text": tokenizer.decode(answer, skip_special_tokens=True).strip(),
                  "first_token": tokenizer.convert_ids_to_tokens(first),
                  "probability": out.scores[0][0].float().softmax(-1)[first].item()}
    return prediction, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


# ------------------------------------------------------------------------------------------- the report

TENSORS_FILE, SUMMARY_FILE, INDEX_FILE, IMAGES_DIR = "attributions.safetensors", "summary.json", "index.html", "images"


def write_report(
    directory: Path, examples: list[ExampleAttribution], settings: dict[str, Any], max_tokens: int = 40
) -> dict[str, Any]:
    """Write ``attributions.safetensors``, ``summary.json``, ``images/`` and ``index.html`` into ``directory``.

    The directory is filled beside its final place and swapped in whole, so it is never left half-written.
    Figures show the first ``max_tokens`` tokens (the last ones for generation, ``settings["task_type"]``), with a
    note when cropped; the tensors keep all of them.
    ``settings`` (checkpoint, method, p, q, ...) go into the summary as they are. Returns the summary.
    Raises UserError when ``directory`` exists, is not empty and does not hold an earlier report.
    """
    if directory.exists() and (not directory.is_dir() or
                               (any(directory.iterdir()) and not (directory / SUMMARY_FILE).is_file())):
        raise UserError(f"--output-dir {directory} exists and is not an earlier addrop attribute report; "
                        "give a new or empty directory")
    summary = {**settings, "examples": [_example_summary(i, example) for i, example in enumerate(examples)]}

    def fill(tmp: Path) -> None:
        tensors = {}
        for i, example in enumerate(examples):
            for layer in example.layers:
                for name in ("attention", "attribution", "candidates", "dropped"):
                    tensors[f"ex{i}.layer{layer.layer}.{name}"] = getattr(layer, name).contiguous()
        save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": "addrop attribute", "shape": "heads,n,n"})
        for i, (example, entry) in enumerate(zip(examples, summary["examples"], strict=True)):
            _draw_example(tmp, i, example, entry, settings, max_tokens)
        write_json(tmp / SUMMARY_FILE, summary)
        write_text(tmp / INDEX_FILE, gallery_html(summary))

    write_dir(directory, fill)
    return summary


def _example_summary(index: int, example: ExampleAttribution) -> dict[str, Any]:
    images = {str(layer.layer): f"{IMAGES_DIR}/ex{index}_layer{layer.layer}.png" for layer in example.layers}
    return {
        "tokens": example.tokens,
        "text": example.text,
        "prediction": example.prediction,
        "gold": example.gold,
        "layers": {str(layer.layer): {
            "key_tokens": key_tokens(layer.attribution, example.tokens),
            "rows_without_attribution": torch.nonzero(rows_without_attribution(layer.attribution)).flatten().tolist(),
        } for layer in example.layers},
        "images": {"layers": images, "tokens": f"{IMAGES_DIR}/ex{index}_tokens.png"},
    }


def _draw_example(
    directory: Path, index: int, example: ExampleAttribution, entry: dict, settings: dict, max_tokens: int
) -> None:
    n = min(len(example.tokens), max_tokens)
    # A generation prompt's answer is at its end (after a chat template's system prompt): show the last tokens.
    start = len(example.tokens) - n if settings.get("task_type") == GENERATION else 0
    tokens = example.tokens[start:start + n]
    which = "last" if start else "first"
    note = f"{which} {n} of {len(example.tokens)} tokens shown" if n < len(example.tokens) else ""
    heads = settings["heads"]
    heads_label = "all heads" if heads == "mean" else ("head " if len(heads) == 1 else "heads ") + \
        ",".join(map(str, heads))
    shown = heads_label if heads != "mean" and len(heads) == 1 else f"mean over {heads_label}"
    legend = (f"size: attention · shade: attribution rank ({settings['method']}, {settings['labels']} label) · "
              f"red dotted outline: candidates (p={settings['p']}) · orange ×: dropped (q={settings['q']}, "
              f"seed {settings['seed']}) · grey: no attribution")
    for layer in example.layers:
        crop = (slice(None), slice(start, start + n), slice(start, start + n))
        attention, attribution = layer.attention[crop].mean(0), layer.attribution[crop].mean(0)
        candidate_share, drop_share = layer.candidates[crop].float().mean(0), layer.dropped[crop].float().mean(0)
        visible = layer.visible[crop[1:]]
        figure = plots.attention_map(tokens, attention.numpy(), row_ranks(attribution, visible).numpy(),
                                     candidate_share.numpy(), drop_share.numpy(),
                                     f"example {index}, layer {layer.layer}, {shown}",
                                     "\n".join(filter(None, [legend, note])), "attribution rank within the query row",
                                     blank_rows=rows_without_attribution(layer.attribution[crop]).numpy(),
                                     hidden=(~visible).numpy())
        plots.save_figure(figure, directory / entry["images"]["layers"][str(layer.layer)])
    totals = sum(token_attribution(layer.attribution) for layer in example.layers)[start:start + n]
    layers = ",".join(str(layer.layer) for layer in example.layers)
    figure = plots.token_bars(tokens, totals.numpy(),
                              f"example {index}: attribution per token, summed over layers {layers}, "
                              f"{heads_label} and query rows", note)
    plots.save_figure(figure, directory / entry["images"]["tokens"])


def gallery_html(summary: dict[str, Any]) -> str:
    """A self-contained page (inline CSS, relative image paths) listing every example and its layers."""
    esc = html.escape
    nav = " ".join(f'<a href="#ex{i}">example {i}</a>' for i in range(len(summary["examples"])))
    sections = []
    for i, example in enumerate(summary["examples"]):
        layer_links = " ".join(f'<a href="#ex{i}-layer{layer}">layer {layer}</a>' for layer in example["layers"])
        figures = "".join(
            f'<figure id="ex{i}-layer{layer}"><img src="{esc(path)}" alt="example {i} layer {layer}">'
            f"<figcaption>layer {layer}; key tokens: "
            + esc(", ".join(t["token"] for t in example["layers"][layer]["key_tokens"])) + "</figcaption></figure>"
            for layer, path in example["images"]["layers"].items()
        )
        sections.append(
            f'<section id="ex{i}"><h2>Example {i}</h2><p class="text">{esc(example["text"])}</p>'
            f"<p>prediction: <b>{esc(describe_prediction(example['prediction']))}</b>"
            + (f" · gold: <b>{esc(describe_gold(example['gold']))}</b>" if example["gold"] is not None else "")
            + f"</p><p>{layer_links}</p>"
            f'<img src="{esc(example["images"]["tokens"])}" alt="example {i} attribution per token">'
            f'<div class="layers">{figures}</div></section>'
        )
    settings = "".join(f"<tr><th>{esc(str(key))}</th><td>{esc(_setting_text(value))}</td></tr>"
                       for key, value in summary.items() if key != "examples")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>addrop attribute</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
nav {{ position: sticky; top: 0; background: #fff; padding: 0.4em 0; border-bottom: 1px solid #ccc; }}
nav a, section p a {{ margin-right: 0.8em; }}
.layers {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} img {{ max-width: 100%; }}
.text {{ font-size: 1.2em; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 0.1em 0.8em 0.1em 0; }}
</style></head><body>
<h1>AD-DROP attribution</h1>
<table>{settings}</table>
<p>Circle area: attention probability; shade: the attribution's rank within its query row (darker is higher;
Eq. 6 compares scores within a row only); red dotted outline: candidate
discard region (Eq. 6); orange crosses: positions dropped in one sampled mask (Eq. 7). With several heads averaged, the
outline marks positions that are candidates in at least half of them, and a cross is as opaque as the share of
heads that drop the position. Grey rows have no attribution: the query row cannot reach the prediction (in a
sequence classifier's last layer, every row but [CLS]), so all its scores are zero and Eq. 6 would tie every key.</p>
<nav>{nav}</nav>
{"".join(sections)}
</body></html>
"""


def describe_gold(gold: Any) -> str:
    """A gold label in words: a class name, a score, tags (· for unlabelled pieces) or a target text."""
    if isinstance(gold, list):
        return " ".join("·" if tag is None else str(tag) for tag in gold)
    return f"{gold:.3f}" if isinstance(gold, float) else str(gold)


def _setting_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)
