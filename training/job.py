"""The built-in models' training job: one command that trains and exports every stage in order.

    condiff train job --world WORLD_DIR --out OUT_DIR \
        --stages vae,evalenc,ldm,classifier,inpaint --minutes vae=2,ldm=4 [--init WEIGHTS_DIR]

Each stage is time-boxed (``--minutes``) and step-capped, checkpoints through the generic
:class:`~condiff.train.loop.Trainer`, and exports its (EMA) weights as a shipped component under
``OUT_DIR/weights/<component>/`` with a model card. ``--init`` warm-starts from previously exported
components (how a run continues on a fresh GPU machine: the optimiser state is too large to bring
back, the shipped fp16 or int8 weights are; int8 ones continue from their dequantized values).
``--small`` shrinks everything for a CPU smoke test.

Started by ``python -m torch.distributed.run --nproc-per-node N -m training.job …`` (or ``torchrun … -m
training.job``; ``condiff train job`` under ``torchrun`` works as well), the stages of :data:`.job_options.PARALLEL_STAGES` train data-parallel
(the global batch, ``--batch``, is split over the N processes; :mod:`condiff.train.distributed`) and
rank 0 alone exports; the other stages (evaluate, ControlNets, cascade, unCLIP) then run on rank 0
only, so they must come after the data-parallel ones.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from condiff.denoisers import DiscreteTime, NetworkDenoiser
from condiff.evaluation.world import load_world
from condiff.models.weights import load_state
from condiff.nn.autoencoder import AutoencoderKL
from condiff.nn.classifier import NoisyClassifier, classifier_config
from condiff.nn.image_encoder import ImageEncoder, ImageEncoderConfig
from condiff.nn.unet import UNet, UNetConfig, count_parameters
from condiff.schedules import DiscreteSchedule
from condiff.train.distributed import init_distributed, shutdown_distributed
from condiff.train.grow import GrowthError, grow_into

from .autoencoder import AutoencoderObjective, default_config, estimate_scaling_factor, psnr_db
from .balance import WeightedBatches, family_weights
from .classifier import NoisyClassifierObjective
from .context import (EVALENC_CHANNELS, INT8_STAGES, SCHEDULE, STAGES, JobContext, fit,
                      latent_bank, model_card, text_banks)
from .evalenc import EvalEncoderObjective, retrieval_accuracy
from .export import export_component, strip_prefix
from .job_options import PARALLEL_STAGES, check_job_options, check_parallel_order
from .latent import InpaintObjective, TextToImageObjective, builtin_unet_config, inpaint_bank, inpaint_unet_from

__all__ = ["JobContext", "RUNNERS", "STAGES", "run_job"]

# ----------------------------------------------------------------------------- stages
def stage_vae(ctx: JobContext) -> None:
    cfg = default_config()
    vae = AutoencoderKL(cfg)
    _warm_start(ctx, "vae", vae)
    train = ctx.world.train
    data = train.images.to(ctx.device)
    info = fit(ctx, "vae", vae, AutoencoderObjective(), data)
    if not ctx.is_main:
        return
    vae.eval()
    scale = estimate_scaling_factor(vae, data[:4096])
    psnr, err_map = psnr_db(vae, ctx.world.eval.images)
    torch.save(err_map.half(), ctx.out / "vae_error_map.pt")
    metrics = {"held-out PSNR (dB)": round(psnr, 2), "scaling_factor": round(scale, 5)}
    ctx.log["vae"] = {**info, **metrics}
    export_component(vae, ctx.weights / "vae", kind="autoencoder", network_config=cfg.to_dict(),
                     extra={"scaling_factor": scale},
                     card=model_card(ctx, "vae", info, count_parameters(vae), metrics, "Built-in KL autoencoder (f=4)",
                                "128×128 RGB ↔ 32×32×4 latents; L1 + edge + 1e-6·KL objective."))


def stage_evalenc(ctx: JobContext) -> None:
    cfg = ImageEncoderConfig(block_out_channels=ctx.evalenc_channels)
    enc = ImageEncoder(cfg)
    _warm_start(ctx, "evalenc", enc)
    text = text_banks(ctx)
    tr = ~ctx.world.is_eval
    data = {"images": ctx.world.images[tr].to(ctx.device), "text": text["pooled"][tr.to(text["pooled"].device)],
            "concept": ctx.world.concept_id[tr].to(ctx.device), "flippable": ctx.world.flippable[tr].to(ctx.device)}
    objective = EvalEncoderObjective(concept_text=text["concept_text"].to(ctx.device), concept_weight=1.0)
    info = fit(ctx, "evalenc", enc, objective, data)
    if not ctx.is_main:
        return
    enc.eval()
    ev = ctx.world.eval
    metrics = {f"held-out {k}": round(v, 4) for k, v in
               retrieval_accuracy(enc, ev.images, ev.concept_id, text["concept_text"]).items()}
    metrics["concepts ranked"] = len(ctx.world.concepts)
    ctx.log["evalenc"] = {**info, **metrics}
    export_component(enc, ctx.weights / "evalenc", kind="image-encoder", network_config=cfg.to_dict(),
                     extra={"text_encoder": "all-MiniLM-L6-v2 (mean-pooled, frozen)"}, vocabulary=ctx.world.concepts,
                     card=model_card(ctx, "evalenc", info, count_parameters(enc), metrics,
                                "condiff-evalenc (LiT vs. MiniLM)",
                                "CLIP-style image tower trained against frozen MiniLM caption embeddings (InfoNCE "
                                "over the batch + cross-entropy over all concept prompts); the built-in world's "
                                "stand-in for CLIP features. Not CLIP."))


def _ldm_denoiser(unet: UNet, schedule: DiscreteSchedule) -> NetworkDenoiser:
    return NetworkDenoiser(unet, "eps", DiscreteTime(schedule), sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max)


def _unet_extra(scale_note: str = "") -> dict:
    return {"schedule": SCHEDULE, "prediction": "eps", "image_size": 128, "text_encoder": "all-MiniLM-L6-v2",
            "text_max_length": 24, "default_guidance": 5.0, "default_steps": 20}


def balanced(ctx: JobContext, stage: str, table: dict, train: torch.Tensor):
    """``table`` as the stage's data: as is (uniform epochs), or drawn family-balanced with ``--balance``."""
    alpha = ctx.balance.get(stage, 0.0)
    if not alpha:
        return table
    names = [n for n, t in zip(ctx.world.concept_names, train.tolist()) if t]
    weights = family_weights(names, alpha, known=ctx.world.concepts)
    return WeightedBatches(table, weights, ctx.train_config(stage).batch_size)


