"""What a sweep reports it found: ties shown as ties, trials that predicted one class marked (summary line,
summary.md, summary.csv, best-recipe.yaml, the live view), and heatmap colour scales within the metric's range.

Most tests summarize hand-written sweep directories (the run files the trials would leave, recorded through the
driver's own result rows), so they take milliseconds; one runs a real sweep of a tiny model end to end."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from rich.console import Console

from addrop_cli.cli.sweep import _Board, _LineLog
from addrop_cli.outputs import write_json, write_jsonl
from addrop_cli.recipe import Recipe, build
from addrop_cli.sweep.plan import RESULTS_FILE, check_manifest, load_manifest, manifest, plan_from_manifest
from addrop_cli.sweep.runner import SweepProgress, _result_row
from addrop_cli.sweep.summary import (
    collect,
    colour_limits,
    one_class_verdict,
    sensitivity_figures,
    summarize,
    verdict,
)
from addrop_cli.sweep.trials import Outcome
from addrop_cli.tasks.registry import ALL_TASKS, METRIC_RANGES
from addrop_cli.training import one_class

ALL_POSITIVE = {"negative": 0, "positive": 872}
BALANCED = {"negative": 430, "positive": 442}


def finished_sweep(directory, axes, results, *, seeds=(1,), baseline=True, task="sst2", base=None):
    """A sweep directory as ``addrop sweep`` leaves it: sweep.json, each trial's metrics.json and history.jsonl,
    and results.jsonl rows made by the driver's own ``_result_row``.

    ``results`` maps a trial id to (accuracy at its best epoch, that epoch's prediction counts).
    """
    base = base or Recipe(task=task)
    check_manifest(directory, manifest(base, axes, list(seeds), baseline), force=False)
    rows = []
    for trial in plan_from_manifest(directory, load_manifest(directory)):
        accuracy, predictions = results[trial.id]
        run = directory / "trials" / trial.id
        write_json(run / "metrics.json", {"metric": "accuracy", "best_epoch": 1, "eval": {"accuracy": accuracy}})
        write_jsonl(run / "history.jsonl", [{"epoch": 1, "seconds": 1.0, "eval": {"accuracy": accuracy},
                                             "eval_predictions": predictions}])
        rows.append(_result_row(trial, Outcome(0, seconds=1.0), 1))
    write_jsonl(directory / RESULTS_FILE, rows)
    return rows


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def bold_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|") and "**" in line]


def test_the_best_recipe_keeps_every_section_but_the_methods_it_does_not_use(tmp_path):
    base = build(Recipe, {"task": "sst2", "lora": {"r": 4}})
    results = {"ft_seed1": (0.6, BALANCED), "addrop_p0.1_seed1": (0.7, BALANCED),
               "rdrop_alpha0.5_seed1": (0.8, BALANCED)}
    axes = {"addrop.method": ["addrop", "rdrop"], "addrop.p": [0.1], "rdrop.alpha": [0.5]}
    finished_sweep(tmp_path, axes, results, base=base)
    summarize(tmp_path)
    best = yaml.safe_load((tmp_path / "best-recipe.yaml").read_text())
    assert set(best) == {"task", "model", "data", "train", "addrop", "rdrop", "lora"}
    assert best["addrop"]["method"] == "rdrop" and best["rdrop"]["alpha"] == 0.5 and best["lora"]["r"] == 4


# ------------------------------------------------------------------------------------------------ ties


def test_a_sweep_whose_settings_all_tie_on_one_class_says_no_setting_beat_the_others(tmp_path):
    results = {name: (0.5091743119266054, ALL_POSITIVE)
               for name in ("ft_seed1", "addrop_p0.1_q0.3_seed1", "addrop_p0.3_q0.3_seed1")}
    finished_sweep(tmp_path, {"addrop.p": [0.1, 0.3], "addrop.q": [0.3]}, results)
    summary = summarize(tmp_path)

    assert verdict(summary) == "no setting beat the others (all 3 tied at accuracy 0.5092)"
    assert one_class_verdict(summary) == ("every trial predicted one class for ≥ 95 % of the evaluation set: the "
                                          "scores say nothing about p and q; train longer or on more data")
    markdown = (tmp_path / "summary.md").read_text()
    assert bold_rows(markdown) == []
    assert "No setting beat the others: all 3 settings, the fine-tuning baseline included, tied at eval.accuracy " \
           "0.5092" in markdown
    assert "| one class |" in markdown and markdown.count("| 1 of 1 seed (positive) |") == 3
    assert "Every trial predicted one class for ≥ 95 % of the evaluation set" in markdown
    assert [row["best"] for row in read_csv(tmp_path / "summary.csv")] == ["tied"] * 3
    assert [row["one_class"] for row in read_csv(tmp_path / "summary.csv")] == ["1"] * 3
    header = (tmp_path / "best-recipe.yaml").read_text()
    assert header.startswith("# No single best setting in the sweep in ")
    assert "a tie of 3 at eval.accuracy 0.5092 (FT; p=0.1, q=0.3; p=0.3, q=0.3)" in header
    assert "# This recipe takes one of them, addrop.p=0.1, addrop.q=0.3" in header


def test_a_partial_tie_names_the_tied_settings_bolds_each_and_keeps_a_visible_difference_apart(tmp_path):
    axes = {"addrop.p": [0.1, 0.3, 0.5], "addrop.q": [0.3]}
    results = {"ft_seed1": (0.6, BALANCED), "ft_seed2": (0.6, BALANCED),
               "addrop_p0.1_q0.3_seed1": (0.69, BALANCED), "addrop_p0.1_q0.3_seed2": (0.71, BALANCED),
               "addrop_p0.3_q0.3_seed1": (0.70004, BALANCED), "addrop_p0.3_q0.3_seed2": (0.70002, BALANCED),
               # 0.69994 shows as 0.6999: a difference the reader sees is not a tie
               "addrop_p0.5_q0.3_seed1": (0.69994, BALANCED), "addrop_p0.5_q0.3_seed2": (0.69994, BALANCED)}
    finished_sweep(tmp_path, axes, results, seeds=(1, 2))
    summary = summarize(tmp_path)

    assert verdict(summary) == ("tied: p=0.1, q=0.3; p=0.3, q=0.3 (accuracy 0.7000); fine-tuning baseline "
                                "0.6000 ± 0.0000")
    assert one_class_verdict(summary) is None
    markdown = (tmp_path / "summary.md").read_text()
    bold = bold_rows(markdown)
    assert len(bold) == 2 and all(row.startswith(("| AD-DROP | 0.1 |", "| AD-DROP | 0.3 |")) for row in bold)
    assert "Tied for best (in bold; equal to the 4 decimals shown): p=0.1, q=0.3; p=0.3, q=0.3: eval.accuracy " \
           "0.7000. `best-recipe.yaml` takes p=0.3, q=0.3." in markdown
    assert "one class" not in markdown
    assert [row["best"] for row in read_csv(tmp_path / "summary.csv")] == ["", "tied", "tied", ""]
    # best-recipe.yaml: the higher mean before rounding (0.70003 > 0.7), and it says it was a tie
    assert (tmp_path / "best-recipe.yaml").read_text().startswith("# No single best setting")
    assert summary.best.settings == {"addrop.p": 0.3, "addrop.q": 0.3}


def test_a_clear_winner_is_named_best_in_bold_alone(tmp_path):
    results = {"ft_seed1": (0.6, BALANCED), "addrop_p0.1_q0.3_seed1": (0.71, BALANCED),
               "addrop_p0.3_q0.3_seed1": (0.7, BALANCED)}
    finished_sweep(tmp_path, {"addrop.p": [0.1, 0.3], "addrop.q": [0.3]}, results)
    summary = summarize(tmp_path)

    assert verdict(summary) == "best: p=0.1, q=0.3 (accuracy 0.7100); fine-tuning baseline 0.6000"
    markdown = (tmp_path / "summary.md").read_text()
    assert bold_rows(markdown) == ["| AD-DROP | 0.1 | 0.3 | 1 | **0.7100** |"]
    assert "Best setting: p=0.1, q=0.3: eval.accuracy 0.7100" in markdown
    assert [row["best"] for row in read_csv(tmp_path / "summary.csv")] == ["", "yes", ""]
    assert (tmp_path / "best-recipe.yaml").read_text().startswith("# Best setting of the sweep in ")


def test_ad_drop_settings_that_only_match_fine_tuning_are_a_tie_with_it(tmp_path):
    results = {"ft_seed1": (0.8, BALANCED), "addrop_p0.1_q0.3_seed1": (0.8, BALANCED),
               "addrop_p0.3_q0.3_seed1": (0.7, BALANCED)}
    finished_sweep(tmp_path, {"addrop.p": [0.1, 0.3], "addrop.q": [0.3]}, results)
    assert verdict(collect(tmp_path)[0]) == "tied: FT; p=0.1, q=0.3 (accuracy 0.8000)"


# ------------------------------------------------------------------------------------------- one class


def test_one_class_seeds_are_counted_per_setting_at_the_loops_threshold(tmp_path):
    axes = {"addrop.p": [0.1, 0.3], "addrop.q": [0.3]}
    at_threshold = {"negative": 19, "positive": 1}  # exactly 95 %: the loop warns, so the sweep marks it
    below = {"negative": 1899, "positive": 101}  # 94.95 %
    results = {"ft_seed1": (0.8, BALANCED), "ft_seed2": (0.8, BALANCED),
               "addrop_p0.1_q0.3_seed1": (0.5, at_threshold), "addrop_p0.1_q0.3_seed2": (0.81, BALANCED),
               "addrop_p0.3_q0.3_seed1": (0.5, below), "addrop_p0.3_q0.3_seed2": (0.7, BALANCED)}
    finished_sweep(tmp_path, axes, results, seeds=(1, 2))
    summary = summarize(tmp_path)

    assert one_class_verdict(summary) == "1 of 6 trials predicted one class for ≥ 95 % of the evaluation set"
    markdown = (tmp_path / "summary.md").read_text()
    assert "| AD-DROP | 0.1 | 0.3 | 2 | **0.6550 ± 0.2192** | 1 of 2 seeds (negative) |" in markdown
    assert "| AD-DROP | 0.3 | 0.3 | 2 | 0.6000 ± 0.1414 |  |" in markdown
    assert "1 of 6 trials predicted one class for ≥ 95 % of the evaluation set at the best epoch (column " \
           "\"one class\")." in markdown
    assert [row["one_class"] for row in read_csv(tmp_path / "summary.csv")] == ["0", "1", "0"]


def test_the_loop_and_the_sweep_share_the_one_class_threshold():
    from addrop_cli.training import loop, tracking

    assert loop.ONE_CLASS_SHARE == one_class.ONE_CLASS_SHARE
    assert tracking.majority_share is one_class.majority_share
    assert loop.one_class_warning({"negative": 19, "positive": 1}) is not None
    assert one_class.is_one_class(one_class.majority_share({"negative": 19, "positive": 1}))


def test_result_rows_record_the_best_epochs_majority_class(tmp_path):
    rows = finished_sweep(tmp_path, {"addrop.p": [0.1], "addrop.q": [0.3]},
                          {"ft_seed1": (0.5, ALL_POSITIVE), "addrop_p0.1_q0.3_seed1": (0.8, BALANCED)})
    assert [(row["majority_label"], row["majority_share"]) for row in rows] == [("positive", 1.0),
                                                                                ("positive", 442 / 872)]


@pytest.mark.parametrize("task", ["stsb", "conll2003", "wmt16-en-ro"])
def test_tasks_without_classes_mark_nothing(tmp_path, task):
    # NER histories count predicted tags, and "O" is nearly all of them: that is no one-class model.
    write_jsonl(tmp_path / "history.jsonl", [{"epoch": 1, "eval_predictions": {"O": 990, "B-PER": 10}}])
    assert one_class.best_epoch_majority(tmp_path, task, 1) is None
    assert one_class.best_epoch_majority(tmp_path, "sst2", 1) == ("O", 0.99)


def test_rows_from_before_the_majority_fields_are_read_from_the_trials_history(tmp_path):
    axes = {"addrop.p": [0.1], "addrop.q": [0.3]}
    rows = finished_sweep(tmp_path, axes, {"ft_seed1": (0.5, ALL_POSITIVE), "addrop_p0.1_q0.3_seed1": (0.5,
                                                                                                         ALL_POSITIVE)})
    write_jsonl(tmp_path / RESULTS_FILE, [{key: value for key, value in row.items() if not key.startswith("majority")}
                                          for row in rows])
    assert collect(tmp_path)[0].one_class_trials() == (2, 2)


def test_the_live_view_marks_a_trial_that_predicted_one_class(tmp_path):
    rows = finished_sweep(tmp_path, {"addrop.p": [0.1], "addrop.q": [0.3]},
                          {"ft_seed1": (0.5091743, ALL_POSITIVE), "addrop_p0.1_q0.3_seed1": (0.8, BALANCED)})
    progress = SweepProgress(total=2, finished=rows)
    lines = Console(file=io.StringIO(), width=200)
    _LineLog(lines).update(progress)
    assert lines.file.getvalue().splitlines() == [
        "[2/2] ft_seed1: accuracy 0.5092 (best epoch 1, 0.0 min; one class: 100 % positive)",
        "[2/2] addrop_p0.1_q0.3_seed1: accuracy 0.8000 (best epoch 1, 0.0 min)"]
    board = _Board(2)
    board.update(progress)
    screen = Console(file=io.StringIO(), width=200)
    screen.print(board)
    shown = screen.file.getvalue()
    assert "accuracy 0.5092 (one class: 100 % positive)" in shown and shown.count("one class") == 1


def test_shares_never_round_up_to_all():
    assert one_class.share_text("positive", 1.0) == "100 % positive"
    assert one_class.share_text("negative", 0.9996) == "99.9 % negative"
    assert one_class.share_text("negative", 0.95) == "95 % negative"


# ------------------------------------------------------------------------------------------- heatmaps


@pytest.mark.parametrize(("metric", "values", "limits"), [
    ("accuracy", [[0.5092], [0.5092]], (0.0, 1.0)),
    ("mcc", [[0.0, 0.0]], (-1.0, 1.0)),
    ("pearson", [[0.3, np.nan]], (-1.0, 1.0)),
    ("accuracy", [[0.7, 0.8], [np.nan, 0.75]], (0.7, 0.8)),  # the data's own range, for contrast
    ("gen_len", [[20.0]], (19.0, 21.0)),  # no bounds: the value ± 5 %
    ("f1", [[np.nan]], (0.0, 1.0)),
])
def test_colour_limits_stay_within_the_metrics_range(metric, values, limits):
    assert colour_limits(metric, np.array(values)) == pytest.approx(limits)


def test_every_tasks_metrics_have_a_range_except_lengths():
    metrics = {name for spec in ALL_TASKS.values() for name in spec.metrics}
    assert metrics - set(METRIC_RANGES) == {"gen_len"}


def test_an_all_equal_accuracy_heatmap_has_its_colour_bar_within_0_and_1(tmp_path):
    results = {name: (0.5091743119266054, ALL_POSITIVE)
               for name in ("ft_seed1", "addrop_p0.1_q0.3_seed1", "addrop_p0.3_q0.3_seed1")}
    finished_sweep(tmp_path, {"addrop.p": [0.1, 0.3], "addrop.q": [0.3]}, results)
    mean_figure, versus_figure = sensitivity_figures(collect(tmp_path)[0])
    image_axes, bar_axes = mean_figure.axes
    assert image_axes.images[0].get_clim() == (0.0, 1.0)
    assert bar_axes.get_ylim() == (0.0, 1.0)
    assert versus_figure.axes[0].images[0].get_clim() == (-1.0, 1.0)


# ---------------------------------------------------------------------------------------------- end to end


def test_a_real_sweep_whose_trials_all_predict_one_class_says_so(tmp_path, tiny_checkpoint):
    """A tiny model trained on positive sentences only predicts 'positive' for every dev sentence, whatever p."""
    train = tmp_path / "positive.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"a good film number {i}\t1\n" for i in range(16)))
    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(tiny_checkpoint), "--train-file", str(train), "--max-eval-samples", "24",
            "--max-length", "16", "--epochs", "2", "--batch-size", "8", "--set", "train.lr=1e-2",
            "--p", "0.1,0.3", "--q", "0.3", "--baseline", "--output-dir", str(out)]
    result = subprocess.run([sys.executable, "-m", "addrop_cli", *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    assert {row["majority_label"] for row in rows} == {"positive"} and all(r["majority_share"] == 1 for r in rows)
    lines = result.stderr.splitlines()
    for row in rows:
        assert any(line.startswith("[") and f"] {row['trial']}: accuracy " in line
                   and line.endswith("one class: 100 % positive)") for line in lines), row["trial"]
    accuracy = f"{rows[0]['eval']['accuracy']:.4f}"
    assert f"3/3 trials finished; no setting beat the others (all 3 tied at accuracy {accuracy})" in lines
    assert ("warning: every trial predicted one class for ≥ 95 % of the evaluation set: the scores say nothing "
            "about p and q; train longer or on more data") in lines
    markdown = (out / "summary.md").read_text()
    assert bold_rows(markdown) == [] and "No setting beat the others: all 3 settings" in markdown
    assert markdown.count("| 1 of 1 seed (positive) |") == 3
