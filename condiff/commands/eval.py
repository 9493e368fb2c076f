"""`condiff eval …`: measure the built-in models on a built world's held-out records (no maths here).

Every subcommand prints its report as JSON and, with ``--out``, writes it atomically (an existing file only
with ``--overwrite``; the check runs before the measurement). The measurements are :mod:`condiff.evaluation`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Optional

import typer

from ..errors import InputError
from ._common import DEVICE_OPT, OVERWRITE_OPT, with_options

WORLD_OPT = typer.Option(Path("build/world"), "--world",
                         help="A built world (condiff data build … --out build/world); its held-out records are used.")
MASK_HELP = "box: the centre quarter of the picture; subject: the picture's own subject, dilated."
OUT_OPT = typer.Option(None, "--out", help="JSON file to write the report to (never overwritten without --overwrite).")


def _measure(out: Optional[Path], overwrite: bool, run: Callable[[], dict | list]) -> None:
    """Check ``out`` first, run the measurement, print the report and write it to ``out``."""
    from condiff.io import atomic_path, check_writable

    if out is not None:
        check_writable(out, overwrite)
    report = run()
    text = json.dumps(report, indent=1)
    typer.echo(text)
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(text)


#: the options of every measurement: where its JSON report goes
_REPORT = [("out", Optional[Path], OUT_OPT), ("overwrite", bool, OVERWRITE_OPT)]


def _measurement(ev: typer.Typer, name: str) -> Callable:
    """Register ``fn(**options)`` as ``eval NAME`` with --out and --overwrite added: ``fn`` checks its options and
    returns the measurement, which :func:`_measure` runs once ``--out`` is checked."""

    def deco(fn: Callable) -> Callable:
        @with_options(report=_REPORT)
        @functools.wraps(fn)
        def command(report: dict, **options) -> None:
            _measure(report["out"], report["overwrite"], fn(**options))

        ev.command(name)(command)
        return fn

    return deco


def _model_and_encoder(device: Optional[str]):
    from condiff.evaluation.adherence import load_evalenc
    from condiff.models.registry import WEIGHTS_DIR, load_model

    dev = str(device or "cpu")
    return load_model("builtin", device=dev), load_evalenc(WEIGHTS_DIR / "evalenc", dev)


def _world(path: Path):
    from condiff.evaluation.world import load_world

    return load_world(path)


def _timed(fn: Callable[[], dict]) -> dict:
    import time

    t0 = time.time()
    report = fn()
    report["seconds"] = round(time.time() - t0, 1)
    return report


def register(app: typer.Typer) -> None:
    ev = typer.Typer(help="Measure the built-in models on held-out records: prompt adherence, paired comparisons, "
                          "ControlNet scale, SDEdit strength, inpainting and seams (JSON reports).",
                     no_args_is_help=True)
    app.add_typer(ev, name="eval")
    _register_adherence(ev)
    _register_image_edits(ev)
    _register_inpainting(ev)


def _register_adherence(ev: typer.Typer) -> None:
    @_measurement(ev, "adherence")
    def adherence(
        world: Path = WORLD_OPT,
        n: int = typer.Option(200, "--n", help="Held-out prompts (200: the model card's figure)."),
        offset: int = typer.Option(0, "--offset", help="Skip this many prompts of the held-out order first (prompts "
                                                     "the reported first ones do not include, for choosing settings)."),
        steps: int = typer.Option(20, "--steps", help="Sampler steps (20: the model's default)."),
        sampler: str = typer.Option("dpmpp_2m", "--sampler", help="Sampler (dpmpp_2m: the model's default)."),
        guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance (default: the model's, 5)."),
        batch: int = typer.Option(25, "--batch", help="Prompts generated at once."),
        listing: bool = typer.Option(False, "--list", help="Record every prompt's ranks and top concepts (needed by "
                                                          "`condiff eval paired`)."),
        device: Optional[str] = DEVICE_OPT,
    ) -> Callable[[], dict | list]:
        """Prompt adherence: share of held-out captions whose concept condiff-evalenc ranks in the top 5 of all concept
        prompts for the generated picture (and for the real one), split by the concept's training-picture count."""
        from condiff.evaluation.adherence import adherence_report
        from condiff.samplers.registry import sampler_info

        sampler_info(sampler)  # an unknown name fails here, naming the choices, before anything loads

        def run() -> dict:
            model, enc = _model_and_encoder(device)
            return _timed(lambda: adherence_report(model, enc, _world(world), n=n, offset=offset, sampler=sampler,
                                                   steps=steps, guidance=guidance, batch=batch, listing=listing))

        return run

    @_measurement(ev, "paired")
    def paired(
        a: Path = typer.Argument(..., help="Report A of `condiff eval adherence --list`."),
        b: Path = typer.Argument(..., help="Report B over the same prompts (same --offset and --n)."),
    ) -> Callable[[], dict | list]:
        """Paired adherence difference of two runs over the same prompts: top-5 rate of A minus B with a paired
        bootstrap 95 % interval, and how many prompts only A and only B get."""
        from condiff.evaluation.adherence import paired_adherence

        def run() -> dict:
            reports = []
            for path in (a, b):
                try:
                    reports.append(json.loads(path.read_text()))
                except json.JSONDecodeError as err:
                    raise InputError(f"{path} is not a JSON report ({err}); pass reports of `condiff eval adherence`")
            return paired_adherence(*reports, names=(str(a), str(b)))

        return run


