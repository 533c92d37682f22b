"""The AD-DROP step (paper Fig. 3): attribute, build masks, and return the loss of the masked forward.

Usage, with any transformers model whose attention goes through ``AttentionInterface``::

    addrop = ADDrop(model, ADDropConfig(p=0.3, q=0.3, layers="all"))
    loss = addrop.loss(batch)          # instead of model(**batch).loss
    loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import PreTrainedConfig, PreTrainedModel

from addrop_cli.core.attention import IMPLEMENTATION, AttentionSite, ForwardState
from addrop_cli.core.attribution import attribution_labels, attribution_target, integrated_gradient_scale
from addrop_cli.core.masking import candidate_region, random_scores, sample_drops
from addrop_cli.core.settings import (
    CLASSIFICATION,
    CROSS,
    DECODER,
    ENCODER,
    IGNORE_INDEX,
    REGRESSION,
    SEQ2SEQ,
    TOKEN,
    ADDropConfig,
)
from addrop_cli.errors import UserError

PROBE_ENCODER_LENGTH, PROBE_DECODER_LENGTH = 5, 3


def infer_task_type(model: PreTrainedModel) -> str:
    """classification, regression, token or seq2seq, from the model's head and config."""
    name = type(model).__name__
    if model.config.is_encoder_decoder:
        return SEQ2SEQ
    if name.endswith("ForTokenClassification"):
        return TOKEN
    if model.config.problem_type == "regression" or getattr(model.config, "num_labels", 2) == 1:
        return REGRESSION
    return CLASSIFICATION


def install(model: PreTrainedModel) -> list[AttentionSite]:
    """Switch every attention of ``model`` to the ``addrop`` implementation and map its attention calls.

    Returns one :class:`AttentionSite` per attention call of a forward, in call order.
    Raises UserError for models whose attention does not go through ``AttentionInterface``.
    """
    model_type = getattr(model.config, "model_type", type(model).__name__)
    refusal = UserError(
        f"model type '{model_type}' ({type(model).__name__}) does not route its attention through "
        "transformers' AttentionInterface, so AD-DROP cannot reach it; use a model such as bert, roberta, "
        "electra, distilbert, albert, xlm-roberta, bart, t5 or marian, or train with --no-addrop"
    )
    # Decided by probing, not by the class's _supports_attention_backend flag, which some models that do
    # dispatch through the interface (Marian) leave False.
    model.set_attn_implementation(IMPLEMENTATION)
    # EncoderDecoderModel keeps stale copies of its sub-configs: set the implementation on every config.
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PreTrainedConfig):
            config._attn_implementation = IMPLEMENTATION
    try:
        sites = probe_sites(model)
    except TypeError:  # a forward that rejects the per-forward state keyword does not dispatch through it
        raise refusal from None
    if not sites:
        raise refusal
    return sites


