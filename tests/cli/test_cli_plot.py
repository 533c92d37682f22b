"""``addrop plot`` and the prior experiment (paper Section 2.2, Fig. 2): strategies high / low / random."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from addrop_cli.cli import app

runner = CliRunner()


def fake_run(directory, losses):
    directory.mkdir()
    rows = [{"epoch": epoch, "phase": "addrop", "train_loss": train, **({} if dev is None else {"eval_loss": dev})}
            for epoch, (train, dev) in enumerate(losses, start=1)]  # dev None: an epoch train.eval_every skipped
    (directory / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def test_loss_curves_of_several_runs_in_one_figure(tmp_path):
    high = fake_run(tmp_path / "high", [(0.7, 0.6), (0.5, 0.5), (0.4, 0.45)])
    low = fake_run(tmp_path / "low", [(0.6, None), (0.3, 0.7), (0.1, 0.9)])
    output = tmp_path / "figures" / "fig2.png"
    result = runner.invoke(app, ["plot", str(high), str(low), "--output", str(output)])
    assert result.exit_code == 0, result.output
    with Image.open(output) as png:
        png.load()
        assert png.format == "PNG" and png.size[0] > 2 * png.size[1] > 400  # two panels side by side
    svg = tmp_path / "fig2.svg"
    result = runner.invoke(app, ["plot", str(high), str(low), "--output", str(svg), "--label", "AD-DROP",
                                 "--label", "low attribution"])
    assert result.exit_code == 0, result.output
    text = svg.read_text()
    assert "AD-DROP" in text and "low attribution" in text and "Validation loss" in text


@pytest.mark.parametrize("strategy", ["low", "random"])
def test_strategy_from_set_trains_every_epoch_and_records_both_losses(tmp_path, tiny_checkpoint, shared_data,
                                                                      strategy):
    out = tmp_path / strategy
    result = runner.invoke(app, ["train", "--task", "mrpc", "--model", str(tiny_checkpoint), "--output-dir", str(out),
                                 "--train-file", str(shared_data / "MRPC/train.tsv"),
                                 "--validation-file", str(shared_data / "MRPC/dev.tsv"), "--max-train-samples", "16",
                                 "--max-eval-samples", "16", "--epochs", "2", "--no-cross-tuning",
                                 "--set", f"addrop.strategy={strategy}"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["phase"] for row in rows] == ["addrop", "addrop"]
    assert all(row["train_loss"] > 0 and row["eval_loss"] > 0 for row in rows)
    assert f"strategy: {strategy}" in (out / "recipe.yaml").read_text()
    figure = tmp_path / "fig2.png"
    assert runner.invoke(app, ["plot", str(out), "--output", str(figure)]).exit_code == 0
    assert figure.stat().st_size > 0
