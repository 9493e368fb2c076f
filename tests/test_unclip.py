"""unCLIP (thesis 3.2.1): prior + decoder networks, pipelines (text→image, variations, inpainting),
loading, and the GPU training stages of both the cascade and unCLIP run small on a tiny world."""

from __future__ import annotations

import json
import zlib
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from condiff.denoisers import Cond, append_dims
from condiff.models.cascade import CascadeModel, cascade_base_config, cascade_sr_config
from condiff.models.unclip import (EMBED_DIM, EMBED_SCALE, IMAGE_ENCODER_KEY, DecoderConfig, PriorConfig,
                                   UnCLIPDecoder, UnCLIPModel, UnCLIPPrior, load_evalenc, load_unclip, pool_tokens)
from condiff.models.weights import WeightsError
from condiff.nn.unet import UNet
from condiff.pipelines import unclip as pipe
from training.export import export_component

D = 32  # width of the stand-in text embeddings


class FakeText:
    """prompt -> 4 tokens of width 32 (seeded by a hash of the prompt); the empty prompt has 2 real tokens."""

    def __call__(self, prompts):
        ctx = torch.stack([torch.randn(4, D, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                           for p in prompts])
        mask = torch.tensor([[True, True, bool(p), bool(p)] for p in prompts])
        return ctx, mask


class LinearEncoder:
    """A stand-in evalenc: E(img) = normalise(P · (2·img − 1)) with orthonormal rows P [384, 3·16·16]."""

    def __init__(self, size=16):
        self.config = SimpleNamespace(image_size=size)  # like evalenc: the pipeline resizes inputs to it
        q, _ = torch.linalg.qr(torch.randn(3 * size * size, EMBED_DIM, generator=torch.Generator().manual_seed(1)))
        self.P = q.t().contiguous()

    def __call__(self, images):
        return F.normalize((images.flatten(1) * 2 - 1) @ self.P.t(), dim=-1)


class ExactGaussianDecoder:
    """Exact denoiser of p(x0 | e) = N(κ·Pᵀê, τ²·Q), Q = I − PᵀP: every sample encodes to ê exactly
    (semantics kept) while its detail, in the encoder's null space, is drawn fresh (details vary).
    ê is read from cond.class_labels (the pipeline's scaled embedding)."""

    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, enc: LinearEncoder, kappa=4.0, tau=0.15):
        self.P, self.kappa, self.tau = enc.P, kappa, tau

    def __call__(self, x, sigma, cond):
        e = cond.class_labels / EMBED_SCALE
        mu = (self.kappa * e @ self.P).view_as(x)
        r = (x - mu).flatten(1)
        null = (r - (r @ self.P.t()) @ self.P).view_as(x)
        s2 = append_dims(torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0]), x.ndim) ** 2
        return mu + self.tau**2 / (self.tau**2 + s2) * null


def tiny_prior(seed=0):
    torch.manual_seed(seed)
    return UnCLIPPrior(PriorConfig(text_dim=D, width=32, depth=1, heads=2, max_text_tokens=6)).eval()


def tiny_decoder(seed=0):
    torch.manual_seed(seed)
    unet = cascade_base_config(sample_size=16, block_out_channels=(16, 32), attention_levels=(False, True),
                               num_attention_heads=(1, 1), norm_num_groups=8, cross_attention_dim=D,
                               class_embed_type="projection", projection_class_embeddings_input_dim=EMBED_DIM)
    dec = UnCLIPDecoder(DecoderConfig(unet=unet.to_dict())).eval()
    torch.nn.init.normal_(dec.unet.conv_out.weight, std=0.05)
    return dec


def tiny_upsampler():
    torch.manual_seed(2)
    sr = UNet(cascade_sr_config(sample_size=32, block_out_channels=(8, 8, 8, 16), attention_levels=(False,) * 3 + (True,),
                                num_attention_heads=1, norm_num_groups=8, cross_attention_dim=D)).eval()
    return CascadeModel(None, sr, FakeText(), base_size=16, info={"default_steps": 2})


def tiny_unclip(upsampler=True):
    return UnCLIPModel(tiny_prior(), tiny_decoder(), FakeText(), image_encoder=LinearEncoder(), decoder_size=16,
                       upsampler=tiny_upsampler() if upsampler else None,
                       info={"default_steps": 2, "prior_steps": 2})


