"""The FP8 linear layers that bench/gpu_speed.py measures (bench/fp8_linear.py): the row-wise e4m3
numerics, emulated on the CPU, and the device check. Their speed and image error on a GPU are in
bench/results/gpu_speed-h100-*.json."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from condiff.errors import DeviceError
from condiff.pipelines.text2img import generate
from condiff.testing.tiny import tiny_ldm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fp8_linear import Float8Linear, float8_error, from_float8, to_float8  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def test_rowwise_e4m3_product_error_is_rounding_only():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(10, 64)
    err = float8_error(lin, x)
    assert 1e-4 < err < 0.06  # e4m3 keeps 3 mantissa bits: a few % on a dot product, never exact
    big = x.clone()
    big[3] *= 1e4  # one row of large activations does not spoil the others (row-wise scales)
    y8 = Float8Linear(lin, emulate=True)(big)
    rows = [i for i in range(10) if i != 3]
    with torch.no_grad():
        want = lin(big)[rows]
    assert float((y8[rows] - want).norm() / want.norm()) < 0.06


def test_converted_unet_draws_nearly_the_same_and_converts_back():
    model = tiny_ldm()
    kw = dict(steps=3, show_progress=False, batch_size=2)
    want = generate(model, "a red circle", **kw).images
    names = set(model.unet.state_dict())
    n = to_float8(model.unet, emulate=True)
    assert n > 0 and any(isinstance(m, Float8Linear) for m in model.unet.modules())
    got = generate(model, "a red circle", **kw).images
    diff = (got - want).abs()
    assert 0 < diff.max() and diff.mean() < 0.02
    assert from_float8(model.unet) == n
    assert set(model.unet.state_dict()) == names
    torch.testing.assert_close(generate(model, "a red circle", **kw).images, want, rtol=0, atol=0)


def test_fp8_needs_fp8_tensor_cores():
    with pytest.raises(DeviceError, match="compute capability"):
        to_float8(tiny_ldm().unet)
