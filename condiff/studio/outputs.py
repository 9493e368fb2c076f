"""Where the studio writes what it makes: PNGs with their parameters inside, one folder per job.

Every result image is written by :func:`condiff.images.save_png` (the CLI's writer: the
parameters as condiff's JSON in the ``parameters`` text chunk), so a file downloaded from the
studio reads back in the PNG-info box, in ``condiff``'s Python API and in A1111-aware tools that
show the chunk. Inputs the job used (a drawn sketch, a painted mask) are written beside the
results, so a result can be reproduced from the command line with the same files.

The folder lives under the system's temporary directory (or ``root``); each job gets a fresh
sub-folder, and the oldest ones are removed once more than ``keep`` exist, so a long-running
server does not fill the disk.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from torch import Tensor

from ..images import save_png

__all__ = ["OutputStore"]


class OutputStore:
    """Job folders of PNG files under one root (created on first use)."""

    def __init__(self, root: str | Path | None = None, keep: int = 200):
        self.root = Path(root) if root is not None else Path(tempfile.gettempdir()) / "condiff-studio"
        self.keep = int(keep)
        self._count = itertools.count()
        self._lock = threading.Lock()

    def new_folder(self, kind: str) -> Path:
        """A fresh folder ``<root>/<n>-<kind>`` for one job's files (old ones beyond ``keep`` removed)."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=f"{next(self._count):05d}-{kind}-", dir=self.root))
            folders = sorted((p for p in self.root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
            for old in folders[: max(0, len(folders) - self.keep)]:
                shutil.rmtree(old, ignore_errors=True)
            return folder

    @staticmethod
    def save(folder: Path, name: str, images: Tensor, params: list[dict[str, Any]] | dict[str, Any]) -> list[Path]:
        """Write ``images`` [B, C, H, W] as ``name.png`` (one) or ``name-0.png`` … with their parameters."""
        per_image = params if isinstance(params, list) else [params] * images.shape[0]
        if len(per_image) != images.shape[0]:
            raise ValueError(f"{len(per_image)} parameter sets for {images.shape[0]} images")
        paths = []
        for i in range(images.shape[0]):
            path = folder / (f"{name}.png" if images.shape[0] == 1 else f"{name}-{i}.png")
            paths.append(save_png(images[i:i + 1], path, per_image[i]))
        return paths

    def save_result(self, folder: Path, name: str, result) -> list[Path]:
        """A :class:`~condiff.pipelines.common.PipelineResult`'s images, each with its own seed."""
        return self.save(folder, name, result.images, [result.params_for(i) for i in range(result.images.shape[0])])
