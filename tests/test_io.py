"""Atomic writes: the result replaces the target only on success and gets a new file's usual permissions."""

import os

import pytest
import torch

from condiff.io import atomic_path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("writer", ["text", "safetensors"])
def test_atomic_path_gives_usual_permissions(tmp_path, writer):
    from safetensors.torch import save_file

    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        if writer == "text":
            tmp.write_text("x")
        else:  # safetensors recreates the file it is given
            save_file({"w": torch.zeros(2)}, str(tmp))
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
