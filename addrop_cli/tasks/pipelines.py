"""What differs between task kinds, behind one interface (:class:`~addrop_cli.tasks.pipeline_base.Pipeline`) the
loop, ``eval`` and ``attribute`` share, and :func:`pipeline_for`, which picks a recipe's.

A pipeline reads a split, loads the model with the task's head, encodes and collates examples, and scores a
model on an evaluation loader. :class:`SequencePipeline` covers GLUE-style classification and regression,
:class:`TokenPipeline` named-entity recognition (CoNLL-2003 tags), :class:`Seq2SeqPipeline` translation, and
:class:`~addrop_cli.tasks.generation_pipeline.GenerationPipeline` generative fine-tuning of decoder LLMs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from torch.nn import functional as F
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedModel

from addrop_cli.core.settings import CLASSIFICATION, IGNORE_INDEX, REGRESSION, SEQ2SEQ, TOKEN
from addrop_cli.errors import UserError
from addrop_cli.recipe import GenerationConfig, Recipe, template_fields
from addrop_cli.tasks.generation_pipeline import GenerationPipeline
from addrop_cli.tasks.glue_data import Example, encode_examples, make_collator
from addrop_cli.tasks.metrics import bleu_metrics, compute_metrics, seqeval_metrics
from addrop_cli.tasks.models import load_classifier, load_pretrained, load_seq2seq, weights_dtype
from addrop_cli.tasks.ner_data import TaggedSentence, encode_tagged, load_hub_tagged, read_tagged, token_collator
from addrop_cli.tasks.pipeline_base import EvalResult, Pipeline, refuse_pair, without_labels
from addrop_cli.tasks.registry import (
    GenerationTaskSpec,
    Seq2SeqTaskSpec,
    TaskSpec,
    TokenTaskSpec,
    answered,
    get_task,
)
from addrop_cli.tasks.splits import load_split, read_split
from addrop_cli.tasks.translation_data import (
    encode_translation,
    load_hub_translation,
    read_translation,
    seq2seq_collator,
)


class SequencePipeline:
    """Sentence and sentence-pair classification or regression (GLUE)."""

    def __init__(self, task: TaskSpec):
        self.task = task
        self.task_type = REGRESSION if task.is_regression else CLASSIFICATION
        self.metrics, self.default_metric = task.metrics, task.default_metric

    def read(self, recipe: Recipe, split: str) -> list | None:
        return load_split(recipe, self.task, split)

    def labelled(self, items: list) -> bool:
        return bool(items) and items[0].label is not None

    def label_counts(self, items: list) -> dict[str, int]:
        if self.task.is_regression or not self.labelled(items):
            return {}
        tally = Counter(item.label for item in items)
        return {name: tally[index] for index, name in enumerate(self.task.label_names)}

    def load_model(self, name: str, trust_remote_code: bool = False, dtype: str = "float32") -> PreTrainedModel:
        return load_classifier(name, self.task, trust_remote_code, dtype)

    def encode(self, items: list, tokenizer, recipe: Recipe) -> list[dict[str, Any]]:
        return encode_examples(items, tokenizer, recipe.data.max_length)

    def encode_text(self, text: str, text_pair: str | None, tokenizer, recipe: Recipe) -> dict[str, Any]:
        """One unlabelled input typed by a user: a sentence, or a sentence pair."""
        return self.encode([Example(text, text_pair, None)], tokenizer, recipe)[0]

    def inputs_only(self, feature: dict[str, Any]) -> dict[str, Any]:
        return without_labels(feature)

    def collator(self, tokenizer):
        return make_collator(tokenizer)

    def evaluate(self, model, loader: DataLoader, accelerator: Accelerator, tokenizer) -> EvalResult:
        """Metrics, mean loss and predicted-label counts over a (possibly sharded) evaluation split."""
        logits, labels = _gather_outputs(model, loader, accelerator)
        task = self.task
        if task.is_regression:
            predictions = logits.squeeze(-1)
            loss = F.mse_loss(predictions, labels.float()).item()
            counts: dict[str, int] = {}
        else:
            predictions = logits.argmax(-1)
            loss = F.cross_entropy(logits, labels).item()
            tally = torch.bincount(predictions, minlength=task.num_labels).tolist()
            counts = dict(zip(task.label_names, tally, strict=True))
        metrics = compute_metrics(task.metrics, predictions.numpy(), labels.numpy(), num_labels=task.num_labels)
        return EvalResult(metrics, loss, counts, len(labels))

    def predict(self, model, loader: DataLoader, accelerator: Accelerator, tokenizer, items: list,
                recipe: Recipe) -> list[dict[str, Any]]:
        """The label and every class's probability per example (the score for regression)."""
        logits, _ = _gather_outputs(model, loader, accelerator)
        rows = []
        for item, row in zip(items, logits, strict=True):
            out: dict[str, Any] = {"text": item.text_a, **({"text_pair": item.text_b} if item.text_b else {})}
            if self.task.is_regression:
                out["score"] = row[0].item()
            else:
                probabilities = row.softmax(-1).tolist()
                out["label"] = self.task.label_names[int(row.argmax())]
                out["probabilities"] = dict(zip(self.task.label_names, probabilities, strict=True))
            rows.append(out)
        return rows


