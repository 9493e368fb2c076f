"""The thesis's three experiments (chapter 4) as declarative, measured, reproducible runs.

=====================  =====================================================================
module                 what it holds
=====================  =====================================================================
``config``             TOML experiment configs (``recipes/experiments/*.toml``) -> dataclasses
``context``            run context, evaluation encoder (condiff-evalenc), results, bootstrap CIs
``sweep``              X/Y/Z parameter sweeps: labelled image grids + metric tables
``sketch``             experiment 1: SDEdit t0 sweep, CFG γ sweep, ControlNets (§4.2)
``inpainting``         experiment 2: tasks × architectures, composite, autoencoder artefacts (§4.3)
``architectures``      experiment 2's per-architecture measurements (time, memory, quality)
``personalization``    experiment 3: DreamBooth, LoRA, textual inversion × prompts (§4.4)
``report``             the self-contained HTML report, plots and results.json
``runner``             run experiments by name; ``condiff demo``
=====================  =====================================================================
"""

from .config import EXPERIMENT_NAMES, load_config
from .context import EvalEncoder, ExperimentContext, ExperimentResult, Figure, Table, summarize
from .runner import run_demo, run_experiments
from .sweep import Axis, SweepResult, parse_axis, pipeline_renderer, run_sweep

__all__ = [
    "EXPERIMENT_NAMES", "load_config", "EvalEncoder", "ExperimentContext", "ExperimentResult", "Figure",
    "Table", "summarize", "run_demo", "run_experiments", "Axis", "SweepResult", "parse_axis", "pipeline_renderer",
    "run_sweep",
]
