"""HiddenCut (Chen et al., ACL 2021): during training, cut (zero) a contiguous span of each example's hidden
representations in the encoder layers, the span starting at one of the most-attended tokens.

Per selected layer l and example (the official code's ``attn_span_cutoff``):

    importance_t = mean over heads of Σ_queries A^l[h, query, t]            (attention token t receives)
    start ~ Uniform(the ⌊select_ratio · n⌋ most important tokens)           (n: real tokens of the example)
    H^l[start : start + ⌊ratio · n⌋] = 0                                    (clipped where the text ends)

The objective is the official script's: the task loss of a clean and a cut pass plus the Jensen-Shannon
divergence between their predictions,

    L = ½ (L_clean + L_cut) + γ · JS(P_clean ‖ P_cut)

(the official 1 · L_clean + 1 · L_cut + 1 · JS halved, so γ = 0.5 is its weight and the loss keeps plain
fine-tuning's scale). Both passes are one forward of the batch stacked on itself; only the second copy is cut.

Where this differs from the official code (a fork of transformers 2.3): the cut zeroes the layer's output
(reached with a forward hook on each encoder layer), where the fork zeroes the feed-forward output inside the
layer before its residual sum and LayerNorm; padding and special tokens ([CLS], [SEP], <s>, </s>) are never cut
and a span stops at the first of them, where the fork may cut them; JS is the textbook ½ KL(P ‖ M) + ½ KL(Q ‖ M)
(the fork computes ½ KL(M ‖ P) + ½ KL(M ‖ Q)).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn
from torch.nn import functional as F

from addrop_cli.core.methods.base import mean_over, stacked_twice, unwrapped
from addrop_cli.core.model_setup import infer_task_type
from addrop_cli.core.routes.base import ForwardState
from addrop_cli.core.routes.connect import calls_by_module, connect, select_calls
from addrop_cli.core.settings import ENCODER, IGNORE_INDEX, REGRESSION, SEQ2SEQ, TOKEN, HiddenCutConfig
from addrop_cli.errors import UserError

SPECIAL_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")


def attention_received(attention: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, K) attention each key receives: summed over the real query ``rows`` (B, Q), averaged over heads.

    Args:
        attention: (B, H, Q, K) attention probabilities of one layer.
    """
    return (attention.detach().float() * rows[:, None, :, None]).sum(-2).mean(1)


def span_lengths(real: torch.Tensor, eligible: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B,) span lengths: ⌊ratio · n⌋ of the n real tokens (special tokens counted, as the official code), at least
    1, and 0 for an example with no token that may be cut. ``real`` and ``eligible`` are (B, T) bool."""
    lengths = (real.sum(-1) * ratio).long().clamp(min=1)
    return torch.where(eligible.any(-1), lengths, torch.zeros_like(lengths))


def span_starts(importance: torch.Tensor, real: torch.Tensor, eligible: torch.Tensor, select_ratio: float
                ) -> torch.Tensor:
    """(B,) start positions, each drawn uniformly among the example's ⌊select_ratio · n⌋ (at least 1, at most as
    many as may be cut) most important ``eligible`` tokens (n: its real tokens). Shapes (B, T)."""
    ranked = importance.masked_fill(~eligible, float("-inf")).argsort(dim=-1, descending=True, stable=True)
    count = torch.minimum((real.sum(-1) * select_ratio).long().clamp(min=1), eligible.sum(-1).clamp(min=1))
    rank = (torch.rand(count.shape, device=count.device) * count).long().clamp(max=count - 1)
    return ranked.gather(-1, rank[:, None]).squeeze(-1)


def span_mask(starts: torch.Tensor, lengths: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: [start, start + length) of each example, stopped at its first position after ``start`` that
    may not be cut (a special token, padding, or the end). ``starts`` and ``lengths`` are (B,)."""
    positions = torch.arange(eligible.shape[-1], device=eligible.device)[None, :]
    after = positions >= starts[:, None]
    blocked = after & ~eligible
    stop = torch.where(blocked.any(-1), blocked.float().argmax(-1), eligible.shape[-1])
    return after & (positions < starts[:, None] + lengths[:, None]) & (positions < stop[:, None])


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, valid: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """JS(P_a ‖ P_b) = ½ KL(P_a ‖ M) + ½ KL(P_b ‖ M), M = ½ (P_a + P_b), summed over classes and averaged over
    the examples or the ``valid`` (N, T) positions. Logits (N, C) or (N, T, C)."""
    log_a, log_b = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    log_m = torch.logsumexp(torch.stack([log_a, log_b]), dim=0) - torch.log(torch.tensor(2.0))
    per_position = (F.kl_div(log_m, log_a, reduction="none", log_target=True).sum(-1)
                    + F.kl_div(log_m, log_b, reduction="none", log_target=True).sum(-1)) / 2
    return mean_over(per_position, valid)