def _register_image_edits(ev: typer.Typer) -> None:
    @_measurement(ev, "controlnet-scale")
    def controlnet_scale(
        world: Path = WORLD_OPT,
        kinds: str = typer.Option("normal,lineart", "--kinds", help="Shipped ControlNets, comma-separated."),
        scales: str = typer.Option("1,2", "--scales", help="Conditioning scales, comma-separated."),
        n: int = typer.Option(32, "--n", help="Held-out conditions per kind."),
        steps: int = typer.Option(20, "--steps", help="Sampler steps."),
        device: Optional[str] = DEVICE_OPT,
    ) -> Callable[[], dict | list]:
        """ControlNet adherence over the conditioning scale: outputs with and without the ControlNet (same prompts and
        seeds) run back through the condition's preprocessor and scored against the held-out condition (edge F1,
        depth AbsRel, normal angle, pose PCK), with the real pictures as the ceiling."""
        from condiff.evaluation.control import scale_sweep
        from condiff.models.registry import WEIGHTS_DIR, load_model
        from condiff.pipelines.control import load_controlnet_folder

        try:
            values = [float(s) for s in scales.split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--scales: expected comma-separated numbers, got {scales!r}") from None

        def run() -> list:
            dev = str(device or "cpu")
            nets = {k: load_controlnet_folder(WEIGHTS_DIR / f"controlnet-{k}")[0].to(dev).eval()
                    for k in (k.strip() for k in kinds.split(",")) if k}
            return scale_sweep(load_model("builtin", device=dev), _world(world), nets, values, n=n, steps=steps)

        return run

    @_measurement(ev, "sdedit-strength")
    def sdedit_strength(
        world: Path = WORLD_OPT,
        n: int = typer.Option(32, "--n", help="Held-out sketches."),
        batch: int = typer.Option(16, "--batch", help="Pictures edited at once."),
        device: Optional[str] = DEVICE_OPT,
    ) -> Callable[[], dict | list]:
        """SDEdit faithfulness vs. realism over the strength t0 (thesis Fig. 4.2): SSIM/RMSE to the input sketch and
        evalenc similarity to the caption and to the real picture, per t0 in 0, .2, …, 1."""
        from condiff.evaluation.sdedit import sdedit_sweep

        def run() -> dict:
            model, enc = _model_and_encoder(device)
            return _timed(lambda: sdedit_sweep(model, enc, _world(world).eval, n=n, batch=batch))

        return run


def _register_inpainting(ev: typer.Typer) -> None:
    @_measurement(ev, "inpainting-paired")
    def inpainting_paired(
        world: Path = WORLD_OPT,
        guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance of both methods (default: the model's, 5)."),
        n: int = typer.Option(160, "--n", help="Held-out pictures."),
        mask: str = typer.Option("box", "--mask", help=MASK_HELP),
        batch: int = typer.Option(25, "--batch", help="Pictures inpainted at once."),
        device: Optional[str] = DEVICE_OPT,
    ) -> Callable[[], dict | list]:
        """Inpainting U-Net vs. zero-shot latent blend, paired on the same pictures, prompts and seeds: evalenc
        similarity of the composite (and of the masked region) to the caption, and the error outside the mask."""
        from condiff.evaluation.inpainting import evaluate_inpainting, inpaint_eval_records

        def run() -> dict:
            model, enc = _model_and_encoder(device)
            ev_ = _world(world).eval
            pick = inpaint_eval_records(ev_, n, mask)
            return _timed(lambda: {**evaluate_inpainting(model, enc, ev_, pick, batch, mask, guidance=guidance),
                                   "n": len(pick)})

        _check_mask(mask)
        return run

    @_measurement(ev, "seam")
    def seam(
        world: Path = WORLD_OPT,
        n: int = typer.Option(48, "--n", help="Held-out pictures."),
        mask: str = typer.Option("subject", "--mask", help=MASK_HELP),
        batch: int = typer.Option(16, "--batch", help="Pictures inpainted at once."),
        device: Optional[str] = DEVICE_OPT,
    ) -> Callable[[], dict | list]:
        """Seam error the compositing adds: inpainting outputs pasted back with alpha, Laplacian and Poisson blending
        (with and without colour matching), seam(composite) − seam(original), and the change outside the mask."""
        from condiff.evaluation.inpainting import seam_report
        from condiff.models.registry import load_model

        def run() -> dict:
            model = load_model("builtin", device=str(device or "cpu"))
            return _timed(lambda: seam_report(model, _world(world).eval, n=n, mask=mask, batch=batch))

        _check_mask(mask)
        return run


def _check_mask(mask: str) -> None:
    from condiff.evaluation.inpainting import INPAINT_MASKS

    if mask not in INPAINT_MASKS:
        raise InputError(f"--mask: unknown mask {mask!r}; choose from {', '.join(INPAINT_MASKS)}")