def smooth(n=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear", align_corners=False)


def test_prior_masks_padding_and_checks_inputs():
    prior = tiny_prior()
    x, t = torch.randn(2, EMBED_DIM), torch.tensor([10.0, 500.0])
    ctx = torch.randn(2, 4, D)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    cond = Cond(context=ctx, context_mask=mask, class_labels=F.normalize(torch.randn(2, D), dim=-1))
    with torch.no_grad():
        out = prior(x, t, cond)
        ctx2 = ctx.clone()
        ctx2[0, 2:] += 5.0  # only padded tokens of sample 0 change
        assert torch.allclose(prior(x, t, cond.replace(context=ctx2)), out, atol=1e-5)
        ctx2[0, 0] += 5.0  # a real token changes
        assert not torch.allclose(prior(x, t, cond.replace(context=ctx2))[0], out[0], atol=1e-3)
    assert out.shape == (2, EMBED_DIM)
    with pytest.raises(ValueError, match="pooled text embedding"):
        prior(x, t, Cond(context=ctx))
    with pytest.raises(ValueError, match=r"\[B, 384\]"):
        prior(torch.randn(2, 10), t, cond)


def test_decoder_is_conditioned_on_the_embedding():
    dec = tiny_decoder()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([300.0])
    e1, e2 = (F.normalize(torch.randn(1, EMBED_DIM), dim=-1) * EMBED_SCALE for _ in range(2))
    with torch.no_grad():
        a = dec(x, t, Cond(context=torch.randn(1, 4, D), class_labels=e1))
        b = dec(x, t, Cond(context=torch.randn(1, 4, D), class_labels=e2))
        c = dec(x, t, Cond(class_labels=e1))  # embedding tokens alone as context
    assert a.shape == c.shape == (1, 3, 16, 16) and not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="image embedding"):
        dec(x, t, Cond(context=torch.randn(1, 4, D)))
    with pytest.raises(ValueError, match="projection"):
        UnCLIPDecoder(DecoderConfig(unet=cascade_base_config().to_dict()))


def test_generate_variations_inpaint_plumbing():
    model = tiny_unclip()
    res = pipe.generate(model, ["a cat", "a dog"], prior_guidance=2.0, guidance=3.0, seed=1, show_progress=False)
    assert res.images.shape == (2, 3, 32, 32) and res.extras["decoder"].shape == (2, 3, 16, 16)
    assert torch.allclose(res.extras["embeddings"].norm(dim=-1), torch.ones(2), atol=1e-5)
    one = pipe.generate(model, "a dog", prior_guidance=2.0, guidance=3.0, seed=2, show_progress=False)
    assert torch.allclose(one.images[0], res.images[1], atol=1e-5)  # per-sample seeds through all three stages
    assert torch.allclose(one.extras["embeddings"][0], res.extras["embeddings"][1], atol=1e-5)

    image = smooth(1, 32)
    var = pipe.variations(model, image, n=3, seed=7, show_progress=False)
    assert var.images.shape == (3, 3, 32, 32) and var.params["seeds"] == [7, 8, 9]
    assert not torch.allclose(var.images[0], var.images[1], atol=1e-3)
    with pytest.raises(ValueError, match="one image"):
        pipe.variations(model, image.expand(2, -1, -1, -1), n=2)
    with pytest.raises(ValueError, match="integer >= 1"):
        pipe.variations(model, image, n=0)

    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 6:20, 8:24] = 1
    for embedding in ("prompt", "image"):
        inp = pipe.inpaint(model, image, mask, "a scarf", embedding=embedding, seed=0, show_progress=False)
        keep = mask == 0
        assert torch.equal(inp.images.masked_select(keep), image.masked_select(keep))
        assert (inp.extras["raw"] - image).abs().masked_select(keep).max() < 1e-5
        assert inp.params["upsampler"] == "cascade-sr"
    no_sr = pipe.inpaint(tiny_unclip(upsampler=False), image, mask, "a scarf", seed=0, show_progress=False)
    assert no_sr.params["upsampler"] == "bicubic" and no_sr.images.shape == image.shape


