"""The run directory's identity check: a recipe saved by an earlier version is still the same run."""

from __future__ import annotations

import pytest

from addrop_cli.errors import UserError
from addrop_cli.recipe import dump_yaml, resolve_recipe
from addrop_cli.training.run_dir import RECIPE_FILE, check_output_dir


def test_keys_added_since_a_recipe_was_saved_take_their_defaults(tmp_path):
    recipe = resolve_recipe("demo")
    saved = recipe.to_dict()
    del saved["lora"], saved["train"]["model_dtype"], saved["train"]["gradient_checkpointing"]
    (tmp_path / RECIPE_FILE).write_text(dump_yaml(saved))
    assert check_output_dir(tmp_path, recipe, overwrite=False, resume=False) is None  # no checkpoint, no error
    other = resolve_recipe("demo", overrides=["lora.r=8"])
    with pytest.raises(UserError, match=r"holds a different run \(lora\.r None there, 8 here"):
        check_output_dir(tmp_path, other, overwrite=False, resume=False)
