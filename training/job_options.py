"""Validation of the training job's structural options (``--balance``, ``--int8``, ``--dropout``,
``--ldm-decoder-depth``) and of the stage order under torchrun.

Each check raises :class:`ValueError` with a message that names the option and the fix, so the command
line can print it instead of a stack trace.
"""

from __future__ import annotations

__all__ = ["UNET_STAGES", "PARALLEL_STAGES", "check_job_options", "check_parallel_order"]

#: stages that train a built-in latent U-Net (the ones --balance, --int8 and --dropout apply to)
UNET_STAGES = ("ldm", "inpaint")
#: stages that train data-parallel under torchrun; the others run on rank 0 only
PARALLEL_STAGES = ("vae", "evalenc", "ldm", "classifier", "inpaint")


def check_job_options(balance: dict, int8, ldm_decoder_depth: int | None, dropout: dict | None = None) -> None:
    """ValueError naming the option for a bad ``--balance``, ``--int8``, ``--dropout`` or ``--ldm-decoder-depth``."""
    dropout = dropout or {}
    if isinstance(int8, str) or not all(isinstance(s, str) for s in int8):
        raise ValueError(f"--int8: expected a list of stage names, got {int8!r}")
    for flag, names in (("--balance", balance), ("--int8", int8), ("--dropout", dropout)):
        bad = [s for s in names if s not in UNET_STAGES]
        if bad:
            raise ValueError(f"{flag}: stage(s) {bad} do not support it; use {' or '.join(UNET_STAGES)}")
    bad = {k: v for k, v in balance.items() if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"--balance: exponents must lie in [0, 1] (0 = uniform), got {bad}")
    bad = {k: v for k, v in dropout.items() if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0}
    if bad:
        raise ValueError(f"--dropout: probabilities must lie in [0, 1) (0 = off; 0.1 is usual), got {bad}")
    if ldm_decoder_depth is not None and (not isinstance(ldm_decoder_depth, int) or ldm_decoder_depth < 1):
        raise ValueError(f"--ldm-decoder-depth must be an integer of at least 1, got {ldm_decoder_depth!r}")


def check_parallel_order(stages: list[str]) -> None:
    """Under torchrun, single-process stages may only follow the data-parallel ones (ranks > 0 stop there)."""
    last = max((i for i, s in enumerate(stages) if s in PARALLEL_STAGES), default=-1)
    early = [s for s in stages[:last] if s not in PARALLEL_STAGES]
    if early:
        raise ValueError(f"under torchrun, stage(s) {early} run on rank 0 only and must come after the data-parallel "
                         f"stages {list(PARALLEL_STAGES)}; reorder --stages or run them in a second job")