def _ship_note(ctx: JobContext, stage: str) -> str:
    notes = []
    if ctx.balance.get(stage):
        notes.append(f"pictures sampled family-balanced, weight n_family^-{ctx.balance[stage]}")
    if ctx.dropout.get(stage):
        notes.append(f"trained with dropout {ctx.dropout[stage]} in the residual and transformer blocks")
    if stage in ctx.int8:
        notes.append("shipped int8 with per-channel scales")
    return "".join(f" {n[0].upper()}{n[1:]}." for n in notes)


def _inference_config(cfg: UNetConfig) -> dict:
    """The exported network config: ``--dropout`` belongs to the run (log and card), not to the weights, so that
    ControlNets copied from them and fine-tunes of them (DreamBooth, LoRA) do not inherit it unasked."""
    return replace(cfg, dropout=0.0).to_dict()


def stage_ldm(ctx: JobContext) -> None:
    cfg = builtin_unet_config(decoder_depth=ctx.decoder_depth("ldm"), dropout=ctx.dropout.get("ldm", 0.0))
    unet = UNet(cfg)
    _warm_start(ctx, "ldm", unet)
    schedule = DiscreteSchedule.named(SCHEDULE["name"], SCHEDULE["steps"])
    den = _ldm_denoiser(unet, schedule)
    lat, text = latent_bank(ctx), text_banks(ctx)
    tr = (~ctx.world.is_eval).to(ctx.device)
    data = {"mean": lat["mean"][tr], "std": lat["std"][tr], "ctx": text["ctx"][tr.to(text["ctx"].device)]}
    obj = TextToImageObjective(den, schedule, text["empty"], lat["scale"])
    info = fit(ctx, "ldm", den, obj, balanced(ctx, "ldm", data, tr))
    if not ctx.is_main:
        return
    info["balance_alpha"] = ctx.balance.get("ldm", 0.0)
    info["dropout"] = cfg.dropout
    ctx.log["ldm"] = info
    _sample_grid(ctx, unet, lat, schedule)
    export_component(unet, ctx.weights / "ldm", kind="unet", network_config=_inference_config(cfg), extra=_unet_extra(),
                     dtype=ctx.export_dtype("ldm"),
                     card=model_card(ctx, "ldm", info, count_parameters(unet), {}, "Built-in text-to-image latent U-Net",
                                "ε-prediction on 32×32×4 latents, MiniLM cross-attention, 10 % caption dropout, EMA."
                                + _ship_note(ctx, "ldm")))


