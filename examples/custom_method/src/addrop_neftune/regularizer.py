"""NEFTune (Jain et al., 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"): in a regularized
step, uniform noise is added to the input embeddings,

    E' = E + ε · alpha / sqrt(L · d),   ε ~ U(-1, 1)^{L × d}

(L: the batch's sequence length, d: the embedding width), as transformers' Trainer does for ``neftune_noise_alpha``.
Plain and evaluation forwards are untouched: the forward hook on the embedding module acts only inside
:meth:`NEFTune.loss`.
"""

from __future__ import annotations

import math

import torch

from addrop_cli.core.methods.base import unwrapped


class NEFTune:
    """The regularizer addrop builds for ``--method neftune``: ``NEFTune(model, settings, task_type)``.

    Args:
        model: a transformers model, possibly wrapped by Accelerate/DDP.
        settings: a :class:`~addrop_neftune.NEFTuneConfig`.
        task_type: unused: the noise does not depend on the task.
    """

    def __init__(self, model: torch.nn.Module, settings, task_type: str | None = None):
        self.model, self.settings = model, settings
        self._noisy = False
        unwrapped(model).get_input_embeddings().register_forward_hook(self._add_noise)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's own loss on ``batch`` with noisy input embeddings."""
        self._noisy = True
        try:
            return self.model(**batch).loss
        finally:
            self._noisy = False

    def take_drop_counts(self) -> None:
        """NEFTune removes nothing countable."""
        return None

    def _add_noise(self, module: torch.nn.Module, args, output: torch.Tensor) -> torch.Tensor | None:
        if not self._noisy:
            return None
        length, width = output.shape[-2:]
        bound = self.settings.alpha / math.sqrt(length * width)
        return output + torch.empty_like(output).uniform_(-bound, bound)
