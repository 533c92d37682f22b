"""The attention-route seam's contract: what a regularizer asks of a route and what every route shares.

A route runs ``model(**batch)`` with a :class:`ForwardState` in force at each attention call (record the
probabilities, apply drops, scale the context). Two implementations, one module each:
:mod:`~addrop_cli.core.routes.interface` (transformers' ``AttentionInterface``) and
:mod:`~addrop_cli.core.routes.hooks` (torch module hooks on eager models' attention-probability dropout).
Both describe their calls in a probe forward (:class:`ProbedCall`); :mod:`~addrop_cli.core.routes.connect`
picks the route and names the calls' kinds (:class:`AttentionSite`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from addrop_cli.core.blockwise_attention import RowBlock, row_blocks
from addrop_cli.errors import UserError

# The probe's input lengths: encoder-decoders get a shorter decoder input, so a call's lengths tell its kind.
PROBE_ENCODER_LENGTH, PROBE_DECODER_LENGTH = 5, 3


@dataclass(frozen=True)
class ProbedCall:
    """What one attention call of a probe forward looked like."""

    query_length: int
    key_length: int
    num_heads: int
    causal: bool
    variants: frozenset[str]
    module: int  # id() of the attention module


@dataclass(frozen=True)
class AttentionSite:
    """One attention call of a forward: its kind, its layer index among calls of that kind, and its module."""

    kind: str
    layer: int
    num_heads: int
    module: int = 0  # id() of the attention module


# What a call in ForwardState.keep keeps for the attribution: GA's factors or AA's.
GRADIENT, PROBABILITY = "gradient", "probability"


@dataclass
class KeptCall:
    """What one call in :attr:`ForwardState.keep` kept, instead of its (B, H, Q, K) probabilities where it can.

    Attributes:
        output: (B, Q, H, D) the attention output as the call returned it, in the graph (GA differentiates F with
            respect to it); value: (B, H, K, D) the values it was computed from, grouped KV heads repeated.
        query: (B, H, Q, D) the queries times the call's scaling; key: (B, H, K, D) repeated (AA recomputes its
            probabilities from them).
        probs: (B, H, Q, K) the probabilities that multiply V, where Q and K cannot give them again (attention
            dropout drew them, or a variant such as soft-capping shapes them).
    """

    output: torch.Tensor | None = None
    value: torch.Tensor | None = None
    query: torch.Tensor | None = None
    key: torch.Tensor | None = None
    probs: torch.Tensor | None = None


@dataclass
class ForwardState:
    """What one forward should do at each attention call, passed to :meth:`AttentionRoute.forward`.

    Attributes:
        record: call indices whose attention probabilities are kept (with autograd) in ``recorded``.
        keep: call index -> GRADIENT or PROBABILITY: what the call keeps in ``kept`` (a :class:`KeptCall`) for GA or
            AA, computing its attention as stock does (routes that cannot leave ``keep`` unserved).
        drops: call index -> (B, H, Q, K) bool, True where the position is masked out before softmax; or a
            function of a block of query rows (a :class:`~addrop_cli.core.blockwise_attention.RowBlock`) and its
            (B, 1, R, S) visible keys returning the block's (B, H, R, S) mask, asked for inside the forward (the
            route may ask for the whole call as one block).
        context_scale: call index -> alpha: the call's output A·V is multiplied by alpha (IGA, Eq. 3).
        probe: when True, each call is described in ``probed``.
        call_of: id(attention module) -> call index, when each module is called once per forward; calls are
            otherwise numbered in order.
    """

    record: frozenset[int] = frozenset()
    keep: dict[int, str] = field(default_factory=dict)
    drops: dict[int, torch.Tensor | Callable[[Any, torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    context_scale: dict[int, float] = field(default_factory=dict)
    probe: bool = False
    recorded: dict[int, torch.Tensor] = field(default_factory=dict)
    kept: dict[int, KeptCall] = field(default_factory=dict)
    visible: dict[int, torch.Tensor] = field(default_factory=dict)
    probed: list[ProbedCall] = field(default_factory=list)
    call_of: dict[int, int] | None = None
    calls: int = 0
    seen_masks: dict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = field(default_factory=dict)
    planned_blocks: dict[tuple, tuple[torch.Tensor, list[RowBlock]]] = field(default_factory=dict)

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
        sharing the result lets AD-DROP's candidate region reuse its work too."""
        signature = (None if attention_mask is None else id(attention_mask), query.shape[0], query.shape[-2],
                     key.shape[-2], causal)
        seen = self.seen_masks.get(signature)
        if seen is None or seen[0] is not attention_mask:  # holding the mask keeps its id from being reused
            seen = self.seen_masks[signature] = (attention_mask, visible_keys(attention_mask, query, key, causal))
        return seen[1]

    def row_blocks(self, visible: torch.Tensor, heads: int) -> list[RowBlock]:
        """:func:`~addrop_cli.core.blockwise_attention.row_blocks`, planned once per visible-keys tensor (the
        layers of a forward share it, see :meth:`visible_keys`)."""
        signature = (id(visible), heads)
        planned = self.planned_blocks.get(signature)
        if planned is None or planned[0] is not visible:  # holding the tensor keeps its id from being reused
            planned = self.planned_blocks[signature] = (visible, row_blocks(visible, heads))
        return planned[1]


class AttentionRoute(Protocol):
    """How a regularizer reaches a model's attention calls.

    ``state_per_call``: True when the state travels with each attention call (so a layer recomputed by gradient
    checkpointing meets its own forward's state whatever ran since); False when it stays in force only until the
    model's next forward starts. ``keeps_factors``: whether the route serves :attr:`ForwardState.keep` (attribution
    without each layer's probabilities) and asks for drops block by block.
    """

    state_per_call: bool
    keeps_factors: bool

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], state: ForwardState) -> Any:
        """``model(**batch)`` with ``state`` in force at every attention call."""
        ...


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


def visible_from_probs(probs: torch.Tensor) -> torch.Tensor:
    """(B, 1, Q, K) bool: keys with a non-zero probability in some head, i.e. not masked by the model."""
    return (probs > 0).any(dim=1, keepdim=True)


def hides_every_later_key(visible: torch.Tensor) -> bool:
    """Whether a call's (B, 1, Q, K) visible keys are causal: no query row sees a key after its own position
    (aligned at the end, as :func:`visible_keys`). A single query row is never taken as causal."""
    q_len, k_len = visible.shape[-2:]
    later = torch.ones(q_len, k_len, dtype=torch.bool, device=visible.device).triu(k_len - q_len + 1)
    return q_len > 1 and not bool((visible & later).any())


def probe_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The probe forward's inputs: one unpadded example of ``PROBE_ENCODER_LENGTH`` tokens, and for an
    encoder-decoder a decoder input of ``PROBE_DECODER_LENGTH``."""
    device = next(model.parameters()).device
    inputs = {"input_ids": torch.ones(1, PROBE_ENCODER_LENGTH, dtype=torch.long, device=device)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.ones(1, PROBE_DECODER_LENGTH, dtype=torch.long, device=device)
    return inputs


@contextmanager
def probing(model: torch.nn.Module) -> Iterator[None]:
    """The probe forward's conditions: eval mode (no dropout) and no gradients, the mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
