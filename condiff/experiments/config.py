"""Declarative experiment configs: one TOML file per thesis experiment, loaded into dataclasses.

The files live in ``recipes/experiments/`` (``sketch.toml``, ``inpainting.toml``,
``personalization.toml``) and carry the thesis's parameters (chapter 4); the dataclass defaults
below are the same values, so a condiff installed without the recipes folder runs the same
experiments (a test keeps the two in step). Layout of a file::

    experiment = "sketch"          # which experiment the file configures
    [run]                          # seeds, images per cell, sampler, steps
    seed = 0
    ...
    [sdedit]                       # experiment-specific sections
    strengths = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ...
    [quick.run]                    # overrides for --quick and `condiff demo`
    steps = 12

Loading is strict: an unknown section or key, a value of the wrong type or out of range is a
ValueError naming the file, the key and what is expected.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the 'tomli' package
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "RECIPES_DIR", "EXPERIMENT_NAMES", "EXPERIMENT_TITLES", "RunSettings", "SketchConfig", "InpaintingConfig",
    "PersonalizationConfig",
    "config_class", "config_from_dict", "load_config", "recipe_path", "to_dict",
]

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes" / "experiments"
EXPERIMENT_NAMES = ("sketch", "inpainting", "personalization")
EXPERIMENT_TITLES = {"sketch": "Experiment 1: sketch → image (thesis §4.2)",
                     "inpainting": "Experiment 2: inpainting across architectures (thesis §4.3)",
                     "personalization": "Experiment 3: personalization (thesis §4.4)"}
CONTROL_TYPES = ("canny", "depth", "normal", "pose", "lineart", "softedge")
ARCHITECTURES = ("ldm-inpaint", "ldm-blend", "cascade", "unclip")
METHODS = ("dreambooth", "lora", "textual_inversion")


# --------------------------------------------------------------------------- sections


def _check_known(names: list[str], known: tuple[str, ...], problem: str) -> None:
    """A ValueError "``problem`` [the unknown names]; choose from …" when ``names`` has any not in ``known``."""
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"{problem} {bad}; choose from {', '.join(known)}")


@dataclass
class RunSettings:
    """Shared sampling settings. Image i of a cell uses seed + i."""

    seed: int = 0
    images_per_cell: int = 4
    sampler: str = "dpmpp_2m"
    steps: int = 25

    def validate(self, where: str) -> None:
        from ..samplers.registry import list_samplers

        if self.images_per_cell < 1:
            raise ValueError(f"{where}[run].images_per_cell must be ≥ 1 (≥ 2 for confidence intervals), "
                             f"got {self.images_per_cell}")
        if self.steps < 1:
            raise ValueError(f"{where}[run].steps must be ≥ 1, got {self.steps}")
        if self.seed < 0:
            raise ValueError(f"{where}[run].seed must be ≥ 0, got {self.seed}")
        if self.sampler not in list_samplers():
            raise ValueError(f"{where}[run].sampler {self.sampler!r} is unknown; choose one of {', '.join(list_samplers())}")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.images_per_cell)]


@dataclass
class SDEditSection:
    """Fig. 4.2: SDEdit strength t0 swept at CFG scale γ."""

    strengths: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    guidance: float = 5.0


@dataclass
class CFGSection:
    """Fig. 4.3: classifier-free guidance γ swept at SDEdit strength t0."""

    guidances: list[float] = field(default_factory=lambda: [1.0, 2.5, 5.0, 10.0, 20.0, 40.0])
    strength: float = 0.6


@dataclass
class ControlSection:
    """Figs. 4.4/4.5: one ControlNet per condition type, its condition preprocessed from the sketch."""

    types: list[str] = field(default_factory=lambda: list(CONTROL_TYPES))
    scale: float = 1.0
    guidance: float = 5.0


@dataclass
class SketchConfig:
    """Experiment 1 (thesis §4.2). An empty prompt means the prompt shipped with the inputs."""

    experiment: str = "sketch"
    prompt: str = ""
    negative: str = ""
    run: RunSettings = field(default_factory=RunSettings)
    sdedit: SDEditSection = field(default_factory=SDEditSection)
    cfg: CFGSection = field(default_factory=CFGSection)
    controlnet: ControlSection = field(default_factory=ControlSection)

    def validate(self, where: str = "") -> None:
        self.run.validate(where)
        bad = [t for t in self.sdedit.strengths + [self.cfg.strength] if not 0.0 <= t <= 1.0]
        if bad:
            raise ValueError(f"{where}SDEdit strengths t0 must lie in [0, 1], got {bad}")
        bad = [g for g in self.cfg.guidances + [self.sdedit.guidance, self.controlnet.guidance] if g < 0]
        if bad:
            raise ValueError(f"{where}guidance scales γ must be ≥ 0, got {bad}")
        _check_known(self.controlnet.types, CONTROL_TYPES, f"{where}[controlnet].types has unknown types")
        if not self.sdedit.strengths or not self.cfg.guidances:
            raise ValueError(f"{where}[sdedit].strengths and [cfg].guidances need at least one value")


@dataclass
class InpaintingConfig:
    """Experiment 2 (thesis §4.3): the three tasks × the architectures present."""

    experiment: str = "inpainting"
    guidance: float = 5.0
    architectures: list[str] = field(default_factory=lambda: list(ARCHITECTURES))
    run: RunSettings = field(default_factory=RunSettings)

    def validate(self, where: str = "") -> None:
        self.run.validate(where)
        _check_known(self.architectures, ARCHITECTURES, f"{where}architectures has unknown names")
        if self.guidance < 0:
            raise ValueError(f"{where}guidance must be ≥ 0, got {self.guidance}")


@dataclass
class DreamBoothSection:
    """§4.4.2: batch 1, prior preservation (λ = 1); 200 steps at lr 1e-4 (the thesis: 400 at 5e-6 for SD's 860 M
    parameters, which moves nothing visible in the 16 M built-in U-Net; 200 × 1e-4 = 400 × 5e-5, at half the
    CPU time of a step with its prior term), 8 class images (diffusers: 100)."""

    steps: int = 200
    lr: float = 1e-4
    prior_weight: float = 1.0
    num_class_images: int = 8
    class_steps: int = 25


@dataclass
class LoRASection:
    """§4.4.3: cosine schedule, 400 steps, batch 1; lr 3e-4 (thesis 1e-4; ×10 broke the pictures). Adapters of
    rank 8 on self- and cross-attention: rank 4 on cross-attention alone (the thesis's) does not carry the
    built-in model's subject (docs/personalization_results.md)."""

    steps: int = 400
    lr: float = 3e-4
    rank: int = 8
    lr_schedule: str = "cosine"
    targets: str = "attention"  # a condiff.personalize.TARGET_PRESETS name


@dataclass
class TextualInversionSection:
    """§4.4.4: 400 steps, batch 1, placeholder "<sks>", lr 5e-3 (thesis 5e-4, ×10 as above); an empty
    initializer means the class noun."""

    steps: int = 400
    lr: float = 5e-3
    token: str = "<sks>"
    initializer: str = ""


@dataclass
class PersonalizationConfig:
    """Experiment 3 (thesis §4.4): three fine-tuning methods × the three prompts."""

    experiment: str = "personalization"
    guidance: float = 5.0
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    identifier: str = "nrhp"  # one rare WordPiece of MiniLM's vocabulary, absent from the world's captions
    #: recontextualisation, another style, an added accessory (thesis §4.4: portrait, painting, space suit)
    prompts: list[str] = field(default_factory=lambda: ["a {identifier} {class_noun} on a carousel",
                                                        "a {identifier} {class_noun} in openmoji style",
                                                        "a {identifier} {class_noun} wearing a crown"])
    # (one field per TOML section, like SketchConfig's: a declaration, not shared logic)
    run: RunSettings = field(default_factory=RunSettings)
    dreambooth: DreamBoothSection = field(default_factory=DreamBoothSection)
    lora: LoRASection = field(default_factory=LoRASection)
    textual_inversion: TextualInversionSection = field(default_factory=TextualInversionSection)

    def validate(self, where: str = "") -> None:
        self.run.validate(where)
        _check_known(self.methods, METHODS, f"{where}methods has unknown names")
        for name in METHODS:
            sec = getattr(self, name)
            if sec.steps < 0 or not sec.lr > 0:
                raise ValueError(f"{where}[{name}] needs steps ≥ 0 and lr > 0, got steps={sec.steps}, lr={sec.lr}")
        if self.dreambooth.num_class_images < 1 or self.dreambooth.prior_weight < 0:
            raise ValueError(f"{where}[dreambooth] needs num_class_images ≥ 1 and prior_weight ≥ 0")
        if self.lora.rank < 1 or self.lora.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"{where}[lora] needs rank ≥ 1 and lr_schedule 'constant' or 'cosine'")
        if not self.identifier.strip() or any(c.isspace() for c in self.identifier) or len(self.prompts) < 1 \
                or any("{identifier}" not in p for p in self.prompts):
            raise ValueError(f"{where}identifier must be one word and every prompt must contain {{identifier}}")
        if not self.textual_inversion.token.strip():
            raise ValueError(f"{where}[textual_inversion].token must not be empty")


