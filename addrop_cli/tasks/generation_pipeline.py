"""Generative fine-tuning of decoder-only models (prompt → completion), behind the :class:`Pipeline` interface.

Training is next-token prediction with the loss on completion tokens only (the model's own causal-LM loss over
``labels``, prompt and padding set to ``IGNORE_INDEX``). Evaluation reports the completion loss and perplexity,
and scores greedy answers, generated in batches from left-padded prompts: exact match for free-form completions,
accuracy over the answer words for a classification task rendered through ``generation.template``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from accelerate import Accelerator
from torch.nn import functional as F
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from addrop_cli.core.settings import GENERATION, IGNORE_INDEX
from addrop_cli.recipe import Recipe
from addrop_cli.tasks.generation_data import (
    Completion,
    closed_answer,
    completion_collator,
    encode_completions,
    last_answer_start,
    load_hub_completions,
    normalized,
    read_completions,
    render_examples,
    render_prompt,
)
from addrop_cli.tasks.models import load_causal_lm
from addrop_cli.tasks.pipeline_base import EvalResult, refuse_pair
from addrop_cli.tasks.registry import GenerationTaskSpec
from addrop_cli.tasks.splits import load_split, read_split

OTHER_ANSWER = "(other)"  # a generated text that gives none of the answers


def completion_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the summed negative log-likelihood of the completion tokens and their count: position t's logits
    predict token t + 1. Shapes (B, T, V) and (B, T) -> (B,), (B,)."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                             reduction="none")
    valid = targets != IGNORE_INDEX
    return (losses * valid).sum(-1), valid.sum(-1)


def left_padded(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as a (B, T) batch padded on the left, as generation needs, and its attention mask."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for index, row in enumerate(rows):
        ids[index, width - len(row):] = torch.tensor(row, dtype=torch.long, device=device)
        mask[index, width - len(row):] = 1
    return ids, mask


def prompts_of(batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], list[list[int]]]:
    """Each row's prompt (its real tokens before the answer) and answer ids; a batch without labels is all
    prompt."""
    prompts, answers = [], []
    labels = batch.get("labels")
    starts = [last_answer_start(row) for row in labels.tolist()] if labels is not None else None
    for index, (ids, mask) in enumerate(zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(),
                                            strict=True)):
        end = starts[index] if starts is not None else len(ids)
        prompts.append([token for token, real in zip(ids[:end], mask[:end], strict=True) if real])
        if labels is not None:
            answers.append([token for token in labels[index, end:].tolist() if token != IGNORE_INDEX])
    return prompts, answers


def stop_tokens(model, tokenizer) -> list[int]:
    """The ids that end an answer: the model's generation eos tokens and the tokenizer's eos, which training
    appends to plain completions (a base model's generation config may know only its own)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({token for token in [*ids, tokenizer.eos_token_id] if token is not None})


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, **options) -> Any:
    """Greedy continuations of ``prompts``, generated together from a left-padded batch (the KV cache on, whatever
    training set), each stopping at a :func:`stop_tokens` id: a (B, new) tensor, padded with the pad id, or
    ``generate``'s own output (without the prompts) when ``options`` ask for scores."""
    device = next(model.parameters()).device
    ids, mask = left_padded(prompts, tokenizer.pad_token_id, device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         num_beams=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_tokens(model, tokenizer),
                         use_cache=True, **options)
    if options.get("return_dict_in_generate"):
        out.sequences = out.sequences[:, ids.shape[1]:]
        return out
    return out[:, ids.shape[1]:]