def enclosing_layers(model: nn.Module, module_ids: list[int]) -> list[nn.Module]:
    """For each attention module (by id), the innermost ``ModuleList`` element holding it: its encoder layer."""
    named = dict(model.named_modules())
    name_of = {id(module): name for name, module in named.items()}
    layers = []
    for module_id in module_ids:
        parts = name_of[module_id].split(".")
        depth = max((i for i in range(1, len(parts)) if parts[i].isdigit()
                     and isinstance(named.get(".".join(parts[:i])), nn.ModuleList)), default=None)
        if depth is None:
            raise UserError(f"HiddenCut found no encoder layer list around {name_of[module_id]} in "
                            f"{type(model).__name__}; use --method addrop or rdrop")
        layers.append(named[".".join(parts[: depth + 1])])
    return layers


def special_token_ids(config, special_ids: Collection[int] | None) -> torch.Tensor:
    """The ids never cut: ``special_ids`` (a tokenizer's ``all_special_ids``), else the config's special ids."""
    if special_ids is None:
        special_ids = [value for key in SPECIAL_ID_KEYS if isinstance(value := getattr(config, key, None), int)]
    return torch.tensor(sorted(set(special_ids)), dtype=torch.long)


class _CutForward:
    """One HiddenCut forward of the stacked batch: its attention state and, per example of the cut copy, which
    tokens are real and which may be cut; counts the layers as their hooks fire."""

    def __init__(self, state: ForwardState, real: torch.Tensor, eligible: torch.Tensor):
        self.state, self.real, self.eligible = state, real, eligible
        self.layers_seen = 0
        self.cut = torch.zeros((), device=real.device)

    def mask(self, call: int, config: HiddenCutConfig) -> torch.Tensor:
        """(2B, T) bool: the cut span of each example of the second copy at attention ``call``'s layer."""
        copies = self.real.shape[0]
        importance = attention_received(self.state.recorded[call][copies:], self.real)
        starts = span_starts(importance, self.real, self.eligible, config.select_ratio)
        cut = span_mask(starts, span_lengths(self.real, self.eligible, config.ratio), self.eligible)
        self.cut = self.cut + cut.sum()
        return torch.cat([torch.zeros_like(cut), cut])


