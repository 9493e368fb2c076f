"""Command line of the built-in models' training job (``condiff train job``, or ``python -m training.job`` under torchrun).

Parses the per-stage options (``--minutes``, ``--steps``, ``--lr``, ``--min-lr-ratio``, ``--batch``,
``--seed``, ``--balance``, ``--dropout``) into the dicts :func:`training.job.run_job` takes, with an error that
names the option and the problem for every malformed value.
"""

from __future__ import annotations

import argparse

from .context import EVALENC_CHANNELS, INT8_STAGES, LDM_DECODER_DEPTH, STAGES
from .job import RUNNERS, run_job
from .job import __doc__ as JOB_DOC
from .job_options import check_job_options

__all__ = ["main", "parse_overrides"]


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parse the job's options (``argv``, default ``sys.argv[1:]``) and run :func:`~training.job.run_job`."""
    p = argparse.ArgumentParser(prog=prog, description=JOB_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--minutes", default="", help="per-stage time boxes, e.g. vae=2,ldm=4")
    p.add_argument("--init", default=None, help="folder of previously exported components to warm-start from")
    p.add_argument("--small", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--ship", default=None, help="also pack each finished component into tar files here")
    p.add_argument("--steps", default="", help="per-stage step counts (the cosine LR decays over them), e.g. ldm=5000")
    p.add_argument("--lr", default="", help="per-stage peak learning rates, e.g. ldm=3e-4,controlnet-normal=2e-4")
    p.add_argument("--batch", default="",
                   help="per-stage global batch sizes (split over torchrun processes), e.g. ldm=1024")
    p.add_argument("--min-lr-ratio", default="",
                   help="per-stage cosine floor as a fraction of the peak, e.g. ldm=0.05 (an annealing run)")
    p.add_argument("--seed", default="",
                   help="per-stage seeds of the data order and noise draws (default 0), e.g. ldm=1: an "
                        "independent run of the same recipe, e.g. for a weight average")
    p.add_argument("--eval-prompts", type=int, default=200,
                   help="held-out caption prompts of the evaluate stage (adherence and inpainting)")
    p.add_argument("--evalenc-channels", default=",".join(map(str, EVALENC_CHANNELS)),
                   help="widths of the evalenc image tower's stages, e.g. 48,96,192,384")
    p.add_argument("--ldm-decoder-depth", type=int, default=None,
                   help="transformer blocks per decoder attention layer of ldm/inpaint (default: the --init "
                        f"component's, else {LDM_DECODER_DEPTH}; a shallower --init is grown)")
    p.add_argument("--balance", default="",
                   help="per-stage family-balance exponent in [0, 1] of the picture sampling, e.g. ldm=0.5")
    p.add_argument("--dropout", default="",
                   help="per-stage dropout probability of the U-Net's residual and transformer blocks while "
                        "training (default 0), e.g. ldm=0.1")
    p.add_argument("--int8", default=",".join(INT8_STAGES),
                   help="stages whose component ships int8 with per-channel scales (default: ldm; '' for fp16)")
    a = p.parse_args(argv)
    balance = _per_stage(a.balance, "--balance", float)
    dropout = _per_stage(a.dropout, "--dropout", float)
    int8 = tuple(s for s in a.int8.split(",") if s)
    try:
        check_job_options(balance, int8, a.ldm_decoder_depth, dropout)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if a.eval_prompts < 1:
        raise SystemExit("--eval-prompts must be at least 1")
    try:
        channels = tuple(int(c) for c in a.evalenc_channels.split(","))
    except ValueError:
        raise SystemExit(f"--evalenc-channels: expected comma-separated integers, got {a.evalenc_channels!r}") from None
    if not channels or any(c <= 0 or c % 16 for c in channels):
        raise SystemExit(f"--evalenc-channels: every width must be a positive multiple of 16 (GroupNorm groups), "
                         f"got {a.evalenc_channels!r}")
    stages = [s for s in a.stages.split(",") if s]
    run_job(a.world, a.out, stages, minutes=_per_stage(a.minutes, "--minutes", float), init=a.init, small=a.small,
            device=a.device, ship=a.ship, overrides=parse_overrides(a.steps, a.lr, a.min_lr_ratio, a.batch, a.seed),
            eval_prompts=a.eval_prompts, evalenc_channels=channels, ldm_decoder_depth=a.ldm_decoder_depth,
            balance=balance, int8=int8, dropout=dropout)


def _per_stage(text: str, flag: str, cast) -> dict:
    """``"ldm=4,vae=2"`` -> ``{"ldm": cast("4"), "vae": cast("2")}`` with a clear error for a malformed item."""
    out = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag}: expected STAGE=VALUE items separated by commas, got {item!r}")
        try:
            out[name.strip()] = cast(value)
        except ValueError:
            raise SystemExit(f"{flag}: {value!r} is not a valid value for stage {name!r}") from None
    return out


def parse_overrides(steps: str = "", lr: str = "", min_lr_ratio: str = "", batch: str = "",
                    seed: str = "") -> dict[str, dict]:
    """Per-stage TrainConfig overrides from the ``--steps/--lr/--min-lr-ratio/--batch/--seed`` options."""
    out: dict[str, dict] = {}
    for flag, key, text, cast in (("--steps", "steps", steps, int), ("--lr", "lr", lr, float),
                                  ("--min-lr-ratio", "min_lr_ratio", min_lr_ratio, float),
                                  ("--batch", "batch_size", batch, int), ("--seed", "seed", seed, int)):
        for stage, value in _per_stage(text, flag, cast).items():
            if stage not in RUNNERS:
                raise SystemExit(f"{flag}: unknown stage {stage!r}; choose from {list(RUNNERS)}")
            if key in ("steps", "batch_size") and value < 1:
                raise SystemExit(f"{flag}: {stage}={value} must be at least 1")
            if key == "seed" and value < 0:
                raise SystemExit(f"{flag}: {stage}={value} must not be negative")
            out.setdefault(stage, {})[key] = value
    return out