def test_variations_keep_semantics_and_vary_details():
    """With a decoder whose samples depend on the embedding (exact Gaussian stand-in): variations are
    far closer to the source in embedding space than samples from random embeddings, and differ."""
    model = tiny_unclip(upsampler=False)
    enc = model.image_encoder
    model.decoder_denoiser = lambda: ExactGaussianDecoder(enc)
    source = smooth(1, 16, seed=3)
    e_src = enc(source)
    var = pipe.variations(model, source, n=4, seed=0, guidance=2.0, steps=6, show_progress=False)
    cos_var = (enc(var.images) @ e_src.t()).squeeze(1)
    rand = pipe.generate(model, ["a cat", "a dog", "a car", "a tree"], guidance=2.0, steps=6, seed=0,
                         show_progress=False)
    cos_rand = (enc(rand.images) @ e_src.t()).squeeze(1)
    assert cos_var.min() > 0.95 and cos_rand.abs().max() < 0.3, (cos_var, cos_rand)
    spread = (var.images - var.images.mean(0, keepdim=True)).pow(2).mean().sqrt()
    assert spread > 0.02  # the details differ from variation to variation (the image itself: 0)
    assert (var.images - source).abs().mean() > 0.02


def test_load_unclip_round_trip(tmp_path):
    model = tiny_unclip(upsampler=False)
    extra = {"schedule": {"name": "cosine", "steps": 1000}, "image_size": 16}
    with pytest.raises(ValueError, match="no unCLIP decoder"):
        load_unclip(tmp_path, text_encoder=FakeText())
    export_component(model.decoder, tmp_path / "unclip-decoder", kind="unclip-decoder",
                     network_config=model.decoder.config.to_dict(), extra={**extra, "prediction": "v"})
    export_component(model.prior, tmp_path / "unclip-prior", kind="unclip-prior",
                     network_config=model.prior.config.to_dict(), extra={**extra, "prediction": "x0"})
    loaded = load_unclip(tmp_path, text_encoder=FakeText())
    assert loaded.upsampler is None and loaded.image_encoder is None and loaded.decoder_size == 16
    x, t = torch.randn(1, EMBED_DIM), torch.tensor([20.0])
    cond = Cond(context=torch.randn(1, 4, D), class_labels=F.normalize(torch.randn(1, D), dim=-1))
    with torch.no_grad():
        assert torch.allclose(loaded.prior(x, t, cond), model.prior(x, t, cond), atol=2e-2)
    with pytest.raises(ValueError, match="evalenc"):
        pipe.variations(loaded, smooth(1, 16), n=1)


def _tiny_image_encoder(seed):
    from condiff.nn.image_encoder import ImageEncoder, ImageEncoderConfig

    torch.manual_seed(seed)
    return ImageEncoder(ImageEncoderConfig(image_size=16, block_out_channels=(8, 16), norm_num_groups=4)).eval()


def _export_unclip(folder, model, extra_config):
    extra = {"schedule": {"name": "cosine", "steps": 1000}, "image_size": 16, **extra_config}
    export_component(model.decoder, folder / "unclip-decoder", kind="unclip-decoder",
                     network_config=model.decoder.config.to_dict(), extra={**extra, "prediction": "v"})
    export_component(model.prior, folder / "unclip-prior", kind="unclip-prior",
                     network_config=model.prior.config.to_dict(), extra={**extra, "prediction": "x0"})


@pytest.mark.parametrize("named", ["unclip-embedder", None])
def test_load_unclip_uses_the_image_encoder_its_configs_name(tmp_path, named):
    """`image_encoder_component` in the unCLIP configs picks the tower; absent (older exports): evalenc.
    The evaluation encoder (metrics) stays evalenc either way."""
    encoders = {"evalenc": _tiny_image_encoder(1), "unclip-embedder": _tiny_image_encoder(2)}
    for name, enc in encoders.items():
        export_component(enc, tmp_path / name, kind="image-encoder", network_config=enc.config.to_dict())
    _export_unclip(tmp_path, tiny_unclip(upsampler=False), {IMAGE_ENCODER_KEY: named} if named else {})
    loaded = load_unclip(tmp_path, text_encoder=FakeText())
    expected = named or "evalenc"
    assert loaded.image_encoder_component == expected and loaded.info["image_encoder"] == expected
    img = smooth(2, 16)
    with torch.no_grad():
        want = F.normalize(encoders[expected](img), dim=-1)
        assert torch.allclose(loaded.encode_images(img), want, atol=1e-2)
        other = F.normalize(encoders["evalenc" if named else "unclip-embedder"](img), dim=-1)
        assert not torch.allclose(loaded.encode_images(img), other, atol=1e-2)
        assert torch.allclose(load_evalenc(tmp_path)(img), encoders["evalenc"](img), atol=1e-2)
    var = pipe.variations(loaded, smooth(1, 16), n=1, steps=1, show_progress=False)
    assert var.images.shape == (1, 3, 16, 16)


