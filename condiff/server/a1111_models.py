"""Request models of the AUTOMATIC1111-compatible routes, and the checks of what condiff can honour.

Field names and defaults follow A1111's ``StableDiffusionTxt2ImgProcessingAPI`` /
``StableDiffusionImg2ImgProcessingAPI`` (modules/api/models.py) and the ControlNet extension's unit
(``alwayson_scripts.controlnet.args[i]``). Unknown fields are ignored, as A1111 does. Fields that
condiff cannot honour are accepted only at their neutral value (what A1111 itself does when they are
off); any other value is refused by :func:`check_unsupported` with a 422 naming the field.

The A1111 sampler names map to condiff's samplers in :data:`SAMPLERS` (condiff's own names are
accepted too); a `` Karras``/`` Exponential`` suffix or the ``scheduler`` field picks the σ schedule.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError

__all__ = [
    "Txt2ImgRequest", "Img2ImgRequest", "ControlNetUnit", "ExtraSingleImageRequest", "PngInfoRequest",
    "DetectRequest", "SAMPLERS", "resolve_sampler", "check_unsupported", "controlnet_units",
]

#: A1111 sampler name → (condiff sampler, A1111 aliases). Unlisted A1111 samplers (LMS, PLMS, UniPC,
#: DPM2, DPM++ SDE, …) have no counterpart in condiff and are refused with the list of choices.
SAMPLERS: dict[str, tuple[str, list[str]]] = {
    "Euler a": ("euler_ancestral", ["k_euler_a", "k_euler_ancestral"]),
    "Euler": ("euler", ["k_euler"]),
    "Heun": ("heun", ["k_heun"]),
    "DPM++ 2M": ("dpmpp_2m", ["k_dpmpp_2m"]),
    "DDIM": ("ddim", []),
    "DDPM": ("ddpm", []),
}
_SCHEDULES = {"automatic": None, "karras": "karras", "exponential": "exponential", "uniform": "model"}


def resolve_sampler(name: Optional[str], scheduler: Optional[str], field: str = "sampler_name") -> tuple[str, str | None]:
    """(condiff sampler, σ schedule or None for the sampler's default) of an A1111 sampler/scheduler pair."""
    from ..samplers.registry import list_samplers

    raw = (name or "Euler").strip()
    schedule = None
    for suffix, sched in ((" Karras", "karras"), (" Exponential", "exponential")):
        if raw.endswith(suffix):
            raw, schedule = raw[: -len(suffix)], sched
    lookup = {k.lower(): v[0] for k, v in SAMPLERS.items()}
    lookup.update({alias.lower(): v[0] for v in SAMPLERS.values() for alias in v[1]})
    lookup.update({s: s for s in list_samplers()})
    sampler = lookup.get(raw.lower())
    if sampler is None:
        raise InputError(f"{field}: unknown sampler {name!r}; choose one of "
                         f"{', '.join(list(SAMPLERS) + list_samplers())} (GET /sdapi/v1/samplers)")
    if scheduler not in (None, "", "Automatic") and schedule is None:
        key = scheduler.lower()
        if key not in _SCHEDULES:
            raise InputError(f"scheduler: unknown scheduler {scheduler!r}; choose one of {', '.join(_SCHEDULES)}")
        schedule = _SCHEDULES[key]
    return sampler, schedule


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Common(_Request):
    prompt: str = ""
    negative_prompt: str = ""
    styles: Optional[list[str]] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: Optional[str] = None
    sampler_index: Optional[str] = None
    scheduler: Optional[str] = None
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int = Field(20, ge=1)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    width: int = Field(512, ge=8)
    height: int = Field(512, ge=8)
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    eta: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: Optional[dict[str, Any]] = None
    refiner_checkpoint: Optional[str] = None
    script_name: Optional[str] = None
    script_args: Optional[list[Any]] = None
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)


class Txt2ImgRequest(_Common):
    enable_hr: bool = False
    denoising_strength: Optional[float] = None


class Img2ImgRequest(_Common):
    init_images: list[str] = Field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    image_cfg_scale: Optional[float] = None
    mask: Optional[str] = None
    mask_blur: int = Field(4, ge=0, le=64)
    mask_blur_x: Optional[int] = None
    mask_blur_y: Optional[int] = None
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(32, ge=0, le=256)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: Optional[float] = None
    include_init_images: bool = False


