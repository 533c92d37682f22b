"""AD-DROP inside transformers' own attention dispatch.

We register one attention function, ``"addrop"``, with :class:`transformers.AttentionInterface` and the
matching mask builder with ``AttentionMaskInterface`` (without the latter, padding masks arrive as None).
A model switched to it behaves exactly like its stock attention unless a :class:`ForwardState` is passed to
its forward as the keyword argument ``addrop_state``; transformers hands that keyword down to every
attention call, so the state is per forward, never global and never stored on modules.

Per attention call the state picks one of three modes:

- off: the stock computation (transformers' sdpa function, or the eager formula for the variants sdpa
  cannot run: Gemma2's logit soft-capping and gpt-oss's attention sinks);
- record: eager attention, keeping with autograd the probabilities that multiply V (after softmax and
  attention dropout, as in the reference code, so that random attention dropout cannot zero attributions);
- apply: the model's own mask with the dropped positions removed from it.

What a query row can see (its *visible* keys) is read from the mask the model built for that call:
padding, causal and sliding-window masks all arrive there, and a None mask means "everything" or, for a
causal call, the causal triangle (transformers then relies on sdpa's ``is_causal``). Record and apply
modes use exactly that mask; apply never lets a row lose all its visible keys.

A call is identified by its attention module when every module is called once per forward (the probe
checks it): then gradient checkpointing, which calls a layer's attention again during backward, reaches
the same call. Otherwise (ALBERT shares one module across layers) calls are numbered by their order within
the forward. ``layer_idx`` is not used: Marian's encoder leaves it None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from addrop_cli.core.masking import allowed_keys
from addrop_cli.errors import UserError

IMPLEMENTATION = "addrop"

# Keyword arguments of an attention call that change its result and that the eager path reproduces.
SOFTCAP, SINKS, POSITION_BIAS = "softcap", "s_aux", "position_bias"
# Keyword arguments that do not change the result of a whole-sequence forward (or are already in the mask).
NEUTRAL_KWARGS = frozenset({"sliding_window", "position_ids", "cache_position", "use_cache", "output_attentions",
                            "is_causal", "layer_idx", "deterministic"})  # deterministic: flash-attention's backward


@dataclass(frozen=True)
class ProbedCall:
    """What one attention call of a probe forward looked like."""

    query_length: int
    key_length: int
    num_heads: int
    causal: bool
    variants: frozenset[str]
    module: int  # id() of the attention module


@dataclass
class ForwardState:
    """What one forward should do at each attention call, passed as ``model(..., addrop_state=state)``.

    Attributes:
        record: call indices whose attention probabilities are kept (with autograd) in ``recorded``.
        drops: call index -> (B, H, Q, K) bool, True where the position is masked out before softmax; or a
            function of the call's (B, 1, Q, K) visible keys returning that mask (drawn inside the forward,
            for regions that need no attribution pass).
        context_scale: call index -> alpha: the call's output A·V is multiplied by alpha (IGA, Eq. 3).
        probe: when True, each call is described in ``probed``.
        call_of: id(attention module) -> call index, when each module is called once per forward; calls are
            otherwise numbered in order.
    """

    record: frozenset[int] = frozenset()
    drops: dict[int, torch.Tensor | Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    context_scale: dict[int, float] = field(default_factory=dict)
    probe: bool = False
    recorded: dict[int, torch.Tensor] = field(default_factory=dict)
    visible: dict[int, torch.Tensor] = field(default_factory=dict)
    probed: list[ProbedCall] = field(default_factory=list)
    call_of: dict[int, int] | None = None
    calls: int = 0
    seen_masks: dict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = field(default_factory=dict)

    def next_call(self, module: torch.nn.Module) -> int:
        """This call's index: its module's, or the next in order."""
        if self.call_of is not None:
            if id(module) not in self.call_of:
                raise UserError(f"{type(module).__name__} was not among the attention calls ADDrop found; build "
                                "ADDrop after wrapping the model (peft, compile), not before")
            return self.call_of[id(module)]
        self.calls += 1
        return self.calls - 1

    def visible_keys(self, attention_mask, query, key, causal: bool) -> torch.Tensor:
        """:func:`visible_keys`, computed once per mask: the layers of a forward share their mask tensor, and
        sharing the result lets :meth:`~addrop_cli.core.regularizer.ADDrop.candidates` reuse its work too."""
        signature = (None if attention_mask is None else id(attention_mask), query.shape[0], query.shape[-2],
                     key.shape[-2], causal)
        seen = self.seen_masks.get(signature)
        if seen is None or seen[0] is not attention_mask:  # holding the mask keeps its id from being reused
            seen = self.seen_masks[signature] = (attention_mask, visible_keys(attention_mask, query, key, causal))
        return seen[1]


def _is_causal(module: torch.nn.Module, kwargs: dict) -> bool:
    # Mirrors sdpa_attention_forward's own rule, so record/apply see the same mask sdpa would.
    flag = kwargs.get("is_causal")
    return bool(flag if flag is not None else getattr(module, "is_causal", True))


def visible_keys(
    attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, causal: bool
) -> torch.Tensor:
    """(B, 1, Q, K) bool, True for the keys each query row can see under the model's mask.

    A bool mask is taken as it is (True = attend), a float mask is additive (a large negative value hides a
    key); None means every key, or the causal triangle when the call is causal (aligned at the end, as with
    a cache, so query i sees keys up to K - Q + i).
    """
    batch, q_len, k_len = query.shape[0], query.shape[-2], key.shape[-2]
    if attention_mask is None:
        if causal and q_len > 1:
            positions = torch.arange(k_len, device=query.device)
            attention_mask = positions[None, :] <= positions[k_len - q_len :, None]
        else:
            attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device)
    elif attention_mask.dtype != torch.bool:
        attention_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    mask = attention_mask.reshape((1,) * (4 - attention_mask.dim()) + tuple(attention_mask.shape))
    return mask.expand(batch, 1, q_len, k_len)


def _variants(kwargs: dict) -> frozenset[str]:
    """The result-changing keyword arguments this call carries (softcap, sinks, position bias, unknown ones)."""
    return frozenset(name for name, value in kwargs.items() if value is not None and name not in NEUTRAL_KWARGS)


def eager_attention(module, query, key, value, allowed, dropout, scaling, kwargs, attributed: bool = False):
    """Attention written out, honouring soft-capping, sinks and position bias; returns (output, probs).

    Shapes: query (B, H, Q, D), key and value (B, H_kv, K, D), ``allowed`` broadcastable to (B, H, Q, K)
    bool. ``probs`` (B, H, Q, K) are the post-dropout probabilities that multiply V, kept in the graph;
    ``attributed`` makes them require grad even when nothing before them does.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scale, key.transpose(2, 3))  # scaling Q, not Q K^T: a K/D-th of the work
    if kwargs.get(SOFTCAP) is not None:  # Gemma2: cap the logits before the mask, as its eager code does
        scores = torch.tanh(scores / kwargs[SOFTCAP]) * kwargs[SOFTCAP]
    if kwargs.get(POSITION_BIAS) is not None:
        scores = scores + kwargs[POSITION_BIAS]
    scores = scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)  # a fresh tensor: in place is safe
    sinks = kwargs.get(SINKS)
    if sinks is not None:  # gpt-oss: one learnt logit per head joins the softmax, then is dropped
        sink_column = sinks.reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1).to(scores.dtype)
        probs = F.softmax(torch.cat([scores, sink_column], dim=-1), dim=-1, dtype=torch.float32)[..., :-1]
    else:
        probs = F.softmax(scores, dim=-1, dtype=torch.float32)
    probs = F.dropout(probs.to(query.dtype), p=dropout, training=module.training)
    if attributed and torch.is_grad_enabled() and not probs.requires_grad:
        # Nothing before this layer is trainable (LoRA on V or the MLP only, or on later layers only): the
        # attribution still needs dF/dA, and A has no upstream path to lose, so it becomes a leaf.
        probs.requires_grad_(True)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def _attend(module, query, key, value, allowed, attention_mask, dropout, scaling, kwargs):
    """The model's attention with ``allowed`` as its mask (None: the incoming mask, untouched)."""
    if kwargs.get(SOFTCAP) is not None or kwargs.get(SINKS) is not None:
        if allowed is None:
            allowed = visible_keys(attention_mask, query, key, _is_causal(module, kwargs))
        return eager_attention(module, query, key, value, allowed, dropout, scaling, kwargs)[0], None
    if allowed is not None:
        if attention_mask is not None and attention_mask.dtype != torch.bool:  # keep an additive mask's values
            allowed = torch.where(allowed, attention_mask.to(query.dtype), torch.finfo(query.dtype).min)
        attention_mask, kwargs = allowed, {**kwargs, "is_causal": False}  # causality is inside the mask now
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


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
        return _attend(module, query, key, value, None, attention_mask, dropout, scaling, kwargs)
    call = state.next_call(module)
    wanted = state.probe or call in state.record or call in state.drops
    visible = state.visible_keys(attention_mask, query, key, _is_causal(module, kwargs)) if wanted else None
    if state.probe:
        state.probed.append(_describe(module, query, key, visible, kwargs))
    if call in state.record:
        output, probs = eager_attention(module, query, key, value, visible, dropout, scaling, kwargs, True)
        state.recorded[call], state.visible[call] = probs, visible
    else:
        allowed = None
        if call in state.drops:
            drops = state.drops[call]
            allowed = allowed_keys(visible, drops(visible) if callable(drops) else drops)
        output, probs = _attend(module, query, key, value, allowed, attention_mask, dropout, scaling, kwargs)
    if call in state.context_scale:
        output = output * state.context_scale[call]
    return output, probs


def _describe(module, query: torch.Tensor, key: torch.Tensor, visible: torch.Tensor, kwargs: dict) -> ProbedCall:
    """A probe call's shape, whether its mask hides every later key (causal), and its variants."""
    q_len, k_len = query.shape[-2], key.shape[-2]
    later = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).triu(k_len - q_len + 1)
    causal = q_len > 1 and not bool((visible & later).any())
    return ProbedCall(q_len, k_len, query.shape[1], causal, _variants(kwargs), id(module))


class InterfaceRoute:
    """The interface route: the per-forward state travels as the ``addrop_state`` keyword down to every
    attention call (see the module docstring)."""

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], state: ForwardState):
        return model(**batch, addrop_state=state)


def register() -> None:
    """Make ``attn_implementation="addrop"`` known to transformers (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, addrop_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


register()