class TokenPipeline:
    """Named-entity recognition: word tags aligned to sub-words, seqeval entity-level scores."""

    task_type = TOKEN

    def __init__(self, task: TokenTaskSpec):
        self.task = task
        self.metrics, self.default_metric = task.metrics, task.default_metric
        self.label2id = {label: i for i, label in enumerate(task.label_names)}

    def read(self, recipe: Recipe, split: str) -> list | None:
        data = recipe.data
        return read_split(recipe, split, read_tagged,
                          lambda name: load_hub_tagged(data.dataset, data.dataset_config, name),
                          "CoNLL columns, or JSON/JSONL with tokens and ner_tags")

    def labelled(self, items: list) -> bool:
        return bool(items) and items[0].tags is not None

    def label_counts(self, items: list) -> dict[str, int]:
        return {}

    def load_model(self, name: str, trust_remote_code: bool = False, dtype: str = "float32") -> PreTrainedModel:
        names = self.task.label_names
        config = load_pretrained(AutoConfig.from_pretrained, name, "model config", trust_remote_code=trust_remote_code,
                       num_labels=len(names), id2label=dict(enumerate(names)),
                       label2id={label: i for i, label in enumerate(names)})
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # a fresh token-classification head is expected
        try:
            return load_pretrained(AutoModelForTokenClassification.from_pretrained, name, "model", config=config,
                                   trust_remote_code=trust_remote_code, dtype=weights_dtype(dtype))
        finally:
            transformers.logging.set_verbosity(verbosity)

    def encode(self, items: list, tokenizer, recipe: Recipe) -> list[dict[str, Any]]:
        return encode_tagged(items, tokenizer, self.label2id, recipe.data.max_length,
                             label_all_tokens=recipe.data.label_all_tokens)

    def encode_text(self, text: str, text_pair: str | None, tokenizer, recipe: Recipe) -> dict[str, Any]:
        """One unlabelled sentence typed by a user, split into words at whitespace."""
        refuse_pair(text_pair, self.task.name)
        return self.encode([TaggedSentence(text.split(), None)], tokenizer, recipe)[0]

    def inputs_only(self, feature: dict[str, Any]) -> dict[str, Any]:
        return without_labels(feature)

    def collator(self, tokenizer):
        return token_collator(tokenizer)

    def evaluate(self, model, loader: DataLoader, accelerator: Accelerator, tokenizer) -> EvalResult:
        """seqeval over the first sub-word of each word (positions labelled -100 are skipped)."""
        logits, labels = _gather_outputs(model, loader, accelerator, pad_dim=1)
        real = labels != IGNORE_INDEX
        loss = F.cross_entropy(logits[real], labels[real]).item()
        predictions = logits.argmax(-1)
        names = self.task.label_names
        predicted_tags = [[names[p] for p, keep in zip(row, mask, strict=True) if keep]
                          for row, mask in zip(predictions.tolist(), real.tolist(), strict=True)]
        reference_tags = [[names[t] for t in row if t != IGNORE_INDEX] for row in labels.tolist()]
        tally = torch.bincount(predictions[real], minlength=len(names)).tolist()
        return EvalResult(seqeval_metrics(predicted_tags, reference_tags), loss, dict(zip(names, tally, strict=True)),
                          len(reference_tags))

    def predict(self, model, loader: DataLoader, accelerator: Accelerator, tokenizer, items: list,
                recipe: Recipe) -> list[dict[str, Any]]:
        """One tag per word, read at the word's first sub-word (words cut off by max_length get none)."""
        logits, _ = _gather_outputs(model, loader, accelerator, pad_dim=1)
        predicted = logits.argmax(-1).tolist()
        encoded = tokenizer([item.tokens for item in items], is_split_into_words=True, truncation=True,
                            max_length=recipe.data.max_length)
        rows = []
        for index, (item, tags) in enumerate(zip(items, predicted, strict=True)):
            first_pieces, seen = [], set()
            for position, word in enumerate(encoded.word_ids(index)):
                if word is not None and word not in seen:
                    seen.add(word)
                    first_pieces.append(position)
            rows.append({"tokens": item.tokens, "tags": [self.task.label_names[tags[i]] for i in first_pieces]})
        return rows


