"""Speed options (condiff.acceleration) on a tiny random model: same images as the plain path
within each option's stated tolerance, and a clear DeviceError where the device cannot run one.

Tolerances (float32, images in [0, 1]): fused QKV and channels-last change only the summation
order (max |Δ| ≤ 1e-4 after a whole sampler run); torch.compile (fullgraph, checked here with the
``aot_eager`` backend, which traces the same graph without generating kernels) ≤ 1e-4; VAE tiling
≤ 0.03 mean |Δ| with the built-in autoencoder (tile seams: its GroupNorm sees tile statistics).
"""

from __future__ import annotations

import pytest
import torch

from condiff import acceleration as acc
from condiff.errors import DeviceError, InputError
from condiff.guidance import ClassifierFreeGuidance
from condiff.nn.attention import Attention
from condiff.pipelines.text2img import generate
from condiff.testing.tiny import tiny_ldm

pytestmark = pytest.mark.usefixtures("single_thread")

KW = dict(steps=3, show_progress=False, batch_size=2)


def _images(model):
    return generate(model, "a red circle", **KW).images


def test_fused_qkv_is_the_same_attention():
    torch.manual_seed(0)
    for context_dim in (None, 12):
        att = Attention(16, heads=2, head_dim=8, context_dim=context_dim, qkv_bias=True).eval()
        x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 12)
        c = ctx if context_dim else None
        want = att(x, c)
        att.fuse_projections()
        assert att.fused is not None and att.fused[0].shape[0] == (2 if context_dim else 3) * 16
        torch.testing.assert_close(att(x, c), want, rtol=1e-5, atol=1e-6)
        assert "fused" not in "".join(att.state_dict())  # checkpoints keep the diffusers layout
        att.fuse_projections(False)
        assert att.fused is None


@pytest.mark.parametrize("opts", [dict(fused_qkv=True), dict(channels_last=True), dict(fused_qkv=True, channels_last=True)])
def test_eager_options_give_the_same_images(opts):
    want = _images(tiny_ldm())
    model = acc.accelerate(tiny_ldm(), acc.SpeedOptions(**opts))
    assert model.info["speed"]["fused_qkv"] == opts.get("fused_qkv", False)
    assert (_images(model) - want).abs().max() <= 1e-4


def test_compiled_unet_and_decoder_give_the_same_images():
    want = _images(tiny_ldm())
    model = acc.accelerate(tiny_ldm(), acc.COMPILE, backend="aot_eager")
    assert model.unet._compiled_call_impl is not None and model.vae.decoder._compiled_call_impl is not None
    assert (_images(model) - want).abs().max() <= 1e-4
    assert set(model.unet.state_dict()) == set(tiny_ldm().unet.state_dict())  # names unchanged (LoRA, saving)


def test_cfg_is_one_batched_network_call():
    model = tiny_ldm()
    calls = []
    model.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    generate(model, "a red circle", steps=2, show_progress=False, batch_size=3, guidance=4.0)
    assert calls == [6, 6]  # both branches of 3 images in one call per step
    assert ClassifierFreeGuidance.__init__.__kwdefaults__["batched"] is True


@torch.no_grad()
def test_vae_tiling_bounds_the_tile_and_stays_close():
    """The built-in autoencoder: tiles of 24² latents (6 overlap) decode a 48² latent within
    0.03 mean |Δ| (images in [-1, 1]; measured 0.020) of the whole-image decode."""
    from condiff.models.registry import load_model

    model = load_model("builtin")
    z = torch.randn(1, model.latent_channels, 48, 48, generator=torch.Generator().manual_seed(0))
    z = z * model.scaling_factor
    want = model.decode(z)
    seen = []

    def decode(t):
        seen.append(tuple(t.shape[-2:]))
        return model.vae.decode(t)

    got = acc.tiled_decode(decode, z / model.scaling_factor, tile=24, overlap=6, scale=model.downscale).clamp(-1, 1)
    assert max(max(s) for s in seen) <= 24 and len(seen) == 9
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert (got - want).abs().mean() <= 0.03
    acc.accelerate(model, acc.SpeedOptions(vae_tiling=True, tile=24, tile_overlap=6))
    torch.testing.assert_close(model.decode(z), got, rtol=0, atol=1e-5)
    small = z[..., :16, :16]
    model.decode_tile = None
    untiled = model.decode(small)
    model.decode_tile = (24, 6)
    torch.testing.assert_close(model.decode(small), untiled)  # one tile: the plain decode


def test_tile_blending_is_exact_for_a_local_decoder():
    z = torch.randn(1, 3, 40, 40)

    def up(t):
        return torch.nn.functional.interpolate(t, scale_factor=4)

    torch.testing.assert_close(acc.tiled_decode(up, z, tile=16, overlap=4, scale=4), up(z))


def test_options_the_device_cannot_run_are_refused():
    model = tiny_ldm()
    with pytest.raises(DeviceError, match="CUDA graphs need a CUDA device"):
        acc.accelerate(model, acc.SpeedOptions(compile=True, cuda_graphs=True))
    with pytest.raises(InputError, match="cuda_graphs needs compile"):
        acc.accelerate(model, acc.SpeedOptions(cuda_graphs=True))
    with pytest.raises(InputError, match="tile_overlap"):
        acc.SpeedOptions(vae_tiling=True, tile=8, tile_overlap=4).validate()


