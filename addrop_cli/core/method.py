"""The regularizer seam: what the training loop calls in a regularized epoch, and which implementation serves
each ``addrop.method``: :class:`~addrop_cli.core.regularizer.ADDrop` (the paper's method),
:class:`~addrop_cli.core.rdrop.RDrop` and :class:`~addrop_cli.core.hiddencut.HiddenCut` (the baselines of the
paper's Table 1). Each lives in its own module behind :class:`Regularizer`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

import torch

from addrop_cli.core.hiddencut import HiddenCut
from addrop_cli.core.rdrop import RDrop
from addrop_cli.core.regularizer import ADDrop
from addrop_cli.core.settings import ADDROP, HIDDENCUT, ADDropConfig, HiddenCutConfig, RDropConfig


class Regularizer(Protocol):
    """One regularized training step's loss, in place of ``model(**batch).loss``."""

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss to backpropagate for ``batch`` (with its ``labels``)."""
        ...

    def take_drop_counts(self) -> torch.Tensor | None:
        """(removed, seen) positions since the last call, for the ``addrop/dropped_share`` signal; None when the
        method removes nothing countable (R-Drop) or ran no step since."""
        ...


def make_regularizer(model: torch.nn.Module, config: ADDropConfig, task_type: str | None = None, *,
                     rdrop: RDropConfig | None = None, hiddencut: HiddenCutConfig | None = None,
                     special_ids: Collection[int] | None = None) -> Regularizer:
    """The regularizer ``config.method`` names, for ``model`` (possibly wrapped by Accelerate/DDP).

    ``rdrop`` and ``hiddencut`` are those methods' settings (defaults when None); ``special_ids`` are the token ids
    HiddenCut never cuts (the tokenizer's ``all_special_ids``; the model config's special ids when None).
    """
    if config.method == ADDROP:
        return ADDrop(model, config, task_type)
    if config.method == HIDDENCUT:
        return HiddenCut(model, hiddencut or HiddenCutConfig(), task_type, special_ids)
    return RDrop(model, rdrop or RDropConfig(), task_type)
