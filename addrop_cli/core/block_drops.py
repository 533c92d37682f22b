"""AD-DROP's drops built one block of query rows at a time, inside the masked forward (Eq. 5-7 without any
(B, H, Q, K) tensor of a whole layer).

GA needs no attention matrix: with O = A·V, ∂F/∂A = (∂F/∂O)·Vᵀ exactly, and ∂F/∂O and V are (B, H, Q, D). AA's
scores are softmax rows, recomputed from Q and K. A layer's :class:`BlockDrops` turns those factors into each
block's scores, candidates (Eq. 6, per row over its visible keys) and drops (Eq. 7) when the masked forward asks.

Drops are drawn from a generator of their own per block, seeded from the step's seed, the call and the block's
first row: a block recomputed by gradient checkpointing draws the same drops, whatever ran in between.

Pure torch, no model code. Shapes: B batch, H heads, Q query rows, K keys, R and S a block's rows and keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from addrop_cli.core.blockwise_attention import RowBlock
from addrop_cli.core.masking import candidate_region, sample_drops

# Seeds of distinct (step, call, first row) stay distinct: rows and calls are far below these strides.
CALL_STRIDE, STEP_STRIDE = 1 << 24, 1 << 36


class RowScores(Protocol):
    """Attribution scores of one attention call, one block at a time."""

    def block(self, block: RowBlock) -> torch.Tensor:
        """(B, H, R, S) scores of the block's rows over its key span, as float32."""
        ...


@dataclass(frozen=True)
class GradientRows:
    """GA (Eq. 5) from its factors: ∂F/∂A = (∂F/∂O)·Vᵀ.

    Attributes:
        grad_output: (B, H, Q, D) ∂F/∂O, O the call's attention output before its heads are merged.
        value: (B, H, K, D) the values O was computed from (grouped KV heads repeated).
    """

    grad_output: torch.Tensor
    value: torch.Tensor

    def block(self, block: RowBlock) -> torch.Tensor:
        rows, values = self.grad_output[:, :, block.rows], self.value[:, :, block.keys]
        return torch.matmul(rows, values.transpose(-1, -2)).float()


@dataclass(frozen=True)
class ProbabilityRows:
    """AA: the attention probabilities, recomputed per block from the call's scaled queries and its keys.

    Attributes:
        query: (B, H, Q, D), already multiplied by the call's scaling.
        key: (B, H, K, D) (grouped KV heads repeated).
        visible: (B, 1, Q, K) bool, the keys each row can see under the model's mask.
    """

    query: torch.Tensor
    key: torch.Tensor
    visible: torch.Tensor

    def block(self, block: RowBlock) -> torch.Tensor:
        logits = torch.matmul(self.query[:, :, block.rows], self.key[:, :, block.keys].transpose(-1, -2))
        logits = logits.masked_fill_(~self.visible[:, :, block.rows, block.keys], torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1, dtype=torch.float32).to(self.query.dtype).float()


@dataclass(frozen=True)
class WholeRows:
    """Scores held whole, (B, H, Q, K): AA's probabilities where attention dropout made them random."""

    scores: torch.Tensor

    def block(self, block: RowBlock) -> torch.Tensor:
        return self.scores[:, :, block.rows, block.keys].float()


def block_generator(seed: int, block: RowBlock, device: torch.device) -> torch.Generator:
    """The generator a block's drops come from: a function of the call's seed and the block's first row."""
    return torch.Generator(device=device).manual_seed(seed + (block.rows.start or 0))


def call_seed(step_seed: int, call: int) -> int:
    """The seed of one call's blocks (see :func:`block_generator`), from the step's seed."""
    return step_seed * STEP_STRIDE + call * CALL_STRIDE


@dataclass
class BlockDrops:
    """One attention call's drops, block by block: Eq. 6 over each row's visible keys, then Eq. 7.

    Attributes:
        scores: the call's attribution scores.
        real_rows: (B, Q) bool, the real query rows (padding rows get no candidates).
        p, q: Eq. 6's candidate share and Eq. 7's drop probability.
        highest: candidates are the highest scores (False: as many of the lowest, the prior experiment).
        seed: the call's seed (:func:`call_seed`).
        tally: called once per block with its drops and the (B, 1, R, S) keys its real rows see.
    """

    scores: RowScores
    real_rows: torch.Tensor
    p: float
    q: float
    highest: bool
    seed: int
    tally: Callable[[torch.Tensor, torch.Tensor], None] | None = None
    counted: set[int] = field(default_factory=set)

    def seen(self, block: RowBlock, visible: torch.Tensor) -> torch.Tensor:
        """(B, 1, R, S) bool: the block's ``visible`` keys, for its real query rows only."""
        return visible & self.real_rows[:, None, block.rows, None]

    def region(self, block: RowBlock, visible: torch.Tensor) -> torch.Tensor:
        """(B, H, R, S) bool: the block's candidate discard region (Eq. 6), given its (B, 1, R, S) visible keys."""
        return self._region(block, self.seen(block, visible))

    def _region(self, block: RowBlock, seen: torch.Tensor) -> torch.Tensor:
        return candidate_region(self.scores.block(block), seen, self.p, highest=self.highest)

    def __call__(self, block: RowBlock, visible: torch.Tensor) -> torch.Tensor:
        """(B, H, R, S) bool: the block's drops (Eq. 7), the same however often the block is asked for."""
        seen = self.seen(block, visible)
        drops = sample_drops(self._region(block, seen), self.q, block_generator(self.seed, block, visible.device))
        if self.tally is not None and block.rows.start not in self.counted:  # checkpointing asks again
            self.counted.add(block.rows.start)
            self.tally(drops, seen)
        return drops
