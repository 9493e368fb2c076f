"""The architecture comparison of experiment 2 (thesis 4.3) on tiny random-init models."""

from __future__ import annotations

import json
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from condiff.experiments import architectures as arch
from condiff.models.cascade import CascadeModel, cascade_base_config, cascade_sr_config
from condiff.models.ldm import LatentDiffusion
from condiff.models.unclip import EMBED_DIM, DecoderConfig, PriorConfig, UnCLIPDecoder, UnCLIPModel, UnCLIPPrior
from condiff.nn.autoencoder import AutoencoderConfig, AutoencoderKL
from condiff.nn.image_encoder import ImageEncoder, ImageEncoderConfig
from condiff.nn.unet import UNet, UNetConfig
from condiff.schedules import DiscreteSchedule

D = 32
SMALL = dict(block_out_channels=(16, 32), attention_levels=(False, True), num_attention_heads=(1, 1),
             norm_num_groups=8, cross_attention_dim=D)
SR = dict(block_out_channels=(8, 8, 8, 16), attention_levels=(False, False, False, True), num_attention_heads=1,
          norm_num_groups=8, cross_attention_dim=D)


class FakeText:
    def __call__(self, prompts):
        ctx = torch.stack([torch.randn(4, D, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                           for p in prompts])
        return ctx, torch.ones(len(prompts), 4, dtype=torch.bool)

    def pooled(self, prompts):
        return F.normalize(self(prompts)[0].mean(1), dim=-1)


def _init(net):
    torch.nn.init.normal_(net.conv_out.weight, std=0.05)
    return net.eval()


def tiny_models():
    torch.manual_seed(0)
    text = FakeText()
    vae = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                                          sample_size=32, mid_block_attention=False)).eval()
    unet = _init(UNet(UNetConfig(in_channels=4, out_channels=4, sample_size=16, **SMALL)))
    inpaint = _init(UNet(UNetConfig(in_channels=9, out_channels=4, sample_size=16, **SMALL)))
    ldm = LatentDiffusion("tiny-ldm", unet, vae, text, DiscreteSchedule.named("scaled_linear"), scaling_factor=1.0,
                          image_size=32, inpaint_unet=inpaint, info={"default_guidance": 3.0})
    sr = _init(UNet(cascade_sr_config(sample_size=32, **SR)))
    cascade = CascadeModel(_init(UNet(cascade_base_config(sample_size=16, **SMALL))), sr, text, base_size=16)
    dec = UnCLIPDecoder(DecoderConfig(unet=cascade_base_config(
        sample_size=16, class_embed_type="projection", projection_class_embeddings_input_dim=EMBED_DIM,
        **SMALL).to_dict())).eval()
    _init(dec.unet)
    prior = UnCLIPPrior(PriorConfig(text_dim=D, width=32, depth=1, heads=2, max_text_tokens=4)).eval()
    unclip = UnCLIPModel(prior, dec, text, decoder_size=16, upsampler=CascadeModel(None, sr, text, base_size=16))
    return ldm, cascade, unclip


