"""The method table: every regularizer ``addrop.method`` can name, each registered once.

A :class:`MethodSpec` says everything the layers above need to know about a method: its name (``addrop.method``,
``--method``, history's ``phase``), the name tables and headers show, its recipe section and the dataclass that
validates it, the header line, and the ``module:Class`` that implements it. The loop, recipe validation, the sweep
grid and summary, ``ADDropTrainer`` and the CLI help read this table; nothing else names a method.

Methods from other packages join the table through the entry-point group ``addrop.methods``: an entry point
``NAME = "package.module:SPEC"`` whose object is a :class:`MethodSpec` named NAME. A plugin that cannot be loaded or
is not valid is skipped with one logged line; the built-in methods work regardless.

Torch-free: recipes are validated and ``--help`` lists the methods before torch is imported; an implementation
is imported when its first regularizer is built.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import logging
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from addrop_cli.core.settings import FT_PHASE, SHARED_KEYS, ADDropConfig, HiddenCutConfig, RDropConfig
from addrop_cli.errors import UserError, first_line

if TYPE_CHECKING:
    import torch

    from addrop_cli.core.methods.base import Regularizer

ENTRY_POINT_GROUP = "addrop.methods"
# The recipe section of the settings every method shares (addrop.enabled, method, cross_tuning), which is also
# AD-DROP's own section.
SHARED_SECTION = "addrop"
# The recipe's own sections (recipe.Recipe): no method's section may take one of these names.
RESERVED_SECTIONS = ("task", "model", "data", "train", "addrop", "lora", "generation")
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
logger = logging.getLogger(__name__)


def _settings_line(settings: Any, schedule: str) -> str:
    """The header line's settings part for a method that gives no ``describe``: each setting and the schedule."""
    shown = ", ".join(f"{field.name} {_shown(getattr(settings, field.name))}"
                      for field in dataclasses.fields(settings))
    return f"{shown} ({schedule})"


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class MethodSpec:
    """One method of the table.

    Attributes:
        name: the value of ``addrop.method`` and ``--method``, the ``phase`` of its epochs in the history, and its
            trials' name prefix; lower case letters, digits and underscores.
        display_name: as run headers and sweep tables show it ("R-Drop").
        config: the dataclass of its settings, validated on construction (``__post_init__``, raising
            :class:`~addrop_cli.errors.UserError` naming the key); its fields are the recipe section's keys.
        implementation: ``"package.module:Class"``; ``Class(model, settings, task_type)`` builds a
            :class:`~addrop_cli.core.methods.base.Regularizer` (with ``special_ids=`` the tokenizer's special token
            ids when its constructor names that parameter).
        section: its recipe section (``NAME.key=value``); the method's name when None.
        describe: ``(settings, schedule) -> str``, the run header's text after the display name; by default every
            setting and the schedule ("cross-tuning" or "every epoch").
    """

    name: str
    display_name: str
    config: type
    implementation: str
    section: str | None = None
    describe: Callable[[Any, str], str] | None = None

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name) or not NAME_PATTERN.fullmatch(self.recipe_section):
            raise ValueError(f"name {self.name!r} and section {self.recipe_section!r} must be lower case identifiers")
        if not dataclasses.is_dataclass(self.config):
            raise TypeError(f"config {self.config!r} is not a dataclass")
        if not re.fullmatch(r"[\w.]+:\w+", self.implementation):
            raise ValueError(f"implementation {self.implementation!r} is not 'package.module:Class'")

    @property
    def recipe_section(self) -> str:
        return self.section or self.name

    def own_keys(self) -> list[str]:
        """The dotted recipe keys of its own settings: what shapes its runs, and what a sweep may vary for it."""
        shared = SHARED_KEYS if self.recipe_section == SHARED_SECTION else ()
        return [f"{self.recipe_section}.{field.name}" for field in dataclasses.fields(self.config)
                if field.name not in shared]

    def header(self, settings: Any, cross_tuning: bool) -> str:
        """The run header's line for this method with ``settings``."""
        schedule = "cross-tuning" if cross_tuning else "every epoch"
        return f"{self.display_name} {(self.describe or _settings_line)(settings, schedule)}"

    def load(self) -> type:
        """The implementing class; a one-line UserError when it cannot be imported."""
        module, _, attribute = self.implementation.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise UserError(f"addrop.method={self.name!r}: its implementation {self.implementation} cannot be loaded "
                            f"({type(error).__name__}: {first_line(error)})") from None


def _addrop_line(settings: ADDropConfig, schedule: str) -> str:
    return (f"p {settings.p} q {settings.q} layers {settings.layers} ({settings.attribution}"
            f"{', cross-tuning' if settings.cross_tuning else ''})")


