"""Recipes: typed, validated run configuration, its YAML form, the bundled recipes, and the one resolver.

A recipe YAML mirrors :class:`Recipe` field for field. Every command resolves its run the same way
(:func:`resolve_recipe`): recipe file < command-line flags < ``--set key=value`` overrides. Importing this
module imports neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses
import difflib
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from addrop_cli.core.methods.registry import (
    DEFAULT_METHOD,
    SHARED_SECTION,
    MethodSpec,
    is_built_in,
    method_spec,
    methods,
)
from addrop_cli.core.settings import ADDropConfig, require
from addrop_cli.errors import UserError

MIXED_PRECISION = ("no", "fp16", "bf16")
# train.lr when none is given: HF Trainer's fine-tuning rate, or for LoRA 2e-4, the rate of peft's and axolotl's
# LoRA examples: adapters start at zero and train few parameters, and at 2e-5 a LoRA run barely moves.
FULL_LR, LORA_LR = 2e-5, 2e-4
# How the model's weights are loaded: float32 (the default, as HF Trainer users expect), the checkpoint's own
# dtype (auto), or half precision (usually with LoRA, whose adapters peft keeps in float32).
MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")
PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_PREFIX = "package:"
DEMO = "demo"


@dataclass
class DataConfig:
    """Where the examples come from and how they are tokenized."""

    dataset: str | None = None  # a Hub dataset id (e.g. glue), read when no local file is given
    dataset_config: str | None = None  # the Hub dataset's configuration (e.g. mrpc)
    train_file: str | None = None  # local training data: TSV, CSV, JSON or JSONL (--train-file)
    validation_file: str | None = None  # local validation data, which selects the best epoch
    test_file: str | None = None  # local test data, scored once with the best checkpoint
    text_columns: list[str] | None = None  # a file's text column(s) (default: the task's)
    label_column: str | None = None  # a file's label column (default: the task's)
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    k_shot: int | None = None
    train_fraction: float | None = None
    holdout_fraction: float | None = None
    group_by_length: bool = True  # batch training examples of similar length (less padding)
    label_all_tokens: bool = False  # NER: label every sub-word piece, not only each word's first
    source_lang: str | None = None  # translation: the source language code (default: the task's)
    target_lang: str | None = None  # translation: the target language code (default: the task's)
    max_target_length: int = 128  # translation: the most target tokens
    source_prefix: str = ""  # translation: text put before each source sentence (T5-style task prefix)

    def __post_init__(self) -> None:
        require(self.max_length >= 8, "data.max_length", self.max_length, "use at least 8 tokens")
        for key in ("max_train_samples", "max_eval_samples", "k_shot"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"data.{key}", value, "use a positive number or leave it unset")
        require(self.train_fraction is None or 0 < self.train_fraction <= 1, "data.train_fraction",
                 self.train_fraction, "use a fraction in (0, 1] or leave it unset")
        require(self.k_shot is None or self.train_fraction is None, "data.k_shot", self.k_shot,
                 "give either data.k_shot or data.train_fraction, not both")
        require(self.holdout_fraction is None or 0 < self.holdout_fraction < 1, "data.holdout_fraction",
                 self.holdout_fraction, "use a fraction in (0, 1) or leave it unset")
        require(self.holdout_fraction is None or self.validation_file is None, "data.holdout_fraction",
                 self.holdout_fraction, "the held-out share replaces the validation data: drop "
                 "data.validation_file (give the dev file as --test-file to score it once)")


MAX_SEED = 2**32 - 1  # numpy's and torch's seeding take 32 bits


@dataclass
class TrainConfig:
    """Optimisation, schedule, selection and output (HF Trainer's defaults where the paper is silent)."""

    output_dir: str = "runs/addrop"  # the run directory (--output-dir)
    seed: int = 42
    epochs: int = 3
    lr: float | None = None  # FULL_LR, or LORA_LR for a LoRA run (see Recipe)
    batch_size: int = 16
    eval_batch_size: int = 64
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-6  # AdamW's epsilon
    warmup_ratio: float = 0.0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    metric: str | None = None  # the metric that selects the best epoch (default: the task's)
    eval_every: int = 1  # evaluate every N epochs and after the last; only evaluated epochs can be selected
    patience: int | None = None  # stop after this many evaluations without a gain in train.metric
    log_every: int = 10
    save_steps: int | None = None
    save_every: int = 1  # checkpoint every N epochs and after the last (a stop signal checkpoints at once)
    save_total_limit: int | None = 2
    num_beams: int = 1  # beam width when evaluating translation
    model_dtype: str = "float32"
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    report_to: str | list[str] = "none"
    push_to_hub: str | None = None  # a Hub repository id to upload best/ to when the run ends
    hub_private: bool = False  # create that Hub repository as private

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "log_every",
                    "eval_every", "save_every"):
            value = getattr(self, key)
            require(value >= 1, f"train.{key}", value, "use a positive integer")
        require(0 <= self.seed <= MAX_SEED, "train.seed", self.seed, f"use an integer from 0 to {MAX_SEED}")
        require(self.lr is None or self.lr > 0, "train.lr", self.lr, "the learning rate must be positive")
        require(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "use a value in [0, 1)")
        require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "use a value >= 0")
        require(self.max_grad_norm >= 0, "train.max_grad_norm", self.max_grad_norm, "use a value >= 0")
        require(self.mixed_precision in MIXED_PRECISION, "train.mixed_precision", self.mixed_precision,
                 f"choose one of {', '.join(MIXED_PRECISION)}")
        require(self.patience is None or self.patience >= 1, "train.patience", self.patience,
                 "use a positive number of evaluations or leave it unset")
        for key in ("save_steps", "save_total_limit"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"train.{key}", value, "use a positive integer or leave it unset")
        require(self.model_dtype in MODEL_DTYPES, "train.model_dtype", self.model_dtype,
                f"choose one of {', '.join(MODEL_DTYPES)}")
        self.report_to = parse_trackers(self.report_to)


