"""Blockwise masked attention against stock sdpa with the whole mask: forward and gradients, on both paths."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from addrop_cli.core.blockwise_attention import (
    FusedCpuBlocks,
    RowBlock,
    blockwise_masked_attention,
    checkpointed_blocks,
    pack_bits,
    row_blocks,
    unpack_bits,
)
from addrop_cli.core.masking import allowed_keys


def visible_keys(batch: int, length: int, window: int | None = None, left_padding: int = 0) -> torch.Tensor:
    """(B, 1, Q, K) causal mask, optionally sliding, with the last example left-padded."""
    positions = torch.arange(length)
    visible = positions[None, :] <= positions[:, None]
    if window is not None:
        visible &= positions[None, :] > positions[:, None] - window
    visible = visible.expand(batch, 1, length, length).clone()
    visible[-1, :, :, :left_padding] = False
    return visible


def qkv(batch: int, heads: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, 8, generator=generator, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize(("window", "padding"), [(None, 0), (5, 0), (None, 7)])
def test_row_blocks_cover_each_row_once_and_every_key_it_sees(small_blocks, window, padding):
    visible = visible_keys(2, 40, window, padding)
    blocks = row_blocks(visible, heads=2)
    assert len(blocks) > 1
    rows = [row for block in blocks for row in range(40)[block.rows]]
    assert rows == list(range(40))
    for block in blocks:
        outside = visible[:, :, block.rows].clone()
        outside[..., block.keys] = False
        assert not outside.any()
    if window is not None:  # a sliding window narrows the spans
        assert blocks[-1].keys.start > 0


def test_a_call_within_the_budget_is_one_block():
    visible = visible_keys(2, 40)
    assert row_blocks(visible, heads=2) == [RowBlock.whole(40, 40)]


def test_packed_bits_round_trip():
    mask = torch.rand(2, 3, 5, 13) > 0.5
    assert torch.equal(unpack_bits(pack_bits(mask), 13), mask)


def drops_of(heads: int, length: int, seed: int = 1):
    """Random drops (30%) for every position, and the function handing out a block's share."""
    generator = torch.Generator().manual_seed(seed)
    whole = torch.rand(2, heads, length, length, generator=generator) < 0.3
    return whole, lambda block, seen: whole[:, :, block.rows, block.keys]


@pytest.mark.parametrize("path", ["fused_cpu", "checkpointed"])
@pytest.mark.parametrize(("window", "padding"), [(None, 0), (5, 0), (None, 7)])
def test_blockwise_attention_equals_stock_sdpa_with_the_whole_mask(small_blocks, path, window, padding):
    query, key, value = qkv(2, 3, 40)
    visible = visible_keys(2, 40, window, padding)
    whole, drops = drops_of(3, 40)
    blocks = row_blocks(visible, heads=3)
    if path == "fused_cpu":
        output = FusedCpuBlocks.apply(query, key, value, visible, drops, blocks, 0.3)
    else:
        output = checkpointed_blocks(query, key, value, visible, drops, blocks, 0.0, 0.3)
    stock = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed_keys(visible, whole), scale=0.3)
    upstream = torch.randn_like(stock)
    got = torch.autograd.grad(output, (query, key, value), upstream)
    expected = torch.autograd.grad(stock, (query, key, value), upstream)
    real = visible.any(-1, keepdim=True).expand_as(stock)  # rows that see some key (padding rows see none)
    # The bound asked for, 1e-5 relative; measured: at most 7e-7 of the largest entry, forward and gradients.
    torch.testing.assert_close(output[real], stock[real], rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_under_bf16_autocast_inputs_are_cast_as_sdpa_casts_them(small_blocks, dropout):
    """RoPE leaves Q and K in float32 while V is bf16: the fused kernel needs one dtype, as autocast gives sdpa."""
    query, key, value = qkv(2, 3, 40)
    visible = visible_keys(2, 40)
    whole, drops = drops_of(3, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = blockwise_masked_attention(query, key, value.bfloat16(), visible, drops, row_blocks(visible, 3),
                                            dropout)
        stock = F.scaled_dot_product_attention(query, key, value.bfloat16(), attn_mask=allowed_keys(visible, whole))
    assert output.dtype == torch.bfloat16
    if dropout == 0:  # bf16 rounding: measured 8e-3 at most (one bf16 step at values up to 2.9)
        torch.testing.assert_close(output, stock, rtol=2e-2, atol=2e-2)


def test_each_blocks_drops_are_asked_for_once(small_blocks):
    query, key, value = qkv(2, 3, 40)
    visible = visible_keys(2, 40)
    _, drops = drops_of(3, 40)
    asked = []
    blocks = row_blocks(visible, heads=3)
    output = FusedCpuBlocks.apply(query, key, value, visible, lambda b, s: asked.append(b) or drops(b, s), blocks,
                                  None)
    output.sum().backward()
    assert asked == blocks