class GenerationPipeline:
    """Prompt → completion fine-tuning of a decoder-only model; ``task.answers`` for a closed answer set."""

    task_type = GENERATION

    def __init__(self, task: GenerationTaskSpec, recipe: Recipe):
        self.task = task
        self.metrics, self.default_metric = task.metrics, task.default_metric
        self.settings = recipe.generation

    def read(self, recipe: Recipe, split: str) -> list | None:
        if self.task.source is not None:
            examples = load_split(recipe, self.task.source, split)
            return None if examples is None else render_examples(examples, self.settings.template, self.task.answers)
        data, required = recipe.data, split != "test"
        return read_split(recipe, split, lambda path: read_completions(path, require_completion=required),
                          lambda name: load_hub_completions(data.dataset, data.dataset_config, name,
                                                            require_completion=required),
                          "JSON Lines rows with prompt and completion, or messages")

    def labelled(self, items: list) -> bool:
        return bool(items) and items[0].completion is not None

    def label_counts(self, items: list) -> dict[str, int]:
        if self.task.answers is None or not self.labelled(items):
            return {}
        tally = Counter(item.label for item in items)
        return {answer: tally[index] for index, answer in enumerate(self.task.answers)}

    def load_model(self, name: str, trust_remote_code: bool = False, dtype: str = "float32") -> PreTrainedModel:
        return load_causal_lm(name, trust_remote_code, dtype)

    def encode(self, items: list, tokenizer, recipe: Recipe) -> list[dict[str, Any]]:
        return encode_completions(items, tokenizer, max_length=recipe.data.max_length, chat=self.settings.chat)

    def encode_text(self, text: str, text_pair: str | None, tokenizer, recipe: Recipe) -> dict[str, Any]:
        """A prompt typed by a user (through the template for a classification task)."""
        if self.settings.template is None:
            refuse_pair(text_pair, self.task.name)
            prompt = text
        else:
            prompt = render_prompt(self.settings.template, text, text_pair)
        return self.encode([Completion(prompt, None, where="--text")], tokenizer, recipe)[0]

    def inputs_only(self, feature: dict[str, Any]) -> dict[str, Any]:
        """The prompt of a labelled feature (every token before its answer), to generate from."""
        if "labels" not in feature:
            return feature
        end = last_answer_start(feature["labels"])
        return {"input_ids": feature["input_ids"][:end], "attention_mask": feature["attention_mask"][:end]}

    def collator(self, tokenizer):
        return completion_collator(tokenizer)

    def evaluate(self, model, loader: DataLoader, accelerator: Accelerator, tokenizer) -> EvalResult:
        """Completion loss (mean over completion tokens) and perplexity, and the greedy answers scored: accuracy
        over the answer words, or exact match (case, spacing and surrounding punctuation aside)."""
        model.eval()
        generator = accelerator.unwrap_model(model)
        nll, counts, scores, predicted = [], [], [], []
        with torch.no_grad():
            for batch in loader:
                logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
                row_nll, row_count = completion_nll(logits, batch["labels"])
                prompts, answers = prompts_of(batch)
                texts = tokenizer.batch_decode(generate(generator, tokenizer, prompts, self.settings.max_new_tokens),
                                               skip_special_tokens=True)
                references = tokenizer.batch_decode(answers, skip_special_tokens=True)
                row_score, row_prediction = self._score(texts, references, row_nll.device)
                gathered = accelerator.gather_for_metrics((row_nll, row_count, row_score, row_prediction))
                for store, values in zip((nll, counts, scores, predicted), gathered, strict=True):
                    store.append(values.cpu())
        total, tokens = torch.cat(nll).sum().item(), max(torch.cat(counts).sum().item(), 1)
        right = torch.cat(scores)
        loss, score = total / tokens, right.sum().item() / len(right)
        metrics = {self.default_metric: score, "perplexity": math.exp(min(loss, 700.0))}
        return EvalResult(metrics, loss, self._counts(torch.cat(predicted)), len(right))

    def _score(self, texts: list[str], references: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, whether the generated text is right, and which answer it gives (-1: none or free-form)."""
        if self.task.answers is None:
            right = [normalized(text) == normalized(reference) for text, reference in zip(texts, references,
                                                                                             strict=True)]
            return torch.tensor(right, device=device), torch.full((len(texts),), -1, device=device)
        given = [closed_answer(text, self.task.answers) for text in texts]
        gold = [closed_answer(reference, self.task.answers) for reference in references]
        right = [answer == truth for answer, truth in zip(given, gold, strict=True)]
        return torch.tensor(right, device=device), torch.tensor(given, device=device)

    def _counts(self, predicted: torch.Tensor) -> dict[str, int]:
        """Generated answers per answer word (and those giving none), for a closed answer set."""
        if self.task.answers is None:
            return {}
        tally = Counter(predicted.tolist())
        counts = {answer: tally[index] for index, answer in enumerate(self.task.answers)}
        return {**counts, OTHER_ANSWER: tally[-1]} if tally[-1] else counts

    def predict(self, model, loader: DataLoader, accelerator: Accelerator, tokenizer, items: list,
                recipe: Recipe) -> list[dict[str, Any]]:
        """The greedy completion of each prompt (and, for a closed answer set, the answer it gives)."""
        model.eval()
        generator, pad = accelerator.unwrap_model(model), tokenizer.pad_token_id
        texts = []
        with torch.no_grad():
            for batch in loader:
                prompts, _ = prompts_of(batch)
                generated = generate(generator, tokenizer, prompts, self.settings.max_new_tokens)
                generated = accelerator.pad_across_processes(generated, dim=1, pad_index=pad)
                texts += tokenizer.batch_decode(accelerator.gather_for_metrics(generated), skip_special_tokens=True)
        rows = []
        for item, text in zip(items, texts, strict=True):
            row: dict[str, Any] = {"messages": item.turns} if item.turns is not None else {"prompt": item.prompt}
            row["completion"] = text.strip()
            if self.task.answers is not None:
                given = closed_answer(text, self.task.answers)
                row["label"] = self.task.answers[given] if given >= 0 else None
            rows.append(row)
        return rows
