"""Choosing the route: the one refusal table is checked before either route touches the model, so a refused
family gets its own reason (LED's banded attention, which before reached only the generic message)."""

from __future__ import annotations

import pytest
from helpers import one_line_error
from transformers import LEDConfig, LEDForConditionalGeneration

from addrop_cli.core.routes import connect as connect_module
from addrop_cli.core.routes.connect import REFUSED, connect, install


def tiny_led() -> LEDForConditionalGeneration:
    config = LEDConfig(vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, attention_window=4,
                       max_encoder_position_embeddings=64, max_decoder_position_embeddings=64)
    return LEDForConditionalGeneration(config)


@pytest.mark.parametrize("entry", [connect, install])
def test_a_refused_seq2seq_family_gets_its_reason_before_any_route_is_tried(entry, monkeypatch):
    def untouchable(*args, **kwargs):
        raise AssertionError("a route was tried on a refused family")

    monkeypatch.setattr(connect_module, "switch", untouchable)
    monkeypatch.setattr(connect_module, "HookRoute", untouchable)
    model = tiny_led()
    one_line_error(lambda: entry(model), "model type 'led' (LEDForConditionalGeneration) cannot take AD-DROP: ",
                   REFUSED["led"], "train it with --no-addrop")