def test_cli_flags_map_to_presets():
    assert acc.resolve_speed() is None
    assert acc.resolve_speed(fast=True) == acc.FAST
    assert acc.resolve_speed(fast=True, compile=True) == acc.COMPILE == acc.resolve_speed(compile=True)


def test_fused_attention_falls_back_when_a_lora_hook_is_attached():
    torch.manual_seed(0)
    att = Attention(16, heads=2, head_dim=8).eval()
    x = torch.randn(2, 5, 16)
    att.fuse_projections()
    handle = att.to_v.register_forward_hook(lambda m, args, out: out + 1.0)  # what an unmerged LoRA does
    plain = Attention(16, heads=2, head_dim=8).eval()
    plain.load_state_dict(att.state_dict())
    plain.to_v.register_forward_hook(lambda m, args, out: out + 1.0)
    torch.testing.assert_close(att(x), plain(x))
    handle.remove()


def test_load_model_and_cli_take_the_presets(tmp_path):
    from typer.testing import CliRunner

    from condiff import cli
    from condiff.models.registry import load_model

    if not any("generate" in (c.name or getattr(c.callback, "__name__", "")) for c in cli.app.registered_commands):
        cli._register_commands()
    model = load_model("builtin", speed=acc.FAST)
    assert model.info["speed"]["fused_qkv"] and model.info["speed"]["channels_last"]
    out = tmp_path / "fast.png"
    res = CliRunner().invoke(cli.app, ["generate", "a red circle", "--steps", "2", "--fast", "--device", "cpu",
                                       "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists()


def test_compile_preset_uses_cuda_graphs_only_on_cuda():
    model = acc.accelerate(tiny_ldm(), acc.COMPILE, backend="aot_eager")
    assert acc.COMPILE.cuda_graphs is None and model.info["speed"]["cuda_graphs"] is False
    with pytest.raises(DeviceError, match="CUDA graphs need a CUDA device"):
        acc.accelerate(tiny_ldm(), acc.COMPILE, cuda_graphs=True, backend="aot_eager")


# ------------------------------------------------------------------------------ pixel cascade and unCLIP
def _cascade_images(model):
    from condiff.pipelines import cascade

    return cascade.generate(model, "a red circle", steps=2, batch_size=2, show_progress=False).images


def _unclip_images(model):
    from condiff.pipelines import unclip

    return unclip.generate(model, "a red circle", steps=2, prior_steps=2, sr_steps=1, batch_size=2,
                           show_progress=False).images


def _tiny_cascade():
    from test_cascade import tiny_cascade

    return tiny_cascade()


def _tiny_unclip():
    from test_unclip import tiny_unclip

    return tiny_unclip()


PIXEL = {"cascade": (_tiny_cascade, _cascade_images, ("base_unet", "sr_unet")),
         "unclip": (_tiny_unclip, _unclip_images, ("decoder", "prior"))}


@pytest.mark.parametrize("kind", list(PIXEL))
def test_pixel_models_step_networks_are_covered(kind):
    build, _, names = PIXEL[kind]
    model = build()
    nets = acc.accelerated_networks(model)
    want = [getattr(model, n) for n in names] + ([model.upsampler.sr_unet] if kind == "unclip" else [])
    assert len(nets) == len(want) and all(a is b for a, b in zip(nets, want))
    assert acc.accelerated_networks(object()) == []
    with pytest.raises(InputError, match="no network the speed options cover"):
        acc.accelerate(type("Bare", (), {"device": torch.device("cpu"), "info": {}})())
    with pytest.raises(InputError, match="vae_tiling applies to latent-diffusion models"):
        acc.accelerate(model, acc.SpeedOptions(vae_tiling=True))


@pytest.mark.parametrize("kind", list(PIXEL))
def test_fast_gives_the_same_pixel_images(kind):
    build, images, _ = PIXEL[kind]
    want = images(build())
    model = acc.accelerate(build(), acc.FAST)
    assert model.info["speed"]["fused_qkv"] and model.info["speed"]["channels_last"]
    nets = acc.accelerated_networks(model)
    assert all(m.fused is not None for net in nets for m in net.modules() if isinstance(m, Attention))
    convs = [net for net in nets if any(isinstance(m, torch.nn.Conv2d) for m in net.modules())]
    assert convs and all(net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
                         for net in (getattr(n, "unet", n) for n in convs))
    if kind == "unclip":
        assert model.upsampler.info["speed"] == model.info["speed"]
        assert acc.fuse_qkv(model.prior) == 0  # a torch transformer: its attention is already one projection
    assert (images(model) - want).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", list(PIXEL))
def test_compiled_pixel_networks_give_the_same_images(kind):
    build, images, _ = PIXEL[kind]
    want = images(build())
    model = acc.accelerate(build(), acc.COMPILE, backend="aot_eager")
    assert model.info["speed"]["compile"] and model.info["speed"]["cuda_graphs"] is False
    assert all(net._compiled_call_impl is not None for net in acc.accelerated_networks(model))
    assert (images(model) - want).abs().max() <= 1e-4