_CLASSES = {"sketch": SketchConfig, "inpainting": InpaintingConfig, "personalization": PersonalizationConfig}


def config_class(name: str) -> type:
    if name not in _CLASSES:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENT_NAMES)}")
    return _CLASSES[name]


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a table ([section]), got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{where} must be {_type_name(tp)}, got {value!r}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise ValueError(f"{where} must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """``where``: "" at the top level, "[section]" inside a table."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where or 'the top level'}; valid keys: {', '.join(names)}")

    def path(k: str) -> str:
        if dataclasses.is_dataclass(hints[k]):
            return f"[{where.strip('[]')}.{k}]" if where else f"[{k}]"
        return f"{where}.{k}" if where else k

    return cls(**{k: _convert(v, hints[k], path(k)) for k, v in data.items()})


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def config_from_dict(data: Mapping[str, Any], *, experiment: str | None = None, quick: bool = False,
                     source: str = "config") -> Any:
    """Build (and validate) a config from a parsed TOML document; ``quick`` applies its ``[quick]`` table.

    Errors are ValueErrors that start with ``source`` (the file) and name the section and key.
    """
    data = dict(data)
    name = data.get("experiment", experiment)
    if name is None:
        raise ValueError(f"{source}: say which experiment it configures, e.g. experiment = \"sketch\" "
                         f"(one of {', '.join(EXPERIMENT_NAMES)})")
    if experiment is not None and name != experiment:
        raise ValueError(f"{source} configures experiment {name!r}, not {experiment!r}")
    try:
        cls = config_class(name)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    quick_table = data.pop("quick", {})
    if not isinstance(quick_table, Mapping):
        raise ValueError(f"{source}: [quick] must be a table of overrides")
    try:
        cfg = _build(cls, data, "")
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    try:
        quick_cfg = _build(cls, _merge(data, quick_table), "")  # typos in [quick] are errors even without --quick
    except ValueError as err:
        raise ValueError(f"{source}, [quick] overrides: {err}") from None
    if quick:
        cfg = quick_cfg
    cfg.validate(f"{source}: ")
    return cfg


