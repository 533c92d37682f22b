"""The evidence suites' studies and the ``addrop`` commands that run them: each study's data, schedule, grid and
notes, the selection sweep's best setting, and the regime probes' and sweeps' command lines."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import evidence_regime

from addrop_cli.sweep import summary as sweep_summary
from addrop_cli.sweep.plan import read_results

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SELECTION_SEED, TEST_SEEDS = 1, (2, 3, 4, 5, 6)
SELECTION_GRID = ["--p", "0.1,0.3", "--q", "0.1,0.3", "--grid", "layers=first,all"]
# At base size the budget allows AD-DROP in the first layer only (the paper's choice for SST-2), and R-Drop's α
# from {1, 4}: 1 as in its README example, 4 what its BERT GLUE code's summed KL weighs at batch 16 (α = B / 4).
BASE_SELECTION_GRID = ["--method", "addrop,rdrop", "--p", "0.1,0.3", "--q", "0.1,0.3", "--grid", "rdrop.alpha=1,4"]
COMMON = ["--batch-size", "16", "--set", "data.holdout_fraction=0.1", "--set", "data.group_by_length=true",
          "--set", "train.patience=null", "--set", "train.save_total_limit=1"]
# minilm: the first study; mpnet-base: at base size with R-Drop; mpnet-base-overfit: base size again, with schedules
# where plain fine-tuning overfits and AD-DROP's layers in the grid; smollm2: a decoder LLM trained generatively.
SUITES = ("minilm", "mpnet-base", "mpnet-base-overfit", "smollm2")
OVERVIEW_SUITES = SUITES[1:]  # reported together in docs/results.md
# AD-DROP's p, q and layers (the paper picks the layers per task) and R-Drop's alpha, as in the base-size grid.
OVERFIT_SELECTION_GRID = ["--method", "addrop,rdrop", "--p", "0.1,0.3", "--q", "0.1,0.3", "--grid",
                          "layers=first,all", "--grid", "rdrop.alpha=1,4"]
# MRPC's trials cost about four times the few-shot ones: q at 0.3 only, the value every earlier MRPC selection chose.
MRPC_OVERFIT_GRID = ("--method", "addrop,rdrop", "--p", "0.1,0.3", "--q", "0.3", "--grid", "layers=first,all",
                     "--grid", "rdrop.alpha=1,4")
# The overfit and LLM studies' trials checkpoint only after their last epoch (save_every above any schedule's
# epochs): at MPNet-base's 1.3 GB a checkpoint took about as long to write as a few-shot epoch to train, and a sweep
# deletes a finished trial's checkpoints anyway.
LAST_EPOCH_CHECKPOINT = ("--set", "train.save_every=100")
# The overfit studies' notes say why they evaluate every epoch, though evaluating every second one saves time.
EVERY_EPOCH = ("evaluated after every epoch: every second one (train.eval_every=2) would, with cross-tuning, have "
               "chosen the regularized arms' checkpoints among regularized epochs only (a first run of SST-2 16-shot "
               "did, and was discarded)")


@dataclass
class Study:
    name: str
    title: str
    recipe: str
    train_file: str
    test_file: str
    metric: str
    options: list[str]
    paper: tuple[float, float] | None  # (FT, AD-DROP) from the paper, in percent
    paper_source: str = ""
    notes: str = ""
    selection_from: str | None = None  # reuse another study's selected setting instead of sweeping
    model: str = "minilm"
    selection_grid: tuple[str, ...] = tuple(SELECTION_GRID)
    # The overfitting-regime studies keep epochs and learning rate apart from the other options: the schedule
    # chosen by the regime probes (evidence_regime.py), after the ones tried before it.
    schedule: tuple[str, ...] = ()
    tried: tuple[tuple[str, ...], ...] = ()
    checkpointing: tuple[str, ...] = ()  # options for how often the sweeps' trials checkpoint (not the results)

    def fixed(self, data: Path) -> list[str]:
        """The options every run of the study shares, schedule aside."""
        return ["--recipe", self.recipe, "--train-file", str(data / self.train_file),
                "--test-file", str(data / self.test_file), "--model", self.model, *COMMON, *self.options]

    def base(self, data: Path) -> list[str]:
        return [*self.fixed(data), *self.schedule, *self.checkpointing]

    @property
    def probes(self) -> list[tuple[str, ...]]:
        """The schedules its regime probes try, the chosen one last (none for a study without probes)."""
        return [*self.tried, self.schedule] if self.schedule else []

    @property
    def arms(self) -> tuple[str, ...]:
        """The methods the study compares: FT and AD-DROP, and R-Drop where the selection sweeps it."""
        return ("ft", "addrop", "rdrop") if "rdrop" in " ".join(self.selection_grid) else ("ft", "addrop")

    def selection_arms(self) -> dict[str, int]:
        """Trials per arm of the selection sweep (one seed): FT once, AD-DROP's p x q (x layers when swept),
        R-Drop's alphas."""
        words = list(zip(self.selection_grid[::2], self.selection_grid[1::2], strict=True))
        grid = {flag: value for flag, value in words if flag != "--grid"}
        swept = dict(value.split("=", 1) for flag, value in words if flag == "--grid")
        addrop = len(grid["--p"].split(",")) * len(grid["--q"].split(","))
        addrop *= len(swept["layers"].split(",")) if "layers" in swept else 1
        if "rdrop" not in self.arms:
            return {"ft": 1, "addrop": addrop}
        return {"ft": 1, "addrop": addrop, "rdrop": len(swept.get("rdrop.alpha", "1").split(","))}