# Keys that do not change a run: where it is written, how often it is checkpointed, where reported and published.
PLACE_KEYS = ("output_dir", "save_every", "report_to", "push_to_hub", "hub_private")
# Train keys added after runs and sweeps were recorded, at the value that behaves as before the key: left out of a
# run's identity at that value, so those runs and sweeps keep theirs.
LATER_TRAIN_DEFAULTS = {"eval_every": 1}


def _section_owners() -> dict[str, MethodSpec]:
    """The recipe sections of the methods other than AD-DROP (``rdrop``, ``hiddencut``, plugins'), each acting only
    when ``addrop.method`` names its method: section -> that method, in the method table's order."""
    return {spec.recipe_section: spec for spec in methods().values() if spec.recipe_section != SHARED_SECTION}


def method_sections() -> dict[str, type]:
    """:func:`_section_owners`' sections -> each one's settings class."""
    return {section: spec.config for section, spec in _section_owners().items()}


def run_identity(values: dict[str, Any]) -> dict[str, Any]:
    """A resolved recipe as compared to decide "the same run": where it is written (a run folder that was moved
    or copied is the same run), reported and published (``train.report_to``, ``push_to_hub``, ``hub_private``)
    does not change the run, so adding a tracker to a run being resumed is allowed. Nor do the settings of a
    method the run does not use: a method's section counts only when ``addrop.method`` names it, and the default
    method is left out, so runs and sweeps from before those keys (or from before a plugin was installed) keep
    their identity; so do train keys added later, at the value that behaves as before them."""
    train = {key: value for key, value in values.get("train", {}).items()
             if key not in PLACE_KEYS and (key, value) not in LATER_TRAIN_DEFAULTS.items()}
    addrop = dict(values.get("addrop", {}))
    method = addrop.get("method", DEFAULT_METHOD)
    if method == DEFAULT_METHOD:
        addrop.pop("method", None)
    spec = methods().get(method)
    used = spec.recipe_section if spec is not None else method
    kept = {key: value for key, value in values.items() if key not in method_sections() or key == used}
    if kept.get(GENERATION_SECTION) == dataclasses.asdict(GenerationConfig()):
        del kept[GENERATION_SECTION]  # runs from before the section keep their identity while it is unused
    return {**kept, "train": train, **({"addrop": addrop} if "addrop" in values else {})}


# Accelerate's trackers (accelerate.utils.LoggerType), named here so that recipes are checked without torch.
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab")


def parse_trackers(value: str | list[str] | None) -> list[str]:
    """``train.report_to``: "none", "all", "tensorboard,mlflow" or a list, as a list ([] for none)."""
    names = value.split(",") if isinstance(value, str) else list(value or [])
    names = [str(name).strip() for name in names if str(name).strip()]
    if names in ([], ["none"]):
        return []
    for name in names:
        require(name in (*TRACKERS, "all"), "train.report_to", name,
                f"choose none, all or a comma-separated list of {', '.join(TRACKERS)}")
    return list(dict.fromkeys(names))