def test_load_unclip_refuses_prior_and_decoder_of_different_towers(tmp_path):
    _export_unclip(tmp_path, tiny_unclip(upsampler=False), {IMAGE_ENCODER_KEY: "unclip-embedder"})
    cfg_path = tmp_path / "unclip-prior" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg[IMAGE_ENCODER_KEY]  # an older prior: trained on evalenc
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="different image encoders"):
        load_unclip(tmp_path, text_encoder=FakeText())
    # a missing component named by the configs: the model loads, variations say what is missing
    cfg[IMAGE_ENCODER_KEY] = "unclip-embedder"
    cfg_path.write_text(json.dumps(cfg))
    loaded = load_unclip(tmp_path, text_encoder=FakeText())
    with pytest.raises(ValueError, match="unclip-embedder"):
        pipe.variations(loaded, smooth(1, 16), n=1)


def test_freeze_unclip_embedder_snapshots_evalenc_and_points_unclip_at_it(tmp_path):
    from condiff.models.weights import sha256_file
    from training.export import write_model_card
    from training.unclip import freeze_unclip_embedder

    enc = _tiny_image_encoder(3)
    export_component(enc, tmp_path / "evalenc", kind="image-encoder", network_config=enc.config.to_dict(),
                     card={"title": "condiff-evalenc", "trained": "2026-11-26", "metrics": {"top1": 0.5}})
    _export_unclip(tmp_path, tiny_unclip(upsampler=False), {})  # an older export: no key, i.e. evalenc
    for name in ("unclip-prior", "unclip-decoder"):  # with model cards, as shipped
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        write_model_card(tmp_path / name, name, {k: v for k, v in cfg.items() if k != "files"}, cfg["files"],
                         {"title": name, "summary": "s"})
    assert load_unclip(tmp_path, text_encoder=FakeText()).image_encoder_component == "evalenc"
    dst = freeze_unclip_embedder(tmp_path)
    src = tmp_path / "evalenc"
    for f in ("model.safetensors", "config.json"):
        assert (dst / f).read_bytes() == (src / f).read_bytes()
    digest = sha256_file(dst / "model.safetensors")
    card = (dst / "MODEL_CARD.md").read_text()
    assert digest in card and "frozen snapshot of condiff-evalenc" in card and "2026-11-26" in card
    for name in ("unclip-prior", "unclip-decoder"):
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert cfg[IMAGE_ENCODER_KEY] == "unclip-embedder"
        assert '"image_encoder_component": "unclip-embedder"' in (tmp_path / name / "MODEL_CARD.md").read_text()
    assert load_unclip(tmp_path, text_encoder=FakeText()).image_encoder_component == "unclip-embedder"
    with pytest.raises(FileExistsError):
        freeze_unclip_embedder(tmp_path)


def test_pool_tokens_matches_masked_mean():
    ctx = torch.randn(2, 4, D)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.allclose(pool_tokens(ctx, mask)[0], F.normalize(ctx[0, :2].mean(0), dim=0))


