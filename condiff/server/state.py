"""What one ``condiff serve`` process holds: the model (loaded once), the job queue and the limits.

:class:`ServerState` is shared by every route (the A1111 API, condiff's own routes and the
browser studio): ``state.model`` is the :class:`~condiff.models.ldm.LatentDiffusion` every image
pipeline runs on, ``state.queue`` the single :class:`~condiff.server.jobs.JobQueue` all work goes
through, ``state.limits`` the :class:`Limits` every request is checked against, ``state.options``
the A1111 ``/sdapi/v1/options`` dictionary (with the model's ``condiff_dtype`` and ``condiff_speed``:
the ``--dtype`` and the speed options of ``condiff serve``, applied once at start). Auxiliary built-in models (ControlNets, the SR3
stage, unCLIP) are loaded on first use by :meth:`ServerState.aux` (on the worker thread) and kept.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import LimitError
from .jobs import JobQueue

__all__ = ["Limits", "ServerState"]


@dataclass(frozen=True)
class Limits:
    """Request limits (each one a ``condiff serve`` flag; over a limit → HTTP 413/422 naming the field)."""

    max_pixels: int = 1024 * 1024          #: width × height of a requested output
    max_steps: int = 150                   #: sampling steps of one request
    max_batch: int = 8                     #: batch_size × n_iter (images per request)
    max_body_bytes: int = 32 * 1024 * 1024  #: HTTP request body
    max_prompt_chars: int = 2000           #: prompt and negative prompt, each
    max_image_pixels: int = 4096 * 4096    #: a decoded input image (decompression-bomb guard)
    max_job_seconds: float = 600.0         #: wall time of one job before it is cancelled
    max_queue: int = 8                     #: jobs waiting or running (more → HTTP 429)
    max_train_steps: int = 1000            #: steps of a personalization job
    max_train_images: int = 32             #: subject images of a personalization job

    def check(self, name: str, value: float, limit_name: str, field_name: str) -> None:
        """Raise :class:`LimitError` naming ``field_name`` when ``value`` exceeds ``limit_name``."""
        limit = getattr(self, limit_name)
        if value > limit:
            flag = "--" + limit_name.replace("_", "-")
            raise LimitError(f"{field_name}: {name} {value:g} is over the server's limit of {limit:g} (flag {flag})")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _default_options(model_name: str, model: Any = None) -> dict[str, Any]:
    """The A1111 options condiff understands (others are accepted by POST and ignored), and the
    model's precision and speed options (read-only: ``condiff_dtype``, ``condiff_speed``)."""
    from ..validate import DTYPES

    dtype = getattr(model, "dtype", None)
    return {
        "sd_model_checkpoint": model_name,
        "live_previews_enable": True,
        "show_progress_every_n_steps": 1,
        "samples_format": "png",
        "enable_pnginfo": True,
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "condiff_dtype": next((k for k, v in DTYPES.items() if v == dtype), None),
        "condiff_speed": (getattr(model, "info", None) or {}).get("speed"),
    }


@dataclass
class ServerState:
    """The process-wide state of the server. Build with :meth:`create` (or directly in tests)."""

    model: Any
    model_name: str
    device: torch.device
    limits: Limits = field(default_factory=Limits)
    queue: JobQueue | None = None
    options: dict[str, Any] = field(default_factory=dict)
    auth: tuple[str, str] | None = None
    work_dir: Path | None = None
    _aux: dict[str, Any] = field(default_factory=dict)
    _aux_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if self.queue is None:
            self.queue = JobQueue(self.limits.max_queue, default_timeout_s=self.limits.max_job_seconds,
                                  on_forget=self._forget)
        if not self.options:
            self.options = _default_options(self.model_name, self.model)

    @classmethod
    def create(cls, model: str = "builtin", device: str | None = None, *, dtype: str = "auto", speed=None,
               limits: Limits | None = None, auth: tuple[str, str] | None = None,
               work_dir: Path | None = None) -> "ServerState":
        """Load ``model`` once (built-in name or local SD checkpoint) on ``device`` in ``dtype``
        (``auto``: fp16 on CUDA, fp32 on the CPU) and apply ``speed``
        (:class:`~condiff.acceleration.SpeedOptions`, e.g. from ``resolve_speed``; None: plain eager).

        Raises :class:`~condiff.errors.DeviceError` for a dtype or speed option the device cannot run.
        """
        from ..commands._common import resolve_device, resolve_dtype
        from ..models.registry import load_model

        dev = resolve_device(device)
        ldm = load_model(model, device=dev, dtype=resolve_dtype(dtype, dev), speed=speed).eval()
        return cls(model=ldm, model_name=model, device=dev, limits=limits or Limits(), auth=auth, work_dir=work_dir)

    def aux(self, key: str, loader: Callable[[], Any]) -> Any:
        """An auxiliary model loaded once by ``loader()`` and kept (e.g. ``"controlnet-canny"``)."""
        with self._aux_lock:
            if key not in self._aux:
                self._aux[key] = loader()
            return self._aux[key]

    def job_dir(self, job_id: str) -> Path:
        """A fresh folder for one long job's files (under ``work_dir``, a temporary folder by default)."""
        with self._aux_lock:
            if self.work_dir is None:
                self.work_dir = Path(tempfile.mkdtemp(prefix="condiff-serve-"))
                self._aux["_temporary_work_dir"] = self.work_dir
        folder = self.work_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _forget(self, job) -> None:
        """A job left the history: delete its folder (personalization and experiment files)."""
        if self.work_dir is not None and (self.work_dir / job.id).is_dir():
            shutil.rmtree(self.work_dir / job.id, ignore_errors=True)

    def close(self) -> None:
        """Stop the queue (cancelling its jobs) and remove the temporary work folder, if one was made."""
        if self.queue is not None:
            self.queue.close()
        tmp = self._aux.pop("_temporary_work_dir", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
