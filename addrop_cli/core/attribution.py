"""Attribution targets and scores (paper Eq. 2-5), pure torch.

The target F is what the attribution differentiates: the logit of the pseudo label (Eq. 4-5) for
classification, and the negative loss for regression and token-level tasks (paper footnote 3). Generation (a
decoder-only model trained on completions) is a token-level task whose position t predicts token t + 1: its
target is minus the cross-entropy of the pseudo-label next tokens over the completion positions.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from addrop_cli.core.settings import CLASSIFICATION, GENERATION, IGNORE_INDEX, REGRESSION, SEQ2SEQ


def attribution_labels(
    logits: torch.Tensor, gold: torch.Tensor | None, task_type: str, use_gold: bool
) -> torch.Tensor:
    """The labels the target is built on: the pseudo label c = argmax (Eq. 4) or the gold label.

    Regression always uses the gold score (there is no pseudo label for a score). For seq2seq, target
    positions whose gold label is ``IGNORE_INDEX`` (padding) keep it, so they stay out of the target; token
    tasks attribute pseudo labels on every real token (their ``valid`` mask in :func:`attribution_target`).
    For generation the labels are next tokens, one per position but the last, and only the completion positions
    (those whose next gold token is labelled) carry one: prompt and padding stay out of the target.

    Args:
        logits: (B, C) for sequence tasks, (B, T, C) for token, seq2seq and generation tasks.
        gold: (B,) or (B, T) gold labels, or None when unlabelled (generation needs them: they mark the
            completion).
    Returns:
        (B,) or (B, T) labels, (B, T - 1) for generation, detached.
    """
    if task_type == GENERATION:
        if gold is None:
            raise ValueError("generation attribution needs labels: they mark the completion positions")
        logits, gold = logits[:, :-1], gold[:, 1:]
        task_type = SEQ2SEQ  # from here on, next tokens are targets as a decoder's are
    if task_type == REGRESSION or use_gold:
        if gold is None:
            raise ValueError("gold labels are needed for regression or labels=gold attribution")
        return gold.detach()
    pseudo = logits.detach().argmax(-1)
    if gold is not None and task_type == SEQ2SEQ:  # target padding; token tasks use the attention mask
        pseudo = pseudo.masked_fill(gold == IGNORE_INDEX, IGNORE_INDEX)
    return pseudo


def attribution_target(
    logits: torch.Tensor, labels: torch.Tensor, task_type: str, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Scalar F whose gradient w.r.t. the attention probabilities is the attribution (Eq. 5).

    classification: sum over the batch of the logit of each example's label (the logit before softmax).
    regression: minus the MSE against the gold score.
    token / seq2seq: minus the mean cross-entropy against the labels over ``valid`` positions
    (real tokens; labels equal to ``IGNORE_INDEX`` are excluded too).
    generation: the same over next tokens: position t's logits against label t (the token at t + 1).

    Args:
        logits: (B, C), (B, 1) or (B, T, C).
        labels: from :func:`attribution_labels` ((B, T - 1) for generation).
        valid: (B, T) bool, real positions for token / seq2seq tasks.
    """
    if task_type == GENERATION:
        logits = logits[:, :-1]
    if task_type == CLASSIFICATION:
        return logits.gather(-1, labels[:, None]).sum()
    if task_type == REGRESSION:
        return -F.mse_loss(logits.squeeze(-1).float(), labels.float())
    if valid is not None:
        labels = labels.masked_fill(~valid.bool(), IGNORE_INDEX)
    return -F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def integrated_gradient_scale(attention: torch.Tensor, gradient_sum: torch.Tensor, steps: int) -> torch.Tensor:
    """Eq. 3: B = A / m ⊙ Σ_k ∂F(k/m · A)/∂A, given the summed gradients. Shapes (B, H, Q, K)."""
    return attention * gradient_sum / steps
