"""Eq. 6-7 against an independent brute-force implementation, and the mask's statistics."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
import torch

from addrop_cli.core.masking import candidate_region, keep_counts, sample_drops

P_VALUES = [round(0.1 * i, 1) for i in range(1, 10)]


def brute_force_candidates(scores: torch.Tensor, key_mask: torch.Tensor, p: float, highest: bool = True):
    """Row by row, in plain Python: sort the real keys, threshold at index floor((1 - p) n)."""
    batch, heads, queries, keys = scores.shape
    out = torch.zeros(scores.shape, dtype=torch.bool)
    for b in range(batch):
        real = [j for j in range(keys) if key_mask[b, j]]
        n = len(real)
        k = int((Decimal(1) - Decimal(str(p))) * n)  # exact decimal arithmetic
        for h in range(heads):
            for i in range(queries):
                values = {j: float(scores[b, h, i, j]) * (1 if highest else -1) for j in real}
                threshold = sorted(values.values())[k]
                for j in real:
                    out[b, h, i, j] = values[j] >= threshold
    return out


def random_case(seed: int, batch: int = 5, heads: int = 3, length: int = 13):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, length, length, generator=generator)
    key_mask = torch.ones(batch, length, dtype=torch.bool)
    for b in range(1, batch):
        key_mask[b, length - 2 * b :] = False  # right padding of different lengths
    key_mask[batch - 1] = torch.roll(key_mask[batch - 1], 3)  # and one left-padded row
    return scores, key_mask


@pytest.mark.parametrize("p", P_VALUES)
def test_candidates_match_brute_force(p):
    scores, key_mask = random_case(seed=int(p * 10))
    expected = brute_force_candidates(scores, key_mask, p)
    assert torch.equal(candidate_region(scores, key_mask, p), expected)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_low_strategy_matches_brute_force(p):
    scores, key_mask = random_case(seed=7)
    expected = brute_force_candidates(scores, key_mask, p, highest=False)
    assert torch.equal(candidate_region(scores, key_mask, p, highest=False), expected)


@pytest.mark.parametrize("highest", [True, False])
def test_rows_of_tied_scores_match_brute_force(highest):
    """Rows no gradient reaches (all scores 0) skip the selection; rows tied at another value do not."""
    scores, key_mask = random_case(seed=11)
    scores[:, 0] = 0.0  # a whole head silent
    scores[1, 1, 2:5] = 0.0
    scores[2, 2, 4] = 0.25  # tied, but not at 0
    expected = brute_force_candidates(scores, key_mask, 0.3, highest=highest)
    assert torch.equal(candidate_region(scores, key_mask, 0.3, highest=highest), expected)


def test_keep_count_avoids_float_rounding_trap():
    # In floating point int((1 - 0.9) * 10) == 0; Eq. 6 means 1.
    assert int((1 - 0.9) * 10) == 0
    assert keep_counts(torch.tensor([10]), 0.9).item() == 1
    for p in P_VALUES:
        for n in range(1, 60):
            assert keep_counts(torch.tensor([n]), p).item() == int((Decimal(1) - Decimal(str(p))) * n)


@pytest.mark.parametrize("p", P_VALUES)
def test_candidate_count_is_about_ceil_pn(p):
    scores, key_mask = random_case(seed=3)  # continuous scores: no ties
    counts = candidate_region(scores, key_mask, p).sum(-1)
    n = key_mask.sum(-1)[:, None, None].expand_as(counts)
    k = keep_counts(n, p)
    assert torch.equal(counts, n - k)
    ceil_pn = n.clone().apply_(lambda v: math.ceil(Decimal(str(p)) * v))
    assert torch.equal(counts, ceil_pn)


def test_padding_is_never_candidate_nor_dropped():
    scores, key_mask = random_case(seed=1)
    scores = scores.masked_fill(~key_mask[:, None, None, :], 1e9)  # huge scores on padding must not matter
    candidates = candidate_region(scores, key_mask, 0.9)
    dropped = sample_drops(candidates, 1.0)
    assert not candidates[~key_mask[:, None, None, :].expand_as(candidates)].any()
    assert not dropped[~key_mask[:, None, None, :].expand_as(dropped)].any()


def test_q_zero_drops_nothing_and_q_one_drops_exactly_the_candidates():
    scores, key_mask = random_case(seed=2)
    candidates = candidate_region(scores, key_mask, 0.4)
    assert not sample_drops(candidates, 0.0).any()
    assert torch.equal(sample_drops(candidates, 1.0), candidates)


@pytest.mark.parametrize(("p", "q"), [(0.3, 0.3), (0.5, 0.1), (0.8, 0.6)])
def test_drop_fraction_is_about_p_times_q(p, q):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 4, 50, 50, generator=generator)
    key_mask = torch.ones(64, 50, dtype=torch.bool)
    key_mask[32:, 40:] = False  # rows of 50 and 40 real keys: p n is a whole number for these p
    candidates = candidate_region(scores, key_mask, p)
    real = key_mask[:, None, None, :].expand_as(candidates)
    positions = real.sum().item()  # 576,000
    assert candidates.sum().item() == round(p * positions)  # Eq. 6 takes exactly p of them here
    dropped = sample_drops(candidates, q, generator=generator)
    # Each candidate is dropped with probability q, so the drop count is Binomial(p N, q): sd sqrt(p q (1 - q) / N)
    # of the fraction, 2.8e-4 to 5.8e-4 here; over 300 seeds the measured sd matched it to 5 % and the largest
    # deviation was 3.5 sd. 6 sd leaves no false alarm in practice and fails a q off by 10 % (the old 0.02 did not
    # fail 40 %).
    sd = math.sqrt(p * q * (1 - q) / positions)
    assert dropped[real].float().mean().item() == pytest.approx(p * q, abs=6 * sd)
    assert not dropped[~real].any() and not (dropped & ~candidates).any()
    assert dropped.dtype == torch.bool


def test_candidates_are_the_highest_scores():
    scores = torch.tensor([[[[0.1, 0.9, 0.5, 0.3, 7.0]]]])
    key_mask = torch.tensor([[True, True, True, True, False]])
    # n = 4, p = 0.5: k = 2, threshold = third smallest = 0.5 -> {0.9, 0.5}
    assert candidate_region(scores, key_mask, 0.5).tolist() == [[[[False, True, True, False, False]]]]
    assert candidate_region(scores, key_mask, 0.5, highest=False).tolist() == [[[[True, False, False, True, False]]]]


@pytest.mark.parametrize("p", P_VALUES)
def test_high_and_low_regions_are_complementary(p):
    """Without ties, high takes the c = n - floor((1 - p) n) highest keys of a row and low the c lowest, so the
    two share max(0, 2c - n) keys and cover min(n, 2c): a partition of the real keys exactly when 2c = n."""
    scores, key_mask = random_case(seed=11)  # continuous scores: no ties
    high = candidate_region(scores, key_mask, p)
    low = candidate_region(scores, key_mask, p, highest=False)
    assert torch.equal(low, candidate_region(-scores, key_mask, p))  # low is high on the mirrored scores
    n = key_mask.sum(-1)[:, None, None].expand(high.shape[:-1])
    c = n - keep_counts(n, p)
    assert torch.equal((high & low).sum(-1), (2 * c - n).clamp(min=0))
    assert torch.equal((high | low).sum(-1), torch.minimum(n, 2 * c))
    assert not ((high | low) & ~key_mask[:, None, None, :]).any()


def test_high_and_low_partition_even_rows_at_one_half():
    scores, key_mask = random_case(seed=5, length=12)  # 12, 10, 8, 6 and 4 real keys
    key_mask[1, 9] = False  # and one row of 9
    high = candidate_region(scores, key_mask, 0.5)
    low = candidate_region(scores, key_mask, 0.5, highest=False)
    even = key_mask.sum(-1) % 2 == 0
    assert even.any() and (~even).any()
    real = key_mask[:, None, None, :].expand_as(high)
    assert torch.equal((high ^ low)[even], real[even]) and not (high & low)[even].any()
    assert ((high & low)[~even].sum(-1) == 1).all()  # odd n: only the median key is in both


def test_drop_rates_near_the_ends_are_exact_enough():
    candidates = torch.ones(4, 4, 64, 64, dtype=torch.bool)
    assert torch.equal(sample_drops(candidates, 0.99999), candidates)  # rounds to 1: every candidate
    assert not sample_drops(candidates, 0.00001).any()  # rounds to 0: none
    for q in (0.1, 0.5, 0.9):
        assert abs(sample_drops(candidates, q).float().mean().item() - q) < 0.01
