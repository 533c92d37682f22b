"""The AD-DROP mask: candidate discard region (paper Eq. 6) and attribution-driven dropout (Eq. 7).

Pure torch, no model code. Shapes: B batch, H heads, Q query positions, K key positions.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
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


def padding_fill(key_mask: torch.Tensor, p: float) -> torch.Tensor:
    """Values to put at unseen keys so that ONE kthvalue call thresholds rows of every length.

    A row with n visible keys needs the k_n-th smallest visible score, k_n = floor((1 - p) n). Over the
    padded width K, take j = k_K for every row and fill j - k_n of the row's unseen keys with -inf (sorting
    before every visible key) and the rest with +inf (after): the j-th smallest of the whole row is then the
    k_n-th smallest visible score. This is possible because k_K - k_n <= K - n and k_K <= K - ceil(p n).
    Unseen keys need not be contiguous (padding, causal and sliding-window masks all work).

    Args:
        key_mask: (..., K) bool, True for the keys a row can see.
    Returns:
        (..., K) float: 0 at visible keys, -inf or +inf elsewhere.
    """
    key_mask = key_mask.to(torch.bool)
    width = key_mask.shape[-1]
    below = keep_counts(torch.tensor(width), p) - keep_counts(key_mask.sum(-1), p)  # (...,) unseen to put first
    unseen_rank = (~key_mask).cumsum(-1) - 1
    fill = torch.where(unseen_rank < below[..., None], float("-inf"), float("inf"))
    return fill.masked_fill(key_mask, 0.0)


def candidate_region(
    scores: torch.Tensor,
    key_mask: torch.Tensor,
    p: float,
    *,
    highest: bool = True,
    query_mask: torch.Tensor | None = None,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Candidate discard region S of Eq. 6, per example, head and query row, over the keys the row can see.

    With n visible keys in a row and k = floor((1 - p) n), the threshold is the k-th smallest score
    (0-based) among them; the candidates are the visible keys scoring >= threshold, about ceil(p n) of them
    (ties can add more). ``highest=False`` mirrors it: the same number c = n - k of lowest-scoring keys, so
    that the prior experiment's strategies (paper Section 2.2) drop at the same rate. Without ties the high
    and low regions of a row therefore share max(0, 2c - n) keys and together cover min(n, 2c): they are
    exact complements (a partition of the visible keys) when 2c = n, e.g. p = 1/2 and n even; at p = 1/2 and
    odd n they share only the median key. One kthvalue call for the whole batch, no host synchronisation
    (see :func:`padding_fill`). A row that sees no key has no candidates.

    Args:
        scores: (B, H, Q, K) attribution scores.
        key_mask: True for the keys a query row can see: (B, K) when every row sees the same keys (a padding
            mask), or (B, 1 or H, Q, K) per row, e.g. the model's own padding ∧ causal ∧ sliding-window mask.
        p: share of visible keys that are candidates, in (0, 1).
        query_mask: (B, Q) bool, True for real queries; padding query rows get no candidates.
            None treats every query row as real.
        fill: ``padding_fill(key_mask, p)``, when the caller already has it (layers sharing one mask).
    Returns:
        (B, H, Q, K) bool, True for candidates; keys a row cannot see are never candidates.
    """
    scores = scores.detach() if highest else -scores.detach()
    key_mask = key_mask.to(torch.bool)
    visible = key_mask[:, None, None, :] if key_mask.dim() == 2 else key_mask
    fill = padding_fill(visible, p) if fill is None else fill
    padded = scores + fill.to(scores.dtype)  # the fill is 0 at visible keys: one pass, unlike a where
    k = int(keep_counts(torch.tensor(scores.shape[-1]), p))
    # Rows no gradient reached are all 0, and so is their threshold; only the CPU selection needs them told apart.
    silent = ~scores.ne(0).any(-1, keepdim=True) if scores.device.type == "cpu" else None
    threshold = kth_smallest(padded, k, silent)
    region = (padded >= threshold) & visible
    if query_mask is not None:
        region &= query_mask.to(torch.bool)[:, None, :, None]
    return region


def kth_smallest(values: torch.Tensor, k: int, zero_rows: torch.Tensor | None = None) -> torch.Tensor:
    """(..., 1): the k-th smallest (0-based) of each row of ``values`` (..., K).

    On a CPU through numpy's introselect, which tracks no indices: four to six times ``torch.kthvalue``'s speed
    there, and the same value (an order statistic has one value whatever the algorithm). Introselect slows
    ten-fold on rows of equal values, so rows known to answer 0 (``zero_rows``, (..., 1) bool) are left out.
    """
    if values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
        return values.kthvalue(k + 1, dim=-1, keepdim=True).values
    rows = values.detach().reshape(-1, values.shape[-1])
    selected = torch.zeros(rows.shape[0], dtype=values.dtype)
    chosen = None if zero_rows is None else ~zero_rows.reshape(-1)
    if chosen is None or bool(chosen.all()):
        selected = torch.from_numpy(np.partition(rows.numpy(), k, axis=-1)[:, k].copy())
    elif chosen.any():
        selected[chosen] = torch.from_numpy(np.partition(rows[chosen].numpy(), k, axis=-1)[:, k].copy())
    return selected.view(*values.shape[:-1], 1)


def allowed_keys(visible: torch.Tensor, drops: torch.Tensor) -> torch.Tensor:
    """The keys each row attends to in the masked forward: its visible keys less the dropped ones, except
    that a row which would lose all its visible keys (Eq. 7 can drop them all) keeps them.

    Such a row would have nothing left to attend to; softmax would then spread it over every key, the
    future and the padding included. It keeps its base mask instead, so AD-DROP never lets a row see a key
    the model hides from it.

    Args:
        visible: (B, 1 or H, Q, K) bool, True for the keys each row can see.
        drops: (B, H, Q, K) bool, True where a position is dropped.
    Returns:
        (B, H, Q, K) bool, True where the row attends.
    """
    allowed = visible > drops  # visible and not dropped, in one pass
    emptied = ~allowed.any(-1, keepdim=True)
    if allowed.device.type == "cpu" and not emptied.any():  # the usual case; skip two passes (no device sync)
        return allowed
    return allowed | (emptied & visible)


def sample_drops(candidates: torch.Tensor, q: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 7: each candidate is dropped independently with probability q.

    Each 63-bit integer torch's generator draws gives four independent 15-bit draws, compared with
    round(q 2^15): q is met to within 1.5e-5, and on a CPU the draws cost about a quarter of as many floats.

    Args:
        candidates: (B, H, Q, K) bool candidate region.
    Returns:
        (B, H, Q, K) bool, True where the attention position is masked out in the second forward.
    """
    threshold = round(q * 2**15)
    if threshold <= 0:
        return torch.zeros_like(candidates)
    if threshold >= 2**15:
        return candidates.clone()
    count = candidates.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=candidates.device).random_(generator=generator)
    draws = (words.view(torch.int16)[:count] & 0x7FFF).view(candidates.shape)  # bit 63 of a word is always 0
    return candidates & (draws < threshold)


def random_scores(shape: torch.Size, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scores for the RD variant: Eq. 6 on uniform noise gives a random region of GA's size."""
    return torch.rand(shape, generator=generator, device=device)