def _hiddencut_line(settings: HiddenCutConfig, schedule: str) -> str:
    return (f"ratio {settings.ratio:g}, start among the top {settings.select_ratio:g}, layers {settings.layers}, "
            f"JS weight {settings.js_weight:g} ({schedule})")


BUILT_IN = (
    MethodSpec("addrop", "AD-DROP", ADDropConfig, "addrop_cli.core.methods.addrop:ADDrop", section=SHARED_SECTION,
               describe=_addrop_line),
    MethodSpec("rdrop", "R-Drop", RDropConfig, "addrop_cli.core.methods.rdrop:RDrop",
               describe=lambda settings, schedule: f"alpha {settings.alpha:g} ({schedule})"),
    MethodSpec("hiddencut", "HiddenCut", HiddenCutConfig, "addrop_cli.core.methods.hiddencut:HiddenCut",
               describe=_hiddencut_line),
)
DEFAULT_METHOD = ADDropConfig().method


@functools.cache
def _table() -> tuple[dict[str, MethodSpec], dict[str, str]]:
    """(name -> spec: the built-in methods, then the plugins' in name order; skipped plugin -> why)."""
    table, skipped = {spec.name: spec for spec in BUILT_IN}, {}
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda entry: entry.name):
        try:
            spec = _checked_plugin(entry.name, entry.load(), table)
        except (Exception, SystemExit) as error:  # a broken plugin must not break the built-in methods or --help
            skipped[entry.name] = f"{type(error).__name__}: {first_line(error)}"
            logger.warning("addrop: method plugin '%s' (%s) is skipped: %s", entry.name, entry.value,
                           skipped[entry.name])
            continue
        table[spec.name] = spec
    return table, skipped


def methods() -> dict[str, MethodSpec]:
    """Name -> spec: the built-in methods, then the plugins' in name order."""
    return _table()[0]


def _checked_plugin(name: str, spec: Any, table: dict[str, MethodSpec]) -> MethodSpec:
    """``spec`` if it can join ``table`` under entry-point ``name``; else an error saying why. A method's name and
    section may be neither another method's name or section, nor one of the recipe's own sections, nor ``ft``."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"the entry point gives a {type(spec).__name__}, not an addrop MethodSpec")
    if spec.name != name:
        raise ValueError(f"the entry point is named '{name}' but its MethodSpec '{spec.name}'")
    taken = {word for other in table.values() for word in (other.name, other.recipe_section)}
    taken |= {*RESERVED_SECTIONS, FT_PHASE}
    if {spec.name, spec.recipe_section} & taken:
        raise ValueError(f"its name '{spec.name}' or recipe section '{spec.recipe_section}' is taken")
    spec.config()  # its defaults must be valid settings
    return spec


def is_built_in(spec: MethodSpec) -> bool:
    return spec in BUILT_IN


def method_names() -> list[str]:
    return list(methods())


def method_spec(name: str, key: str = "addrop.method") -> MethodSpec:
    """The spec of method ``name``; a one-line UserError naming ``key`` and the known methods otherwise (and why,
    when a plugin of that name was skipped)."""
    table, skipped = _table()
    if name not in table:
        why = f" (its plugin was skipped: {skipped[name]})" if name in skipped else ""
        raise UserError(f"{key}={name!r} is invalid: choose one of {', '.join(table)}{why}")
    return table[name]


def key_owner(key: str) -> MethodSpec | None:
    """The method whose own settings hold dotted recipe ``key``; None for a key every run shares."""
    return next((spec for spec in methods().values() if key in spec.own_keys()), None)


def make_regularizer(model: torch.nn.Module, config: ADDropConfig, task_type: str | None = None, *,
                     settings: Any = None, special_ids: Collection[int] | None = None) -> Regularizer:
    """The regularizer ``config.method`` names, for ``model`` (possibly wrapped by Accelerate/DDP).

    ``settings`` are the method's own (its config class's defaults when None; AD-DROP's are ``config`` itself);
    ``special_ids`` are the tokenizer's ``all_special_ids``, for a method that asks for them (HiddenCut never cuts
    them).
    """
    spec = method_spec(config.method)
    if spec.recipe_section == SHARED_SECTION:
        settings = config
    elif settings is None:
        settings = spec.config()
    if not isinstance(settings, spec.config):
        raise UserError(f"addrop.method={spec.name!r} takes {spec.config.__name__} settings, not "
                        f"{type(settings).__name__}")
    implementation = spec.load()
    extra = {"special_ids": special_ids} if "special_ids" in inspect.signature(implementation).parameters else {}
    return implementation(model, settings, task_type, **extra)
