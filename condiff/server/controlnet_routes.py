"""The ControlNet extension's routes (``/controlnet/...``) and how a unit names a condiff ControlNet.

condiff has one ControlNet per condition type (``controlnet-canny``, ``-depth``, …) and a preprocessor
of the same name (:mod:`condiff.preprocess`). A unit's ``model`` names the type (any name that contains
exactly one type, e.g. ``controlnet-canny`` or A1111's ``control_v11p_sd15_canny [d14c016b]``); its
``module`` is that type's preprocessor, or ``none`` when ``image`` already is the condition. A
preprocessor of another type than the model is refused: condiff's pipeline preprocesses with the
model's own type.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from ..errors import InputError
from . import a1111_models as M
from .http_errors import CondiffRoute
from .encode import decode_image, png_base64
from .runner import run_job, state_of

__all__ = ["router", "unit_kind", "available_models", "control_types"]

router = APIRouter(prefix="/controlnet", tags=["ControlNet extension API"], route_class=CondiffRoute)


def control_types() -> list[str]:
    from ..preprocess import list_preprocessors

    return list_preprocessors()


def available_models(model_name: str) -> list[str]:
    """The built-in ControlNets installed (they drive the built-in model only)."""
    from ..models.registry import builtin_components

    if model_name != "builtin":
        return []
    return sorted(k for k, ok in builtin_components().items() if ok and k.startswith("controlnet-"))


def _kind_of(name: str, field: str) -> str:
    base = name.split(" [", 1)[0].lower()
    hits = [k for k in control_types() if k in base]
    if len(hits) != 1:
        raise InputError(f"{field}: ControlNet model {name!r} names {'no' if not hits else 'more than one'} condiff "
                         f"control type; use one of {', '.join('controlnet-' + k for k in control_types())} "
                         "(GET /controlnet/model_list)")
    return hits[0]


def unit_kind(unit: M.ControlNetUnit, field: str) -> tuple[str, bool]:
    """(control type, run the preprocessor?) of a unit."""
    if unit.model in (None, "", "None"):
        raise InputError(f"{field}.model: choose a ControlNet model (GET /controlnet/model_list)")
    kind = _kind_of(unit.model, f"{field}.model")
    module = (unit.module or "none").lower()
    if module in ("none", ""):
        return kind, False
    if module not in control_types():
        raise InputError(f"{field}.module: unknown preprocessor {unit.module!r}; choose none or one of "
                         f"{', '.join(control_types())} (GET /controlnet/module_list)")
    if module != kind:
        raise InputError(f"{field}.module: preprocessor {module!r} does not match the {kind!r} model; condiff "
                         f"preprocesses with the model's own type ({kind!r}), or send module 'none'")
    return kind, True


@router.get("/version", summary="ControlNet extension API version")
async def version():
    return {"version": 2}


@router.get("/model_list", summary="ControlNet models")
async def model_list(request: Request, update: bool = Query(True)):
    return {"model_list": available_models(state_of(request).model_name)}


@router.get("/module_list", summary="Preprocessors (modules)")
async def module_list(alias_names: bool = Query(False)):
    mods = ["none", *control_types()]
    return {"module_list": mods, "module_detail": {m: {"model_free": False, "sliders": []} for m in mods}}


@router.post("/detect", summary="Run a preprocessor on images")
async def detect(req: M.DetectRequest, request: Request):
    state = state_of(request)
    module = (req.controlnet_module or "none").lower()
    if module not in control_types():
        raise InputError(f"controlnet_module: unknown preprocessor {req.controlnet_module!r}; choose one of "
                         f"{', '.join(control_types())}")
    data = req.controlnet_input_images or req.controlnet_images
    if not data:
        raise InputError("controlnet_input_images: give at least one base64 image")
    if len(data) > state.limits.max_batch:
        raise InputError(f"controlnet_input_images: at most {state.limits.max_batch} images (flag --max-batch)")
    images = [decode_image(d, f"controlnet_input_images.{i}", state.limits.max_image_pixels) for i, d in enumerate(data)]

    def work(progress):
        from ..pipelines.control import prepare_condition

        out = []
        for i, img in enumerate(images):
            progress.update(i, len(images))
            out.append(prepare_condition(img, module, preprocess=True))
        progress.update(len(images), len(images))
        return out

    maps = await run_job(request, "controlnet-detect", work)
    return {"images": [png_base64(m[:1], {"preprocessor": module}) for m in maps], "info": "Success"}
