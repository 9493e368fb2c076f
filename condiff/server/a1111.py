"""AUTOMATIC1111-compatible routes (``/sdapi/v1/...``) on condiff's pipelines (no maths here).

* ``txt2img`` → :func:`condiff.pipelines.text2img.generate`, or :func:`condiff.pipelines.control.control`
  when ``alwayson_scripts.controlnet`` has enabled units (several units = multi-ControlNet);
* ``img2img`` → :func:`condiff.pipelines.text2img.sdedit` (SDEdit, thesis 3.1.2, ``denoising_strength``
  = t0), or with ``mask`` → :func:`condiff.pipelines.inpaint.inpaint` (the inpainting U-Net and a hard
  composite; ``mask_blur`` → inward feather, ``inpaint_full_res`` → crop to the mask with
  ``inpaint_full_res_padding``, ``inpainting_mask_invert``);
* ``extra-single-image`` → :func:`condiff.pipelines.cascade.upscale` (the SR3 stage, ×2);
* ``samplers``, ``schedulers``, ``upscalers``, ``sd-models``, ``options``, ``progress``, ``interrupt``,
  ``skip``, ``png-info``, ``scripts``.

Seeds follow A1111: ``seed`` −1 draws one; image j of iteration k has seed ``seed + k·batch_size + j``,
which is also what :func:`~condiff.pipelines.text2img.generate` gives for ``seed + k·batch_size`` and a
batch of ``batch_size``, so a returned seed reproduces its image from Python or the CLI.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import torch
import torch.nn.functional as F
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from ..errors import InputError
from ..images import fit_image
from . import a1111_models as M
from .http_errors import CondiffRoute
from .encode import decode_image, decode_mask, png_base64, png_info
from .runner import run_job, sampler_callback, state_of
from .state import ServerState

__all__ = ["router", "infotext", "check_request", "image_response"]

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 API"], route_class=CondiffRoute)


# ------------------------------------------------------------------------------------------ checks


def check_request(req: M._Common, state: ServerState) -> tuple[str, str | None, int]:
    """Limits, unsupported fields and sizes of a generation request → (sampler, schedule, seed)."""
    L = state.limits
    L.check("steps", req.steps, "max_steps", "steps")
    L.check("images per request (batch_size × n_iter)", req.batch_size * req.n_iter, "max_batch", "batch_size")
    L.check("pixels (width × height)", req.width * req.height, "max_pixels", "width")
    for field in ("prompt", "negative_prompt"):
        L.check("characters", len(getattr(req, field)), "max_prompt_chars", field)
    f = int(getattr(state.model, "downscale", 8))
    for field in ("width", "height"):
        if getattr(req, field) % f:
            raise InputError(f"{field}: {getattr(req, field)} must be a multiple of {f} for model {state.model_name!r}")
    M.check_unsupported(req, state.model_name)
    sampler, schedule = M.resolve_sampler(req.sampler_name or req.sampler_index, req.scheduler)
    seed = req.seed if req.seed >= 0 else secrets.randbelow(2**31 - 1)
    return sampler, schedule, seed


# ------------------------------------------------------------------------------------------ responses


def infotext(p: dict[str, Any]) -> str:
    """A1111's one-image parameters text (``prompt\\nNegative prompt: …\\nSteps: …, Sampler: …``)."""
    lines = [str(p.get("prompt", ""))]
    if p.get("negative_prompt"):
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    pairs = {"Steps": p.get("steps"), "Sampler": p.get("sampler_name"), "CFG scale": p.get("cfg_scale"),
             "Seed": p.get("seed"), "Size": f"{p.get('width')}x{p.get('height')}", "Model": p.get("sd_model_name"),
             "Denoising strength": p.get("denoising_strength")}
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs.items() if v is not None))
    return "\n".join(lines)


def image_response(req: M._Common, state: ServerState, images: list, params: list[dict], seed: int,
                   extra: dict | None = None) -> dict[str, Any]:
    """``{"images", "parameters", "info"}`` as A1111 answers (info is a JSON string; ``parameters`` echoes the
    request, with ``init_images``/``mask`` emptied unless ``include_init_images``)."""
    seeds = [seed + i for i in range(len(images))]
    base = {"prompt": req.prompt, "negative_prompt": req.negative_prompt, "sampler_name": req.sampler_name
            or req.sampler_index or "Euler", "cfg_scale": req.cfg_scale, "steps": req.steps, "width": req.width,
            "height": req.height, "sd_model_name": state.model_name,
            "denoising_strength": getattr(req, "denoising_strength", None) if isinstance(req, M.Img2ImgRequest) else None}
    infotexts = [infotext({**base, "seed": s}) for s in seeds]
    info = {**base, "all_prompts": [req.prompt] * len(images), "all_negative_prompts": [req.negative_prompt] * len(images),
            "seed": seed, "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(images), "subseed_strength": 0,
            "batch_size": req.batch_size, "restore_faces": False, "sd_model_hash": None, "seed_resize_from_w": -1,
            "seed_resize_from_h": -1, "extra_generation_params": extra or {}, "index_of_first_image": 0,
            "infotexts": infotexts, "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
            "is_using_inpainting_conditioning": bool(getattr(req, "mask", None)), "version": "condiff"}
    encoded = [png_base64(img, {**p, "infotext": t}) for img, p, t in zip(images, params, infotexts)] if req.send_images else []
    parameters = req.model_dump()
    if not parameters.get("include_init_images"):
        for key in ("init_images", "mask"):
            if key in parameters:
                parameters[key] = None
    parameters["alwayson_scripts"] = {k: "(omitted)" for k in parameters.get("alwayson_scripts", {})}
    parameters["seed"] = seed
    return {"images": encoded, "parameters": parameters, "info": json.dumps(info)}


