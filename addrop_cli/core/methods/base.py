"""The regularizer seam's contract: what the training loop calls in a regularized epoch, and what every method
shares (the model behind its wrappers, the batch stacked on itself, a masked mean).

A method is one module holding one class that satisfies :class:`Regularizer` and is built as
``Method(model, settings, task_type)`` (``special_ids=`` too when its constructor names that parameter); the
method table (:mod:`~addrop_cli.core.methods.registry`) says which module serves which ``addrop.method``.
"""

from __future__ import annotations

from typing import Protocol

import torch
from accelerate.utils import extract_model_from_parallel


class Regularizer(Protocol):
    """One regularized training step's loss, in place of ``model(**batch).loss``."""

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss to backpropagate for ``batch`` (with its ``labels``)."""
        ...

    def take_drop_counts(self) -> torch.Tensor | None:
        """(removed, seen) positions since the last call, for the ``addrop/dropped_share`` signal, as a float
        tensor for a cross-process sum; None when the method removes nothing countable (R-Drop) or ran no step
        since."""
        ...


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside Accelerate's or DDP's wrappers (its own ``config``, routes and hooks)."""
    return extract_model_from_parallel(model, keep_fp32_wrapper=True)


def stacked_twice(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch stacked on itself along the batch dimension: two passes in one forward, each copy drawing its own
    dropout (HiddenCut cuts the second copy only)."""
    return {key: torch.cat([value, value]) for key, value in batch.items()}


def mean_over(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-example (N,) or per-position (N, T) ``values``, over the ``valid`` (N, T) positions only
    when given."""
    if valid is None:
        return values.mean()
    valid = valid.bool()
    return (values * valid).sum() / valid.sum().clamp(min=1)
