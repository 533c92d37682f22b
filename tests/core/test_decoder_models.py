"""Decoder-only classifiers (Qwen2, Llama, Mistral, Gemma2/3, gpt-oss, Qwen3, SmolLM3): masks that respect what
each attention row can see (padding, causal, sliding window), soft-capping and sinks, against stock attention."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from tiny_models import DECODER_FAMILIES, WINDOW, decoder_batch, tiny_decoder

from addrop_cli.core.masking import keep_counts
from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.routes.base import ForwardState
from addrop_cli.core.routes.connect import install
from addrop_cli.core.settings import DECODER, ADDropConfig
from addrop_cli.errors import UserError

SIDES = ["left", "right"]
DRAWS = 20


def inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def expected_visibility(model, batch: dict) -> list[torch.Tensor]:
    """(B, 1, Q, K) per layer, computed here from the config: padding ∧ causal ∧ sliding window."""
    real = batch["attention_mask"].bool()
    length = real.shape[1]
    query, key = torch.arange(length)[:, None], torch.arange(length)[None, :]
    causal = key <= query
    window = causal & (query - key < WINDOW)
    uniform = "sliding_attention" if getattr(model.config, "sliding_window", None) else "full_attention"
    layer_types = getattr(model.config, "layer_types", None) or [uniform] * model.config.num_hidden_layers
    masks = []
    for layer_type in layer_types:
        pattern = window if layer_type == "sliding_attention" else causal
        masks.append((pattern[None] & real[:, None, :])[:, None])
    return masks


def masked_outputs(model, batch: dict, drops: dict, input_ids: torch.Tensor):
    """Last hidden states (B, T, D) and per-position logits (B, T, C) of the masked forward on ``input_ids``."""
    out = model(input_ids=input_ids, attention_mask=batch["attention_mask"], addrop_state=ForwardState(drops=drops),
                output_hidden_states=True)
    hidden = out.hidden_states[-1]
    return hidden, model.score(hidden)


def hard_draws(model, side: str):
    """20 (draw, batch, drop masks), dropping hard (q up to 1) so that rows would empty without the guard."""
    for draw in range(DRAWS):
        batch = decoder_batch(side, seed=draw)
        torch.manual_seed(draw)
        config = ADDropConfig(p=(0.3, 0.5, 0.9)[draw % 3], q=(1.0, 0.7)[draw % 2], layers="all")
        yield draw, batch, ADDrop(model, config).drop_masks(batch)


@pytest.fixture(scope="module", params=DECODER_FAMILIES)
def family(request):
    model = tiny_decoder(request.param)
    stock = copy.deepcopy(model)  # its default implementation: sdpa, or eager for gemma2 and gpt-oss
    sites = install(model)
    return request.param, model, stock, sites


def test_self_attention_is_recognised_as_causal(family):
    _, model, _, sites = family
    assert [(s.kind, s.layer, s.num_heads) for s in sites] == [(DECODER, 0, 4), (DECODER, 1, 4)]
    assert ADDrop(model, ADDropConfig(layers="all")).selected == (0, 1)  # attention: auto
    assert ADDrop(model, ADDropConfig(attention=[DECODER], layers=[1])).selected == (1,)
    with pytest.raises(UserError, match="no encoder attention layers; it has decoder attention"):
        ADDrop(model, ADDropConfig(attention=["encoder"]))


@pytest.mark.parametrize("side", SIDES)
def test_nothing_dropped_equals_the_default_implementation(family, side):
    _, model, stock, sites = family
    batch = inputs(decoder_batch(side))
    expected = stock(**batch).logits
    nothing = {c: torch.zeros(3, 4, 12, 12, dtype=torch.bool) for c in range(len(sites))}
    for state in (None, ForwardState(record=frozenset(range(len(sites)))), ForwardState(drops=nothing)):
        torch.testing.assert_close(model(**batch, addrop_state=state).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", SIDES)
def test_candidates_are_visible_keys_counted_per_row(family, side):
    _, model, _, _ = family
    batch = decoder_batch(side)
    # Random scores have no ties (GA's rows that cannot reach the prediction are all-zero, so all tied).
    addrop = ADDrop(model, ADDropConfig(p=0.5, layers="all", attribution="rd"))
    attribution = addrop.attribute(batch)
    regions = addrop.candidates(batch, attribution)
    for call, visible in enumerate(expected_visibility(model, batch)):
        assert torch.equal(attribution.visible[call], visible)
        assert not (regions[call] & ~visible).any()
        n = visible.sum(-1).expand(-1, 4, -1)  # visible keys per row
        real_rows = batch["attention_mask"].bool()[:, None, :]  # padding query rows get no candidates
        assert torch.equal(regions[call].sum(-1), (n - keep_counts(n, 0.5)) * real_rows)


@pytest.mark.parametrize("side", SIDES)
def test_causal_integrity(family, side):
    """Changing tokens after position t never changes the masked forward's hidden states at positions <= t."""
    _, model, _, _ = family
    for draw, batch, drops in hard_draws(model, side):
        real = batch["attention_mask"].bool()
        t = 4 + draw % 6
        later = real.clone()
        later[:, : t + 1] = False
        changed = batch["input_ids"].masked_scatter(later, (batch["input_ids"][later] + 7) % 97 + 3)
        before, _ = masked_outputs(model, batch, drops, batch["input_ids"])
        after, _ = masked_outputs(model, batch, drops, changed)
        earlier = real & ~later
        torch.testing.assert_close(after[earlier], before[earlier], atol=1e-6, rtol=0)


