"""AD-DROP, the paper's method (Fig. 3): attribute, build masks, and return the loss of the masked forward.

Usage, with any transformers model one of the attention routes reaches (:mod:`~addrop_cli.core.routes`)::

    addrop = ADDrop(model, ADDropConfig(p=0.3, q=0.3, layers="all"))
    loss = addrop.loss(batch)          # instead of model(**batch).loss
    loss.backward()
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial

import torch

from addrop_cli.core.attribution import attribution_labels, attribution_target, integrated_gradient_scale
from addrop_cli.core.block_drops import BlockDrops, GradientRows, ProbabilityRows, RowScores, WholeRows, call_seed
from addrop_cli.core.blockwise_attention import RowBlock
from addrop_cli.core.masking import candidate_region, padding_fill, random_scores, sample_drops
from addrop_cli.core.methods.base import unwrapped
from addrop_cli.core.model_setup import build_no_kv_cache, infer_task_type
from addrop_cli.core.routes.base import GRADIENT, PROBABILITY, AttentionSite, ForwardState
from addrop_cli.core.routes.connect import calls_by_module, connect, select_calls
from addrop_cli.core.settings import ENCODER, GENERATION, IGNORE_INDEX, SEQ2SEQ, TOKEN, ADDropConfig
from addrop_cli.errors import UserError


def query_rows(batch: dict[str, torch.Tensor], site: AttentionSite, encoder_decoder: bool) -> torch.Tensor:
    """(B, Q) bool, True for the real query rows of an attention call (padding rows get no candidates)."""
    if encoder_decoder and site.kind != ENCODER:
        if "decoder_attention_mask" in batch:
            return batch["decoder_attention_mask"].bool()
        labels = batch["labels"]
        # Decoder inputs are the labels shifted right behind a start token.
        real = torch.ones_like(labels, dtype=torch.bool)
        real[:, 1:] = labels[:, :-1] != IGNORE_INDEX
        return real
    mask = batch.get("attention_mask")
    return torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask.bool()


def attribution_dtype(precision: str, model: torch.nn.Module) -> torch.dtype | None:
    """The autocast dtype of the attribution pass (None: the run's own precision); UserError where the
    model's device cannot run it."""
    if precision == "same":
        return None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    device = next(model.parameters()).device.type
    if device == "cpu":  # CPU autocast in fp16 is emulated and slow, as train.mixed_precision=fp16 is refused
        usable, valid = dtype == torch.bfloat16, "bf16 or same"
    elif device == "cuda":
        usable, valid = dtype == torch.float16 or torch.cuda.is_bf16_supported(), "fp16 or same"
    else:
        usable, valid = torch.amp.is_autocast_available(device), "same"
    if not usable:
        raise UserError(f"addrop.attribution_precision={precision!r} cannot run on this {device} device: use "
                        f"{valid}")
    return dtype


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the language model (inside a peft wrapper, if any) takes ``logits_to_keep``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


@contextmanager
def parameters_frozen(model: torch.nn.Module):
    """Parameters not requiring grad for the duration: the attribution needs dF/dA only, so its forward
    records no graph before the first recorded attention, and nothing is kept for weight gradients."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


@contextmanager
def dropout_off(model: torch.nn.Module):
    """Every module in eval mode for the duration, then each back in the mode it had (the official IGA never
    restores it)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@dataclass
class Attribution:
    """One attribution pass without dropping, per selected attention call (its index in a forward).

    Attributes:
        attention: call -> (B, H, Q, K) attention probabilities (those that multiply V).
        scores: call -> (B, H, Q, K) attribution scores of the configured method.
        visible: call -> (B, 1, Q, K) bool, the keys each query row can see under the model's own mask.
        logits: the model's logits, (B, C) or (B, T, C); for a language model trained on completions, those of the
            positions predicting a completion token, (B, K, V) (see ADDrop._attribution_inputs).
    All detached.
    """

    attention: dict[int, torch.Tensor]
    scores: dict[int, torch.Tensor]
    visible: dict[int, torch.Tensor]
    logits: torch.Tensor


class ADDrop:
    """Attribution-driven dropout for one model.

    Args:
        model: a transformers model, possibly wrapped by Accelerate/DDP. The attribution pass runs on
            the unwrapped module, so it never triggers a gradient all-reduce.
        config: the AD-DROP settings.
        task_type: classification, regression, token, seq2seq or generation; inferred from the model when None.
    """

    def __init__(self, model: torch.nn.Module, config: ADDropConfig, task_type: str | None = None):
        self.model = model
        self.config = config
        self.base = unwrapped(model)
        self.task_type = task_type or infer_task_type(self.base)
        self.route, self.sites = connect(self.base)
        self.selected = select_calls(self.sites, config.attention, config.layers)
        self.call_of = calls_by_module(self.sites)
        if self.call_of is None and getattr(self.base, "is_activation_checkpointing", False):
            raise UserError(f"gradient checkpointing with AD-DROP needs one attention module per layer, and "
                            f"{type(self.base).__name__} shares them across layers; turn "
                            "train.gradient_checkpointing off")
        if config.unmasked_weight > 0 and not self.route.state_per_call and \
                getattr(self.base, "is_activation_checkpointing", False):
            # The plain forward would end the masked forward's state before the backward recomputes it.
            raise UserError("addrop.unmasked_weight > 0 with gradient checkpointing is not available for models on "
                            "the module-hook route (its state ends with the next forward); turn "
                            "train.gradient_checkpointing off or set unmasked_weight 0")
        build_no_kv_cache(self.base)
        self.attribution_dtype = attribution_dtype(config.attribution_precision, self.base)
        # A language model that can restrict its logits to given positions is attributed on those alone, whose
        # labels line up with its logits as a decoder's do (see _attribution_inputs).
        self._keeps_logits = self.task_type == GENERATION and accepts_logits_to_keep(self.base)
        self._target_task = SEQ2SEQ if self._keeps_logits else self.task_type
        # GA and AA on a route that keeps their factors build each layer's drops inside the masked forward.
        self._by_block = self.route.keeps_factors and config.attribution in ("ga", "aa")
        self._drop_tally: torch.Tensor | None = None  # (dropped, seen) positions since take_drop_counts()

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Steps 1-4 of Fig. 3: the loss of the second, masked forward (the only one to backpropagate).

        With ``unmasked_weight`` w > 0 (not in the paper): (1 - w) * masked loss + w * the loss of a plain
        forward. Dropping the highest-attribution positions shifts the masked forward's logits away from the
        predicted class; trained on alone, the model learns to offset that shift, and the offset carries over
        to unmasked inputs (benchmarks/drift.py). The plain term anchors the unmasked predictions.
        """
        if self.config.attribution == "rd" or self.config.strategy == "random":
            # A random region needs no attribution pass: it is drawn inside the masked forward, where each
            # call's visible keys are known.
            drops = {call: partial(self._random_drops, batch, call) for call in self.selected}
        elif self._by_block:
            drops = self.block_drops(batch)
        else:
            drops = self.drop_masks(batch)
        masked = self.route.forward(self.model, batch, ForwardState(drops=drops, call_of=self.call_of)).loss
        weight = self.config.unmasked_weight
        if weight == 0:
            return masked
        return (1 - weight) * masked + weight * self.model(**batch).loss

    def drop_masks(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Call index -> (B, H, Q, K) bool dropped positions (Eq. 7) for every selected layer, all at once: what
        :meth:`loss` uses for IGA and on the module-hook route (GA and AA on the interface route build each layer's
        drops inside the masked forward instead, see :meth:`block_drops`).

        Applied, a row whose every visible key is dropped keeps them all (the attention function spares it, see
        :func:`~addrop_cli.core.masking.allowed_keys`).
        """
        # The random strategy ignores the scores: skip the gradient pass, keep the visible keys (AA's scores are
        # the attention already recorded, so they cost nothing; candidates draws the noise).
        attribution = self._without_gradients(batch, "aa") if self.config.strategy == "random" else \
            self.attribute(batch)
        regions, seen = self._regions(batch, attribution)
        masks = {call: sample_drops(region, self.config.q) for call, region in regions.items()}
        for call, mask in masks.items():
            self._tally(mask, seen[call])
        return masks

    def block_drops(self, batch: dict[str, torch.Tensor]) -> dict[int, BlockDrops]:
        """Call index -> the call's drops (Eq. 6-7), built block by block of query rows when the masked forward
        reaches the call, from the attribution's factors (GA: ∂F/∂O and V; AA: scaled Q and K), so that no
        (B, H, Q, K) tensor of every selected layer exists at once.

        Each block's candidates equal :meth:`candidates`' over its rows; its drops come from a generator of its
        own seeded from the call, the block and one seed drawn per step from torch's global generator (see
        :mod:`~addrop_cli.core.block_drops`). Only for routes that keep factors, GA and AA.
        """
        scores = self._factor_scores(batch)
        step_seed = int(torch.randint(1 << 27, ()))
        return {call: BlockDrops(rows, query_rows(batch, self.sites[call], self.base.config.is_encoder_decoder),
                                 self.config.p, self.config.q, self.config.strategy != "low",
                                 call_seed(step_seed, call), self._tally)
                for call, rows in scores.items()}

    def _factor_scores(self, batch) -> dict[int, RowScores]:
        """The selected calls' scores as factors, from one forward keeping them (GA: and one gradient)."""
        gradient = self.config.attribution == "ga"
        state = ForwardState(keep=dict.fromkeys(self.selected, GRADIENT if gradient else PROBABILITY),
                             call_of=self.call_of)
        inputs, gold = self._attribution_inputs(batch)
        if not gradient:
            with self._attribution_precision(), torch.no_grad():
                self.route.forward(self.base, inputs, state)
            return {call: WholeRows(kept.probs) if kept.probs is not None else
                    ProbabilityRows(kept.query, kept.key, state.visible[call]) for call, kept in state.kept.items()}
        with self._attribution_precision(), parameters_frozen(self.base):
            logits = self.route.forward(self.base, inputs, state).logits
            target = self._target(logits, self._labels(logits, gold), batch)
            calls = list(state.kept)
            grads = torch.autograd.grad(target, [state.kept[c].output for c in calls], allow_unused=True)
        return {c: GradientRows((torch.zeros_like(state.kept[c].output) if g is None else g).transpose(1, 2),
                                state.kept[c].value) for c, g in zip(calls, grads, strict=True)}

    def _tally(self, drops: torch.Tensor, seen: torch.Tensor) -> None:
        """Count (B, H, Q, K) ``drops`` against the (B, 1|H, Q, K) positions real query rows can see, on the
        device (no synchronisation): what :meth:`take_drop_counts` reports."""
        counts = torch.stack([drops.sum(), seen.sum() * (drops.shape[1] // seen.shape[1])])
        self._drop_tally = counts if self._drop_tally is None else self._drop_tally + counts

    def take_drop_counts(self) -> torch.Tensor | None:
        """(dropped, seen) attention positions over the selected layers since the last call (None when no
        AD-DROP step ran since), as a float tensor for a cross-process sum; the count starts again."""
        tally, self._drop_tally = self._drop_tally, None
        return None if tally is None else tally.float()

    def candidates(self, batch: dict[str, torch.Tensor], attribution: Attribution | None = None
                   ) -> dict[int, torch.Tensor]:
        """Call index -> (B, H, Q, K) bool candidate discard region (Eq. 6) over each row's visible keys.

        ``attribution`` (from :meth:`attribute`) is used instead of computing it again. Under ``strategy:
        random`` the region comes from fresh noise whatever the attribution; under ``strategy: low`` it holds
        the lowest-scoring keys instead, as many as ``high`` would take (see
        :func:`~addrop_cli.core.masking.candidate_region`).
        """
        return self._regions(batch, attribution or self.attribute(batch))[0]

    def _regions(self, batch, attribution: Attribution) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """:meth:`candidates`, with each call's (B, 1|H, Q, K) keys that real query rows can see."""
        scores = attribution.scores
        if self.config.strategy == "random":
            scores = self._random_scores(attribution.visible)
        # Layers that share a mask share its rows' keys and fill (see padding_fill): computed once.
        prepared: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        regions, seen_by_call = {}, {}
        for call, score in scores.items():
            site, visible = self.sites[call], attribution.visible[call]
            if (id(visible), site.kind) not in prepared:
                seen = self._seen(batch, call, visible)
                prepared[id(visible), site.kind] = seen, padding_fill(seen, self.config.p)
            seen, fill = prepared[id(visible), site.kind]
            seen_by_call[call] = seen
            regions[call] = candidate_region(score, seen, self.config.p, highest=self.config.strategy != "low",
                                             fill=fill)
        return regions, seen_by_call

    def _seen(self, batch, call: int, visible: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """The visible keys of real query rows only (of ``rows``, those ``visible`` covers): padding query rows see
        nothing, so get no candidates."""
        real = query_rows(batch, self.sites[call], self.base.config.is_encoder_decoder)
        return visible & real[:, None, rows, None]

    def scores(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Call index -> (B, H, Q, K) attribution scores for the configured method."""
        return self.attribute(batch).scores

    def attribute(self, batch: dict[str, torch.Tensor]) -> Attribution:
        """Attention, attribution scores (``addrop.attribution``), visible keys and logits of the selected
        layers, for inspecting what AD-DROP sees; nothing is dropped. ``strategy`` plays no part here.

        With ``attribution_precision`` bf16 or fp16 the forward and its gradient run under autocast in that
        dtype (Eq. 6 only ranks positions); scores and attention come back in float32 for the ranking.
        """
        if self.attribution_dtype is None:
            return self._attribute(batch)
        with self._attribution_precision():
            found = self._attribute(batch)
        return Attribution({c: a.float() for c, a in found.attention.items()},
                           {c: s.float() for c, s in found.scores.items()}, found.visible, found.logits.float())

    def _attribution_precision(self):
        """Autocast in ``attribution_precision``'s dtype, or nothing when it is ``same``."""
        if self.attribution_dtype is None:
            return nullcontext()
        return torch.autocast(next(self.base.parameters()).device.type, dtype=self.attribution_dtype)

    def _attribute(self, batch) -> Attribution:
        if self.config.attribution == "ga":
            return self._gradients(batch)
        return self._without_gradients(batch, self.config.attribution)

    # -- attribution methods --------------------------------------------------------------------------

    def _without_gradients(self, batch, method: str) -> Attribution:
        """AA, IGA and RD: one recording forward without a graph, then the method's scores."""
        if method == "iga":  # as the official code: its m steps in eval mode, so deterministic
            with dropout_off(self.base):
                attention, visible, logits, _ = self._record(batch, grad=False)
                scores = self._integrated_gradients(batch, attention)
            return Attribution(attention, scores, visible, logits)
        attention, visible, logits, _ = self._record(batch, grad=False)
        scores = attention if method == "aa" else self._random_scores(visible)
        return Attribution(attention, scores, visible, logits)

    def _record(self, batch, grad: bool, context_scale: dict[int, float] | None = None, calls=None):
        """Forward recording the attention probabilities and visible keys of ``calls`` (default: the selected
        layers), with each call in ``context_scale`` scaling its A·V; returns them, the logits and the gold labels
        those line up with (see :meth:`_attribution_inputs`)."""
        state = ForwardState(record=frozenset(self.selected if calls is None else calls),
                             context_scale=context_scale or {}, call_of=self.call_of)
        inputs, gold = self._attribution_inputs(batch)
        with torch.set_grad_enabled(grad):
            logits = self.route.forward(self.base, inputs, state).logits
        return state.recorded, state.visible, logits, gold

    def _attribution_inputs(self, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The batch the attribution forward runs on, and the gold labels its logits line up with.

        A language model trained on completions gets no labels (F is computed here, not its loss) and projects
        onto its vocabulary only the K positions that predict a completion token in some row (``logits_to_keep``;
        the projection is about a fifth of a small LLM's forward, and a completion a few of its positions): logits
        (B, K, V), gold (B, K) the tokens they predict, ``IGNORE_INDEX`` where a row has none there. F is then the
        same as over every position, as the target ignores the others."""
        if self.task_type != GENERATION or not self._keeps_logits:
            return batch, batch.get("labels")
        labels = batch["labels"]
        positions = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().flatten()
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        return {**inputs, "logits_to_keep": positions}, labels[:, positions + 1]

    def _target(self, logits: torch.Tensor, labels: torch.Tensor, batch) -> torch.Tensor:
        valid = batch.get("attention_mask") if self.task_type == TOKEN else None
        return attribution_target(logits, labels, self._target_task, valid)

    def _labels(self, logits: torch.Tensor, gold: torch.Tensor | None) -> torch.Tensor:
        return attribution_labels(logits, gold, self._target_task, self.config.labels == "gold")

    def _gradients(self, batch) -> Attribution:
        """GA, Eq. 5: one joint autograd.grad over all selected layers; no parameter .grad is written."""
        with parameters_frozen(self.base):  # through the backward too: checkpointing recomputes in it
            recorded, visible, logits, gold = self._record(batch, grad=True)
            target = self._target(logits, self._labels(logits, gold), batch)
            calls = list(recorded)
            # No retain_graph: the pass-1 graph is freed here, before the masked forward.
            grads = torch.autograd.grad(target, [recorded[c] for c in calls], allow_unused=True)
        scores = {c: torch.zeros_like(recorded[c]) if g is None else g for c, g in zip(calls, grads, strict=True)}
        return Attribution({c: recorded[c].detach() for c in calls}, scores, visible, logits.detach())

    def _integrated_gradients(self, batch, attention: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """IGA, Eq. 3, as the reference code computes it: per layer, m forwards with that layer's context A·V
        scaled by alpha = k/m (other layers untouched), each taking its own pseudo label; the gradient is
        taken w.r.t. the unscaled A, i.e. alpha ∇F(alpha A), the literal ∂F(alpha A)/∂A of Eq. 3.
        Then B = A / m ⊙ Σ_k (that gradient)."""
        steps = self.config.iga_steps
        scores = {}
        for call, probs in attention.items():
            total = torch.zeros_like(probs)
            for k in range(1, steps + 1):
                with parameters_frozen(self.base):
                    recorded, _, step_logits, gold = self._record(batch, grad=True, context_scale={call: k / steps},
                                                            calls=[call])
                    target = self._target(step_logits, self._labels(step_logits, gold), batch)
                    (grad,) = torch.autograd.grad(target, [recorded[call]], allow_unused=True)
                if grad is not None:
                    total += grad
            scores[call] = integrated_gradient_scale(probs, total, steps)
        return scores

    def _random_drops(self, batch, call: int, block: RowBlock, visible: torch.Tensor) -> torch.Tensor:
        """RD's drops for one block of a call, given its (B, 1, R, S) visible keys: Eq. 6-7 on uniform noise."""
        seen = self._seen(batch, call, visible, block.rows)
        drops = sample_drops(candidate_region(self._noise(call, visible), seen, self.config.p), self.config.q)
        self._tally(drops, seen)
        return drops

    def _random_scores(self, visible: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """RD: uniform noise, so Eq. 6 picks a random region of the same size as GA's."""
        return {call: self._noise(call, seen) for call, seen in visible.items()}

    def _noise(self, call: int, visible: torch.Tensor) -> torch.Tensor:
        """(B, H, Q, K) uniform scores for one call, given its (B, 1, Q, K) visible keys."""
        batch_size, _, queries, keys = visible.shape
        return random_scores(torch.Size((batch_size, self.sites[call].num_heads, queries, keys)), visible.device)