def _collect(results) -> tuple[list, list]:
    images, params = [], []
    for res in results:
        for i in range(res.images.shape[0]):
            images.append(res.images[i:i + 1])
            params.append(res.params_for(i))
    return images, params


# ------------------------------------------------------------------------------------------ txt2img


def _control_args(state: ServerState, units, req: M._Common) -> dict[str, Any]:
    """``control()`` keyword arguments of the enabled ControlNet units (modules and images decoded)."""
    from ..pipelines.control import load_builtin_controlnet
    from .controlnet_routes import unit_kind

    kinds, sources, scales, starts, ends, pre = [], [], [], [], [], set()
    for i, unit in units:
        field = f"alwayson_scripts.controlnet.args.{i}"
        kind, preprocess = unit_kind(unit, field)
        data = unit.input_image or (unit.image if isinstance(unit.image, str) else
                                    (unit.image or {}).get("image") if isinstance(unit.image, dict) else None)
        if not data:
            raise InputError(f"{field}.image: a ControlNet unit needs an input image (base64)")
        if unit.mask not in (None, "", {}):
            raise InputError(f"{field}.mask: ControlNet masks are not supported")
        if unit.control_mode not in (0, "0", "Balanced"):
            raise InputError(f"{field}.control_mode: only 'Balanced' is supported")
        kinds.append(kind)
        sources.append(decode_image(data, f"{field}.image", state.limits.max_image_pixels))
        scales.append(unit.weight)
        starts.append(unit.guidance_start)
        ends.append(unit.guidance_end)
        pre.add(preprocess)
    if len(pre) > 1:
        raise InputError("alwayson_scripts.controlnet.args: use a preprocessor on all units or on none")
    device, dtype = state.model.device, state.model.dtype
    nets = {k: state.aux(f"controlnet-{k}", lambda k=k: load_builtin_controlnet(k, device, dtype))
            for k in kinds} if state.model_name == "builtin" else None
    return dict(image_or_condition=sources, kinds=kinds, scales=scales, start=starts, end=ends,
                preprocess=pre.pop(), controlnets=nets)


@router.post("/txt2img", summary="Text to image (with ControlNet units in alwayson_scripts.controlnet)")
async def txt2img(req: M.Txt2ImgRequest, request: Request):
    state = state_of(request)
    sampler, schedule, seed = check_request(req, state)
    units = M.controlnet_units(req)
    control = _control_args(state, units, req) if units else None
    model = state.model

    def work(progress):
        from ..pipelines.control import control as run_control
        from ..pipelines.text2img import generate

        cb = sampler_callback(progress, state, req.steps * req.n_iter, model.decode)
        kw = dict(negative=req.negative_prompt, guidance=req.cfg_scale, steps=req.steps, sampler=sampler,
                  schedule=schedule, batch_size=req.batch_size, height=req.height, width=req.width,
                  show_progress=False, callback=cb)
        results = []
        for k in range(req.n_iter):
            s = seed + k * req.batch_size
            if control:
                results.append(run_control(model, prompt=req.prompt, seed=s, **control, **kw))
            else:
                results.append(generate(model, req.prompt, seed=s, **kw))
        return _collect(results)

    images, params = await run_job(request, "txt2img", work)
    extra = {"condiff_sampler": sampler, "schedule": schedule or "default"}
    if units:
        extra["controlnet"] = [p for p in params[0].get("control", [])]
    return image_response(req, state, images, params, seed, extra)


# ------------------------------------------------------------------------------------------ img2img


def _fit(image: torch.Tensor, req: M.Img2ImgRequest, field: str = "resize_mode") -> torch.Tensor:
    """Resize an input to width×height: 0 = stretch ("Just resize"), 1 = cover and centre-crop."""
    size = (req.width, req.height)
    if req.resize_mode == 0:
        if tuple(image.shape[-2:]) == (req.height, req.width):
            return image
        return F.interpolate(image, size=(req.height, req.width), mode="bilinear", antialias=True,
                             align_corners=False).clamp(0, 1)
    if req.resize_mode == 1:
        return fit_image(image, size=size)
    raise InputError(f"{field}: {req.resize_mode} is not supported; use 0 (just resize) or 1 (crop and resize)")


