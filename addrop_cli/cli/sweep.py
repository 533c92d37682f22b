"""``addrop sweep``: a resumable grid of train runs over p, q, seeds and any recipe key, then its summary."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from addrop_cli import locks
from addrop_cli.cli import recipe_options as options
from addrop_cli.cli.common import is_main_rank, option, quiet_libraries, reports_user_errors, say
from addrop_cli.core.methods.registry import method_names
from addrop_cli.errors import UserError
from addrop_cli.outputs import check_writable_folder
from addrop_cli.recipe import resolve_recipe
from addrop_cli.sweep.backends import BackendSettings, open_backend
from addrop_cli.sweep.grid import (
    METHOD_KEY,
    P_KEY,
    Q_KEY,
    format_value,
    parse_grid,
    parse_methods,
    parse_seeds,
    parse_values,
)
from addrop_cli.sweep.plan import RESULTS_FILE, Trial, check_manifest, manifest, plan_trials
from addrop_cli.sweep.runner import SweepInterrupted, run_sweep
from addrop_cli.training.one_class import is_one_class, share_text
from addrop_cli.training.run_dir import model_dir

SHOWN_ROWS = 15  # the live table shows the latest finished trials

# Where trials run (sweep.backends.BackendSettings checks them together).
Workers = Annotated[int, option(metavar="N", help="Local backend: trials run at once, each in its own process (one "
                                "GPU each, round robin).")]
BackendName = Annotated[str, option("--backend", metavar="local|ray", help="Where trials run: this machine, or a "
                                    "Ray cluster (pip install 'addrop\\[ray]').")]
Address = Annotated[str | None, option(metavar="auto|HOST:PORT", help="Ray: join this cluster (auto: the one 'ray "
                                       "start' made here); without it Ray starts on this machine.")]
GpusPerTrial = Annotated[float | None, option(metavar="N", help="Ray: GPUs per trial (default 1 when the cluster "
                                              "has GPUs, else 0).")]
CpusPerTrial = Annotated[float | None, option(metavar="N", help="Ray: CPUs per trial (default 1).")]
MaxRetries = Annotated[int, option(metavar="N", help="Retries of a trial whose process was killed or whose worker "
                                   "or node died; each resumes from its last checkpoint.")]


@reports_user_errors
def sweep(
    recipe: options.RecipeName = None,
    task: options.Task = None,
    model: options.Model = None,
    train_file: options.TrainFile = None,
    validation_file: options.ValidationFile = None,
    test_file: options.TestFile = None,
    output_dir: Annotated[str | None, option(metavar="DIR",
                                             help="The sweep directory (default: the recipe's output_dir + -sweep).")]
    = None,
    p: Annotated[str | None, option("--p", metavar="VALUES",
                                    help="p values: 0.1:0.9 (step 0.1), 0.1:0.9:0.2 or 0.1,0.3,0.5.")] = None,
    q: Annotated[str | None, option("--q", metavar="VALUES", help="q values, as for --p.")] = None,
    seeds: Annotated[str | None, option(metavar="N|1,2,3",
                                        help="5 (seeds 1 to 5) or a list 1,2,3 (default: the recipe's seed).")]
    = None,
    grid: Annotated[list[str] | None, option("--grid", metavar="KEY=V1,V2",
                                             help="KEY=V1,V2,... for any other recipe key; repeatable.")]
    = None,
    baseline: Annotated[bool, option("--baseline", help="Add plain fine-tuning trials for every seed and "
                                  "grid point outside the regularizer's keys.")] = False,
    workers: Workers = 1,
    backend: BackendName = "local",
    address: Address = None,
    gpus_per_trial: GpusPerTrial = None,
    cpus_per_trial: CpusPerTrial = None,
    max_retries: MaxRetries = 2,
    dry_run: Annotated[bool, option("--dry-run", help="Print the trials and exit.")] = False,
    force: Annotated[bool, option("--force", help="Run a different grid in a directory that holds one.")] = False,
    keep_checkpoints: Annotated[bool, option("--keep-checkpoints", help="Keep finished trials' resumable checkpoints "
                                          "(by default only best/, history and metrics stay).")] = False,
    summarize: Annotated[Path | None, option(metavar="DIR",
                                             help="Only (re)write the summary of the sweep in this directory.")]
    = None,
    epochs: options.Epochs = None,
    lr: options.LearningRate = None,
    batch_size: options.BatchSize = None,
    max_length: options.MaxLength = None,
    layers: options.Layers = None,
    attribution: options.Attribution = None,
    attribution_precision: options.AttributionPrecision = None,
    labels: options.Labels = None,
    cross_tuning: options.CrossTuning = None,
    method: Annotated[str | None, option(metavar=",".join(method_names()),
                                         help="Regularizers to compare (a grid axis; each method takes only its own "
                                              "keys' axes); with --baseline, plain fine-tuning too.")] = None,
    no_addrop: options.NoADDrop = False,
    max_train_samples: options.MaxTrainSamples = None,
    max_eval_samples: options.MaxEvalSamples = None,
    mixed_precision: options.MixedPrecision = None,
    report_to: options.ReportTo = None,
    save_steps: options.SaveSteps = None,
    save_total_limit: options.SaveTotalLimit = None,
    trust_remote_code: options.TrustRemoteCode = False,
    set_: options.Overrides = None,
) -> None:
    """Train one run per grid point and seed; summarize as mean ± std tables, best recipe and p × q heatmaps."""
    console = Console(stderr=True)
    if summarize is not None:
        _print_summary(summarize, console)
        return
    quiet_libraries()
    settings = BackendSettings(backend, workers, address, gpus_per_trial, cpus_per_trial, max_retries)
    flags = options.recipe_flags({k: v for k, v in locals().items() if k not in ("p", "q", "output_dir", "method")},
                                 no_addrop)
    methods = _methods(method, flags)
    if model is not None:
        flags["model"] = model_dir(model)  # a run directory means its best checkpoint
    base = resolve_recipe(recipe, task, flags, set_)
    directory = Path(output_dir or f"{base.train.output_dir}-sweep")
    axes = _axes(p, q, grid, methods)
    seed_list = parse_seeds(seeds) if seeds is not None else [base.train.seed]
    trials = plan_trials(base, axes, seed_list, baseline, directory)
    if dry_run:
        _print_trials(trials, directory)
        return
    wanted = manifest(base, axes, seed_list, baseline)
    _checked_run(trials, directory, wanted, console, settings, force=force, keep_checkpoints=keep_checkpoints,
                 trust_remote_code=trust_remote_code)


def _checked_run(trials: list[Trial], directory: Path, wanted: dict[str, Any], console: Console,
                 settings: BackendSettings, *, force: bool, trust_remote_code: bool, **run_options: Any) -> None:
    """Check every trial's inputs before anything is written, then run the sweep under its lock and summarize.

    Under ``torchrun`` every process runs each trial together (in-process trials only); the main process alone
    holds the lock and writes the sweep's files, and the process group lasts until the last trial.
    """
    from addrop_cli.training.inputs import check_inputs  # torch only once the plan is valid
    from addrop_cli.training.process_group import ending_process_group

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (settings.name, settings.workers) != ("local", 1):
        raise UserError("under torchrun a sweep trains its trials in the launched processes: use --backend local "
                        "--workers 1 (the default)")
    check_writable_folder(directory, "--output-dir")
    check_inputs([trial.recipe for trial in trials], trust_remote_code)
    with ending_process_group():
        if not is_main_rank():
            _run(trials, directory, Console(quiet=True), settings, force=force, trust_remote_code=trust_remote_code,
                 record=False, **run_options)
            return
        with locks.held(directory / locks.SWEEP_LOCK, "a sweep"):  # one live driver per sweep directory
            check_manifest(directory, wanted, force)
            progress = _run(trials, directory, console, settings, force=force, trust_remote_code=trust_remote_code,
                            **run_options)
    if progress.skipped:
        console.print(f"{progress.skipped} trial(s) were already finished and skipped")
    _print_summary(directory, console)


def _methods(spec: str | None, flags: dict[str, Any]) -> list[str] | None:
    """--method: one method is a recipe flag (set in ``flags``), several are a grid axis (returned)."""
    methods = parse_methods(spec) if spec is not None else []
    if len(methods) == 1:
        flags["addrop.method"] = methods[0]
    return methods if len(methods) > 1 else None


def _axes(p: str | None, q: str | None, grid: list[str] | None, methods: list[str] | None) -> dict[str, list[Any]]:
    """Swept recipe key -> its values, from --method (several), --p, --q and each --grid KEY=V1,V2."""
    axes: dict[str, list[Any]] = {METHOD_KEY: methods} if methods else {}
    if p is not None:
        axes[P_KEY] = parse_values(p, "--p")
    if q is not None:
        axes[Q_KEY] = parse_values(q, "--q")
    for assignment in grid or []:
        key, values = parse_grid(assignment)
        if key in axes:
            raise UserError(f"--grid {assignment!r}: {key} is already swept; give each key once")
        axes[key] = values
    return axes


def _run(trials: list[Trial], directory: Path, console: Console, settings: BackendSettings, *,
         trust_remote_code: bool, **run_options: Any):
    """Run the sweep on its backend with a live table on a terminal, one line per finished trial elsewhere;
    exit 128 + the signal number when interrupted."""
    board = _Board(len(trials))
    # A log file: Live would only draw at the end, so one line per finished trial instead.
    show = Live(board, console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
    try:
        with open_backend(settings, directory, trust_remote_code) as backend, show or contextlib.nullcontext():
            return run_sweep(trials, directory, backend, max_retries=settings.max_retries,
                             on_change=board.update if show else _LineLog(console).update, **run_options)
    except (SweepInterrupted, KeyboardInterrupt) as stop:
        code = stop.exit_code if isinstance(stop, SweepInterrupted) else 130
        say(f"sweep interrupted; finished trials are in {directory / RESULTS_FILE}; run the same command "
            "again to resume")
        raise typer.Exit(code) from None


def _row_text(row: dict) -> tuple[str, str, str]:
    """A finished trial's score, best epoch and a note ("one class: 100 % positive" when its best epoch predicted
    one class, else empty) as shown to the user."""
    score = "diverged" if row["status"] != "ok" else f"{row['metric']} {row['eval'][row['metric']]:.4f}"
    share = row.get("majority_share")
    note = f"one class: {share_text(row['majority_label'], share)}" if share is not None and is_one_class(share) \
        else ""
    return score, format_value(row.get("best_epoch", "–")), note


class _LineLog:
    """Progress off a terminal: one line per trial that finishes in this run."""

    def __init__(self, console: Console):
        self.console, self.shown, self.notes = console, None, 0

    def update(self, progress) -> None:
        if self.shown is None:
            self.shown = progress.skipped
        for note in progress.notes[self.notes:]:
            self.console.print(note, highlight=False, soft_wrap=True)
        self.notes = len(progress.notes)
        for row in progress.finished[self.shown:]:
            score, epoch, note = _row_text(row)
            self.console.print(f"[{len(progress.finished)}/{progress.total}] {row['trial']}: {score} (best epoch "
                               f"{epoch}, {row['seconds'] / 60:.1f} min{'; ' + note if note else ''})",
                               highlight=False, soft_wrap=True)
        if len(progress.finished) > self.shown and len(progress.finished) < progress.total:
            self.console.print(progress.status(), highlight=False, soft_wrap=True)
        self.shown = len(progress.finished)


class _Board:
    """The live view: the latest finished trials with their best score, and what is running."""

    def __init__(self, total: int):
        self.total = total
        self.progress = None

    def update(self, progress) -> None:
        self.progress = progress

    def __rich__(self) -> Group:
        table = Table(title="finished trials", title_justify="left")
        for column in ["trial", "seed", "score", "best epoch", "minutes"]:
            table.add_column(column, justify="left" if column == "trial" else "right", no_wrap=column == "trial")
        finished = self.progress.finished if self.progress else []
        for row in finished[-SHOWN_ROWS:]:
            score, epoch, note = _row_text(row)
            table.add_row(row["trial"], str(row["seed"]), f"{score} ({note})" if note else score, epoch,
                          f"{row['seconds'] / 60:.1f}")
        if self.progress is None:
            return Group(table, f"0/{self.total} finished")
        return Group(table, *self.progress.notes[-3:], self.progress.status())


def _print_trials(trials, directory: Path) -> None:
    from addrop_cli.sweep.summary import trials_table

    table = Table(title=f"{len(trials)} trials in {directory}", title_justify="left")
    table.add_column("trial", no_wrap=True)
    for column in ("kind", "seed", "settings"):
        table.add_column(column)
    for row in trials_table(trials):
        table.add_row(*row)
    Console().print(table)


def _print_summary(directory: Path, console: Console) -> None:
    """What the sweep found (the best setting, a tie, or that none beat the others), a warning when trials
    predicted one class, and the files written."""
    from addrop_cli.sweep.summary import SUMMARY_MD, one_class_verdict, summarize, verdict  # numpy, matplotlib

    summary = summarize(directory)
    console.print(f"{summary.finished}/{summary.total} trials finished; {verdict(summary)}", highlight=False,
                  soft_wrap=True)
    one_class = one_class_verdict(summary)
    if one_class is not None:
        flagged, finished = summary.one_class_trials()
        where = f" (marked in {SUMMARY_MD})" if flagged < finished else ""
        console.print(f"warning: {one_class}{where}", highlight=False, soft_wrap=True)
    for path in summary.files:
        console.print(f"wrote {path}")