class Seq2SeqPipeline:
    """Translation: teacher-forced loss for training, generation scored with sacrebleu for evaluation."""

    task_type = SEQ2SEQ

    def __init__(self, task: Seq2SeqTaskSpec, recipe: Recipe):
        self.task = task
        self.metrics, self.default_metric = task.metrics, task.default_metric
        self.source_lang = recipe.data.source_lang or task.source_lang
        self.target_lang = recipe.data.target_lang or task.target_lang
        self.max_target_length = recipe.data.max_target_length
        self.num_beams = recipe.train.num_beams

    def read(self, recipe: Recipe, split: str) -> list | None:
        data, source, target = recipe.data, self.source_lang, self.target_lang
        return read_split(recipe, split, lambda path: read_translation(path, source, target,
                                                                        require_target=split != "test"),
                          lambda name: load_hub_translation(data.dataset, data.dataset_config, name, source, target),
                          "a Moses-style prefix such as wmt16_en_ro/newsdev2016, or JSON/JSONL translation rows")

    def labelled(self, items: list) -> bool:
        return bool(items) and items[0].target is not None

    def label_counts(self, items: list) -> dict[str, int]:
        return {}

    def load_model(self, name: str, trust_remote_code: bool = False, dtype: str = "float32") -> PreTrainedModel:
        return load_seq2seq(name, trust_remote_code, dtype)

    def encode(self, items: list, tokenizer, recipe: Recipe) -> list[dict[str, Any]]:
        return encode_translation(items, tokenizer, max_source_length=recipe.data.max_length,
                                  max_target_length=self.max_target_length, source_prefix=recipe.data.source_prefix)

    def encode_text(self, text: str, text_pair: str | None, tokenizer, recipe: Recipe) -> dict[str, Any]:
        """One source sentence typed by a user, without a target (features without labels)."""
        refuse_pair(text_pair, self.task.name)
        return dict(tokenizer(recipe.data.source_prefix + text, truncation=True, max_length=recipe.data.max_length))

    def inputs_only(self, feature: dict[str, Any]) -> dict[str, Any]:
        return without_labels(feature)

    def collator(self, tokenizer):
        return seq2seq_collator(tokenizer)

    def evaluate(self, model, loader: DataLoader, accelerator: Accelerator, tokenizer) -> EvalResult:
        """Teacher-forced loss, then generation (``train.num_beams``) scored with corpus BLEU and mean length."""
        model.eval()
        generator = accelerator.unwrap_model(model)
        pad = tokenizer.pad_token_id
        losses, hypotheses, references, lengths = [], [], [], []
        with torch.no_grad():
            for batch in loader:
                losses.append(accelerator.gather_for_metrics(model(**batch).loss.detach()[None]).float())
                generated = generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                               num_beams=self.num_beams, max_length=self.max_target_length)
                generated = accelerator.pad_across_processes(generated, dim=1, pad_index=pad)
                labels = accelerator.pad_across_processes(batch["labels"], dim=1, pad_index=IGNORE_INDEX)
                generated, labels = accelerator.gather_for_metrics((generated, labels))
                labels = labels.masked_fill(labels == IGNORE_INDEX, pad)
                hypotheses += tokenizer.batch_decode(generated, skip_special_tokens=True)
                references += tokenizer.batch_decode(labels, skip_special_tokens=True)
                lengths += (generated != pad).sum(-1).tolist()
        metrics = bleu_metrics([h.strip() for h in hypotheses], [r.strip() for r in references], lengths)
        return EvalResult(metrics, torch.cat(losses).mean().item(), {}, len(references))

    def predict(self, model, loader: DataLoader, accelerator: Accelerator, tokenizer, items: list,
                recipe: Recipe) -> list[dict[str, Any]]:
        """The translation of each source sentence (``train.num_beams`` beams)."""
        model.eval()
        generator, pad = accelerator.unwrap_model(model), tokenizer.pad_token_id
        translations = []
        with torch.no_grad():
            for batch in loader:
                generated = generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                               num_beams=self.num_beams, max_length=self.max_target_length)
                generated = accelerator.pad_across_processes(generated, dim=1, pad_index=pad)
                translations += tokenizer.batch_decode(accelerator.gather_for_metrics(generated),
                                                       skip_special_tokens=True)
        return [{"source": item.source, "translation": text.strip()}
                for item, text in zip(items, translations, strict=True)]