@router.post("/img2img", summary="SDEdit image to image; with `mask`, inpainting")
async def img2img(req: M.Img2ImgRequest, request: Request):
    state = state_of(request)
    sampler, schedule, seed = check_request(req, state)
    if M.controlnet_units(req):
        raise InputError("alwayson_scripts.controlnet: ControlNet units work with txt2img only in condiff")
    if len(req.init_images) != 1:
        raise InputError(f"init_images: give exactly one image (got {len(req.init_images)})")
    limit = state.limits.max_image_pixels
    image = _fit(decode_image(req.init_images[0], "init_images.0", limit), req)
    mask = None
    if req.mask:
        if req.denoising_strength < 1:
            raise InputError("denoising_strength: inpainting with a mask repaints the masked region from noise in "
                             "condiff; send denoising_strength 1.0 (or drop the mask for SDEdit)")
        mask = (_fit(decode_mask(req.mask, "mask", limit), req) > 0.5).float()
        if req.inpainting_mask_invert:
            mask = 1 - mask
        if req.inpaint_full_res and req.batch_size > 1:
            raise InputError("inpaint_full_res: inpainting only the masked area works with batch_size 1; use n_iter")
        if float(mask.max()) == 0:
            raise InputError("mask: the mask is empty (nothing to repaint); white marks the region to repaint")
    model = state.model

    def work(progress):
        from ..pipelines.inpaint import inpaint
        from ..pipelines.text2img import sdedit
        from ..editing import sdedit_steps

        batch = image.expand(req.batch_size, -1, -1, -1)
        per_iter = req.steps if mask is not None else max(1, sdedit_steps(req.steps, req.denoising_strength))
        cb = sampler_callback(progress, state, per_iter * req.n_iter, model.decode)
        kw = dict(negative=req.negative_prompt, guidance=req.cfg_scale, steps=req.steps, sampler=sampler,
                  schedule=schedule, show_progress=False, callback=cb)
        results = []
        for k in range(req.n_iter):
            s = seed + k * req.batch_size
            if mask is None:
                results.append(sdedit(model, batch, req.prompt, strength=req.denoising_strength, seed=s, **kw))
            else:
                results.append(inpaint(model, batch, mask, req.prompt, seed=s, feather=float(req.mask_blur),
                                       crop_to_mask=req.inpaint_full_res,
                                       crop_padding=req.inpaint_full_res_padding, **kw))
        return _collect(results)

    images, params = await run_job(request, "img2img", work)
    extra = {"condiff_sampler": sampler, "schedule": schedule or "default",
             "pipeline": "inpaint" if mask is not None else "sdedit"}
    return image_response(req, state, images, params, seed, extra)


# ------------------------------------------------------------------------------------------ extras


@router.post("/extra-single-image", summary="Upscale one image with the SR3 stage (upscaler 'SR3')")
async def extra_single_image(req: M.ExtraSingleImageRequest, request: Request):
    state = state_of(request)
    if req.gfpgan_visibility or req.codeformer_visibility:
        raise InputError("gfpgan_visibility: face restoration is not part of condiff; send 0")
    if req.upscaler_2 not in ("None", "", None) and req.extras_upscaler_2_visibility:
        raise InputError("upscaler_2: a second upscaler is not supported; send 'None'")
    image = decode_image(req.image, "image", state.limits.max_image_pixels)
    name = req.upscaler_1.strip()
    if name in ("None", ""):
        return {"html_info": "<p>no upscaler selected: the image is returned unchanged</p>",
                "image": png_base64(image, None)}
    if name.lower() not in ("sr3", "condiff sr3", "cascade-sr"):
        raise InputError(f"upscaler_1: unknown upscaler {name!r}; condiff has 'SR3' (×2) and 'None'")
    if req.resize_mode != 0 or req.upscaling_resize != 2:
        raise InputError("upscaling_resize: the SR3 stage upscales by exactly 2; send resize_mode 0 and upscaling_resize 2")
    image = fit_image(image, multiple=4)
    state.limits.check("output pixels", image.shape[-1] * image.shape[-2] * 4, "max_pixels", "image")

    def work(progress):
        from ..models.cascade import load_cascade
        from ..pipelines.cascade import upscale

        sr = state.aux("cascade-sr", lambda: load_cascade(device=state.model.device, stages=("sr",)))
        steps = sr.info.get("default_steps") or 20
        cb = sampler_callback(progress, state, int(steps))
        return upscale(sr, image, show_progress=False, callback=cb)

    res = await run_job(request, "extra-single-image", work)
    return {"html_info": f"<p>SR3 ×2: {image.shape[-1]}×{image.shape[-2]} → {res.images.shape[-1]}×{res.images.shape[-2]}</p>",
            "image": png_base64(res.images[:1], res.params_for(0))}