@pytest.mark.parametrize("side", SIDES)
def test_padding_integrity(family, side):
    """Changing the ids under padding never changes the masked forward's logits at real positions."""
    _, model, _, _ = family
    for _, batch, drops in hard_draws(model, side):
        real = batch["attention_mask"].bool()
        _, logits = masked_outputs(model, batch, drops, batch["input_ids"])
        _, other = masked_outputs(model, batch, drops, batch["input_ids"].masked_fill(~real, 55))
        torch.testing.assert_close(other[real], logits[real], atol=1e-6, rtol=0)


def test_a_row_that_would_lose_every_visible_key_keeps_them():
    """Position 0 sees only itself, and p = 0.9, q = 1 drops its one candidate: applied, the row keeps its key,
    so position 0's hidden state is the stock one (it would be a uniform mix of every key otherwise)."""
    model = tiny_decoder("llama")
    batch = decoder_batch("right")
    drops = ADDrop(model, ADDropConfig(p=0.9, q=1.0, layers="all")).drop_masks(batch)
    assert all(mask[:, :, 0, 0].all() for mask in drops.values())
    masked, _ = masked_outputs(model, batch, drops, batch["input_ids"])
    stock = model(**inputs(batch), output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(masked[:, 0], stock[:, 0], atol=1e-6, rtol=0)
    assert not torch.allclose(masked[:, 1:], stock[:, 1:], atol=1e-3)  # other rows did lose keys


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
def test_softcap_and_sinks_are_honoured_where_they_matter(family):
    """With large attention logits (queries and keys scaled up) the variants matter, and the result still equals the
    default implementation; switching the variant off changes it."""
    model = tiny_decoder(family)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(30)
    stock = copy.deepcopy(model)
    install(model)
    batch = inputs(decoder_batch("left"))
    honoured = model(**batch).logits
    torch.testing.assert_close(honoured, stock(**batch).logits, atol=1e-5, rtol=0)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "attn_logit_softcapping"):
                module.attn_logit_softcapping = None
            if hasattr(module, "sinks"):
                module.sinks.fill_(-1e4)  # a sink that takes no probability is no sink
    assert (model(**batch).logits - honoured).abs().max() > 1e-3


def test_addrop_forwards_build_no_kv_cache():
    model = tiny_decoder("qwen2")
    batch = decoder_batch("left")
    assert model(**inputs(batch)).past_key_values is not None  # transformers' default
    addrop = ADDrop(model, ADDropConfig(layers="all"))
    caches = []
    handle = model.register_forward_hook(lambda module, args, output: caches.append(output.past_key_values))
    addrop.loss(batch).backward()  # the attribution forward and the masked forward
    handle.remove()
    assert caches == [None, None]


def test_unknown_attention_variant_is_refused_with_one_line():
    class NoSdpaLlama(type(tiny_decoder("llama"))):
        _supports_sdpa = False  # transformers keeps it off sdpa for a reason addrop cannot know

    config = tiny_decoder("llama").config
    config._attn_implementation = "eager"
    model = NoSdpaLlama(config)
    with pytest.raises(UserError, match=r"model type 'llama' .* attention variant AD-DROP does not reproduce") as error:
        install(model)
    assert "\n" not in str(error.value)


def test_probe_value_errors_become_user_errors():
    model = tiny_decoder("llama")

    def broken_forward(*args, **kwargs):
        raise ValueError("this model cannot run without an extra input")

    model.forward = broken_forward
    with pytest.raises(UserError, match=r"model type 'llama' failed AD-DROP's probe forward: this model cannot"):
        install(model)


def test_random_regions_are_drawn_inside_the_one_masked_forward():
    """RD needs no attribution pass: one forward, its drops drawn from each call's visible keys (causal, so
    tokens after position t leave earlier hidden states alone under the same draws)."""
    model = tiny_decoder("mistral")
    addrop = ADDrop(model, ADDropConfig(attribution="rd", p=0.9, q=1.0, layers="all"))
    batch = decoder_batch("left")
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    addrop.loss(batch)
    handle.remove()
    assert len(calls) == 1

    def last_hidden(input_ids):
        torch.manual_seed(0)
        drops = {call: partial(addrop._random_drops, batch, call) for call in addrop.selected}
        out = model(input_ids=input_ids, attention_mask=batch["attention_mask"], output_hidden_states=True,
                    addrop_state=ForwardState(drops=drops, call_of=addrop.call_of))
        return out.hidden_states[-1]

    changed = batch["input_ids"].clone()
    changed[:, 8:] = (changed[:, 8:] + 7) % 97 + 3
    real = batch["attention_mask"].bool()
    real[:, 8:] = False
    torch.testing.assert_close(last_hidden(changed)[real], last_hidden(batch["input_ids"])[real], atol=1e-6, rtol=0)
