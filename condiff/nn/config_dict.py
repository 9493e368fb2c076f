"""Network configs (dataclasses) to and from the JSON dict stored in a component's ``config.json``.

One rule for every config: ``to_dict`` writes tuples as lists (JSON has no tuples); ``from_dict``
refuses keys the config does not have, so a typo or a diffusers ``config.json`` passed by mistake
fails with a message naming the keys instead of a bare ``TypeError``.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Mapping, TypeVar

__all__ = ["ConfigDict", "check_config_keys", "config_preset"]

C = TypeVar("C")


def check_config_keys(cls: type, d: Mapping[str, Any]) -> None:
    """ValueError naming the keys of ``d`` that are not fields of the dataclass ``cls``.

    A class with ``from_diffusers_config`` is named in the message as the way to read diffusers configs.
    """
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        hint = (f"; for a diffusers config.json use {cls.__name__}.from_diffusers_config"
                if hasattr(cls, "from_diffusers_config") else "")
        raise ValueError(f"unknown {cls.__name__} keys {unknown}{hint}")


class ConfigDict:
    """Mixin of the dataclass configs: ``to_dict``/``from_dict`` by the rules of this module."""

    def to_dict(self) -> dict[str, Any]:
        """``dataclasses.asdict`` with top-level tuples written as lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """``cls(**d)`` after :func:`check_config_keys`."""
        check_config_keys(cls, d)
        return cls(**d)


def config_preset(cls: type[C], presets: Mapping[str, Mapping[str, Any]], name: str, label: str) -> C:
    """The config of preset ``name`` (``cls.from_dict(presets[name])``); ValueError listing the presets."""
    if name not in presets:
        raise ValueError(f"unknown {label} preset {name!r}; choose one of {sorted(presets)}")
    return cls.from_dict(presets[name])
