"""The evidence benchmark's modules (benchmarks/evidence*.py): the committed record that carries a study across fresh
checkouts, the regime probes, the status's time left, the MiniLM report read back for the overview, and the best-of-k
arithmetic."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import evidence  # noqa: E402
import evidence_overview  # noqa: E402
import evidence_record  # noqa: E402
import evidence_regime  # noqa: E402
import evidence_studies  # noqa: E402


def _row(trial: str) -> dict:
    return {"trial": trial, "settings": {}, "seed": 1, "baseline": True, "digest": "d", "status": "ok",
            "seconds": 1.0, "metric": "accuracy", "best_epoch": 1, "eval": {"accuracy": 0.5}}


def _run_folder(root: Path, finished: list[str], running: list[str]) -> Path:
    sweep = root / "study" / "selection"
    (sweep / "sweep.json").parent.mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    (sweep / "results.jsonl").write_text("".join(json.dumps(_row(trial)) + "\n" for trial in finished))
    for trial in finished + running:
        folder = sweep / "trials" / trial
        (folder / "checkpoints" / "step-1").mkdir(parents=True)
        (folder / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"weights")
        (folder / "history.jsonl").write_text(json.dumps({"epoch": 1, "trial": trial}) + "\n")
        (folder / "metrics.json").write_text("{}")
    (root / "commands.json").write_text("[]")
    return sweep


def test_record_keeps_finished_trials_small_files_and_nothing_else(tmp_path):
    _run_folder(tmp_path / "run", finished=["ft_seed1"], running=["addrop_p0.1_seed1"])
    assert evidence_record.save(tmp_path / "run", tmp_path / "record") == 1
    kept = sorted(str(path.relative_to(tmp_path / "record")) for path in (tmp_path / "record").rglob("*")
                  if path.is_file())
    assert kept == ["commands.json", "study/selection/results.jsonl", "study/selection/sweep.json",
                    "study/selection/trials/ft_seed1/history.jsonl", "study/selection/trials/ft_seed1/metrics.json"]
    assert evidence_record.save(tmp_path / "run", tmp_path / "record") == 0  # saving again adds nothing


def test_restore_gives_a_fresh_run_folder_the_finished_trials(tmp_path):
    _run_folder(tmp_path / "run", finished=["ft_seed1", "addrop_p0.1_seed1"], running=[])
    evidence_record.save(tmp_path / "run", tmp_path / "record")
    assert evidence_record.restore(tmp_path / "record", tmp_path / "fresh") == 2
    sweep = tmp_path / "fresh" / "study" / "selection"
    assert [row["trial"] for row in evidence_record.read_results(sweep)] == ["ft_seed1", "addrop_p0.1_seed1"]
    assert (sweep / "trials" / "addrop_p0.1_seed1" / "history.jsonl").is_file()
    assert (tmp_path / "fresh" / "commands.json").is_file()


def test_restore_never_overwrites_a_run_folder_ahead_of_its_record(tmp_path):
    _run_folder(tmp_path / "run", finished=["ft_seed1"], running=[])
    evidence_record.save(tmp_path / "run", tmp_path / "record")
    ahead = _run_folder(tmp_path / "ahead", finished=["ft_seed1", "addrop_p0.1_seed1"], running=[])
    (ahead / "sweep.json").write_text('{"grid": "ahead"}')
    (ahead / "trials" / "ft_seed1" / "history.jsonl").write_text("newer\n")
    assert evidence_record.restore(tmp_path / "record", tmp_path / "ahead") == 0
    assert len(evidence_record.read_results(ahead)) == 2
    assert (ahead / "sweep.json").read_text() == '{"grid": "ahead"}'
    assert (ahead / "trials" / "ft_seed1" / "history.jsonl").read_text() == "newer\n"


def test_restore_replaces_the_files_of_a_trial_that_was_still_running_there(tmp_path):
    _run_folder(tmp_path / "run", finished=["ft_seed1"], running=[])
    evidence_record.save(tmp_path / "run", tmp_path / "record")
    older = _run_folder(tmp_path / "older", finished=[], running=["ft_seed1"])
    (older / "trials" / "ft_seed1" / "history.jsonl").write_text("half an epoch\n")
    assert evidence_record.restore(tmp_path / "record", tmp_path / "older") == 1
    assert "half an epoch" not in (older / "trials" / "ft_seed1" / "history.jsonl").read_text()


def test_save_replaces_a_trial_the_run_folder_ran_again(tmp_path):
    sweep = _run_folder(tmp_path / "run", finished=["ft_seed1"], running=[])
    evidence_record.save(tmp_path / "run", tmp_path / "record")
    rerun = {**_row("ft_seed1"), "digest": "new", "eval": {"accuracy": 0.75}}
    (sweep / "results.jsonl").write_text(json.dumps(rerun) + "\n")
    (sweep / "trials" / "ft_seed1" / "history.jsonl").write_text("rerun\n")
    assert evidence_record.save(tmp_path / "run", tmp_path / "record") == 1
    recorded = tmp_path / "record" / "study" / "selection"
    assert evidence_record.read_results(recorded) == [rerun]
    assert (recorded / "trials" / "ft_seed1" / "history.jsonl").read_text() == "rerun\n"


def test_expected_maximum_matches_the_closed_forms():
    assert evidence_overview.expected_maximum(1) == pytest.approx(0.0, abs=1e-9)
    assert evidence_overview.expected_maximum(2) == pytest.approx(1 / math.sqrt(math.pi))
    assert evidence_overview.expected_maximum(3) == pytest.approx(3 / (2 * math.sqrt(math.pi)))


def test_minilm_report_is_read_back_for_the_overview():
    report = BENCHMARKS.parent / "docs" / "results-minilm.md"
    studies = evidence_overview.read_minilm(report.read_text(encoding="utf-8"))
    assert len(studies) == 6
    mrpc = studies["MRPC"]
    assert mrpc.ft_seed_std == pytest.approx(1.3)
    assert mrpc.selection[0] == ("p 0.3, q 0.3, first", 79.6)
    assert mrpc.overfit[:2] == ["MRPC", "3"]
    entry = next(e for e in evidence_overview.minilm_selection_entries(studies) if e.study == "MRPC")
    assert (entry.k, entry.ft_heldout, entry.best_heldout) == (8, 78.7, 79.6)
    assert entry.noise_spread == pytest.approx(1.3)  # no per-seed scores: σ stands in for τ
    assert not studies["MRPC, 1,000 pairs, 10 epochs"].selection  # it reused MRPC's selection


def _entry(gain: float, k: int, delta: str) -> evidence_overview.SelectionEntry:
    return evidence_overview.SelectionEntry("M", f"study {gain}", "AD-DROP", k, 80.0, 80.0 + gain, "p 0.1, q 0.1",
                                            2.0, delta, paired_spread=1.0)


def test_null_probability_of_any_win_is_k_over_k_plus_one_and_falls_with_the_gain():
    assert _entry(0.0, 1, "").null_probability == pytest.approx(0.5)
    assert _entry(0.0, 4, "").null_probability == pytest.approx(4 / 5)
    assert _entry(1.0, 4, "").null_probability > _entry(3.0, 4, "").null_probability
    assert _entry(0.0, 4, "").noise_gain(1.0) == pytest.approx(evidence_overview.expected_maximum(4))


def test_protocol_summary_counts_wins_against_chance_and_reports_the_winners_test_differences():
    text = evidence_overview._protocol_summary([_entry(1.5, 4, "-0.5 [-1.0, +0.1]"), _entry(-1.0, 1, "–"),
                                                _entry(6.0, 4, "+0.9 [+0.1, +1.5]")])
    assert "beat plain fine-tuning in 2 of 3 rows, about as many as the 2.1 that chance" in text
    assert "1 of the winning gains would arise from noise alone less than 5 % of the time (M study 6.0" in text
    assert "-0.5, +0.9 (mean +0.2), against selection gains averaging +3.8" in text


def _probe(root: Path, schedule: str, losses: list[float | None], finished: bool = True,
           scores: list[float] | None = None) -> Path:
    """A regime probe's run folder: one history row per epoch with the given held-out losses (None: an epoch
    train.eval_every skipped) and accuracies (default: 0.5 throughout)."""
    folder = root / "study" / "regime" / schedule
    folder.mkdir(parents=True)
    scores = scores or [0.5] * len(losses)
    evaluated = [{} if loss is None else {"eval_loss": loss, "eval": {"accuracy": score}}
                 for loss, score in zip(losses, scores, strict=True)]
    rows = [{"epoch": epoch, "train_loss": 0.1, **held_out} for epoch, held_out in enumerate(evaluated, start=1)]
    (folder / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "metrics.json").write_text(json.dumps({"finished": finished}))
    (folder / "recipe.yaml").write_text("task: sst2\n")
    return folder


def test_record_keeps_finished_regime_probes_and_restores_them(tmp_path):
    _probe(tmp_path / "run", "epochs4_lr1e-4", [0.6, 0.5, 0.7, 0.9])
    _probe(tmp_path / "run", "epochs2_lr1e-4", [0.6], finished=False)
    assert evidence_record.save(tmp_path / "run", tmp_path / "record") == 1
    assert evidence_record.save(tmp_path / "run", tmp_path / "record") == 0  # saving again adds nothing
    recorded = sorted(str(p.relative_to(tmp_path / "record")) for p in (tmp_path / "record").rglob("*") if p.is_file())
    assert recorded == [f"study/regime/epochs4_lr1e-4/{name}" for name in ("history.jsonl", "metrics.json",
                                                                            "recipe.yaml")]
    assert evidence_record.restore(tmp_path / "record", tmp_path / "fresh") == 1
    assert evidence_record.finished_probe(tmp_path / "fresh" / "study" / "regime" / "epochs4_lr1e-4")


@pytest.mark.parametrize(("losses", "scores", "reached", "overfitted"), [
    ([0.6, 0.5, 0.55, 0.6], [0.6, 0.8, 0.7, 0.7], True, "yes, 1.20×"),  # lowest in the first half, ends 1.2x it
    ([0.6, 0.5, 0.52, 0.56], [0.6, 0.8, 0.7, 0.7], False, "no, 1.12×"),  # ends only 1.12x its lowest
    ([0.6, 0.55, 0.5, 0.6], [0.6, 0.8, 0.7, 0.7], False, "yes, 1.20×"),  # lowest in the second half: too late
    ([None, 0.5, None, 0.55, None, 0.62], None, True, "yes, 1.24×"),  # lowest at epoch 2 of 6, evaluated every second
    # MRPC, 500 pairs, 6 epochs at lr 5e-5: loss lowest at epoch 1 and 1.27x it at the end, but the score still climbs
    ([0.635, 0.751, 0.692, 0.761, 0.799, 0.808], [0.643, 0.651, 0.700, 0.695, 0.703, 0.717], False, "yes, 1.27×"),
])
def test_a_schedule_reaches_the_regime_when_the_held_out_loss_bottoms_early_ends_well_above_and_the_score_peaks_early(
        tmp_path, losses, scores, reached, overfitted):
    folder = _probe(tmp_path, "s", losses, scores=scores)
    curve = evidence_regime.read_curve(folder, ("--epochs", str(len(losses)), "--lr", "1e-4"), "accuracy")
    assert curve.reached is reached
    assert evidence_regime.verdict(curve.ratio) == overfitted


def test_status_costs_plain_fine_tuning_at_its_regime_probe_before_any_ft_trial_finished(tmp_path):
    study = evidence_studies.Study("study", "Study", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv", "accuracy", [], None,
                                   selection_grid=evidence_studies.MRPC_OVERFIT_GRID,
                                   schedule=("--epochs", "4", "--lr", "1e-4"))
    _probe(tmp_path, "epochs4_lr1e-4", [0.6, 0.5, 0.7, 0.9])
    probe = evidence_studies.probe_command(study, Path("/elsewhere"), Path("/data"), study.schedule)
    evidence_record.CommandLog(tmp_path / evidence_record.COMMANDS_FILE).add(" ".join(probe), 1200.0)
    lines = evidence.status_lines([study], tmp_path)
    assert "study/selection: 0/7 trials done (ft 0/1, addrop 0/4, rdrop 0/2); 0.33 h left + trials of a method " \
           "not yet timed" in lines
    assert "study/test: 0/15 trials done (ft 0/5, addrop 0/5, rdrop 0/5); 1.67 h left + trials of a method not " \
           "yet timed" in lines
    assert "  per trial: ft 20.0 min (from its regime probe)" in lines


def test_schedule_label_names_each_option_once():
    schedule = ("--max-train-samples", "1000", "--epochs", "40", "--lr", "1e-4", "--set", "train.warmup_ratio=0.1")
    assert evidence_regime.schedule_label(schedule) == "max-train-samples1000_epochs40_lr1e-4_warmup_ratio0.1"
    assert evidence_regime.schedule_text(schedule) == "1,000 training examples, 40 epochs, lr 1e-4, warmup_ratio 0.1"


def test_selection_arms_count_every_grid_axis_of_each_method():
    overfit, base = evidence_studies.overfit_studies()[0], evidence_studies.base_studies()[0]
    assert overfit.selection_arms() == {"ft": 1, "addrop": 8, "rdrop": 2}  # p x q x layers; two alphas
    assert base.selection_arms() == {"ft": 1, "addrop": 4, "rdrop": 2}


def test_a_logged_call_matches_its_command_from_another_checkout_when_resumed_or_checkpointing_less(tmp_path):
    log = evidence_record.CommandLog(tmp_path / "commands.json")
    log.add("addrop train --train-file /elsewhere/MRPC/train.tsv --output-dir /old/regime/epochs6 --resume", 60.0)
    log.add("addrop train --train-file /elsewhere/MRPC/train.tsv --set train.save_every=100 "
            "--output-dir /old/regime/epochs6", 20.0)
    log.add("addrop train --train-file /elsewhere/MRPC/train.tsv --output-dir /old/regime/epochs3", 30.0)
    log.add("addrop train --train-file /elsewhere/MRPC/train.tsv --set train.eval_every=2 "
            "--output-dir /old/regime/epochs6", 40.0)
    wanted = ["addrop", "train", "--train-file", "/data/MRPC/train.tsv", "--output-dir", "/new/regime/epochs6"]
    assert log.seconds_of([wanted]) == 60.0 + 20.0
