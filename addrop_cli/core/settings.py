"""AD-DROP settings and the names the layers above share, without importing torch.

A recipe can be read and validated (``addrop --help``, ``addrop train`` with a bad value) before torch and
transformers are imported; the torch code in this folder imports its constants from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from addrop_cli.errors import UserError

# Attention call kinds (see attention.py): encoder self-attention, decoder self-attention, cross-attention.
ENCODER, DECODER, CROSS = "encoder", "decoder", "cross"
ATTENTION_KINDS = (ENCODER, DECODER, CROSS)
# addrop.attention's default: the encoder's self-attention, or a decoder-only model's causal self-attention.
AUTO = "auto"

# Task kinds: what the attribution target F is built from (attribution.py) and what a pipeline scores.
CLASSIFICATION, REGRESSION, TOKEN, SEQ2SEQ = "classification", "regression", "token", "seq2seq"
TASK_KINDS = (CLASSIFICATION, REGRESSION, TOKEN, SEQ2SEQ)

# The label id that losses, metrics and attribution targets ignore: special tokens, padding, and (by
# default) the continuation sub-words of a word. The value transformers' losses use.
IGNORE_INDEX = -100

ATTRIBUTIONS = ("ga", "iga", "aa", "rd")
LABEL_MODES = ("pseudo", "gold")
STRATEGIES = ("high", "low", "random")
ATTRIBUTION_PRECISIONS = ("same", "bf16", "fp16")


def require(condition: bool, key: str, value: Any, valid: str) -> None:
    """Raise a UserError naming ``key`` and ``value`` and saying what would be valid, unless ``condition``."""
    if not condition:
        raise UserError(f"{key}={value!r} is invalid: {valid}")


@dataclass
class ADDropConfig:
    """AD-DROP settings (paper Section 2.3-2.4, Table 2)."""

    enabled: bool = True
    p: float = 0.3
    q: float = 0.3
    layers: str | list[int] = "first"
    attribution: str = "ga"
    labels: str = "pseudo"
    cross_tuning: bool = True
    iga_steps: int = 20
    attention: str | list[str] = AUTO
    strategy: str = "high"
    unmasked_weight: float = 0.0
    attribution_precision: str = "same"

    def __post_init__(self) -> None:
        require(0 < self.p < 1, "addrop.p", self.p, "p is the candidate share, strictly between 0 and 1")
        require(0 <= self.q <= 1, "addrop.q", self.q, "q is a dropout rate, between 0 and 1")
        require(self.attribution in ATTRIBUTIONS, "addrop.attribution", self.attribution,
                f"choose one of {', '.join(ATTRIBUTIONS)}")
        require(self.labels in LABEL_MODES, "addrop.labels", self.labels, "choose pseudo or gold")
        require(self.strategy in STRATEGIES, "addrop.strategy", self.strategy,
                f"choose one of {', '.join(STRATEGIES)}")
        require(0 <= self.unmasked_weight <= 1, "addrop.unmasked_weight", self.unmasked_weight,
                "a weight in [0, 1] (0 is the paper's AD-DROP)")
        require(self.iga_steps >= 1, "addrop.iga_steps", self.iga_steps, "use a positive number of steps")
        require(self.attribution_precision in ATTRIBUTION_PRECISIONS, "addrop.attribution_precision",
                self.attribution_precision, "choose same (the run's precision), bf16 or fp16")
        self.layers = _parse_layers(self.layers)
        self.attention = _parse_attention(self.attention)


def _parse_attention(attention: str | list[str]) -> str | list[str]:
    """``auto``, or a list of kinds (``"encoder,cross"`` from the command line is made a list)."""
    if isinstance(attention, str) and attention != AUTO:
        attention = [part.strip() for part in attention.split(",")]
    valid = f"use auto or a list drawn from {', '.join(ATTENTION_KINDS)}"
    if isinstance(attention, str):
        return attention
    require(isinstance(attention, list) and len(attention) > 0 and set(attention) <= set(ATTENTION_KINDS),
            "addrop.attention", attention, valid)
    return attention


def _parse_layers(layers: str | list[int]) -> str | list[int]:
    """``first``, ``all``, a list of indices, or ``"0,3,5"`` from the command line (made a list)."""
    if isinstance(layers, str) and layers not in ("first", "all"):
        parts = [part.strip() for part in layers.split(",")]
        if all(part.isdigit() for part in parts):
            layers = [int(part) for part in parts]
    if isinstance(layers, str):
        require(layers in ("first", "all"), "addrop.layers", layers,
                "use first, all, or a list of layer indices such as [0, 3, 5]")
    else:
        require(len(layers) > 0 and all(isinstance(i, int) and i >= 0 for i in layers),
                "addrop.layers", layers, "layer indices are non-negative integers, e.g. [0, 3, 5]")
    return layers


def epoch_phase(epoch: int, config: ADDropConfig) -> str:
    """Cross-tuning (Algorithm 1): 1-based odd epochs fine-tune ("ft"), even epochs run AD-DROP ("addrop")."""
    if not config.enabled:
        return "ft"
    if not config.cross_tuning:
        return "addrop"
    return "ft" if epoch % 2 == 1 else "addrop"