class ControlNetUnit(_Request):
    """One unit of the ControlNet extension (``input_image`` and ``image`` are both accepted)."""

    enabled: bool = True
    input_image: Optional[str] = None
    image: Optional[Any] = None
    mask: Optional[Any] = None
    module: str = "none"
    model: str = "None"
    weight: float = Field(1.0, ge=0.0, le=2.0)
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    control_mode: Any = 0


class ExtraSingleImageRequest(_Request):
    image: str
    resize_mode: int = 0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0


class PngInfoRequest(_Request):
    image: str


class DetectRequest(_Request):
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] = Field(default_factory=list)  # the name webuiapi sends


# ---------------------------------------------------------------------------------------- checks

#: field → (neutral values, why condiff cannot honour another value)
_UNSUPPORTED: dict[str, tuple[tuple, str]] = {
    "enable_hr": ((False, None), "the hires fix is not supported; upscale the result with /sdapi/v1/extra-single-image"),
    "restore_faces": ((False, None), "face restoration (GFPGAN/CodeFormer) is not part of condiff"),
    "tiling": ((False, None), "tiling (seamless textures) is not supported"),
    "subseed_strength": ((0, 0.0, None), "variation seeds are not supported; use /condiff/v1/variations"),
    "seed_resize_from_h": ((-1, 0, None), "seed resizing is not supported"),
    "seed_resize_from_w": ((-1, 0, None), "seed resizing is not supported"),
    "styles": ((None, []), "prompt styles are not stored on a condiff server; put the text in the prompt"),
    "refiner_checkpoint": ((None, "", "None"), "refiner models are not supported"),
    "script_name": ((None, "", "None"), "scripts are not supported (only alwayson ControlNet)"),
    "save_images": ((False,), "condiff serve writes no files on the server; save the returned images"),
    "eta": ((None, 0, 0.0, 1, 1.0), "eta is fixed by the sampler (0 deterministic, 1 ancestral)"),
    "s_churn": ((None, 0, 0.0), "sampler churn (s_churn) is not supported"),
    "s_tmin": ((None, 0, 0.0), "s_tmin is not supported"),
    "s_tmax": ((None, 0, 0.0, float("inf")), "s_tmax is not supported"),
    "s_noise": ((None, 1, 1.0), "s_noise is not supported"),
    "initial_noise_multiplier": ((None, 1, 1.0), "initial_noise_multiplier is not supported"),
}


def check_unsupported(req: _Common, model_title: str) -> None:
    """422 (InputError naming the field) for every field set to a value condiff cannot honour."""
    for field, (neutral, why) in _UNSUPPORTED.items():
        if field in type(req).model_fields and getattr(req, field) not in neutral:
            raise InputError(f"{field}: {why}")
    wanted = (req.override_settings or {}).get("sd_model_checkpoint")
    if wanted not in (None, "", model_title):
        raise InputError(f"override_settings.sd_model_checkpoint: this server serves one model ({model_title!r}); "
                         "start condiff serve --model ... for another")
    for name, script in (req.alwayson_scripts or {}).items():
        if name.lower() == "controlnet":
            continue
        args = script.get("args", []) if isinstance(script, dict) else script
        if args and args != [False] and any(a not in (False, None, {}, []) for a in args):
            raise InputError(f"alwayson_scripts.{name}: this script is not available; condiff runs only 'controlnet'")


def controlnet_units(req: _Common) -> list[tuple[int, ControlNetUnit]]:
    """The enabled ControlNet units of a request, with their index in ``args``."""
    for name, script in (req.alwayson_scripts or {}).items():
        if name.lower() != "controlnet":
            continue
        args = script.get("args", []) if isinstance(script, dict) else script
        if not isinstance(args, list):
            raise InputError("alwayson_scripts.controlnet.args: expected a list of ControlNet units")
        units = []
        for i, arg in enumerate(args):
            if not isinstance(arg, dict):
                raise InputError(f"alwayson_scripts.controlnet.args.{i}: expected a ControlNet unit object")
            try:
                unit = ControlNetUnit.model_validate(arg)
            except ValidationError as err:
                first = err.errors()[0]
                loc = ".".join(str(x) for x in first["loc"])
                raise InputError(f"alwayson_scripts.controlnet.args.{i}.{loc}: {first['msg']}") from None
            if unit.enabled:
                units.append((i, unit))
        return units
    return []