@torch.no_grad()
def _sample_grid(ctx: JobContext, unet: UNet, lat: dict, schedule: DiscreteSchedule, n: int = 16) -> None:
    """A quick look: n held-out captions at the default guidance, next to the real pictures."""
    from condiff.images import save_png
    from condiff.models.ldm import LatentDiffusion
    from condiff.nn.text_encoder import MiniLMTextEncoder
    from condiff.pipelines.text2img import generate

    unet.eval()
    model = LatentDiffusion("builtin", unet, lat["vae"], MiniLMTextEncoder(max_length=24).to(ctx.device), schedule,
                            scaling_factor=lat["scale"], image_size=128)
    ev = ctx.world.eval
    idx = torch.linspace(0, len(ev) - 1, min(n, len(ev))).long().tolist()
    prompts = [ev.captions[i][0] for i in idx]
    res = generate(model, prompts, guidance=5.0, steps=20 if not ctx.small else 2, seed=0, show_progress=False)
    real = ev.images[idx].float() / 255
    grid = torch.cat([torch.cat(list(real), 2), torch.cat(list(res.images), 2)], 1)
    save_png(grid[None], ctx.out / "ldm_samples.png", {"prompts": prompts}, overwrite=True)
    if ctx.ship is not None:
        save_png(grid[None], ctx.ship / "ldm_samples.png", {"prompts": prompts}, overwrite=True)
    ctx.log.setdefault("ldm", {})["sample_prompts"] = prompts


def stage_classifier(ctx: JobContext) -> None:
    num = len(ctx.world.styles)
    cfg = classifier_config()
    clf = NoisyClassifier(cfg, num)
    _warm_start(ctx, "classifier", clf)
    schedule = DiscreteSchedule.named(SCHEDULE["name"], SCHEDULE["steps"])
    lat = latent_bank(ctx)
    tr = (~ctx.world.is_eval).to(ctx.device)
    data = {"mean": lat["mean"][tr], "std": lat["std"][tr], "label": ctx.world.style_id.to(ctx.device)[tr]}
    info = fit(ctx, "classifier", clf, NoisyClassifierObjective(schedule, lat["scale"]), data)
    if not ctx.is_main:
        return
    clf.eval()
    ev = ctx.world.is_eval.to(ctx.device)
    metrics = _classifier_accuracy(clf, lat["mean"][ev].float() * lat["scale"], ctx.world.style_id.to(ctx.device)[ev], schedule)
    ctx.log["classifier"] = {**info, **metrics}
    export_component(clf, ctx.weights / "classifier", kind="classifier", network_config=cfg.to_dict(),
                     extra={"num_classes": num, "labels": ctx.world.styles, "label_kind": "style", "schedule": SCHEDULE},
                     card=model_card(ctx, "classifier", info, count_parameters(clf), metrics,
                                "Built-in noisy latent style classifier",
                                "p(style | x_t, t) for classifier guidance (thesis eq. 3.4)."))


@torch.no_grad()
def _classifier_accuracy(clf, z0, labels, schedule) -> dict:
    out = {}
    g = torch.Generator(device=z0.device).manual_seed(1)
    abar = schedule.alphas_cumprod.float().to(z0.device)
    for t in (0, 250, 500, 750, 999):
        n = torch.randn(z0.shape, generator=g, device=z0.device)
        xt = abar[t].sqrt() * z0 + (1 - abar[t]).sqrt() * n
        pred = clf(xt, torch.full((len(z0),), float(t), device=z0.device)).argmax(1)
        out[f"held-out accuracy @t={t}"] = round(float((pred == labels).float().mean()), 4)
    return out


