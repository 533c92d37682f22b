"""NEFTune as an addrop method: its settings and its entry in addrop's method table.

This module imports no torch, so addrop can validate recipes and print ``--help`` with the plugin installed;
the implementation (:mod:`addrop_neftune.regularizer`) is imported when a run first builds the regularizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from addrop_cli.core.methods.registry import MethodSpec
from addrop_cli.core.settings import require


@dataclass
class NEFTuneConfig:
    """NEFTune (Jain et al., 2023): ``alpha`` scales the uniform noise added to the input embeddings."""

    alpha: float = 5.0

    def __post_init__(self) -> None:
        require(self.alpha > 0, "neftune.alpha", self.alpha, "the noise scale, a number > 0 (5 in the NEFTune paper)")


METHOD = MethodSpec(name="neftune", display_name="NEFTune", config=NEFTuneConfig,
                    implementation="addrop_neftune.regularizer:NEFTune")
