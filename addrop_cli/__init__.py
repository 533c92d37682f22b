"""addrop: AD-DROP (attribution-driven dropout, NeurIPS 2022) for Hugging Face transformers.

The library entry points::

    from addrop_cli import ADDrop, ADDropConfig, epoch_phase

They are imported on first use, so ``import addrop_cli`` (and ``addrop --help``) imports neither torch nor
transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from addrop_cli.version import __version__

_EXPORTS = {"ADDrop": "addrop_cli.core.methods.addrop", "ADDropConfig": "addrop_cli.core.settings",
            "epoch_phase": "addrop_cli.core.settings"}
__all__ = ["ADDrop", "ADDropConfig", "__version__", "epoch_phase"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'addrop_cli' has no attribute {name!r}")
