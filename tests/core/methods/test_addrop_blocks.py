"""AD-DROP's drops built block by block inside the masked forward, against the whole-layer implementation
(ADDrop.candidates, stock attention with the whole mask) on real tiny models."""

from __future__ import annotations

import pytest
import torch
from tiny_models import DECODER_FAMILIES, decoder_batch, random_batch, tiny_classifier, tiny_decoder
from transformers import LlamaConfig, LlamaForSequenceClassification

from addrop_cli.core.blockwise_attention import row_blocks
from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.routes.base import ForwardState
from addrop_cli.core.settings import ADDropConfig


def model_and_batch(family: str):
    if family in ("bert", "roberta"):
        return tiny_classifier(family), random_batch(length=14)
    return tiny_decoder(family), decoder_batch("left" if family != "llama" else "right", length=14)


def each_block(addrop: ADDrop, visible: dict[int, torch.Tensor], call: int):
    for block in row_blocks(visible[call], addrop.sites[call].num_heads):
        yield block, visible[call][:, :, block.rows, block.keys]


def assert_blocks_match(addrop: ADDrop, batch, multiple_blocks: bool = True) -> dict[int, torch.Tensor]:
    """Each block's scores (at the keys its rows see) and candidates equal the whole layer's (attribute,
    candidates) on its rows and span, and no candidate lies outside the blocks."""
    whole = addrop.attribute(batch)
    reference = addrop.candidates(batch, whole)
    by_block = addrop.block_drops(batch)
    assert sorted(by_block) == sorted(reference) == list(addrop.selected)
    for call, drops in by_block.items():
        covered = torch.zeros_like(reference[call])
        blocks = list(each_block(addrop, whole.visible, call))
        assert len(blocks) > 1 or not multiple_blocks
        for block, seen in blocks:
            # Scores at keys a row cannot see go unused (values at padding differ between attention kernels).
            sees = seen.expand(-1, reference[call].shape[1], -1, -1)
            torch.testing.assert_close(drops.scores.block(block)[sees],
                                       whole.scores[call][:, :, block.rows, block.keys][sees])
            assert torch.equal(drops.region(block, seen), reference[call][:, :, block.rows, block.keys])
            covered[:, :, block.rows, block.keys] = True
        assert reference[call].any() and not (reference[call] & ~covered).any()
    return reference


@pytest.mark.parametrize("attribution", ["ga", "aa"])
@pytest.mark.parametrize("family", [*DECODER_FAMILIES, "bert", "roberta"])
def test_block_candidates_equal_the_whole_layer_candidates(small_blocks, family, attribution):
    """Padding (both sides), causal and sliding-window masks, soft-capping and sinks, grouped KV heads."""
    model, batch = model_and_batch(family)
    assert_blocks_match(ADDrop(model, ADDropConfig(p=0.3, q=0.3, layers="all", attribution=attribution)), batch)


@pytest.mark.parametrize("attribution", ["ga", "aa"])
def test_with_attention_dropout_block_candidates_equal_the_whole_layers_given_the_same_draws(small_blocks,
                                                                                           attribution):
    model, batch = tiny_classifier("bert"), random_batch(length=14)
    model.train()  # attention dropout 0.1: the attribution forward draws it, as the whole-layer one does
    addrop = ADDrop(model, ADDropConfig(p=0.3, q=0.3, layers="all", attribution=attribution))
    torch.manual_seed(3)
    whole = addrop.attribute(batch)
    reference = addrop.candidates(batch, whole)
    torch.manual_seed(3)
    for call, drops in addrop.block_drops(batch).items():
        for block, seen in each_block(addrop, whole.visible, call):
            assert torch.equal(drops.region(block, seen), reference[call][:, :, block.rows, block.keys])


