"""The AD-DROP mask: candidate discard region (paper Eq. 6) and attribution-driven dropout (Eq. 7).

Pure torch, no model code. Shapes: B batch, H heads, Q query positions, K key positions.
"""

from __future__ import annotations

from fractions import Fraction

import torch


def exact_fraction(value: float) -> Fraction:
    """The decimal a user meant by ``value`` (0.9 -> 9/10), so that ``(1 - p) * n`` is exact."""
    return Fraction(value).limit_denominator(1_000_000)


def keep_counts(num_real_keys: torch.Tensor, p: float) -> torch.Tensor:
    """k = floor((1 - p) * n) for each row, in integer arithmetic (Eq. 6's ``int(n (1 - p))``).

    In floating point ``int((1 - 0.9) * 10)`` is 0, not 1; here it is 1.

    Args:
        num_real_keys: integer tensor of any shape, n >= 1.
    Returns:
        integer tensor of the same shape, 0 <= k <= n - 1 for p in (0, 1).
    """
    frac = exact_fraction(p)
    return ((frac.denominator - frac.numerator) * num_real_keys) // frac.denominator


def candidate_region(
    scores: torch.Tensor, key_mask: torch.Tensor, p: float, *, highest: bool = True
) -> torch.Tensor:
    """Candidate discard region S of Eq. 6, per example, head and query row, over real keys only.

    With n real keys in a row and k = floor((1 - p) n), the threshold is the k-th smallest score
    (0-based) among the real keys; the candidates are the real keys scoring >= threshold, about
    ceil(p n) of them (ties can add more). ``highest=False`` mirrors it (the lowest-scoring keys),
    for the paper's prior experiment (Section 2.2).

    Args:
        scores: (B, H, Q, K) attribution scores.
        key_mask: (B, K) bool, True for real (non-padding) keys.
        p: share of real keys that are candidates, in (0, 1).
    Returns:
        (B, H, Q, K) bool, True for candidates; padding keys are never candidates.
    """
    scores = scores.detach() if highest else -scores.detach()
    key_mask = key_mask.to(torch.bool)
    real = key_mask[:, None, None, :]
    # Padding sorts last, so the (k+1)-th smallest over all keys is the k-th among the real ones.
    padded = scores.masked_fill(~real, float("inf"))
    k = keep_counts(key_mask.sum(-1), p)
    threshold = torch.empty(scores.shape[:-1], dtype=scores.dtype, device=scores.device)
    # One kthvalue per distinct k (that is, per distinct length), not one full sort per row.
    for k_value in torch.unique(k).tolist():
        rows = (k == k_value).nonzero(as_tuple=True)[0]
        threshold[rows] = padded[rows].kthvalue(int(k_value) + 1, dim=-1).values
    return (padded >= threshold[..., None]) & real


def sample_drops(candidates: torch.Tensor, q: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 7: each candidate is dropped independently with probability q.

    Args:
        candidates: (B, H, Q, K) bool candidate region.
    Returns:
        (B, H, Q, K) bool, True where the attention position is masked out in the second forward.
    """
    if q <= 0:
        return torch.zeros_like(candidates)
    if q >= 1:
        return candidates.clone()
    draws = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    return candidates & (draws < q)


def random_scores(shape: torch.Size, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scores for the RD variant: Eq. 6 on uniform noise gives a random region of GA's size."""
    return torch.rand(shape, generator=generator, device=device)
