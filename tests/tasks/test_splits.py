"""Training-data regimes: k-shot per class and seeded fractions (paper Table 5, Fig. 5)."""

from __future__ import annotations

from collections import Counter

import pytest

from addrop_cli.errors import UserError
from addrop_cli.recipe import DataConfig, Recipe
from addrop_cli.tasks.glue_data import Example
from addrop_cli.tasks.registry import get_task
from addrop_cli.tasks.splits import holdout_split, load_split, training_regime

EXAMPLES = [Example(f"s{i}", None, i % 3 if i % 5 else 0) for i in range(300)]


def test_k_shot_gives_exactly_k_per_class_deterministic_per_seed():
    chosen = training_regime(EXAMPLES, 16, None, seed=1)
    assert Counter(e.label for e in chosen) == {0: 16, 1: 16, 2: 16}
    assert chosen == training_regime(EXAMPLES, 16, None, seed=1)
    assert chosen != training_regime(EXAMPLES, 16, None, seed=2)
    assert [e.text_a for e in chosen] == sorted((e.text_a for e in chosen), key=lambda t: int(t[1:]))


def test_k_larger_than_a_class_is_refused():
    with pytest.raises(UserError, match=r"data.k_shot=200: class 0 has only 140 training examples"):
        training_regime(EXAMPLES, 200, None, seed=1)


def test_k_shot_needs_classification():
    scores = [Example("a", None, 1.5), Example("b", None, 2.0)]
    with pytest.raises(UserError, match="needs a classification task"):
        training_regime(scores, 1, None, seed=0)


def test_fraction_is_seeded_and_sized():
    chosen = training_regime(EXAMPLES, None, 0.1, seed=3)
    assert len(chosen) == 30 and chosen == training_regime(EXAMPLES, None, 0.1, seed=3)
    assert training_regime(EXAMPLES, None, 0.001, seed=3) != []  # at least one example
    assert training_regime(EXAMPLES, None, None, seed=3) == EXAMPLES


@pytest.mark.parametrize(("values", "message"), [({"k_shot": 0}, "data.k_shot=0"),
                                                 ({"train_fraction": 1.5}, "data.train_fraction=1.5"),
                                                 ({"k_shot": 4, "train_fraction": 0.5}, "not both"),
                                                 ({"holdout_fraction": 1.0}, "data.holdout_fraction=1.0"),
                                                 ({"holdout_fraction": 0.1, "validation_file": "dev.tsv"},
                                                  "drop data.validation_file")])
def test_regime_keys_are_validated(values, message):
    with pytest.raises(UserError, match=message):
        DataConfig(**values)


def test_holdout_is_a_seeded_disjoint_share():
    kept, held = holdout_split(EXAMPLES, 0.1, seed=4)
    assert len(held) == 30 and len(kept) == 270
    assert sorted(kept + held, key=lambda e: int(e.text_a[1:])) == EXAMPLES
    assert (kept, held) == holdout_split(EXAMPLES, 0.1, seed=4)
    assert held != holdout_split(EXAMPLES, 0.1, seed=5)[1]
    assert len(holdout_split(EXAMPLES[:3], 0.01, seed=0)[1]) == 1


def test_holdout_becomes_the_validation_split_and_k_shot_draws_from_the_rest(tmp_path):
    rows = "".join(f"sentence number {i}\t{i % 2}\n" for i in range(200))
    train_file = tmp_path / "train.tsv"
    train_file.write_text("sentence\tlabel\n" + rows)
    recipe = Recipe(task="sst2", data=DataConfig(train_file=str(train_file), holdout_fraction=0.1, k_shot=8))
    task = get_task("sst2")
    train, validation = load_split(recipe, task, "train"), load_split(recipe, task, "validation")
    assert len(validation) == 20 and Counter(e.label for e in train) == {0: 8, 1: 8}
    assert not {e.text_a for e in train} & {e.text_a for e in validation}
    assert load_split(recipe, task, "test") is None
