"""Recipe dataclasses: validation on construction, YAML loading, dotted overrides."""

from __future__ import annotations

import pytest

from addrop_cli.core.settings import ADDropConfig
from addrop_cli.errors import UserError
from addrop_cli.recipe import Recipe, build, load_yaml, parse_override


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"p": 1.5}, r"addrop.p=1.5 is invalid: p is the candidate share, strictly between 0 and 1"),
        ({"p": 0}, r"addrop.p=0 is invalid"),
        ({"q": -0.1}, r"addrop.q=-0.1 is invalid: q is a dropout rate, between 0 and 1"),
        ({"attribution": "sal"}, r"addrop.attribution='sal' is invalid: choose one of ga, iga, aa, rd"),
        ({"labels": "silver"}, r"addrop.labels='silver' is invalid: choose pseudo or gold"),
        ({"layers": "last"}, r"addrop.layers='last' is invalid: use first, all, or a list"),
        ({"layers": [-1]}, r"non-negative integers"),
        ({"attention": ["encoder", "bogus"]}, r"a list drawn from encoder, decoder, cross"),
    ],
)
def test_addrop_config_rejects_bad_values(values, message):
    with pytest.raises(UserError, match=message):
        ADDropConfig(**values)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UserError, match=r"unknown recipe key 'addrop.qq'; did you mean 'q'\?"):
        build(Recipe, {"addrop": {"qq": 0.2}})
    with pytest.raises(UserError, match=r"unknown recipe key 'trian'; did you mean 'train'\?"):
        build(Recipe, {"trian": {}})


def test_values_are_coerced_to_their_types():
    recipe = build(Recipe, {"train": {"lr": "1e-5", "epochs": "3"}, "addrop": {"layers": [0, 2],
                                                                             "cross_tuning": "false"}})
    assert recipe.train.lr == 1e-5 and recipe.train.epochs == 3
    assert recipe.addrop.layers == [0, 2] and recipe.addrop.cross_tuning is False
    assert build(Recipe, {"addrop": {"layers": "0,3"}}).addrop.layers == [0, 3]
    with pytest.raises(UserError, match=r"train.epochs='many' is invalid: expected an integer"):
        build(Recipe, {"train": {"epochs": "many"}})


def test_override_parsing():
    assert parse_override("train.lr=2e-5") == {"train": {"lr": "2e-5"}}  # YAML 1.1 reads it as a string
    assert build(Recipe, parse_override("train.lr=2e-5")).train.lr == 2e-5
    assert parse_override("addrop.layers=[0, 3]") == {"addrop": {"layers": [0, 3]}}
    assert parse_override("data.text_columns=a,b") == {"data": {"text_columns": "a,b"}}
    with pytest.raises(UserError, match="use KEY=VALUE"):
        parse_override("train.lr")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: mrpc\ntrain:\n  lr: [1e-5\n  epochs: 3\n")
    with pytest.raises(UserError, match=r"bad.yaml line \d+: YAML syntax error"):
        load_yaml(path)


def test_recipe_round_trips_through_dict():
    recipe = build(Recipe, {"task": "cola", "addrop": {"p": 0.7, "layers": "all"}})
    assert build(Recipe, recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"template": "Review:"}, r"generation.template='Review:' is invalid: a prompt with the field \{text\}"),
        ({"template": "{text} {label}"}, r"generation.template=.* is invalid"),
        ({"template": "{text"}, r"generation.template=.* is invalid: .*write \{ and \} as \{\{ and \}\}"),
        ({"answers": ["yes", "Yes"]}, r"generation.answers=.* one distinct, non-empty answer per class"),
        ({"answers": ["yes"]}, r"generation.answers=\['yes'\] is invalid"),
        ({"max_new_tokens": 0}, r"generation.max_new_tokens=0 is invalid: use a positive number of tokens"),
        ({"answers": [False, True]}, r"generation.answers\[0\]=False is invalid: expected a string; YAML reads yes"),
    ],
)
def test_generation_settings_reject_bad_values(values, message):
    with pytest.raises(UserError, match=message):
        build(Recipe, {"generation": values})


def test_a_lora_run_without_an_lr_trains_at_the_lora_rate_and_a_given_lr_is_kept():
    assert build(Recipe, {}).train.lr == 2e-5
    assert build(Recipe, {"lora": {"r": 8}}).train.lr == 2e-4
    assert build(Recipe, {"lora": {"r": 8}, "train": {"lr": 1e-5}}).train.lr == 1e-5
    assert build(Recipe, {"lora": {"r": 8}}).to_dict()["train"]["lr"] == 2e-4  # recorded as run


def test_a_generation_section_at_its_defaults_is_not_part_of_a_runs_identity():
    from addrop_cli.recipe import run_identity

    values = build(Recipe, {}).to_dict()
    assert "generation" in values and "generation" not in run_identity(values)
    templated = build(Recipe, {"generation": {"template": "{text} ?"}}).to_dict()
    assert run_identity(templated)["generation"]["template"] == "{text} ?"


def test_eval_every_must_be_a_positive_number_of_epochs():
    with pytest.raises(UserError, match=r"train.eval_every=0 is invalid: use a positive integer"):
        build(Recipe, {"train": {"eval_every": 0}})


def test_save_every_is_not_part_of_a_runs_identity_and_must_be_positive():
    from addrop_cli.recipe import run_identity

    values = build(Recipe, {}).to_dict()
    before_the_key = {**values, "train": {k: v for k, v in values["train"].items() if k != "save_every"}}
    every_fifth = build(Recipe, {"train": {"save_every": 5}}).to_dict()
    assert run_identity(every_fifth) == run_identity(values) == run_identity(before_the_key)
    with pytest.raises(UserError, match=r"train.save_every=0 is invalid: use a positive integer"):
        build(Recipe, {"train": {"save_every": 0}})


def test_eval_every_at_one_keeps_the_identity_of_runs_recorded_before_the_key():
    from addrop_cli.recipe import run_identity

    values = build(Recipe, {}).to_dict()
    before_the_key = {**values, "train": {k: v for k, v in values["train"].items() if k != "eval_every"}}
    assert run_identity(values) == run_identity(before_the_key)
    every_second = build(Recipe, {"train": {"eval_every": 2}}).to_dict()
    assert run_identity(every_second)["train"]["eval_every"] == 2
