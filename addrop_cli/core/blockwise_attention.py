"""Masked attention over blocks of query rows, so that no (B, H, Q, K) tensor of a whole layer exists.

AD-DROP's masked forward gives every head and query row its own mask (Eq. 7). Handed to
``scaled_dot_product_attention`` whole, that mask is one (B, H, Q, K) tensor per layer, which the fused kernels
keep (as floats) for their backward: quadratic memory per layer, for every layer until the backward. Here a
layer's rows are split into blocks of at most ``BLOCK_ELEMENTS`` (B, H, R, K) positions, each block over the span
S of keys its rows can see (half the keys on average under a causal mask). Each block runs the fused kernel on
its own mask and keeps only that mask, bit-packed, for the backward, which runs the kernel's backward per block
(on a CPU without attention dropout) or recomputes the block first (activation checkpointing, elsewhere): a
layer holds B·H·Q·K / 8 bytes until the backward, and one block's float mask at a time.

Pure torch (numpy's packbits on a CPU), no model code. Shapes: B batch, H heads, Q query rows, K keys, D head size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from addrop_cli.core.masking import allowed_keys

# (B, H, R, K) positions of a block at most (4 MB as float32): the size that ran fastest on a 2-core CPU, from
# 128 tokens (MiniLM, batch 16) to 2,048 (8 heads: 32 blocks of 64 rows). A call within it is one block.
BLOCK_ELEMENTS = 1 << 20
BIT_WEIGHTS = 1 << torch.arange(8, dtype=torch.uint8)


@dataclass(frozen=True)
class RowBlock:
    """Query rows ``rows`` of an attention call, and the span ``keys`` of keys those rows can see."""

    rows: slice
    keys: slice

    @staticmethod
    def whole(queries: int, keys: int) -> RowBlock:
        return RowBlock(slice(0, queries), slice(0, keys))


def row_blocks(visible: torch.Tensor, heads: int) -> list[RowBlock]:
    """Blocks of consecutive query rows, each of at most ``BLOCK_ELEMENTS`` (B, H, R, K) positions (or one row), in
    row order.

    A block's key span runs from the first key any of its rows sees to the last (every key when none sees any,
    so such rows meet exactly the mask stock attention would).

    Args:
        visible: (B, 1, Q, K) bool, True for the keys each query row can see.
    """
    batch, _, queries, keys = visible.shape
    rows_per_block = max(1, BLOCK_ELEMENTS // (batch * heads * keys))
    if rows_per_block >= queries:
        return [RowBlock.whole(queries, keys)]
    seen = visible.any(0)[0]  # (Q, K): a key some example's row sees
    sees_any = seen.any(-1)
    first = torch.where(sees_any, seen.byte().argmax(-1), keys)
    last = torch.where(sees_any, keys - 1 - seen.flip(-1).byte().argmax(-1), -1)
    blocks = []
    for start in range(0, queries, rows_per_block):
        stop = min(start + rows_per_block, queries)
        low, high = int(first[start:stop].min()), int(last[start:stop].max()) + 1
        blocks.append(RowBlock(slice(start, stop), slice(low, high) if high > low else slice(0, keys)))
    return blocks


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(..., S) bool -> (..., ceil(S / 8)) uint8, eight positions a byte (the first in the lowest bit)."""
    if mask.device.type == "cpu":  # numpy's packbits: a twentieth of the time of the torch expression below
        return torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))
    padded = F.pad(mask, (0, -mask.shape[-1] % 8)).view(*mask.shape[:-1], -1, 8)
    return (padded.byte() * BIT_WEIGHTS.to(mask.device)).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_bits`: (..., ceil(S / 8)) uint8 -> (..., S) bool."""
    bits = (packed[..., None] & BIT_WEIGHTS.to(packed.device)) != 0
    return bits.flatten(-2)[..., :width]


@functools.cache
def _additive_bytes(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(256, 8): each byte's eight positions as additive mask values, 0 for a set bit and -inf otherwise."""
    bits = (torch.arange(256, dtype=torch.uint8, device=device)[:, None] & BIT_WEIGHTS.to(device)) != 0
    return torch.where(bits, 0.0, float("-inf")).to(dtype)


def additive_mask(packed: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """:func:`unpack_bits` as the additive mask the fused kernels use (0 where allowed, -inf elsewhere), by one
    table lookup per byte (faster than unpacking to bool and letting the kernel convert it)."""
    values = _additive_bytes(dtype, packed.device).index_select(0, packed.flatten().int())
    return values.view(*packed.shape[:-1], -1)[..., :width]


def _width(block: RowBlock) -> int:
    return block.keys.stop - block.keys.start


def packed_allowed(visible: torch.Tensor, drops, block: RowBlock) -> torch.Tensor:
    """The block's allowed keys (its visible ones less its drops, :func:`allowed_keys`), bit-packed: the one thing a
    block keeps for its backward."""
    seen = visible[:, :, block.rows, block.keys]
    return pack_bits(allowed_keys(seen, drops(block, seen)))


def _attend_block(query, key, value, packed, width: int, dropout: float, scale: float | None) -> torch.Tensor:
    """One block's fused attention under its unpacked mask; (B, H, R, D)."""
    return F.scaled_dot_product_attention(query, key, value, attn_mask=additive_mask(packed, width, query.dtype),
                                          dropout_p=dropout, scale=scale)


def checkpointed_blocks(query, key, value, visible, drops, blocks, dropout: float, scale: float | None):
    """:func:`blockwise_masked_attention` through the public ``scaled_dot_product_attention``, each block's forward
    run again in the backward (activation checkpointing, which replays the same dropout draws)."""
    outputs = []
    for block in blocks:
        packed = packed_allowed(visible, drops, block)
        outputs.append(checkpoint(_attend_block, query[:, :, block.rows], key[:, :, block.keys],
                                  value[:, :, block.keys], packed, _width(block), dropout, scale,
                                  use_reentrant=False))
    return torch.cat(outputs, dim=2)


class FusedCpuBlocks(torch.autograd.Function):
    """:func:`blockwise_masked_attention` on a CPU without attention dropout: per block, one call of the fused
    kernel sdpa itself runs there forward, and one of its backward, which takes the block's output and log-sum-exp
    (both (B, H, R)-sized) and its mask, unpacked again; no forward is recomputed."""

    @staticmethod
    def forward(ctx, query, key, value, visible, drops, blocks, scale):
        output = query.new_empty(query.shape[:-1] + value.shape[-1:])
        ctx.blocks, ctx.scale, ctx.packed, ctx.logsumexp = blocks, scale, [], []
        for block in blocks:
            packed = packed_allowed(visible, drops, block)
            mask = additive_mask(packed, _width(block), query.dtype)
            output[:, :, block.rows], logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query[:, :, block.rows], key[:, :, block.keys], value[:, :, block.keys], attn_mask=mask, scale=scale)
            ctx.packed.append(packed)
            ctx.logsumexp.append(logsumexp)
        ctx.save_for_backward(query, key, value, output)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, output = ctx.saved_tensors
        grad_query, grad_key, grad_value = torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)
        for block, packed, logsumexp in zip(ctx.blocks, ctx.packed, ctx.logsumexp, strict=True):
            rows, keys = block.rows, block.keys
            grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_output[:, :, rows], query[:, :, rows], key[:, :, keys], value[:, :, keys], output[:, :, rows],
                logsumexp, 0.0, False, attn_mask=additive_mask(packed, _width(block), query.dtype), scale=ctx.scale)
            grad_query[:, :, rows] = grads[0]
            grad_key[:, :, keys] += grads[1]
            grad_value[:, :, keys] += grads[2]
        return grad_query, grad_key, grad_value, None, None, None, None


def blockwise_masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    visible: torch.Tensor,
    drops: Callable[[RowBlock, torch.Tensor], torch.Tensor],
    blocks: list[RowBlock],
    dropout: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of each query row over its visible keys less the dropped ones, block by block.

    Equal to ``scaled_dot_product_attention`` with the whole mask ``allowed_keys(visible, drops)`` (so a row never
    loses every visible key), forward and gradients, up to float rounding. The drops of a block are asked for
    once, in the forward; the backward unpacks the block's mask again (:class:`FusedCpuBlocks` on a CPU without
    attention dropout, :func:`checkpointed_blocks` elsewhere).

    Args:
        query: (B, H, Q, D); key, value: (B, H, K, D) (grouped KV heads already repeated).
        visible: (B, 1, Q, K) bool, True for the keys each query row can see.
        drops: (block, its (B, 1, R, S) visible keys) -> (B, H, R, S) bool, True where a position is dropped.
        blocks: from :func:`row_blocks`.
    Returns:
        (B, H, Q, D).
    """
    device = query.device.type
    if torch.is_autocast_enabled(device):  # as autocast casts sdpa's inputs (RoPE leaves Q and K in float32)
        dtype = torch.get_autocast_dtype(device)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    if device == "cpu" and dropout == 0:
        return FusedCpuBlocks.apply(query, key, value, visible, drops, blocks, scale)
    return checkpointed_blocks(query, key, value, visible, drops, blocks, dropout, scale)