def _gather_outputs(model, loader: DataLoader, accelerator: Accelerator,
                    pad_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and labels (None when the batches carry none) of a whole split in loader order, gathered from every
    process (padding duplicates dropped). With ``pad_dim``, sequences are padded to the longest (labels with
    ``IGNORE_INDEX``)."""
    model.eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for batch in loader:
            logits, labels = model(**batch).logits.float(), batch.get("labels")
            if pad_dim is not None:  # batches differ in length across processes and steps
                logits = accelerator.pad_across_processes(logits, dim=pad_dim)
                if labels is not None:
                    labels = accelerator.pad_across_processes(labels, dim=pad_dim, pad_index=IGNORE_INDEX)
            if labels is None:
                all_logits.append(accelerator.gather_for_metrics(logits).cpu())
                continue
            logits, labels = accelerator.gather_for_metrics((logits, labels))
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
    if pad_dim is not None:
        width = max(t.shape[1] for t in all_logits)
        all_logits = [F.pad(t, (0, 0, 0, width - t.shape[1])) for t in all_logits]
        all_labels = [F.pad(t, (0, width - t.shape[1]), value=IGNORE_INDEX) for t in all_labels]
    return torch.cat(all_logits), torch.cat(all_labels) if all_labels else None


def pipeline_for(recipe: Recipe) -> Pipeline:
    """The pipeline of the recipe's task: GLUE (sequence), conll2003 (token), WMT16 (translation), or generation
    (``task: generation``, or a classification task with ``generation.template``)."""
    task = get_task(recipe.task)
    if recipe.generation.enabled:
        return GenerationPipeline(_answered_task(task, recipe), recipe)
    if isinstance(task, GenerationTaskSpec):
        if recipe.generation.answers is not None:
            raise UserError("generation.answers names a classification task's answer words and goes with "
                            "generation.template; free-form completions (--task generation) are scored by exact match")
        return GenerationPipeline(task, recipe)
    if recipe.generation != GenerationConfig():
        raise UserError(f"the generation settings apply to generative fine-tuning, and task {task.name} is trained "
                        "with a head: set generation.template to train it as answer words, or use --task generation")
    if isinstance(task, TokenTaskSpec):
        return TokenPipeline(task)
    if isinstance(task, Seq2SeqTaskSpec):
        return Seq2SeqPipeline(task, recipe)
    return SequencePipeline(task)


def _answered_task(task, recipe: Recipe) -> GenerationTaskSpec:
    """A classification task trained generatively: its rows through ``generation.template``, one answer per class."""
    if isinstance(task, GenerationTaskSpec):
        raise UserError("generation.template renders the rows of a classification task; --task generation reads "
                        "prompt/completion rows as they are: drop generation.template")
    if not isinstance(task, TaskSpec) or task.is_regression:
        raise UserError(f"generation.template renders the rows of a classification task, and {task.name} is not "
                        "one; for free-form completions use --task generation with prompt/completion rows")
    pair, fields = len(task.text_columns) == 2, template_fields(recipe.generation.template)
    if pair != ("text_pair" in fields):
        raise UserError(f"generation.template={recipe.generation.template!r} is invalid for {task.name}: "
                        + ("a sentence-pair task needs both {text} and {text_pair}" if pair else
                           "a single-sentence task has no {text_pair}"))
    answers = recipe.generation.answers or list(task.label_names)
    if len(answers) != task.num_labels:
        raise UserError(f"generation.answers={answers} is invalid: {task.name} has {task.num_labels} classes "
                        f"({', '.join(task.label_names)}), so give one answer for each, in that order")
    return answered(task, answers)
