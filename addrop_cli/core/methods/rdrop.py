"""R-Drop (Wu et al., NeurIPS 2021, Eq. 1-3): two dropout passes of one batch, the task loss on both and the
symmetric KL between their predictive distributions.

    L = ½ (L₁ + L₂) + α · ½ (KL(P₁ ‖ P₂) + KL(P₂ ‖ P₁))

The two passes are one forward of the batch stacked on itself, as the official translation code does: each copy
draws its own dropout, and a single forward keeps DDP to one backward per forward. Where the official code is
inconsistent (its BERT GLUE head sums the KL over the batch, its README example leaves sum or mean to the user),
the KL here is summed over classes and averaged over examples (or labelled tokens), like the task loss, so α
does not grow with the batch size.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from addrop_cli.core.methods.base import mean_over, stacked_twice, unwrapped
from addrop_cli.core.model_setup import build_no_kv_cache, infer_task_type
from addrop_cli.core.settings import GENERATION, IGNORE_INDEX, REGRESSION, SEQ2SEQ, TOKEN, RDropConfig


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """½ (KL(P_a ‖ P_b) + KL(P_b ‖ P_a)) of the softmax distributions, summed over classes and averaged over the
    examples, or over the ``valid`` positions. Gradients flow through both sides (no teacher is detached).

    Args:
        logits_a, logits_b: (N, C) or (N, T, C).
        valid: (N, T) bool for per-token logits; None averages over every position.
    """
    log_a, log_b = F.log_softmax(logits_a.float(), dim=-1), F.log_softmax(logits_b.float(), dim=-1)
    # kl_div(input=log Q, target=log P, log_target) is P (log P - log Q) elementwise, i.e. KL(P ‖ Q) summed.
    a_to_b = F.kl_div(log_b, log_a, reduction="none", log_target=True).sum(-1)  # KL(P_a ‖ P_b), (N,) or (N, T)
    b_to_a = F.kl_div(log_a, log_b, reduction="none", log_target=True).sum(-1)
    return mean_over((a_to_b + b_to_a) / 2, valid)


def consistency(first: torch.Tensor, second: torch.Tensor, task_type: str, labels: torch.Tensor | None
                ) -> torch.Tensor:
    """R-Drop's consistency term between two passes' logits: the MSE between the predicted scores for
    regression (as the official STS-B code), else :func:`symmetric_kl`, per token for token and seq2seq tasks over
    the positions with a label (padding and ignored sub-words left out), and per completion token for generation
    (position t's next-token distribution where token t + 1 is labelled)."""
    if task_type == REGRESSION:
        return F.mse_loss(first.squeeze(-1).float(), second.squeeze(-1).float())
    if task_type == GENERATION:
        return symmetric_kl(first[:, :-1], second[:, :-1], labels[:, 1:] != IGNORE_INDEX)
    valid = labels != IGNORE_INDEX if task_type in (TOKEN, SEQ2SEQ) and labels is not None else None
    return symmetric_kl(first, second, valid)


class RDrop:
    """R-Drop for one model (any task head; dropout must be on, as in training mode).

    Args:
        model: a transformers model, possibly wrapped by Accelerate/DDP.
        config: ``alpha``, the weight of the consistency term.
        task_type: classification, regression, token, seq2seq or generation; inferred from the model when None.
    """

    def __init__(self, model: torch.nn.Module, config: RDropConfig, task_type: str | None = None):
        self.model, self.config = model, config
        base = unwrapped(model)
        self.task_type = task_type or infer_task_type(base)
        build_no_kv_cache(base)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """½ (L₁ + L₂) + α × :func:`consistency`: the model's own loss on the stacked batch is the mean of the two
        passes' losses (each copy has the same examples and labelled tokens)."""
        outputs = self.model(**stacked_twice(batch))
        first, second = outputs.logits.chunk(2)
        return outputs.loss + self.config.alpha * consistency(first, second, self.task_type, batch.get("labels"))

    def take_drop_counts(self) -> None:
        """R-Drop removes nothing countable: its dropout is the model's own."""
        return None
