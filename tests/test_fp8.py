"""FP8 linear layers (condiff.fp8): the row-wise e4m3 numerics, emulated on the CPU, and the option's
device check. The images' error against bf16 on a GPU is measured by bench/gpu_speed.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from condiff import acceleration as acc
from condiff.errors import DeviceError, InputError
from condiff.fp8 import Float8Linear, float8_error, from_float8, to_float8
from condiff.pipelines.text2img import generate
from condiff.testing.tiny import tiny_ldm

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


def test_fp8_option_checks_device_and_conflicts():
    with pytest.raises(DeviceError, match="compute capability"):
        acc.accelerate(tiny_ldm(), acc.SpeedOptions(fp8=True))
    with pytest.raises(InputError, match="fused_qkv"):
        acc.SpeedOptions(fp8=True, fused_qkv=True).validate()


def test_cli_presets_with_fp8():
    assert acc.resolve_speed() is None
    opts = acc.resolve_speed(compile=True, fp8=True)
    assert opts.fp8 and opts.compile and not opts.fused_qkv and opts.channels_last
    assert acc.resolve_speed(fp8=True) == acc.SpeedOptions(channels_last=True, fp8=True)