def recipe_path(name: str) -> Path:
    """``recipes/experiments/<name>.toml`` of the source tree."""
    config_class(name)
    return RECIPES_DIR / f"{name}.toml"


def load_config(source: str | Path, *, experiment: str | None = None, quick: bool = False) -> Any:
    """A config from an experiment name (its recipe, or the built-in defaults when the recipes folder
    is not installed) or from a TOML file path."""
    if isinstance(source, str) and source in _CLASSES:
        path = recipe_path(source)
        if not path.exists():
            data: dict[str, Any] = {"experiment": source}
            if quick:
                data["quick"] = _QUICK_DEFAULTS[source]
            return config_from_dict(data, quick=quick, source=f"built-in {source} defaults")
        experiment = experiment or source
        source = path
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"no experiment config {str(source)!r}: give {', '.join(EXPERIMENT_NAMES)} or a .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    return config_from_dict(data, experiment=experiment, quick=quick, source=str(path))


def to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


#: The [quick] tables of the recipes, for an installation without the recipes folder.
_QUICK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sketch": {"run": {"images_per_cell": 2, "steps": 12}},
    "inpainting": {"run": {"images_per_cell": 2, "steps": 12}},
    "personalization": {"run": {"images_per_cell": 2, "steps": 12}},  # the same trained results as the full run
}