@dataclass
class LoraConfig:
    """LoRA adapters (peft); off while ``r`` is unset. ``target_modules`` None means peft's default for the
    model type (the attention projections); the classification head is always trained in full."""

    r: int | None = None
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | None = None
    layers_to_transform: list[int] | None = None

    def __post_init__(self) -> None:
        require(self.r is None or self.r >= 1, "lora.r", self.r, "the LoRA rank is a positive integer (leave it "
                "unset, or drop --lora-r, for no LoRA)")
        require(self.alpha > 0, "lora.alpha", self.alpha, "use a positive scaling numerator")
        require(0 <= self.dropout < 1, "lora.dropout", self.dropout, "use a dropout rate in [0, 1)")
        require(self.target_modules is None or len(self.target_modules) > 0, "lora.target_modules",
                self.target_modules, "name at least one module (e.g. [q_proj, v_proj]) or leave it unset")
        require(self.layers_to_transform is None or all(i >= 0 for i in self.layers_to_transform),
                "lora.layers_to_transform", self.layers_to_transform, "layer indices are non-negative integers")

    @property
    def enabled(self) -> bool:
        return self.r is not None


GENERATION_SECTION = "generation"
TEMPLATE_FIELDS = ("text", "text_pair")


def template_fields(template: str) -> set[str]:
    """The ``{name}`` fields of a prompt template (``str.format`` syntax); ValueError for a malformed one."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@dataclass
class GenerationConfig:
    """Generative fine-tuning of a decoder-only model (``task: generation``, or a classification task given a
    ``template``): how a classification row becomes a prompt and its label an answer word, whether prompts go
    through the tokenizer's chat template, and how long evaluation's greedy answers may be."""

    template: str | None = None  # e.g. "Review: {text}\nSentiment:"; fields {text} and {text_pair}
    answers: list[str] | None = None  # the completion of each class, in label order (default: the label names)
    chat: bool = False  # prompt as the user's turn, completion as the assistant's (messages rows always are)
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        require(self.max_new_tokens >= 1, "generation.max_new_tokens", self.max_new_tokens,
                "use a positive number of tokens")
        if self.template is not None:
            try:
                fields = template_fields(self.template)
            except ValueError as error:
                fields = {f"({error})"}
            require("text" in fields and fields <= set(TEMPLATE_FIELDS), "generation.template", self.template,
                    "a prompt with the field {text} (and {text_pair} for sentence pairs); write { and } as {{ "
                    "and }}")
        require(self.answers is None or (len(self.answers) >= 2 and all(a.strip() for a in self.answers)
                                         and len({a.strip().lower() for a in self.answers}) == len(self.answers)),
                "generation.answers", self.answers, "one distinct, non-empty answer per class, in label order")

    @property
    def enabled(self) -> bool:
        """Whether a classification task is trained generatively (through the template)."""
        return self.template is not None


def _default_method_settings() -> dict[str, Any]:
    return {section: config() for section, config in method_sections().items()}


@dataclass
class Recipe:
    """A whole run: task, model, data, training and AD-DROP settings (``addrop.method`` picks the regularizer from
    the method table), and each other method's settings in ``methods`` by recipe section (``rdrop``,
    ``hiddencut``, plugins'), which the YAML holds as top-level sections after ``addrop``."""

    task: str = "sst2"
    model: str = "minilm"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    addrop: ADDropConfig = field(default_factory=ADDropConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    methods: dict[str, Any] = field(default_factory=_default_method_settings)

    def __post_init__(self) -> None:
        method_spec(self.addrop.method)  # an unknown method is one line, naming the known ones
        self.methods = {**_default_method_settings(), **self.methods}
        if self.train.lr is None:
            self.train.lr = LORA_LR if self.lora.enabled else FULL_LR

    def method_settings(self) -> Any:
        """The settings of the method ``addrop.method`` names: its section's (AD-DROP's are ``addrop`` itself)."""
        section = method_spec(self.addrop.method).recipe_section
        return self.addrop if section == SHARED_SECTION else self.methods[section]

    def to_dict(self) -> dict[str, Any]:
        """The YAML form: the plain keys, then every section in :func:`recipe_sections` order; a plugin's section only
        when ``addrop.method`` names its method, so that a saved recipe still reads once the plugin is gone."""
        used, owners = method_spec(self.addrop.method), _section_owners()
        values = {name: getattr(self, name) for name in plain_keys()}
        for name in recipe_sections():
            owner = owners.get(name)
            if owner is None:
                values[name] = dataclasses.asdict(getattr(self, name))
            elif is_built_in(owner) or owner is used:
                values[name] = dataclasses.asdict(self.methods[name])
        return values


def plain_keys() -> list[str]:
    """The recipe's top-level keys that are values, not sections (``task``, ``model``)."""
    hints = typing.get_type_hints(Recipe)
    return [item.name for item in dataclasses.fields(Recipe)
            if item.name != "methods" and not dataclasses.is_dataclass(hints[item.name])]


def recipe_sections() -> dict[str, type]:
    """Every section of a recipe that holds settings: section -> its dataclass, in the YAML's order (the methods'
    sections right after ``addrop``)."""
    hints = typing.get_type_hints(Recipe)
    sections: dict[str, type] = {}
    for item in dataclasses.fields(Recipe):
        if item.name != "methods" and dataclasses.is_dataclass(hints[item.name]):
            sections[item.name] = hints[item.name]
            if item.name == SHARED_SECTION:
                sections.update(method_sections())
    return sections


# ----------------------------------------------------------------------------- building from dicts


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key(key: str, valid: list[str]) -> UserError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown recipe key '{key}'{hint} (valid here: {', '.join(valid)})")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise a UserError naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except UserError as error:
                errors.append(str(error))
        raise UserError(errors[-1])
    if origin is list:
        if isinstance(value, str) and "," in value:
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, list):
            raise UserError(f"{key}={value!r} is invalid: expected a list")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise UserError(f"{key}={value!r} is invalid: expected true or false")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"{key}={value!r} is invalid: expected an integer")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{key}={value!r} is invalid: expected an integer") from None
    if annotation is float:
        if isinstance(value, bool):
            raise UserError(f"{key}={value!r} is invalid: expected a number")
        try:
            return float(value)  # YAML reads 1e-5 (no dot) as a string
        except (TypeError, ValueError):
            raise UserError(f"{key}={value!r} is invalid: expected a number") from None
    if annotation is str:
        if isinstance(value, bool):  # YAML reads unquoted yes/no/true/false/on/off as booleans
            raise UserError(f"{key}={value!r} is invalid: expected a string; YAML reads yes, no, true, false, on and "
                            "off as booleans, so quote the word (e.g. \"no\")")
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"{key}={value!r} is invalid: expected a string")
        return str(value)
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def _build_recipe(values: dict[str, Any]) -> Recipe:
    """A :class:`Recipe` from its YAML form, each method section validated by its method's settings class."""
    sections = method_sections()
    own = {key: value for key, value in values.items() if key not in sections}
    valid = [*plain_keys(), *recipe_sections()]
    unknown = next((key for key in own if key not in valid), None)
    if unknown is not None:
        raise _unknown_key(str(unknown), valid)
    recipe = _build_fields(Recipe, own, "")
    recipe.methods.update({key: build(sections[key], value or {}, f"{key}.")
                           for key, value in values.items() if key in sections})
    return recipe


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly nested) dict, rejecting unknown keys (a :class:`Recipe` takes its
    methods' sections as top-level keys, as its YAML form holds them)."""
    if not isinstance(values, dict):
        raise UserError(f"recipe section '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {values!r}")
    return _build_recipe(values) if cls is Recipe else _build_fields(cls, values, prefix)


def _build_fields(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(prefix + str(key), names)
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = build(annotation, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, annotation, prefix + key)
    return cls(**kwargs)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(assignment: str) -> dict[str, Any]:
    """``"train.lr=2e-5"`` -> ``{"train": {"lr": 2e-5}}``; the value is read as YAML."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r} is invalid: use KEY=VALUE with a dotted key, e.g. train.lr=2e-5")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {assignment!r} is invalid: the key must be dotted names, e.g. addrop.p=0.3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return nest(key, value)


def nest(key: str, value: Any) -> dict[str, Any]:
    """``("train.lr", 2e-5)`` -> ``{"train": {"lr": 2e-5}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The inverse of :func:`nest`: ``{"train": {"lr": 2e-5}}`` -> ``{"train.lr": 2e-5}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a recipe file safely (``yaml.safe_load``); syntax errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read recipe {path}: {error.strerror}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"recipe {path}{where}: YAML syntax error: {problem}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"recipe {path} must be a mapping of keys ({', '.join([*plain_keys(), *recipe_sections()])})")
    return values


def dump_yaml(values: dict[str, Any], header: str = "") -> str:
    return header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


# ----------------------------------------------------------------------------- bundled recipes and resolving


def recipes_dir() -> Path:
    """``addrop_cli/recipes`` in a wheel; the checkout's top-level ``recipes/`` otherwise."""
    shipped = PACKAGE_DIR / "recipes"
    return shipped if shipped.is_dir() else PACKAGE_DIR.parent / "recipes"


def bundled_recipes() -> dict[str, Path]:
    """Recipe name (file stem, e.g. ``mrpc``, ``demo``) -> path."""
    return {path.stem: path for path in sorted(recipes_dir().rglob("*.yaml"))}


def name_key(name: str) -> str:
    """The one name normaliser: recipe and task names match ignoring case, dashes and underscores
    (``SST-2`` is ``sst2``, ``wmt16-en-ro`` is ``wmt16_en_ro``)."""
    return name.strip().lower().replace("-", "").replace("_", "")


def find_recipe(name_or_path: str) -> Path:
    """A recipe file path, or the bundled recipe of that name."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"recipe file {path} does not exist")
        return path
    recipes = bundled_recipes()
    for name, recipe_path in recipes.items():
        if name_key(name) == name_key(name_or_path):
            return recipe_path
    close = difflib.get_close_matches(name_or_path, list(recipes), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UserError(
        f"unknown recipe '{name_or_path}'{hint} (bundled: {', '.join(recipes)}; or give a path to a .yaml file)"
    )


def resolve_path(value: str | None) -> str | None:
    """Expand ``package:relative/path`` (files shipped inside addrop_cli) to an absolute path."""
    if value and value.startswith(PACKAGE_PREFIX):
        return str(PACKAGE_DIR / value[len(PACKAGE_PREFIX) :])
    return value


def nested(flags: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1e-5, "task": None}`` -> ``{"train": {"lr": 1e-5}}``: only the flags that were given."""
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if value is not None:
            out = merge(out, nest(key, value))
    return out


def _base_values(recipe: str | None, task: str | None, saved: Path | None) -> dict[str, Any]:
    """What flags and overrides apply to: the named recipe, else the task's bundled recipe (or the defaults
    for a task without one), else the ``saved`` recipe of a checkpoint, else the demo."""
    if recipe is None and task is None and saved is not None:
        if not saved.is_file():
            raise UserError(f"{saved.parent} has no {saved.name}; pass --task NAME or --recipe NAME|PATH")
        return load_yaml(saved)
    if recipe is None:
        recipe = task if task is not None else DEMO
        if task is not None and name_key(task) not in {name_key(name) for name in bundled_recipes()}:
            recipe = None
    values = load_yaml(find_recipe(recipe)) if recipe is not None else {}
    if task is not None:
        values["task"] = task
    return values


def resolve_recipe(
    recipe: str | None = None,
    task: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    *,
    saved: Path | None = None,
    unset: tuple[str, ...] = (),
) -> Recipe:
    """Recipe < command-line flags < ``--set`` overrides, validated into a :class:`Recipe`: every command's rule.

    The recipe is ``recipe`` (a bundled name or a YAML path); with only ``task``, its bundled recipe
    (``--task mrpc`` means ``recipes/glue/mrpc.yaml``); with neither, ``saved`` (the ``recipe.yaml`` beside a
    checkpoint, for ``eval`` and ``attribute``) or else the demo recipe. ``flags`` are dotted keys
    (``{"train.lr": 1e-5}``); None values are flags that were not given. ``unset`` keys of the recipe go back
    to their defaults before flags and overrides apply (settings of a training run that a command does not
    inherit).
    """
    values = _base_values(recipe, task, saved)
    for key in unset:
        *sections, name = key.split(".")
        target = values
        for section in sections:
            target = target.get(section, {})
        target.pop(name, None)
    values = merge(values, nested(flags or {}))
    for assignment in overrides or []:
        values = merge(values, parse_override(assignment))
    return build(Recipe, values)