def stage_inpaint(ctx: JobContext) -> None:
    schedule = DiscreteSchedule.named(SCHEDULE["name"], SCHEDULE["steps"])
    if ctx.has("inpaint") or ctx.has("ldm-inpaint"):
        unet = UNet(builtin_unet_config(in_channels=9, decoder_depth=ctx.decoder_depth("ldm-inpaint"),
                                        dropout=ctx.dropout.get("inpaint", 0.0)))
        _warm_start(ctx, "ldm-inpaint", unet)
    else:
        base = UNet(builtin_unet_config(decoder_depth=ctx.decoder_depth("ldm"), dropout=ctx.dropout.get("inpaint", 0.0)))
        _warm_start(ctx, "ldm", base, required=True)
        unet = inpaint_unet_from(base)
    den = _ldm_denoiser(unet, schedule)
    lat, text = latent_bank(ctx), text_banks(ctx)
    tr = (~ctx.world.is_eval)
    g = torch.Generator(device=ctx.device).manual_seed(7)
    masks, zm = inpaint_bank(lat["vae"], ctx.world.images[tr], ctx.world.regions[tr], lat["scale"], g,
                             per_image=2 if ctx.small else 4)
    trd = tr.to(ctx.device)
    data = {"mean": lat["mean"][trd], "std": lat["std"][trd], "ctx": text["ctx"][tr.to(text["ctx"].device)],
            "masks": masks, "zm": zm}
    info = fit(ctx, "inpaint", den, InpaintObjective(den, schedule, text["empty"], lat["scale"]),
                balanced(ctx, "inpaint", data, tr))
    if not ctx.is_main:
        return
    info["balance_alpha"] = ctx.balance.get("inpaint", 0.0)
    info["dropout"] = unet.config.dropout
    ctx.log["inpaint"] = info
    export_component(unet, ctx.weights / "ldm-inpaint", kind="inpaint-unet", network_config=_inference_config(unet.config),
                     extra=_unet_extra(), dtype=ctx.export_dtype("inpaint"),
                     card=model_card(ctx, "inpaint", info, count_parameters(unet), {}, "Built-in inpainting latent U-Net",
                                "9 input channels (latent + mask + masked-image latent), fine-tuned from `ldm` "
                                "with zero-initialised extra channels; 25 % fully masked, 20 % subject-masked samples."
                                + _ship_note(ctx, "inpaint")))


def _warm_start(ctx: JobContext, name: str, net: torch.nn.Module, required: bool = False) -> None:
    """Load ``name`` from this job or ``--init`` into ``net``; a differently shaped network starts from scratch
    (or, with ``required``, fails)."""
    if not ctx.has(name):
        if required:
            raise FileNotFoundError(f"stage needs component {name!r}; train it first or pass --init")
        return
    state = strict_prefix(load_state(ctx.component(name)))
    own = net.state_dict()
    if set(state) < set(own):
        try:
            new = grow_into(net, state)
        except GrowthError as err:
            print(f"{name} cannot be grown into this stage's network ({err})", flush=True)
        else:
            print(f"warm start {name} from {ctx.component(name)}, grown by {len(new)} tensors of added decoder "
                  "transformer blocks (zero-output copies: the grown network computes the same function)", flush=True)
            return
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        if required:
            raise ValueError(f"component {name!r} in {ctx.component(name)} does not fit this stage's network")
        print(f"{name} in {ctx.component(name)} has another architecture: training from scratch", flush=True)
        return
    net.load_state_dict(state)
    print(f"warm start {name} from {ctx.component(name)}", flush=True)


def strict_prefix(state: dict) -> dict:
    return strip_prefix(state, "net.")


def stage_evaluate(ctx: JobContext) -> None:
    from .evaluate import stage_evaluate as run

    run(ctx)


def _lazy(module: str, fn: str):
    def run(ctx: JobContext) -> None:
        import importlib

        getattr(importlib.import_module(f"{__package__}.{module}"), fn)(ctx)

    return run