def tiny_tasks(n=2, size=32):
    tasks = arch.experiment2_tasks()
    assert [t.name for t in tasks] == ["remove-face-mask", "remove-sunglasses", "add-scarf"]
    assert tasks[2].prompt == "a woman wearing a scarf" and tasks[0].image.shape == (1, 3, 128, 128)
    out = []
    for t in tasks[:n]:
        image = F.interpolate(t.image, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        mask = (F.adaptive_max_pool2d(t.mask, size) > 0).float()
        out.append(arch.Task(t.name, image, mask, t.prompt))
    return out


def tiny_evaluator():
    torch.manual_seed(1)
    enc = ImageEncoder(ImageEncoderConfig(block_out_channels=(8, 16), embed_dim=D, norm_num_groups=8,
                                          image_size=32)).eval()
    return arch.Evaluator(enc, FakeText().pooled, name="tiny-evalenc", size=32, padding=2)


class FakeEditor:
    model, endpoint = "dall-e-2", "http://127.0.0.1:1/v1/images/edits"

    def edit(self, image, mask, prompt, n=1, size=None):
        return torch.full((n, *image.shape[1:]), 0.5)


def test_comparison_measures_every_architecture():
    ldm, cascade, unclip = tiny_models()
    archs = (arch.latent_architectures(ldm, steps=2) + [arch.cascade_architecture(cascade, steps=2),
             arch.unclip_architecture(unclip, steps=2), arch.remote_architecture(FakeEditor())])
    assert [a.name for a in archs] == ["ldm-inpaint", "ldm-blend", "cascade", "unclip", "remote"]
    tasks = tiny_tasks()
    res = arch.run_comparison(archs, tasks, evaluator=tiny_evaluator(), notes=["skipped nothing"])
    assert len(res.rows) == 10
    by = {(r["architecture"], r["task"]): r for r in res.rows}
    for (name, task), r in by.items():
        assert r["time_s"] > 0
        assert math.isinf(r["psnr_outside_composite"])  # the composite keeps the outside exactly
        assert 0 <= r["evalenc_inside"] <= 100 and 0 <= r["evalenc_whole"] <= 100
        raw, comp = res.images[(name, task)]
        assert raw.shape == comp.shape == (1, 3, 32, 32)
        if name != "remote":
            assert r["params_diffusion"] > 0 and r["peak_mib"] >= r["weights_mib"] > 0
    for task in ("remove-face-mask", "remove-sunglasses"):
        # latent models change the outside through the autoencoder; pixel blending does not
        assert by[("ldm-inpaint", task)]["psnr_outside_raw"] < 60
        assert by[("ldm-blend", task)]["psnr_outside_raw"] < 60
        assert math.isinf(by[("cascade", task)]["psnr_outside_raw"])
        assert math.isinf(by[("unclip", task)]["psnr_outside_raw"])
        assert by[("remote", task)]["peak_mib"] is None and by[("remote", task)]["params_total"] == 0
    assert by[("ldm-inpaint", "remove-face-mask")]["params_total"] > \
        by[("ldm-inpaint", "remove-face-mask")]["params_diffusion"]  # + the autoencoder
    assert by[("unclip", "remove-face-mask")]["params_diffusion"] == sum(
        sum(p.numel() for p in m.parameters()) for m in (unclip.prior, unclip.decoder, unclip.upsampler.sr_unet))
    means = {s["architecture"]: s for s in res.summary()}
    assert means["cascade"]["tasks"] == 2 and means["cascade"]["time_s"] > 0
    table = arch.format_table(res)
    for name in ("ldm-inpaint", "ldm-blend", "cascade", "unclip", "remote", "∞", "skipped nothing", "tiny-evalenc"):
        assert name in table


def test_missing_models_are_skipped_with_notes(tmp_path, monkeypatch):
    import condiff.models.registry as registry
    from condiff.remote import ENDPOINT_ENV

    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    archs, notes = arch.available_architectures(weights_dir=tmp_path)
    assert archs == []
    text = "\n".join(notes)
    for name in ("ldm-inpaint and ldm-blend", "cascade", "unclip", "remote: no endpoint configured"):
        assert f"skipped {name}" in text
    out = tmp_path / "report"
    res = arch.main(["--out", str(out), "--device", "cpu", "--no-remote", "--weights", str(tmp_path)])
    assert res.rows == []
    table = (out / "table.md").read_text()
    assert "skipped cascade" in table and "no evaluation encoder" in table
    doc = json.loads((out / "results.json").read_text())
    assert doc["command"].startswith("python -m condiff.experiments.architectures --out")


def test_peak_memory_sees_a_cpu_allocation():
    with arch.PeakMemory("cpu") as mem:
        x = torch.ones(16_000_000)  # 64 MB, touched
        import time

        time.sleep(0.2)  # the sampler thread polls every millisecond
        del x
    assert mem.method.startswith("RSS") and mem.peak_bytes is not None and mem.peak_bytes > 40 * 2**20


def test_evaluator_crops_the_mask_box():
    # stand-in encoders whose cosine is positive and depends on every pixel of what they see
    ev = arch.Evaluator(lambda x: F.normalize(torch.cat([x.mean((2, 3)), torch.ones(len(x), 1)], 1), dim=-1),
                        lambda p: F.normalize(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), dim=-1), size=32, padding=2)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:10, 4:10] = 1
    other = image.clone()
    other[..., 20:, 20:] = 1 - other[..., 20:, 20:]  # far outside the box (box = mask ± 2 px)
    a, b = ev.scores(image, mask, "a cat"), ev.scores(other, mask, "a cat")
    assert a["evalenc_inside"] == pytest.approx(b["evalenc_inside"], abs=1e-4)
    assert a["evalenc_whole"] != pytest.approx(b["evalenc_whole"], abs=1e-4)
