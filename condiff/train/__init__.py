"""Training: the generic loop (:mod:`.loop`), EMA (:mod:`.ema`), atomic checkpoints with exact
resume (:mod:`.checkpoint`), torchrun data parallelism (:mod:`.distributed`), and the registry of
recipe kinds that ``condiff train run RECIPE.toml`` dispatches to.

A recipe is a TOML file with a top-level ``kind`` (a key of :data:`RECIPES`), an optional ``out``
folder, and the tables that kind reads. A recipe function has the signature
``fn(recipe: dict, out_dir, *, resume, overwrite, device, progress, dist) -> result`` (``dist``: the
:class:`DistContext` of a torchrun job, or None); entries are
"module:function" strings, imported only when used.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from .checkpoint import capture_rng_state, find_latest, load_checkpoint, restore_rng_state, save_checkpoint
from .distributed import DistContext, SeededBatchOrder, init_distributed, shutdown_distributed
from .ema import EMA, ema_decay_at
from .loop import DiffusionObjective, LRSchedule, TrainConfig, Trainer, TrainResult, split_diffusion_batch

__all__ = [
    "Trainer",
    "TrainConfig",
    "TrainResult",
    "LRSchedule",
    "DiffusionObjective",
    "split_diffusion_batch",
    "EMA",
    "ema_decay_at",
    "save_checkpoint",
    "load_checkpoint",
    "find_latest",
    "capture_rng_state",
    "restore_rng_state",
    "DistContext",
    "SeededBatchOrder",
    "init_distributed",
    "shutdown_distributed",
    "RECIPES",
    "register_recipe",
    "load_recipe",
    "run_recipe",
]

RECIPES: dict[str, str | Callable[..., Any]] = {
    "toy2d": "condiff.toy:run_recipe",  # 2-D Gaussian-mixture diffusion (recipes/toy2d.toml)
}


def register_recipe(kind: str, target: str | Callable[..., Any]) -> None:
    """Add a recipe kind (a function, or a "module:function" string imported on first use)."""
    if kind in RECIPES and RECIPES[kind] != target:
        raise ValueError(f"recipe kind {kind!r} is registered twice")
    RECIPES[kind] = target


def _resolve(kind: str) -> Callable[..., Any]:
    if kind not in RECIPES:
        raise ValueError(f"unknown recipe kind {kind!r}; known kinds: {', '.join(sorted(RECIPES))}")
    target = RECIPES[kind]
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def load_recipe(path: str | Path) -> dict:
    """Read a recipe TOML file and check that it names a known ``kind``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as err:
            raise ValueError("reading TOML recipes on Python 3.10 needs the 'tomli' package (pip install tomli)") from err
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"recipe {path} is not valid TOML: {err}") from err
    kind = recipe.get("kind")
    if not isinstance(kind, str):
        raise ValueError(f"recipe {path} needs a top-level kind = \"...\" (one of {', '.join(sorted(RECIPES))})")
    _resolve(kind)  # clear error for unknown kinds before anything runs
    return recipe


def run_recipe(
    recipe: str | Path | dict,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    dist: DistContext | None = None,
) -> Any:
    """Run a recipe (a TOML path or its parsed dict); ``out_dir`` overrides the recipe's ``out``.

    The keyword parameters are those of every recipe function (the contract in the module docstring), so
    recipe functions such as :func:`condiff.toy.run_toy` repeat this signature on purpose."""
    if not isinstance(recipe, dict):
        recipe = load_recipe(recipe)
    fn = _resolve(recipe.get("kind", ""))
    out = out_dir if out_dir is not None else recipe.get("out")
    return fn(recipe, out, resume=resume, overwrite=overwrite, device=device, progress=progress, dist=dist)