def probe_sites(model: PreTrainedModel) -> list[AttentionSite]:
    """Run one tiny forward and classify each attention call as encoder self-, decoder self- or cross-attention.

    Encoder and decoder inputs get different lengths, so a call's (query, key) lengths tell its kind.
    """
    device = next(model.parameters()).device
    inputs = {"input_ids": torch.ones(1, PROBE_ENCODER_LENGTH, dtype=torch.long, device=device)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.ones(1, PROBE_DECODER_LENGTH, dtype=torch.long, device=device)
    state = ForwardState(probe=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(**inputs, addrop_state=state)
    finally:
        model.train(was_training)
    sites, counts = [], {ENCODER: 0, DECODER: 0, CROSS: 0}
    for query_length, key_length, heads in state.shapes:
        if query_length == PROBE_ENCODER_LENGTH:
            kind = ENCODER
        elif key_length == PROBE_ENCODER_LENGTH:
            kind = CROSS
        else:
            kind = DECODER
        sites.append(AttentionSite(kind, counts[kind], heads))
        counts[kind] += 1
    return sites


def select_calls(sites: list[AttentionSite], kinds: list[str], layers: str | list[int]) -> tuple[int, ...]:
    """Call indices of the attention layers AD-DROP acts on: ``layers`` counts within each kind."""
    selected = []
    for kind in kinds:
        calls = [i for i, site in enumerate(sites) if site.kind == kind]
        if not calls:
            raise UserError(f"addrop.attention includes '{kind}', but this model has no {kind} attention layers")
        if layers == "first":
            indices = [0]
        elif layers == "all":
            indices = list(range(len(calls)))
        else:
            indices = list(layers)
            bad = [i for i in indices if i >= len(calls)]
            if bad:
                raise UserError(
                    f"addrop.layers={indices} is out of range: this model has {len(calls)} {kind} attention "
                    f"layers, valid indices are 0 to {len(calls) - 1}"
                )
        selected.extend(calls[i] for i in indices)
    return tuple(sorted(set(selected)))


def key_padding_mask(batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """(B, K) bool, True for the real keys an attention call of ``kind`` attends over."""
    if kind == DECODER:
        if "decoder_attention_mask" in batch:
            return batch["decoder_attention_mask"].bool()
        labels = batch["labels"]
        # Decoder inputs are the labels shifted right behind a start token.
        real = torch.ones_like(labels, dtype=torch.bool)
        real[:, 1:] = labels[:, :-1] != IGNORE_INDEX
        return real
    mask = batch.get("attention_mask")
    return torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask.bool()


@dataclass
class Attribution:
    """One attribution pass without dropping, per selected attention call (its index in a forward).

    Attributes:
        attention: call -> (B, H, Q, K) attention probabilities (those that multiply V).
        scores: call -> (B, H, Q, K) attribution scores of the configured method.
        logits: the model's logits, (B, C) or (B, T, C).
    All detached.
    """

    attention: dict[int, torch.Tensor]
    scores: dict[int, torch.Tensor]
    logits: torch.Tensor


class ADDrop:
    """Attribution-driven dropout for one model.

    Args:
        model: a transformers model, possibly wrapped by Accelerate/DDP. The attribution pass runs on
            the unwrapped module, so it never triggers a gradient all-reduce.
        config: the AD-DROP settings.
        task_type: classification, regression, token or seq2seq; inferred from the model when None.
    """

    def __init__(self, model: torch.nn.Module, config: ADDropConfig, task_type: str | None = None):
        self.model = model
        self.config = config
        self.base = extract_model_from_parallel(model, keep_fp32_wrapper=True)
        self.task_type = task_type or infer_task_type(self.base)
        self.sites = install(self.base)
        self.selected = select_calls(self.sites, config.attention, config.layers)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Steps 1-4 of Fig. 3: the loss of the second, masked forward (the only one to backpropagate).

        With ``unmasked_weight`` w > 0 (not in the paper): (1 - w) * masked loss + w * the loss of a plain
        forward. Dropping the highest-attribution positions shifts the masked forward's logits away from the
        predicted class; trained on alone, the model learns to offset that shift, and the offset carries over
        to unmasked inputs (benchmarks/drift.py). The plain term anchors the unmasked predictions.
        """
        state = ForwardState(drops=self.drop_masks(batch))
        masked = self.model(**batch, addrop_state=state).loss
        weight = self.config.unmasked_weight
        if weight == 0:
            return masked
        return (1 - weight) * masked + weight * self.model(**batch).loss

    def drop_masks(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Call index -> (B, H, Q, K) bool dropped positions (Eq. 7) for every selected layer."""
        return {call: sample_drops(cand, self.config.q) for call, cand in self.candidates(batch).items()}

    def candidates(
        self, batch: dict[str, torch.Tensor], scores: dict[int, torch.Tensor] | None = None
    ) -> dict[int, torch.Tensor]:
        """Call index -> (B, H, Q, K) bool candidate discard region (Eq. 6).

        ``scores`` (e.g. :attr:`Attribution.scores`) are used instead of computing them again, except under
        ``strategy: random``, whose region comes from fresh noise whatever the attribution.
        ``strategy: low`` takes the lowest-scoring keys instead, as many as ``high`` would take (see
        :func:`~addrop_cli.core.masking.candidate_region`).
        """
        highest = self.config.strategy != "low"
        if scores is None or self.config.strategy == "random":
            scores = self.scores(batch)
        regions = {}
        for call, score in scores.items():
            kind = self.sites[call].kind
            queries = key_padding_mask(batch, ENCODER if kind == ENCODER else DECODER)
            regions[call] = candidate_region(score, key_padding_mask(batch, kind), self.config.p, highest=highest,
                                             query_mask=queries)
        return regions

    def scores(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Call index -> (B, H, Q, K) attribution scores for the configured method."""
        if self.config.attribution == "rd" or self.config.strategy == "random":
            return self._random_scores(batch)  # no forward needed
        return self.attribute(batch).scores

    def attribute(self, batch: dict[str, torch.Tensor]) -> Attribution:
        """Attention, attribution scores (``addrop.attribution``) and logits of the selected layers, for
        inspecting what AD-DROP sees; nothing is dropped. ``strategy`` plays no part here."""
        method = self.config.attribution
        if method == "ga":
            return self._gradients(batch)
        attention, logits = self._record(batch, grad=False)
        if method == "aa":
            scores = attention
        elif method == "iga":
            scores = self._integrated_gradients(batch, attention, logits)
        else:
            scores = self._random_scores(batch)
        return Attribution(attention, scores, logits)

    # -- attribution methods --------------------------------------------------------------------------

    def _record(self, batch, grad: bool) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Forward recording the selected layers' attention probabilities; returns them and the logits."""
        state = ForwardState(record=frozenset(self.selected))
        with torch.set_grad_enabled(grad):
            logits = self.base(**batch, addrop_state=state).logits
        return state.recorded, logits

    def _target(self, logits: torch.Tensor, labels: torch.Tensor, batch) -> torch.Tensor:
        valid = batch.get("attention_mask") if self.task_type == TOKEN else None
        return attribution_target(logits, labels, self.task_type, valid)

    def _labels(self, logits: torch.Tensor, batch) -> torch.Tensor:
        return attribution_labels(logits, batch.get("labels"), self.task_type, self.config.labels == "gold")

    def _gradients(self, batch) -> Attribution:
        """GA, Eq. 5: one joint autograd.grad over all selected layers; no parameter .grad is written."""
        recorded, logits = self._record(batch, grad=True)
        target = self._target(logits, self._labels(logits, batch), batch)
        calls = list(recorded)
        # No retain_graph: the pass-1 graph is freed here, before the masked forward.
        grads = torch.autograd.grad(target, [recorded[c] for c in calls], allow_unused=True)
        scores = {c: torch.zeros_like(recorded[c]) if g is None else g for c, g in zip(calls, grads, strict=True)}
        return Attribution({c: recorded[c].detach() for c in calls}, scores, logits.detach())

    def _integrated_gradients(self, batch, attention: dict[int, torch.Tensor], logits: torch.Tensor
                              ) -> dict[int, torch.Tensor]:
        """IGA, Eq. 3, per layer: m forwards with that layer's attention scaled by k/m, others untouched."""
        labels = self._labels(logits, batch)
        steps = self.config.iga_steps
        scores = {}
        for call, probs in attention.items():
            total = torch.zeros_like(probs)
            for k in range(1, steps + 1):
                scaled = (probs * (k / steps)).requires_grad_(True)
                state = ForwardState(record=frozenset([call]), overrides={call: scaled})
                with torch.enable_grad():
                    step_logits = self.base(**batch, addrop_state=state).logits
                    (grad,) = torch.autograd.grad(self._target(step_logits, labels, batch), [scaled],
                                                  allow_unused=True)
                if grad is not None:
                    total += grad
            scores[call] = integrated_gradient_scale(probs, total, steps)
        return scores

    def _random_scores(self, batch) -> dict[int, torch.Tensor]:
        """RD: uniform noise, so Eq. 6 picks a random region of the same size as GA's."""
        encoder_length = batch["input_ids"].shape[1]
        decoder_length = key_padding_mask(batch, DECODER).shape[1] if DECODER in self.config.attention or \
            CROSS in self.config.attention else 0
        lengths = {ENCODER: (encoder_length, encoder_length), DECODER: (decoder_length, decoder_length),
                   CROSS: (decoder_length, encoder_length)}
        scores = {}
        for call in self.selected:
            site = self.sites[call]
            shape = torch.Size((batch["input_ids"].shape[0], site.num_heads, *lengths[site.kind]))
            scores[call] = random_scores(shape, batch["input_ids"].device)
        return scores