def studies(suite: str = "minilm") -> list[Study]:
    """In running order: the cheap few-shot studies first, the overfitting regime last (it reuses MRPC's choice)."""
    if suite != "minilm":
        return {"mpnet-base": base_studies, "mpnet-base-overfit": overfit_studies, "smollm2": llm_studies}[suite]()

    def k_shot(k: int, epochs: int, paper: tuple[float, float]) -> Study:
        return Study(f"sst2-{k}shot", f"SST-2 {k}-shot", "sst2", "SST-2/train.tsv", "SST-2/dev.tsv", "accuracy",
                     ["--max-length", "64", "--epochs", str(epochs), "--lr", "1e-4", "--set", f"data.k_shot={k}",
                      "--set", "data.max_eval_samples=500", "--set", "train.warmup_ratio=0.1"],
                     paper, "Table 5, RoBERTa-base",
                     f"{k} sentences per class drawn with the seed from the 90 % left after the hold-out, "
                     f"{epochs} epochs at lr 1e-4; the selection set is the first 500 held-out sentences, the test "
                     "set the first 500 of the 872 dev sentences (data.max_eval_samples caps both)")

    return [
        k_shot(16, 20, (74.5, 80.2)),
        k_shot(64, 15, (89.1, 91.6)),
        k_shot(256, 10, (91.4, 92.6)),
        Study("cola", "CoLA", "cola", "CoLA/train.tsv", "CoLA/dev.tsv", "mcc",
              ["--max-length", "64", "--epochs", "3", "--lr", "5e-5"], (61.8, 63.4), "Table 3, BERT-base",
              "the 7,696 sentences left after the hold-out, 3 epochs at lr 5e-5 (at 2e-5 MiniLM was still "
              "improving after 3 epochs, MCC 0.28 on the held-out set)"),
        Study("mrpc", "MRPC", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv", "accuracy",
              ["--max-length", "128", "--epochs", "3", "--lr", "5e-5"], (85.2, 87.4), "Table 3, BERT-base",
              "the 3,302 pairs left after the hold-out, 3 epochs at lr 5e-5 (at 2e-5 plain fine-tuning was still "
              "improving after 3 epochs, 71.1 % on the held-out set, where always answering \"paraphrase\" scores "
              "65 %; those three selection trials were discarded)"),
        Study("mrpc-1000-overfit", "MRPC, 1,000 pairs, 10 epochs", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv",
              "accuracy", ["--max-length", "128", "--epochs", "10", "--lr", "5e-5", "--max-train-samples", "1000"],
              None, "", "a small-data regime meant to make plain fine-tuning overfit: 10 epochs on the first 1,000 "
              "training pairs left after the hold-out, lr 5e-5; to fit the time budget it takes the p, q and "
              "layers selected for MRPC rather than running its own selection sweep", selection_from="mrpc"),
    ]


def base_studies() -> list[Study]:
    """all-mpnet-base-v2 (12 layers, 110 M): FT, AD-DROP (first layer) and R-Drop, sized to about six hours of
    2 CPU cores (the plan and its measured per-epoch costs are in the issue note)."""
    model, grid = "mpnet-base", tuple(BASE_SELECTION_GRID)

    def k_shot(k: int, epochs: int, lr: str, paper: tuple[float, float]) -> Study:
        return Study(f"sst2-{k}shot", f"SST-2 {k}-shot", "sst2", "SST-2/train.tsv", "SST-2/dev.tsv", "accuracy",
                     ["--max-length", "64", "--epochs", str(epochs), "--lr", lr, "--layers", "first", "--set",
                      f"data.k_shot={k}", "--set", "data.max_eval_samples=500", "--set", "train.warmup_ratio=0.1"],
                     paper, "Table 5, RoBERTa-base",
                     f"{k} sentences per class drawn with the seed from the 90 % left after the hold-out, {epochs} "
                     f"epochs at lr {lr}; the selection set is the first 500 held-out sentences, the test set the "
                     "first 500 of the 872 dev sentences (data.max_eval_samples caps both)", model=model,
                     selection_grid=grid)

    return [
        k_shot(16, 20, "5e-5", (74.5, 80.2)),
        k_shot(64, 10, "3e-5", (89.1, 91.6)),
        Study("mrpc-1000", "MRPC, 1,000 pairs", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv", "accuracy",
              ["--max-length", "128", "--epochs", "3", "--lr", "5e-5", "--layers", "first",
               "--max-train-samples", "1000"], (85.2, 87.4), "Table 3, BERT-base, full MRPC",
              "the first 1,000 training pairs left after the hold-out (a subset, to fit the budget), 3 epochs at "
              "lr 5e-5; the selection set is the 367 held-out pairs", model=model, selection_grid=grid),
    ]