RUNNERS = {"vae": stage_vae, "evalenc": stage_evalenc, "ldm": stage_ldm, "classifier": stage_classifier,
           "inpaint": stage_inpaint, "evaluate": stage_evaluate,
           "cascade-base": _lazy("cascade", "stage_cascade_base"), "cascade-sr": _lazy("cascade", "stage_cascade_sr"),
           "unclip-prior": _lazy("unclip", "stage_unclip_prior"), "unclip-decoder": _lazy("unclip", "stage_unclip_decoder")}
for _kind in ("canny", "lineart", "softedge", "depth", "normal", "pose"):
    RUNNERS[f"controlnet-{_kind}"] = (lambda ctx, k=_kind: __import__(f"{__package__}.controlnet", fromlist=["x"])
                                      .stage_controlnet(ctx, k))


def ship_component(folder: Path, dest: Path, limit: int = 15 * 1024 * 1024) -> list[Path]:
    """Pack a component folder into tar files of at most ``limit`` bytes each (GPU return channel)."""
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    groups: list[list[Path]] = [[]]
    size = 0
    for f in sorted(folder.iterdir(), key=lambda p: -p.stat().st_size):
        n = f.stat().st_size
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += n
    out = []
    for i, files in enumerate(groups):
        path = dest / f"{folder.name}-{i}.tar"
        with tarfile.open(path, "w") as tar:
            for f in files:
                tar.add(f, arcname=f"{folder.name}/{f.name}")
        out.append(path)
    return out


def run_job(world_dir: str | Path, out: str | Path, stages: list[str], *, minutes: dict[str, float] | None = None,
            init: str | Path | None = None, small: bool = False, device: str | None = None,
            ship: str | Path | None = None, overrides: dict[str, dict] | None = None, eval_prompts: int = 200,
            evalenc_channels: tuple[int, ...] = EVALENC_CHANNELS, ldm_decoder_depth: int | None = None,
            balance: dict[str, float] | None = None, int8: tuple[str, ...] = INT8_STAGES,
            dropout: dict[str, float] | None = None) -> dict:
    unknown = [s for s in stages if s not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(RUNNERS)}")
    check_job_options(balance or {}, int8, ldm_decoder_depth, dropout or {})
    dist = init_distributed(device)
    if dist.is_distributed:
        check_parallel_order(stages)
    dev = dist.device if dist.is_distributed else torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = JobContext(load_world(world_dir), Path(out), dev, small, Path(init) if init else None, dict(minutes or {}))
    ctx.dist = dist
    ctx.gpu_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    if dist.is_distributed:
        ctx.gpu_name = f"{dist.world_size} × {ctx.gpu_name}"
    ctx.ship = Path(ship) if ship else None
    ctx.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    ctx.eval_prompts = int(eval_prompts)
    ctx.evalenc_channels = tuple(evalenc_channels)
    ctx.ldm_decoder_depth = ldm_decoder_depth
    ctx.balance = dict(balance or {})
    ctx.int8 = frozenset(int8)
    ctx.dropout = {k: float(v) for k, v in (dropout or {}).items() if v}
    ctx.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for s in stages:
        if s not in PARALLEL_STAGES and not ctx.is_main:
            break  # rank 0 runs the remaining (single-process) stages alone
        before = set(p.name for p in ctx.weights.glob("*")) if ctx.weights.exists() else set()
        RUNNERS[s](ctx)
        if dist.is_distributed and s in PARALLEL_STAGES:
            torch.distributed.barrier()  # the next stage may warm-start from what rank 0 just exported
        if not ctx.is_main:
            continue
        ctx.log["elapsed_s"] = round(time.time() - t0, 1)
        (ctx.out / "job_log.json").write_text(json.dumps(ctx.log, indent=1, default=str))
        if ctx.ship is not None:
            for name in sorted(set(p.name for p in ctx.weights.glob("*")) - before):
                ship_component(ctx.weights / name, ctx.ship)
            (ctx.ship / "job_log.json").write_text(json.dumps(ctx.log, indent=1, default=str))
    if ctx.is_main:
        ctx.log["device"] = ctx.gpu_name
        ctx.log["torch"] = torch.__version__
        (ctx.out / "job_log.json").write_text(json.dumps(ctx.log, indent=1, default=str))
    shutdown_distributed(dist)
    return ctx.log


if __name__ == "__main__":  # ``python -m training.job …`` (also under torchrun): the command line of :mod:`.job_cli`
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from training.job_cli import main

    main()