class HiddenCut:
    """HiddenCut for one encoder model (classification, regression or token classification).

    Args:
        model: a transformers encoder, possibly wrapped by Accelerate/DDP; its attention is reached through the
            attention route (:func:`~addrop_cli.core.routes.connect.connect`) and its layers through forward hooks.
        config: ratio, select_ratio, layers and js_weight.
        task_type: classification, regression or token; inferred from the model when None.
        special_ids: token ids never cut (a tokenizer's ``all_special_ids``; the config's special ids when None).
    """

    def __init__(self, model: nn.Module, config: HiddenCutConfig, task_type: str | None = None,
                 special_ids: Collection[int] | None = None):
        self.model, self.config = model, config
        self.base = unwrapped(model)
        self.task_type = task_type or infer_task_type(self.base)
        model_type = getattr(self.base.config, "model_type", type(self.base).__name__)
        if self.task_type == SEQ2SEQ or self.base.config.is_encoder_decoder:
            raise UserError(f"addrop.method=hiddencut cuts the token representations of encoder self-attention "
                            f"models, and model type '{model_type}' is an encoder-decoder; use --method addrop or "
                            "rdrop")
        if getattr(self.base, "is_activation_checkpointing", False):
            raise UserError("addrop.method=hiddencut with gradient checkpointing is not available (the recompute "
                            "would draw other spans); turn train.gradient_checkpointing off")
        self.route, sites = connect(self.base)
        if not any(site.kind == ENCODER for site in sites):
            raise UserError(f"addrop.method=hiddencut cuts encoder self-attention models only, and model type "
                            f"'{model_type}' has causal (decoder) attention; use --method addrop or rdrop")
        self.encoder_calls = [call for call, site in enumerate(sites) if site.kind == ENCODER]
        self.selected = frozenset(select_calls(sites, [ENCODER], config.layers, key="hiddencut.layers"))
        self.call_of = calls_by_module(sites)
        layers = enclosing_layers(self.base, [sites[call].module for call in self.encoder_calls])
        for layer in {id(layer): layer for layer in layers}.values():  # a layer shared by all (ALBERT) once
            layer.register_forward_hook(self._cut_output)
        self.special_ids = special_token_ids(self.base.config, special_ids)
        self._forward: _CutForward | None = None
        self._tally: torch.Tensor | None = None

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """½ (L_clean + L_cut) + js_weight × JS(clean ‖ cut) (no JS for regression: one score has no
        distribution), from one forward of the batch stacked on itself with the second copy cut."""
        ids = batch["input_ids"]
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
        eligible = real & ~torch.isin(ids, self.special_ids.to(ids.device))
        state = ForwardState(record=self.selected, call_of=self.call_of)
        self._forward = _CutForward(state, real, eligible)
        try:
            outputs = self.route.forward(self.model, stacked_twice(batch), state)
            if self._forward.layers_seen != len(self.encoder_calls):
                raise UserError(f"HiddenCut saw {self._forward.layers_seen} encoder layer outputs in a forward of "
                                f"{type(self.base).__name__}, expected {len(self.encoder_calls)}; use --method addrop "
                                "or rdrop")
            counts = torch.stack([self._forward.cut, real.sum() * len(self.selected)]).float()
        finally:
            self._forward = None
        self._tally = counts if self._tally is None else self._tally + counts
        loss = outputs.loss
        if self.config.js_weight > 0 and self.task_type != REGRESSION:
            clean, cut = outputs.logits.chunk(2)
            valid = batch["labels"] != IGNORE_INDEX if self.task_type == TOKEN else None
            loss = loss + self.config.js_weight * js_divergence(clean, cut, valid)
        return loss

    def take_drop_counts(self) -> torch.Tensor | None:
        """(cut, real) token positions over the cut layers since the last call; None when no step ran since."""
        tally, self._tally = self._tally, None
        return tally

    def _cut_output(self, module: nn.Module, args, output):
        """Forward hook on each encoder layer: in a HiddenCut forward, zero the span in a selected layer's output
        hidden states (a tensor, or the first item of a tuple); elsewhere (plain and evaluation forwards) nothing."""
        current = self._forward
        if current is None:
            return None
        call = self.encoder_calls[min(current.layers_seen, len(self.encoder_calls) - 1)]
        current.layers_seen += 1
        if call not in self.selected:
            return None
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        if hidden.dim() != 3 or hidden.shape[:2] != (2 * current.real.shape[0], current.real.shape[1]):
            raise UserError(f"HiddenCut needs (batch, length, hidden) layer outputs, and {type(module).__name__} "
                            f"gives {tuple(hidden.shape)}; use --method addrop or rdrop")
        cut = hidden.masked_fill(current.mask(call, self.config)[..., None], 0.0)
        return cut if isinstance(output, torch.Tensor) else (cut, *output[1:])