@router.post("/png-info", summary="The generation parameters stored in a PNG")
async def png_info_route(req: M.PngInfoRequest, request: Request):
    return png_info(req.image, "image", state_of(request).limits.max_image_pixels)


# ------------------------------------------------------------------------------------------ lists, options


@router.get("/samplers", summary="Samplers: A1111 names mapped to condiff's, then condiff's own")
async def samplers():
    from ..samplers.registry import list_samplers, sampler_info

    out = [{"name": name, "aliases": [target, *aliases], "options": {"condiff_sampler": target}}
           for name, (target, aliases) in M.SAMPLERS.items()]
    mapped = {t for t, _ in M.SAMPLERS.values()}
    out += [{"name": s, "aliases": [], "options": {"condiff_sampler": s, "description": sampler_info(s).description}}
            for s in list_samplers() if s not in mapped]
    return out


@router.get("/schedulers", summary="σ schedules (A1111 scheduler names)")
async def schedulers():
    labels = {"automatic": "Automatic (the sampler's default)", "karras": "Karras", "exponential": "Exponential",
              "uniform": "Uniform (the model's discrete table)"}
    return [{"name": k, "label": v, "aliases": None, "default_rho": None, "need_inner_model": False}
            for k, v in labels.items()]


@router.get("/upscalers", summary="Upscalers for extra-single-image")
async def upscalers():
    return [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 1},
            {"name": "SR3", "model_name": "cascade-sr", "model_path": None, "model_url": None, "scale": 2}]


@router.get("/scripts", summary="Scripts (condiff has none besides the alwayson ControlNet)")
async def scripts():
    return {"txt2img": [], "img2img": []}


@router.get("/sd-models", summary="The one model this server has loaded")
async def sd_models(request: Request):
    name = state_of(request).model_name
    short = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]  # never a server path
    return [{"title": name if name == short else short, "model_name": short, "hash": None, "sha256": None,
             "filename": short, "config": None}]


@router.get("/options", summary="Server options (A1111 keys condiff understands)")
async def get_options(request: Request):
    return state_of(request).options


@router.post("/options", summary="Set options (unknown keys are ignored; the model cannot be switched)")
async def set_options(body: dict[str, Any], request: Request):
    state = state_of(request)
    wanted = body.get("sd_model_checkpoint")
    titles = {state.model_name, (await sd_models(request))[0]["title"]}
    if wanted not in (None, "") and wanted not in titles:
        raise InputError(f"sd_model_checkpoint: this server serves one model ({state.model_name!r}); "
                         "restart condiff serve with --model for another")
    for key in ("live_previews_enable", "show_progress_every_n_steps"):
        if key in body:
            want = bool if key == "live_previews_enable" else int
            if not isinstance(body[key], (bool, int)) or (want is int and int(body[key]) < 1):
                raise InputError(f"{key}: expected {'a boolean' if want is bool else 'an integer >= 1'}")
            state.options[key] = want(body[key])
    return None


# ------------------------------------------------------------------------------------------ progress


@router.get("/progress", summary="Progress of the running job (fraction, ETA, optional live preview)")
async def progress(request: Request, skip_current_image: bool = Query(False)):
    state = state_of(request)
    job = state.queue.current()
    queued = state.queue.pending()
    body = {"progress": 0.0, "eta_relative": 0.0, "state": {
        "skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": queued,
        "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0},
        "current_image": None, "textinfo": None, "current_task": None}
    if job is None:
        return body
    body["progress"] = round(job.fraction, 4)
    body["eta_relative"] = round(job.eta or 0.0, 2)
    body["state"].update(skipped=job.cancel_reason == "skipped", interrupted=job.cancel_reason == "interrupted",
                         job=job.kind, job_count=queued + 1, job_timestamp=time.strftime("%Y%m%d%H%M%S",
                         time.localtime(job.started or job.created)), sampling_step=job.step, sampling_steps=job.total)
    body["current_task"] = job.id
    if not skip_current_image and state.options.get("live_previews_enable", True):
        preview = await run_in_threadpool(job.preview_image)  # decoding x̂0 must not block the event loop
        if preview is not None:
            body["current_image"] = png_base64(preview.float().cpu(), None)
    return body


@router.post("/interrupt", summary="Stop the running job (its request answers 409 Interrupted)")
async def interrupt(request: Request):
    state_of(request).queue.interrupt()
    return {}


@router.post("/skip", summary="Stop the running job (condiff jobs are one unit: same as interrupt)")
async def skip(request: Request):
    state_of(request).queue.skip()
    return {}