def test_training_stages_small_end_to_end(tmp_path):
    """The four GPU stages (cascade base/SR, unCLIP prior/decoder) on a tiny world with small=True,
    then the exported components load and run through the pipelines."""
    from condiff.data.builder import build_world
    from condiff.data.sources import load_small_sets
    from condiff.models.cascade import load_cascade
    from condiff.pipelines import cascade as cascade_pipe
    from training.cascade import stage_cascade_base, stage_cascade_sr
    from condiff.nn.image_encoder import ImageEncoder, ImageEncoderConfig
    from training.job import JobContext
    from training.unclip import stage_unclip_decoder, stage_unclip_prior
    from condiff.evaluation.world import load_world

    build_world(tmp_path / "world", load_small_sets(), small=True, workers=1, limit=24)
    ctx = JobContext(load_world(tmp_path / "world"), tmp_path / "out", torch.device("cpu"), small=True)
    with pytest.raises(FileNotFoundError, match="evalenc"):
        stage_unclip_prior(ctx)
    weights = tmp_path / "out" / "weights"
    enc = ImageEncoder(ImageEncoderConfig())  # a random-init evaluation encoder stands in for the trained one
    export_component(enc, weights / "evalenc", kind="image-encoder", network_config=enc.config.to_dict())
    for stage in (stage_cascade_base, stage_cascade_sr, stage_unclip_prior, stage_unclip_decoder):
        stage(ctx)
    kinds = {name: json.loads((weights / name / "config.json").read_text())["kind"]
             for name in ("cascade-base", "cascade-sr", "unclip-prior", "unclip-decoder")}
    assert kinds == {"cascade-base": "unet", "cascade-sr": "unet", "unclip-prior": "unclip-prior",
                     "unclip-decoder": "unclip-decoder"}
    assert "consistency PSNR" in (weights / "cascade-sr" / "MODEL_CARD.md").read_text()
    from training.cascade import SR_RESIDUAL_SCALE

    sr_config = json.loads((weights / "cascade-sr" / "config.json").read_text())  # the stage trains residual SR
    assert sr_config["residual"] is True and sr_config["residual_scale"] == SR_RESIDUAL_SCALE
    assert "bicubic baseline consistency PSNR(↓bicubic(x), x) (dB)" in ctx.log["cascade-sr"]
    assert ctx.log["cascade-sr"]["steps"] == 3 and "cos(prior sample, true image embedding)" in ctx.log["unclip-prior"]
    # no unclip-embedder in this job: unCLIP trained on evalenc and says so in both configs
    assert all(json.loads((weights / n / "config.json").read_text())[IMAGE_ENCODER_KEY] == "evalenc"
               for n in ("unclip-prior", "unclip-decoder"))

    text = ctx.cache["minilm"]
    cascade = load_cascade(weights, text_encoder=text)
    assert cascade.sr_residual and cascade.sr_residual_scale == SR_RESIDUAL_SCALE
    up = cascade_pipe.upscale(cascade, smooth(1, 32), steps=1, show_progress=False)
    assert up.images.shape == (1, 3, 64, 64)
    unclip = load_unclip(weights, text_encoder=text)
    assert unclip.upsampler is not None and unclip.image_encoder is not None and unclip.prior is not None
    var = pipe.variations(unclip, smooth(1, 128), n=1, steps=1, sr_steps=1, show_progress=False)
    assert var.images.shape == (1, 3, 128, 128)

    # with an unclip-embedder in the job, the recipes embed with it and write its name
    from training import unclip as recipe

    torch.manual_seed(5)
    other = ImageEncoder(ImageEncoderConfig())
    export_component(other, weights / "unclip-embedder", kind="image-encoder", network_config=other.config.to_dict())
    assert recipe.unclip_encoder_component(ctx) == "unclip-embedder"
    assert recipe._extra(ctx, "x0")[IMAGE_ENCODER_KEY] == "unclip-embedder"
    emb_evalenc = ctx.cache[("unclip_emb", "evalenc")]
    emb_new = recipe.world_embeddings(ctx)
    assert emb_new.shape == emb_evalenc.shape and not torch.allclose(emb_new, emb_evalenc, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(emb_new[:2], F.normalize(other(ctx.world.images[:2].float() / 255), dim=-1), atol=1e-2)


def test_variations_command(tmp_path, monkeypatch):
    import typer
    from PIL import Image
    from typer.testing import CliRunner

    import condiff.models.unclip as unclip_models
    from condiff.commands import variations as variations_cmd
    from condiff.images import read_png_parameters, save_png

    model = tiny_unclip(upsampler=False)
    monkeypatch.setattr(unclip_models, "load_unclip", lambda **kw: model)
    app = typer.Typer()
    app.callback()(lambda: None)
    variations_cmd.register(app)
    src = save_png(smooth(1, 20), tmp_path / "in.png")
    out = tmp_path / "var.png"
    run = CliRunner().invoke(app, ["variations", str(src), "--n", "2", "--seed", "5", "--out", str(out), "--no-progress"])
    assert run.exit_code == 0, run.output
    files = sorted(tmp_path.glob("var-*.png"))
    assert [f.name for f in files] == ["var-0.png", "var-1.png"] and Image.open(files[0]).size == (16, 16)
    assert [read_png_parameters(f)["seed"] for f in files] == [5, 6]
