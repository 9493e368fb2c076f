"""condiff's own routes (``/condiff/v1/...``): what A1111's API has no words for.

* ``POST /condiff/v1/variations``: unCLIP image variations (:func:`condiff.pipelines.unclip.variations`);
* ``POST /condiff/v1/personalize``: a LoRA / textual-inversion / DreamBooth training job on uploaded
  images, answered at once with ``202 {"job": ID}``; ``GET /condiff/v1/jobs/{id}/result`` names the
  trained file, ``GET /condiff/v1/jobs/{id}/files/{name}`` downloads it;
* ``POST /condiff/v1/experiments``: the thesis's experiments (``condiff experiment run``), ``202``;
  the report files are served by ``GET /condiff/v1/jobs/{id}/files/{name}``;
* ``GET /condiff/v1/jobs`` (all jobs, newest last), ``GET /condiff/v1/jobs/{id}`` (status, progress,
  ETA, queue position), ``POST /condiff/v1/jobs/{id}/cancel`` (also ``DELETE /condiff/v1/jobs/{id}``),
  ``GET /condiff/v1/jobs/{id}/result``, ``GET /condiff/v1/queue`` (counters), ``GET /condiff/v1/limits``.

Long jobs run in the same queue as image requests (see :mod:`condiff.server.subjobs`).
"""

from __future__ import annotations

import json
import re
from typing import Literal, Optional

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..images import fit_image
from .http_errors import CondiffRoute, error_response, exception_response
from .encode import decode_bytes, decode_image, png_base64
from .runner import run_job, sampler_callback, state_of, submit
from .subjobs import run_cli

__all__ = ["router"]

router = APIRouter(prefix="/condiff/v1", tags=["condiff"], route_class=CondiffRoute)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_WORD = re.compile(r"^[^\s/\\]{1,40}$")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class VariationsRequest(_Body):
    image: str
    n: int = Field(4, ge=1)
    seed: int = Field(0, ge=0)
    prompt: str = ""
    guidance: Optional[float] = Field(None, ge=0, le=100)
    steps: Optional[int] = Field(None, ge=1)
    sampler: str = "dpmpp_2m"


class PersonalizeRequest(_Body):
    method: Literal["lora", "textual-inversion", "dreambooth"] = "lora"
    images: list[str] = Field(min_length=1)
    class_noun: str = Field(min_length=1, max_length=40)
    token: Optional[str] = None
    steps: int = Field(400, ge=1)
    seed: int = Field(0, ge=0)
    lr: Optional[float] = Field(None, gt=0, le=1)


class ExperimentRequest(_Body):
    names: list[Literal["sketch", "inpainting", "personalization"]] = Field(min_length=1, max_length=3)
    quick: bool = True
    seed: Optional[int] = Field(None, ge=0)


# ------------------------------------------------------------------------------------------ variations


@router.post("/variations", summary="unCLIP image variations (same meaning, new details)")
async def variations(req: VariationsRequest, request: Request):
    state = state_of(request)
    state.limits.check("variations", req.n, "max_batch", "n")
    if req.steps is not None:
        state.limits.check("steps", req.steps, "max_steps", "steps")
    state.limits.check("characters", len(req.prompt), "max_prompt_chars", "prompt")
    img = decode_image(req.image, "image", state.limits.max_image_pixels)
    side = min(img.shape[-2:])
    img = fit_image(img, size=(side, side), multiple=1)

    def work(progress):
        from ..models.unclip import load_unclip
        from ..pipelines.unclip import variations as run

        model = state.aux("unclip", lambda: load_unclip(device=state.model.device))
        steps = req.steps or model.info.get("default_steps") or 20
        cb = sampler_callback(progress, state, int(steps) * (2 if model.upsampler is not None else 1))
        return run(model, img, n=req.n, seed=req.seed, prompt=req.prompt, guidance=req.guidance, steps=req.steps,
                   sampler=req.sampler, show_progress=False, callback=cb)

    res = await run_job(request, "variations", work)
    images = [png_base64(res.images[i:i + 1], res.params_for(i)) for i in range(res.images.shape[0])]
    return {"images": images, "info": json.dumps(res.params)}


# ------------------------------------------------------------------------------------------ long jobs


def _accepted(job) -> JSONResponse:
    return JSONResponse({"job": job.id, "status": job.status()}, status_code=202,
                        headers={"Location": f"/condiff/v1/jobs/{job.id}"})


