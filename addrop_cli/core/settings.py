"""AD-DROP settings and the names the layers above share, without importing torch.

A recipe can be read and validated (``addrop --help``, ``addrop train`` with a bad value) before torch and
transformers are imported; the torch code in this folder imports its constants from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from addrop_cli.errors import UserError

# Attention call kinds (see routes/connect.py): encoder self-attention, decoder self-attention, cross-attention.
ENCODER, DECODER, CROSS = "encoder", "decoder", "cross"
ATTENTION_KINDS = (ENCODER, DECODER, CROSS)
# addrop.attention's default: the encoder's self-attention, or a decoder-only model's causal self-attention.
AUTO = "auto"

# Task kinds: what the attribution target F is built from (attribution.py) and what a pipeline scores. GENERATION
# is a decoder-only model trained on completions (next-token prediction, the loss on completion tokens only).
CLASSIFICATION, REGRESSION, TOKEN, SEQ2SEQ = "classification", "regression", "token", "seq2seq"
GENERATION = "generation"
TASK_KINDS = (CLASSIFICATION, REGRESSION, TOKEN, SEQ2SEQ, GENERATION)

# The label id that losses, metrics and attribution targets ignore: special tokens, padding, and (by
# default) the continuation sub-words of a word. The value transformers' losses use.
IGNORE_INDEX = -100

ATTRIBUTIONS = ("ga", "iga", "aa", "rd")
LABEL_MODES = ("pseudo", "gold")
STRATEGIES = ("high", "low", "random")
ATTRIBUTION_PRECISIONS = ("same", "bf16", "fp16")
FT_PHASE = "ft"  # the phase of a plain fine-tuning epoch; a regularized epoch's phase is its method
# addrop.* keys that apply whatever the method (the rest are AD-DROP's own).
SHARED_KEYS = ("enabled", "method", "cross_tuning")


def require(condition: bool, key: str, value: Any, valid: str) -> None:
    """Raise a UserError naming ``key`` and ``value`` and saying what would be valid, unless ``condition``."""
    if not condition:
        raise UserError(f"{key}={value!r} is invalid: {valid}")


@dataclass
class ADDropConfig:
    """AD-DROP settings (paper Section 2.3-2.4, Table 2), and which regularizer the regularized epochs use
    (``method``: AD-DROP, or another method of the method table with its own section's settings)."""

    enabled: bool = True  # false: plain fine-tuning (--no-addrop)
    method: str = "addrop"  # checked against the method table (core/methods/registry.py) where it is used
    p: float = 0.3
    q: float = 0.3
    layers: str | list[int] = "first"  # first, all, or layer indices such as [0, 3, 5]
    attribution: str = "ga"
    labels: str = "pseudo"
    cross_tuning: bool = True  # alternate plain and regularized epochs (Algorithm 1)
    iga_steps: int = 20
    attention: str | list[str] = AUTO  # auto, or a list drawn from encoder, decoder, cross
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


def _parse_layers(layers: str | list[int], key: str = "addrop.layers") -> str | list[int]:
    """``first``, ``all``, a list of indices, or ``"0,3,5"`` from the command line (made a list)."""
    if isinstance(layers, str) and layers not in ("first", "all"):
        parts = [part.strip() for part in layers.split(",")]
        if all(part.isdigit() for part in parts):
            layers = [int(part) for part in parts]
    if isinstance(layers, str):
        require(layers in ("first", "all"), key, layers,
                "use first, all, or a list of layer indices such as [0, 3, 5]")
    else:
        require(len(layers) > 0 and all(isinstance(i, int) and i >= 0 for i in layers),
                key, layers, "layer indices are non-negative integers, e.g. [0, 3, 5]")
    return layers


@dataclass
class RDropConfig:
    """R-Drop (Wu et al., NeurIPS 2021): ``alpha`` weighs the symmetric KL between two dropout passes (MSE
    between their outputs for regression)."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        require(self.alpha >= 0, "rdrop.alpha", self.alpha, "a weight >= 0 (1.0 as in R-Drop's GLUE code)")


@dataclass
class HiddenCutConfig:
    """HiddenCut (Chen et al., ACL 2021): in each of ``layers``, a span of ``ratio`` x the real length is zeroed
    in the layer's output, its start drawn among the ``select_ratio`` most-attended tokens; ``js_weight`` weighs
    the Jensen-Shannon divergence between the clean and the cut predictions (0.5: the official script's weights,
    halved with the task loss; see core/methods/hiddencut.py)."""

    ratio: float = 0.1
    select_ratio: float = 0.4
    layers: str | list[int] = "all"  # all, first, or layer indices such as [0, 3, 5]
    js_weight: float = 0.5

    def __post_init__(self) -> None:
        require(0 < self.ratio < 1, "hiddencut.ratio", self.ratio,
                "the share of each example's tokens cut, strictly between 0 and 1 (0.1 in HiddenCut's code)")
        require(0 < self.select_ratio <= 1, "hiddencut.select_ratio", self.select_ratio,
                "the share of most-attended tokens a span may start at, in (0, 1] (0.4 in HiddenCut's code)")
        require(self.js_weight >= 0, "hiddencut.js_weight", self.js_weight, "a weight >= 0 (0.5 matches HiddenCut's "
                "script)")
        self.layers = _parse_layers(self.layers, "hiddencut.layers")


def epoch_phase(epoch: int, config: ADDropConfig) -> str:
    """Cross-tuning (Algorithm 1): 1-based odd epochs fine-tune ("ft"), even epochs run the regularizer, named
    by its method ("addrop", "rdrop", "hiddencut", ...); every epoch does without cross-tuning."""
    if not config.enabled:
        return FT_PHASE
    if not config.cross_tuning:
        return config.method
    return FT_PHASE if epoch % 2 == 1 else config.method
