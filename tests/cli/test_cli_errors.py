"""Bad input: one line on stderr naming the problem and what would be valid, exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import XLMConfig, XLMModel
from typer.testing import CliRunner

from addrop_cli.cli import app

runner = CliRunner()


def fails(args, *fragments, out=None):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    if out is not None:
        assert not out.exists() or not any(out.iterdir())
    return lines[0]


@pytest.fixture
def mrpc_args(tmp_path, tiny_checkpoint, shared_data):
    out = tmp_path / "run"
    return out, ["train", "--task", "mrpc", "--model", str(tiny_checkpoint), "--output-dir", str(out),
                 "--train-file", str(shared_data / "MRPC/train.tsv"),
                 "--validation-file", str(shared_data / "MRPC/dev.tsv"), "--max-train-samples", "16",
                 "--max-eval-samples", "16", "--epochs", "1"]


def test_p_out_of_range(mrpc_args):
    out, args = mrpc_args
    fails([*args, "--p", "1.5"], "addrop.p=1.5", "between 0 and 1", out=out)


def test_unknown_task(mrpc_args):
    out, args = mrpc_args
    fails([*args, "--task", "mrcp"], "unknown task 'mrcp'", "mrpc", out=out)


def test_missing_file(mrpc_args, tmp_path):
    out, args = mrpc_args
    fails([*args, "--train-file", str(tmp_path / "nope.tsv")], "nope.tsv does not exist", out=out)


def test_malformed_tsv_row(mrpc_args, tmp_path, shared_data):
    out, args = mrpc_args
    bad = tmp_path / "bad.tsv"
    lines = (shared_data / "MRPC/train.tsv").read_text(encoding="utf-8-sig").splitlines()[:5]
    lines[3] = "1\tonly three\tfields"
    bad.write_text("\n".join(lines) + "\n")
    fails([*args, "--train-file", str(bad)], "bad.tsv line 4", "expected 5", "got 3", out=out)


def test_unknown_metric(mrpc_args):
    out, args = mrpc_args
    fails([*args, "--set", "train.metric=acc"], "unknown metric 'acc'", "accuracy, f1", out=out)


def test_unknown_recipe_key_suggests(mrpc_args):
    out, args = mrpc_args
    fails([*args, "--set", "addrop.qq=0.1"], "unknown recipe key 'addrop.qq'", "did you mean 'q'", out=out)


def test_layer_index_out_of_range(mrpc_args):
    out, args = mrpc_args
    fails([*args, "--layers", "0,7"], "out of range", "valid indices are 0 to 1", out=out)


def test_model_path_that_does_not_exist(mrpc_args, tmp_path):
    out, args = mrpc_args
    fails([*args, "--model", str(tmp_path / "missing-model")], "missing-model does not exist", out=out)


def test_model_neither_attention_route_reaches(mrpc_args, tmp_path, tiny_tokenizer):
    out, args = mrpc_args
    path = tmp_path / "xlm"
    XLMModel(XLMConfig(vocab_size=100, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=128)
             ).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    fails([*args, "--model", str(path)], "'xlm'", "AttentionInterface", "--no-addrop", out=out)


def test_max_length_above_model_limit(mrpc_args):
    out, args = mrpc_args
    fails([*args, "--max-length", "4096"], "data.max_length=4096 exceeds", "128 tokens", out=out)


def test_offline_hub_dataset_is_a_clear_error(tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    fails(["train", "--task", "mrpc", "--model", str(tiny_checkpoint), "--output-dir", str(out)],
          "cannot load dataset 'nyu-mll/glue'", out=out)


def test_unknown_recipe_and_bad_set_syntax():
    fails(["train", "--recipe", "mrcp"], "unknown recipe 'mrcp'", "did you mean 'mrpc'")
    fails(["train", "--set", "epochs"], "use KEY=VALUE")


def test_eval_of_missing_checkpoint(tmp_path):
    fails(["eval", "--checkpoint", str(tmp_path / "none")], "is not a directory")


def test_no_traceback_through_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "addrop_cli", "train", "--task", "nosuch"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: unknown task 'nosuch'")
    assert "Traceback" not in result.stderr


def test_data_file_that_is_a_directory(mrpc_args, tmp_path):
    out, args = mrpc_args
    fails([*args, "--validation-file", str(tmp_path)], "is a directory", out=out)


def test_missing_columns(mrpc_args, tmp_path):
    out, args = mrpc_args
    bad = tmp_path / "cols.csv"
    bad.write_text("premise,label\nA cat sat.,1\n")
    fails([*args, "--train-file", str(bad)], "cols.csv", "#1 String", out=out)


def test_label_outside_the_label_set(mrpc_args, tmp_path):
    out, args = mrpc_args
    bad = tmp_path / "labels.jsonl"
    row = '{{"sentence1": "a", "sentence2": "b", "label": {}}}\n'
    bad.write_text(row.format(0) + row.format(7))
    fails([*args, "--train-file", str(bad)], "labels.jsonl line 2", "7", out=out)


def test_empty_split(mrpc_args, tmp_path):
    out, args = mrpc_args
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    fails([*args, "--validation-file", str(empty)], "empty.tsv has no examples", out=out)


def test_non_numeric_regression_target(tmp_path, tiny_checkpoint, shared_data):
    out = tmp_path / "run"
    bad = tmp_path / "stsb.tsv"
    lines = (shared_data / "STS-B-sample/dev-sample.tsv").read_text().splitlines()[:4]
    fields = lines[2].split("\t")
    fields[-1] = "high"
    lines[2] = "\t".join(fields)
    bad.write_text("\n".join(lines) + "\n")
    fails(["train", "--task", "stsb", "--model", str(tiny_checkpoint), "--train-file", str(bad),
           "--validation-file", str(bad), "--output-dir", str(out)], "stsb.tsv line 3", "high", out=out)


def test_q_out_of_range(mrpc_args):
    out, args = mrpc_args
    fails([*args, "--q", "1.2"], "addrop.q=1.2", "between 0 and 1", out=out)


def test_unknown_attribution(mrpc_args):
    out, args = mrpc_args
    fails([*args, "--attribution", "shap"], "addrop.attribution='shap'", "ga, iga, aa, rd", out=out)


def test_yaml_syntax_error_names_its_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("task: mrpc\ntrain:\n  lr: [1e-5\n  epochs: 3\n")
    fails(["train", "--recipe", str(recipe)], "broken.yaml line", "YAML syntax error")


def test_output_dir_holding_a_different_run(mrpc_args):
    _, args = mrpc_args
    assert runner.invoke(app, args).exit_code == 0
    fails([*args, "--lr", "3e-4"], "holds a different run", "--overwrite")
    assert runner.invoke(app, [*args, "--lr", "3e-4", "--overwrite"]).exit_code == 0


def test_resume_without_checkpoint(mrpc_args):
    out, args = mrpc_args
    fails([*args, "--resume"], "holds no checkpoint to resume from", out=out)


@pytest.fixture
def attribute_args(tmp_path, tiny_checkpoint):
    out = tmp_path / "report"
    return out, ["attribute", "--checkpoint", str(tiny_checkpoint), "--task", "sst2", "--output-dir", str(out)]


def test_attribute_checkpoint_that_does_not_exist(tmp_path):
    fails(["attribute", "--checkpoint", str(tmp_path / "nope"), "--text", "a film"], "nope has no recipe.yaml",
          "--task")
    fails(["attribute", "--checkpoint", str(tmp_path / "nope"), "--task", "sst2", "--text", "a film",
           "--output-dir", str(tmp_path / "out")], "nope does not exist", out=tmp_path / "out")


def test_attribute_gold_labels_without_labelled_input(attribute_args, tmp_path):
    out, args = attribute_args
    fails([*args, "--text", "a film", "--labels", "gold"], "--labels gold needs labelled input", out=out)
    unlabelled = tmp_path / "unlabelled.tsv"
    unlabelled.write_text("sentence\na film\n")
    fails([*args, "--input-file", str(unlabelled), "--labels", "gold"], "--labels gold needs labelled input", out=out)


def test_attribute_bad_method_labels_and_heads(attribute_args):
    out, args = attribute_args
    fails([*args, "--text", "a film", "--method", "rd"], "--method 'rd' is invalid", "ga, iga, aa", out=out)
    fails([*args, "--text", "a film", "--labels", "golden"], "addrop.labels='golden'", "pseudo or gold", out=out)
    fails([*args, "--text", "a film", "--heads", "first"], "--heads 'first' is invalid", "mean", out=out)
    fails([*args, "--text", "a film", "--heads", "0,9"], "--heads 0,9 is out of range", "0 to 3", out=out)


def test_attribute_needs_exactly_one_input(attribute_args, tmp_path):
    out, args = attribute_args
    fails(args, "give either --text", out=out)
    fails([*args, "--text", "a", "--input-file", str(tmp_path / "x.tsv")], "not both", out=out)
    fails([*args, "--text-pair", "b", "--input-file", str(tmp_path / "x.tsv")], "--text-pair goes with --text",
          out=out)
    fails([*args, "--input-file", str(tmp_path / "x.tsv")], "x.tsv does not exist", out=out)


def test_plot_of_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    fails(["plot", str(tmp_path / "empty"), "--output", str(tmp_path / "f.png")], "empty is not a run directory",
          "history.jsonl")
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text('{"epoch": 1, "train_loss": 0.5}\n')
    fails(["plot", str(run), "--output", str(tmp_path / "f.png")], "history.jsonl has no evaluated epoch")
    assert not (tmp_path / "f.png").exists()


def test_plot_bad_output_format_and_labels(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text('{"epoch": 1, "train_loss": 0.5, "eval_loss": 0.6}\n')
    fails(["plot", str(run), "--output", str(tmp_path / "f.jpg")], "unsupported figure format '.jpg'", ".png")
    fails(["plot", str(run), "--output", str(tmp_path / "f.png"), "--label", "a", "--label", "b"],
          "--label was given 2 times for 1 runs")
