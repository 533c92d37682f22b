"""AD-DROP inside transformers' own attention dispatch.

We register one attention function, ``"addrop"``, with :class:`transformers.AttentionInterface` and the
matching mask builder with ``AttentionMaskInterface`` (without the latter, padding masks arrive as None).
A model switched to it behaves exactly like ``sdpa`` unless a :class:`ForwardState` is passed to its
forward as the keyword argument ``addrop_state``; transformers hands that keyword down to every attention
call, so the state is per forward, never global and never stored on modules.

Per attention call the state picks one of three modes:

- off: the stock sdpa function, unchanged;
- record: our eager attention, keeping with autograd the probabilities that multiply V (after softmax and
  attention dropout, as in the reference code, so that random attention dropout cannot zero attributions);
- apply: the incoming padding/causal mask combined with the dropped positions, then stock sdpa.

Calls are identified by their order within one forward (ALBERT shares one module across layers and
Marian's encoder has ``layer_idx = None``, so neither modules nor ``layer_idx`` identify a layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "addrop"


@dataclass(frozen=True)
class AttentionSite:
    """One attention call of a forward: its kind and its layer index among calls of that kind."""

    kind: str
    layer: int
    num_heads: int


@dataclass
class ForwardState:
    """What one forward should do at each attention call, passed as ``model(..., addrop_state=state)``.

    Attributes:
        record: call indices whose attention probabilities are kept (with autograd) in ``recorded``.
        drops: call index -> (B, H, Q, K) bool, True where the position is masked out before softmax.
        overrides: call index -> (B, H, Q, K) probabilities used instead of the computed ones (IGA's
            scaled attention, Eq. 3).
        probe: when True, each call's (query length, key length, heads) is appended to ``shapes``.
    """

    record: frozenset[int] = frozenset()
    drops: dict[int, torch.Tensor] = field(default_factory=dict)
    overrides: dict[int, torch.Tensor] = field(default_factory=dict)
    probe: bool = False
    recorded: dict[int, torch.Tensor] = field(default_factory=dict)
    shapes: list[tuple[int, int, int]] = field(default_factory=list)
    calls: int = 0


def _is_causal(module: torch.nn.Module, kwargs: dict) -> bool:
    # Mirrors sdpa_attention_forward's own rule, so record/apply see the same mask sdpa would.
    flag = kwargs.get("is_causal")
    return bool(flag if flag is not None else getattr(module, "is_causal", True))


def additive_mask(
    attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, causal: bool
) -> torch.Tensor | None:
    """The incoming mask as an additive float mask broadcastable to (B, H, Q, K), or None.

    Masked positions get ``finfo(dtype).min`` rather than -inf so that a fully masked row stays finite.
    """
    q_len, k_len = query.shape[-2], key.shape[-2]
    if attention_mask is None:
        if not (causal and q_len > 1):
            return None
        positions = torch.arange(k_len, device=query.device)
        attention_mask = (positions[None, :] <= positions[k_len - q_len :, None])[None, None]
    if attention_mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=query.dtype, device=query.device)
        return torch.where(attention_mask, zero, torch.finfo(query.dtype).min)
    return attention_mask.to(query.dtype)


def _recording_attention(module, query, key, value, attention_mask, dropout, scaling, override, kwargs):
    """Eager attention returning the post-dropout probabilities that multiply V, kept in the graph."""
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if kwargs.get("position_bias") is not None:
        scores = scores + kwargs["position_bias"]
    mask = additive_mask(attention_mask, query, key, _is_causal(module, kwargs))
    if mask is not None:
        scores = scores + mask
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    if override is not None:
        probs = override
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def addrop_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    addrop_state: ForwardState | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The function registered as ``"addrop"``; shapes as in transformers: query (B, H, Q, D)."""
    state = addrop_state
    if state is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    call = state.calls
    state.calls += 1
    if state.probe:
        state.shapes.append((query.shape[-2], key.shape[-2], query.shape[1]))
    if call in state.record:
        output, probs = _recording_attention(
            module, query, key, value, attention_mask, dropout, scaling, state.overrides.get(call), kwargs
        )
        state.recorded[call] = probs
        return output, probs
    drops = state.drops.get(call)
    if drops is not None:
        base = additive_mask(attention_mask, query, key, _is_causal(module, kwargs))
        if base is None:
            base = torch.zeros((), dtype=query.dtype, device=query.device)
        attention_mask = torch.where(drops, torch.finfo(query.dtype).min, base)
        kwargs["is_causal"] = False  # causality, if any, is now inside the mask
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def register() -> None:
    """Make ``attn_implementation="addrop"`` known to transformers (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, addrop_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


register()