def overfit_studies() -> list[Study]:
    """all-mpnet-base-v2 again, each study on a schedule where plain fine-tuning overfits (found by the regime
    probes, evidence_regime.py), AD-DROP's layers in the grid; sized to about eight hours of 2 CPU cores with the
    probes (the plan is in the issue note)."""
    model, grid = "mpnet-base", tuple(OVERFIT_SELECTION_GRID)

    def k_shot(k: int, schedule: tuple[str, ...], tried: tuple[tuple[str, ...], ...], paper: tuple[float, float],
               why: str) -> Study:
        return Study(f"sst2-{k}shot", f"SST-2 {k}-shot", "sst2", "SST-2/train.tsv", "SST-2/dev.tsv", "accuracy",
                     ["--max-length", "64", "--set", f"data.k_shot={k}", "--set", "data.max_eval_samples=500"],
                     paper, "Table 5, RoBERTa-base",
                     f"{k} sentences per class drawn with the seed from the 90 % left after the hold-out; the "
                     "selection set is the first 500 held-out sentences, the test set the first 500 of the 872 dev "
                     f"sentences; {why}; {EVERY_EPOCH}", model=model, selection_grid=grid, schedule=schedule,
                     tried=tried, checkpointing=LAST_EPOCH_CHECKPOINT)

    warmup = ("--set", "train.warmup_ratio=0.1")
    return [
        k_shot(16, ("--epochs", "20", "--lr", "1e-4", *warmup), (("--epochs", "40", "--lr", "1e-4", *warmup),),
               (74.5, 80.2), "40 epochs overfitted as well (held-out loss lowest at epoch 9, 1.79× that at the end, "
               "moving by less than 0.01 over its last ten epochs), so the study takes 20, half the cost"),
        k_shot(64, ("--epochs", "15", "--lr", "5e-5", *warmup), (("--epochs", "30", "--lr", "5e-5", *warmup),),
               (89.1, 91.6), "30 epochs overfitted as well (held-out loss lowest at epoch 5, 1.78× that at the "
               "end), so the study takes 15, half the cost"),
        Study("mrpc-1000", "MRPC, 1,000 pairs", "mrpc", "MRPC/train.tsv", "MRPC/dev.tsv", "accuracy",
              ["--max-length", "128"], (85.2, 87.4), "Table 3, BERT-base, full MRPC",
              "the first 1,000 training pairs left after the hold-out; the selection set is the 367 held-out pairs; "
              "500 pairs, half the cost, did not reach the regime: at lr 5e-5 and at lr 1e-4 with warmup the "
              "held-out loss rose from epoch 1 while the held-out score was still climbing to its best (71.7 and "
              f"70.0) at the last epoch; {EVERY_EPOCH}",
              model=model, selection_grid=MRPC_OVERFIT_GRID, checkpointing=LAST_EPOCH_CHECKPOINT,
              schedule=("--max-train-samples", "1000", "--epochs", "6", "--lr", "5e-5"),
              tried=(("--max-train-samples", "500", "--epochs", "6", "--lr", "5e-5"),
                     ("--max-train-samples", "500", "--epochs", "6", "--lr", "1e-4", *warmup))),
    ]


def llm_studies() -> list[Study]:
    """SmolLM2-135M-Instruct answering "positive" or "negative" (the bundled generative recipe: LoRA r 8, loss on
    the answer tokens), FT, AD-DROP in the first layer and R-Drop, in what the budget left."""
    return [Study("sst2-16shot-generate", "SST-2 16-shot, generative", "sst2_smollm2_generate", "SST-2/train.tsv",
                  "SST-2/dev.tsv", "accuracy", ["--set", "data.validation_file=null", "--set", "data.k_shot=16",
                                                "--set", "data.max_eval_samples=200", "--layers", "first"],
                  (74.5, 80.2), "Table 5, RoBERTa-base; the paper tried no decoder LLM",
                  "16 sentences per class drawn with the seed from the 90 % left after the hold-out; the selection "
                  "set is the first 200 held-out sentences, the test set the first 200 dev sentences, each scored "
                  "by the greedy answer; evaluated every third epoch and after the last (train.eval_every=3): "
                  "generating the 200 held-out answers takes most of an epoch's time (the generative recipe spent "
                  "most of its 15 minutes on two evaluations of 872 answers), and an odd interval mixes plain and "
                  "AD-DROP epochs among the checkpoints the arms can choose", model="smollm2-135m",
                  selection_grid=("--method", "addrop,rdrop", "--p", "0.1,0.3", "--q", "0.3", "--grid",
                                  "rdrop.alpha=1"),
                  schedule=("--epochs", "20", "--lr", "2e-4", "--set", "train.eval_every=3"),
                  checkpointing=LAST_EPOCH_CHECKPOINT)]