@router.post("/personalize", status_code=202, summary="Train a LoRA / textual inversion / DreamBooth (a queued job)")
async def personalize(req: PersonalizeRequest, request: Request):
    state = state_of(request)
    state.limits.check("training steps", req.steps, "max_train_steps", "steps")
    state.limits.check("images", len(req.images), "max_train_images", "images")
    token = req.token or ("<sks>" if req.method == "textual-inversion" else "sks")
    for field, word in (("token", token), ("class_noun", req.class_noun)):
        if not _WORD.match(word) or word.startswith("-"):
            raise InputError(f"{field}: {word!r} must be one word without spaces or slashes")
    pictures = []
    for i, data in enumerate(req.images):
        decode_image(data, f"images.{i}", state.limits.max_image_pixels)  # validates before anything is written
        pictures.append(decode_bytes(data, f"images.{i}"))
    suffix = ".safetensors"

    def work(progress):
        folder = state.job_dir(progress.job.id)
        images = folder / "images"
        images.mkdir(exist_ok=True)
        for i, raw in enumerate(pictures):
            (images / f"{i:03d}.png").write_bytes(raw)
        (folder / "out").mkdir(exist_ok=True)
        out = folder / "out" / f"{req.method}{suffix}"
        args = ["personalize", req.method, "--images", str(images), "--class-noun", req.class_noun, "--token", token,
                "--steps", str(req.steps), "--seed", str(req.seed), "--out", str(out), "--model", state.model_name,
                "--device", str(state.device), "--json"]
        if req.lr is not None:
            args += ["--lr", str(req.lr)]
        stdout = run_cli(args, progress, folder)
        report = _last_json(stdout)
        report.pop("out", None)
        return {"file": out.name, "bytes": out.stat().st_size, "files": [out.name], "report": report}

    return _accepted(submit(state, f"personalize-{req.method}", work))


@router.post("/experiments", status_code=202, summary="Run the thesis's experiments (a queued job)")
async def experiments(req: ExperimentRequest, request: Request):
    state = state_of(request)
    budget = max(1.0, state.limits.max_job_seconds - 30)

    def work(progress):
        folder = state.job_dir(progress.job.id)
        args = ["experiment", "run", *dict.fromkeys(req.names), "--out", str(folder / "out"), "--model",
                state.model_name, "--device", str(state.device), "--no-progress"]
        if req.quick:
            args.append("--quick")
        if req.seed is not None:
            args += ["--seed", str(req.seed)]
        run_cli(args, progress, folder, expected_s=budget)
        results = folder / "out" / "results.json"
        files = sorted(p.name for p in (folder / "out").iterdir() if p.is_file())
        return {"results": json.loads(results.read_text()) if results.exists() else None, "files": files}

    return _accepted(submit(state, "experiments", work))


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return {}


# ------------------------------------------------------------------------------------------ job routes


def _job(request: Request, job_id: str):
    job = state_of(request).queue.get(job_id)
    if job is None:
        raise HTTPException(404, f"job_id: no job {job_id!r} (finished jobs are kept for a while only)")
    return job


@router.get("/jobs", summary="All jobs known to the server (newest last)")
async def list_jobs(request: Request):
    return [j.status() for j in state_of(request).queue.jobs()]


@router.get("/jobs/{job_id}", summary="Status, progress, ETA and queue position of a job")
async def job_status(job_id: str, request: Request):
    job = _job(request, job_id)
    return {**job.status(), "position": state_of(request).queue.position(job)}


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
@router.delete("/jobs/{job_id}", summary="Cancel a queued or running job")
async def cancel_job(job_id: str, request: Request):
    job = _job(request, job_id)
    cancelled = state_of(request).queue.cancel(job.id)
    return {"cancelled": cancelled, "status": job.status()}


@router.get("/jobs/{job_id}/result", summary="The result of a finished long job (JSON)")
async def job_result(job_id: str, request: Request):
    job = _job(request, job_id)
    if not job.is_final():
        return error_response(409, "NotFinished", f"job_id: job {job.id} is {job.state}; poll /condiff/v1/jobs/{job.id}")
    if job.error is not None:
        return exception_response(job.error)
    if not isinstance(job.result, dict):
        return error_response(409, "NoResult", f"job_id: job {job.id} ({job.kind}) answered its own request")
    return job.result


@router.get("/jobs/{job_id}/files/{name}", summary="A file written by a finished long job (trained weights, report)")
async def job_file(job_id: str, name: str, request: Request):
    job = _job(request, job_id)
    state = state_of(request)
    if not _NAME.match(name) or state.work_dir is None or not isinstance(job.result, dict) \
            or name not in job.result.get("files", []):
        raise InputError(f"name: job {job.id} has no file {name!r}")
    return FileResponse(state.work_dir / job.id / "out" / name)


@router.get("/queue", summary="Queue counters since start (submitted, rejected, done, failed, cancelled, pending)")
async def queue_stats(request: Request):
    return state_of(request).queue.stats()


@router.get("/limits", summary="The server's request limits (flags of condiff serve)")
async def limits(request: Request):
    return state_of(request).limits.as_dict()