def test_block_drops_equal_a_reference_drawn_from_the_same_stream(small_blocks):
    model, batch = tiny_decoder("mistral"), decoder_batch("left", length=14)
    addrop = ADDrop(model, ADDropConfig(p=0.5, q=0.5, layers="all"))
    whole = addrop.attribute(batch)
    reference = addrop.candidates(batch, whole)
    for call, drops in addrop.block_drops(batch).items():
        for block, seen in each_block(addrop, whole.visible, call):
            # Written out: the block's generator seeded from the call's seed plus its first row, four 15-bit draws
            # from each 64-bit word, dropped where a draw is below q 2^15.
            region = reference[call][:, :, block.rows, block.keys]
            generator = torch.Generator().manual_seed(drops.seed + block.rows.start)
            words = torch.empty((region.numel() + 3) // 4, dtype=torch.int64).random_(generator=generator)
            draws = (words.view(torch.int16)[: region.numel()] & 0x7FFF).view(region.shape)
            expected = region & (draws < 2**14)
            assert torch.equal(drops(block, seen), expected)
            assert torch.equal(drops(block, seen), expected)  # asked again (checkpointing): the same drops


def whole_masks(addrop: ADDrop, by_block, visible) -> dict[int, torch.Tensor]:
    """Each call's drops assembled from its blocks into one (B, H, Q, K) mask."""
    masks = {}
    for call, drops in by_block.items():
        mask = torch.zeros(visible[call].shape[0], addrop.sites[call].num_heads, *visible[call].shape[2:],
                           dtype=torch.bool)
        for block, seen in each_block(addrop, visible, call):
            mask[:, :, block.rows, block.keys] = drops(block, seen)
        masks[call] = mask
    return masks


def assert_masked_forward_equals_stock(model, addrop: ADDrop, batch):
    """The blockwise masked forward's loss and gradients equal the stock attention's under the same whole mask."""
    by_block = addrop.block_drops(batch)
    visible = addrop.attribute(batch).visible
    masks = whole_masks(addrop, by_block, visible)
    assert any(mask.any() for mask in masks.values())
    results = []
    for drops in (by_block, masks):
        loss = addrop.route.forward(model, batch, ForwardState(drops=drops, call_of=addrop.call_of)).loss
        results.append((loss, torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])))
    (loss, grads), (stock_loss, stock_grads) = results
    # The bound asked for, 1e-5 relative; measured: the losses equal, gradients within 6e-7 of their largest entry
    # (BERT's pooler gradients, ~1e-13 either way, only to 1e-12 absolute).
    torch.testing.assert_close(loss, stock_loss, rtol=1e-5, atol=0)
    for mine, theirs in zip(grads, stock_grads, strict=True):  # relative to each gradient's largest entry
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()) + 1e-12)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "bert"])
def test_blockwise_masked_forward_equals_stock_attention_with_the_same_mask(small_blocks, family):
    model, batch = model_and_batch(family)
    addrop = ADDrop(model, ADDropConfig(p=0.3, q=0.5, layers="all"))
    assert_masked_forward_equals_stock(model, addrop, batch)


def long_decoder() -> LlamaForSequenceClassification:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=0,
                         num_labels=2)
    return LlamaForSequenceClassification(config).eval()


def test_a_long_sequence_matches_the_whole_layer_implementation():
    """1,024 tokens, two examples (one left-padded by 100), blocks at their real size: candidates, drops drawn
    and masked forward as the whole-layer implementation and stock attention; q of the candidates dropped (rows
    whose scores all tie, as where no gradient reaches, have every visible key as candidate)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 100, (2, 1024), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :100] = 0
    batch = {"input_ids": input_ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask,
             "labels": torch.tensor([0, 1])}
    model = long_decoder()
    addrop = ADDrop(model, ADDropConfig(p=0.3, q=0.5, layers="all"))
    candidates = sum(int(region.sum()) for region in assert_blocks_match(addrop, batch).values())
    assert_masked_forward_equals_stock(model, addrop, batch)
    addrop.take_drop_counts()
    addrop.loss(batch)
    dropped, seen = addrop.take_drop_counts().tolist()
    assert seen == 2 * 4 * (1024 * 1025 // 2 + 924 * 925 // 2)  # layers, heads, each real row's visible keys
    assert abs(dropped / candidates - 0.5) < 0.01