def run_folder(suite: str) -> Path:
    """Where a suite's sweeps run: runs/evidence for MiniLM, runs/evidence-SUITE for the others."""
    return ROOT / "runs" / ("evidence" if suite == "minilm" else f"evidence-{suite}")


def arm_of(row: dict) -> str:
    """A result row's arm: ``ft``, ``addrop`` or ``rdrop``."""
    return "ft" if row["baseline"] else row["settings"].get("addrop.method", "addrop")


def sweep_command(arguments: list[str], directory: Path) -> list[str]:
    return ["addrop", "sweep", *arguments, "--output-dir", str(directory)]


def best_setting(selection: Path) -> list[str]:
    """The selection sweep's best setting per method, as sweep options: AD-DROP's p, q (and layers when swept), as
    in its best-recipe.yaml; with R-Drop in the sweep, its best alpha too (each the highest held-out mean, the
    first in grid order on a tie)."""
    summary = sweep_summary.collect(selection)[0]
    best: dict[str, sweep_summary.SettingStats] = {}
    for row in summary.rows:
        if not row.baseline and row.seeds and (row.method not in best
                                              or row.mean(summary.metric) > best[row.method].mean(summary.metric)):
            best[row.method] = row
    settings = best["addrop"].settings
    options = ["--p", str(settings["addrop.p"]), "--q", str(settings["addrop.q"])]
    if "addrop.layers" in settings:
        options += ["--grid", f"layers={settings['addrop.layers']}"]
    if "rdrop" in best:
        alpha = best["rdrop"].settings["rdrop.alpha"]
        options = ["--method", "addrop,rdrop", *options, "--grid", f"rdrop.alpha={alpha}"]
    return options


def sweeps_of(study: Study, out: Path, data: Path) -> list[tuple[Path, list[str]]]:
    """The study's ``addrop sweep`` calls as (output directory, arguments); the test call needs the selected
    settings, so it is left out until the selection sweep is complete."""
    selection, test = out / (study.selection_from or study.name) / "selection", out / study.name / "test"
    calls = []
    if study.selection_from is None:
        calls.append((selection, [*study.base(data), *study.selection_grid, "--seeds", str(SELECTION_SEED),
                                  "--baseline"]))
    if selection_complete(study, selection):
        calls.append((test, [*study.base(data), *best_setting(selection), "--seeds", ",".join(map(str, TEST_SEEDS)),
                             "--baseline"]))
    return calls


def selection_complete(study: Study, selection: Path) -> bool:
    """Whether every planned selection trial has ended (its grid is the study's) and every arm has one that
    finished, so each arm has a setting to test."""
    rows = read_results(selection)
    ended = {arm: sum(arm_of(row) == arm for row in rows) for arm in study.arms}
    finished = {arm_of(row) for row in rows if row["status"] == "ok"}
    return all(ended[arm] >= count for arm, count in study.selection_arms().items()) and set(study.arms) <= finished


def probe_dir(study: Study, out: Path, schedule: tuple[str, ...]) -> Path:
    return out / study.name / evidence_regime.REGIME_DIR / evidence_regime.schedule_label(schedule)


def probe_command(study: Study, out: Path, data: Path, schedule: tuple[str, ...]) -> list[str]:
    fixed = [*study.fixed(data), *study.checkpointing]
    return ["addrop", "train", *evidence_regime.probe_arguments(fixed, schedule, SELECTION_SEED),
            "--output-dir", str(probe_dir(study, out, schedule))]


def commands(all_studies: list[Study], out: Path) -> list[str]:
    """The exact commands behind the report, as run from the repository root."""
    shown = str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
    lines = [shlex.join(word.replace(str(out), shown, 1) for word in command)
             for study in all_studies for command in planned_commands(study, out, Path("../shared/data"))]
    return list(dict.fromkeys(lines))  # the overfit study's reused selection appears once


def planned_commands(study: Study, out: Path, data: Path) -> list[list[str]]:
    """The study's regime probes and sweeps, as commands (the test sweep once the selection is complete)."""
    return [*(probe_command(study, out, data, schedule) for schedule in study.probes),
            *(sweep_command(arguments, directory) for directory, arguments in sweeps_of(study, out, data))]
