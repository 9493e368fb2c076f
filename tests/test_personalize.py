"""Personalization training on a tiny latent diffusion model: textual inversion, DreamBooth, LoRA, CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from condiff.models.ldm import LatentDiffusion
from condiff.nn.autoencoder import AutoencoderConfig, AutoencoderKL
from condiff.nn.unet import UNet, UNetConfig
from condiff.personalize import (
    DreamBoothConfig,
    ImageSet,
    LoRATrainConfig,
    TextualInversionConfig,
    build_captions,
    generate_class_images,
    identifier_rarity,
    load_embedding,
    load_lora,
    prior_preservation_loss,
    rare_identifiers,
    train_dreambooth,
    train_lora,
    train_textual_inversion,
)
from condiff.personalize.embeddings import token_embedding
from condiff.personalize.lora_formats import lora_components
from condiff.personalize.train_common import diffusion_loss, encode_latents, prompt_cond
from condiff.schedules import DiscreteSchedule
from test_embeddings import DIM, TinyText


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: see conftest.single_thread


def tiny_ldm(text=None, prediction="eps"):
    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, sample_size=8, block_out_channels=(16, 32),
                           attention_levels=(True, True), layers_per_block=1, num_attention_heads=2,
                           cross_attention_dim=DIM, norm_num_groups=8)).eval()
    vae = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                                          sample_size=16, scaling_factor=1.0)).eval()
    return LatentDiffusion("tiny", unet, vae, text if text is not None else TinyText(),
                           DiscreteSchedule.named("scaled_linear", 1000), prediction, 1.0, 16)


def subject_images(n=3):
    return ImageSet(torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(42)) * 2 - 1)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


FAST = dict(steps=3, progress=False, checkpoint_every=0)


# ------------------------------------------------------------------------------ textual inversion
def test_textual_inversion_changes_only_the_new_token_rows(tmp_path):
    model = tiny_ldm()
    shared = model.text_encoder  # e.g. the registry's cached encoder: must not change
    unet0, vae0, shared0 = _params(model.unet), _params(model.vae), _params(shared)
    text0 = {k: v for k, v in _params(model.text_encoder.bert).items() if "word_embeddings" not in k}
    table0 = token_embedding(model.text_encoder).weight.detach().clone()
    cfg = TextualInversionConfig(token="<zq>", initializer="woman", num_vectors=2, lr=5e-2, **FAST)
    res = train_textual_inversion(model, subject_images(), cfg, out=tmp_path / "zq.safetensors")
    table = token_embedding(model.text_encoder).weight.detach()
    ids = res.token_ids
    assert ids == [table0.shape[0], table0.shape[0] + 1]
    assert torch.equal(table[: table0.shape[0]], table0)  # every old row bit-identical
    init = table0[model.text_encoder.tokenizer("woman", add_special_tokens=False)["input_ids"]].mean(0)
    assert all((table[i] - init).abs().max() > 1e-3 for i in ids)  # the new rows moved from the initializer
    assert _same(unet0, _params(model.unet)) and _same(vae0, _params(model.vae))
    assert _same(text0, {k: v for k, v in _params(model.text_encoder.bert).items() if "word_embeddings" not in k})
    assert not table.requires_grad
    assert model.text_encoder is not shared and _same(shared0, _params(shared)) and "<zq>" not in shared.tokenizer.get_vocab()
    saved = load_embedding(tmp_path / "zq.safetensors", token="<zq>")
    assert torch.equal(saved.vectors, table[ids])


def _sd_like_model():
    """The tiny model with Stable Diffusion's text-encoder class (which encodes under torch.no_grad)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from condiff.models.sd_text import SDTextEncoder

    tok = TinyText().tokenizer
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=DIM, intermediate_size=2 * DIM,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16))
    return tiny_ldm(text=SDTextEncoder(clip.eval().requires_grad_(False), tok))


def test_text_side_training_through_an_inference_only_text_encoder():
    """SD's text encoder computes under torch.no_grad; textual inversion and text LoRAs still learn."""
    model = _sd_like_model()
    before = token_embedding(model.text_encoder).weight.detach().clone()
    res = train_textual_inversion(model, subject_images(2), TextualInversionConfig(token="<zq>", lr=5e-2, **FAST))
    after = token_embedding(model.text_encoder).weight.detach()
    (i,) = res.token_ids
    assert torch.equal(after[:i], before[:i]) and (after[i] - before[:i].mean(0)).abs().max() > 0
    assert (after[i] - res.embedding.vectors[0]).abs().max() == 0
    cfg = LoRATrainConfig(rank=2, lr=1e-2, targets={"text_encoder": "text-attention"}, **FAST)
    net = train_lora(_sd_like_model(), subject_images(2), ["sks, a woman"] * 2, cfg).network
    assert net.components == ["text_encoder"]
    assert all(ad.up.weight.abs().max() > 0 for _, _, _, ad in net.items())  # B left zero: gradients arrived


# ------------------------------------------------------------------------------ DreamBooth
def test_prior_preservation_term_is_the_loss_on_class_images():
    model = tiny_ldm()
    loss_fn, denoiser = diffusion_loss(model), model.denoiser()
    z = encode_latents(model, subject_images(2).images)
    zc = encode_latents(model, subject_images(4).images[2:])  # stand-ins for generated class images
    with torch.no_grad():
        c_subject = prompt_cond(model, ["a photo of sks woman"] * 2)
        c_class = prompt_cond(model, ["a photo of woman"] * 2)

    def total(lam, class_x0=zc):
        model.unet.zero_grad(set_to_none=True)
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
        loss, parts = prior_preservation_loss(loss_fn, denoiser, z, c_subject, class_x0, c_class, lam, g1, g2)
        loss.backward()
        return loss.detach(), parts, torch.cat([p.grad.flatten() for p in model.unet.parameters()])

    model.unet.requires_grad_(True)
    l0, p0, g0 = total(0.0)
    l5, p5, g5 = total(0.5)
    model.unet.zero_grad(set_to_none=True)
    class_only = loss_fn(denoiser, zc, c_class, torch.Generator().manual_seed(2)).mean()
    class_only.backward()
    g_class = torch.cat([p.grad.flatten() for p in model.unet.parameters()])
    assert "loss_class" not in p0 and p5["loss_subject"] == p0["loss_subject"]
    assert torch.allclose(l5 - l0, 0.5 * class_only.detach(), rtol=1e-5, atol=1e-7)
    assert torch.allclose(g5 - g0, 0.5 * g_class, rtol=1e-4, atol=1e-6)
    assert abs(total(0.5, zc.flip(0))[0] - l5) > 1e-6  # the term depends on the class images


def test_dreambooth_trains_the_unet_and_caches_class_images(tmp_path, monkeypatch):
    model = tiny_ldm()
    unet0, vae0, text0 = _params(model.unet), _params(model.vae), _params(model.text_encoder.bert)
    cfg = DreamBoothConfig(identifier="sks", class_noun="woman", num_class_images=2, class_steps=2, lr=1e-3, **FAST)
    with pytest.warns(UserWarning, match="split into pieces"):  # "sks" is two WordPieces for MiniLM's vocabulary
        res = train_dreambooth(model, subject_images(), cfg, class_cache=tmp_path / "cls")
    assert not _same(unet0, _params(model.unet))
    assert _same(vae0, _params(model.vae)) and _same(text0, _params(model.text_encoder.bert))
    assert len(res.class_images) == 2 and all(p.exists() for p in res.class_images)
    assert all("loss_class" in h for h in res.loop.history) and res.loop.history[0]["lr"] == 1e-3
    # cached: a second request samples nothing
    monkeypatch.setattr("condiff.samplers.sample", lambda *a, **k: pytest.fail("class images were regenerated"))
    again = generate_class_images(model, cfg.class_prompt, 2, tmp_path / "cls", seed=0, steps=2)
    assert again == res.class_images
    monkeypatch.undo()
    # seeded: the same settings in a fresh folder give the same pixels
    fresh = tiny_ldm()
    a = generate_class_images(fresh, "a photo of woman", 1, tmp_path / "c1", seed=3, steps=2)
    b = generate_class_images(fresh, "a photo of woman", 1, tmp_path / "c2", seed=3, steps=2)
    assert np.array_equal(np.asarray(Image.open(a[0])), np.asarray(Image.open(b[0])))


def test_identifier_rarity_lookup():
    tok = TinyText().tokenizer
    sks = identifier_rarity(tok, "sks", corpus=["a photo of sks", "no"])
    assert sks.pieces == ["sk", "##s"] and not sks.single_token and sks.corpus_count == 1
    assert "2 pieces" in sks.describe()
    found = rare_identifiers(tok, 3, corpus=["a photo of a cat"], seed=1)
    assert len(found) == 3
    for r in found:
        assert r.single_token and 0.6 <= r.rank_fraction <= 0.98 and r.corpus_count == 0 and 3 <= len(r.word) <= 4
    with pytest.raises(ValueError, match="one word"):
        identifier_rarity(tok, "two words")


# ------------------------------------------------------------------------------ LoRA training
def test_lora_training_resumes_exactly_and_leaves_the_model_frozen(tmp_path):
    caps = ["sks, a photo of a woman"] * 3
    cfg = LoRATrainConfig(rank=2, lr=1e-2, steps=4, progress=False, checkpoint_every=2,
                          targets={"unet": "cross-attention", "text_encoder": "text-attention"})
    straight_model = tiny_ldm()
    unet0 = _params(straight_model.unet)
    straight = train_lora(straight_model, subject_images(), caps, cfg, out=tmp_path / "a.safetensors")
    assert _same(unet0, _params(straight_model.unet))  # W0 stays locked
    assert "text_encoder" in straight.network.components

    class Stop(Exception):
        pass

    part_model = tiny_ldm()
    ckpt = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(Stop):  # killed right after the checkpoint at step 2
        _killed_run(part_model, caps, cfg, ckpt, Stop)
    resumed = train_lora(tiny_ldm(), subject_images(), caps, cfg, checkpoint=ckpt, resume=True)
    assert resumed.loop.resumed_from == 2
    assert [h["loss"] for h in resumed.loop.history] == [h["loss"] for h in straight.loop.history]
    for (k, p), (k2, q) in zip(straight.network.named_parameters(), resumed.network.named_parameters()):
        assert k == k2 and torch.equal(p, q)
    # the saved file has the trained effect when loaded onto a fresh model
    fresh = tiny_ldm()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = straight_model.encode_prompts(caps[:1])
        want = straight_model.denoiser()(x, torch.tensor([2.0]), cond)
        load_lora(tmp_path / "a.safetensors", lora_components(fresh))
        got = fresh.denoiser()(x, torch.tensor([2.0]), fresh.encode_prompts(caps[:1]))
    assert (want - got).abs().max() < 1e-5


def _killed_run(model, caps, cfg, ckpt, exc):
    """Run ``cfg`` but raise ``exc`` right after the step-2 checkpoint was written."""
    import condiff.personalize.train_common as tc

    original = tc._save_checkpoint

    def save_then_die(path, step, *args, **kwargs):
        original(path, step, *args, **kwargs)
        if step == 2:
            raise exc

    tc._save_checkpoint = save_then_die
    try:
        train_lora(model, subject_images(), caps, cfg, checkpoint=ckpt)
    finally:
        tc._save_checkpoint = original


# ------------------------------------------------------------------------------ data helpers
def test_image_folder_captions_and_nearest_concepts(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[5:15, 5:25, 3] = 255  # transparent border -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((16, 16, 3), 10, np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path / "c.png")
    (tmp_path / "a.txt").write_text("a red card\n")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "b.png", "text": "a dark square"}) + "\n")
    images = ImageSet.from_folder(tmp_path, 16)
    assert images.images.shape == (3, 3, 16, 16) and images.images.min() >= -1 and images.images.max() <= 1
    assert torch.allclose(images.images[0, :, 0, 0], torch.ones(3))  # white where it was transparent
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(images.sample(4, g1)[1], images.sample(4, g2)[1])  # seeded augmentation
    with pytest.raises(ValueError, match="no caption for c.png"):
        build_captions(images.paths, "sks")
    concepts = ["a bright thing", "a dark thing"]
    embed_images = lambda x: torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], dim=1)  # noqa: E731
    embed_texts = lambda names: torch.tensor([[1.0, -1.0] if "bright" in n else [-1.0, 1.0] for n in names])  # noqa: E731
    caps = build_captions(images.paths, "sks", images=images.images, concepts=concepts,
                          embed_images=embed_images, embed_texts=embed_texts)
    assert caps == ["sks, a red card", "sks, a dark square", "sks, a picture of a bright thing"]
    caps = build_captions(images.paths, "sks", captions={"c.png": "sks at the end"}, default="x")
    assert caps[2] == "sks at the end"


# ------------------------------------------------------------------------------ CLI
@pytest.mark.filterwarnings("ignore:the identifier may carry")
def test_cli_runs_two_step_jobs(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from condiff.commands import personalize as cmd

    monkeypatch.setattr(cmd, "load_model", lambda name, device: tiny_ldm())
    app = typer.Typer()
    cmd.register(app)
    folder = tmp_path / "subject"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    runner = CliRunner()
    common = ["--images", str(folder), "--class-noun", "woman", "--steps", "2", "--device", "cpu", "--no-progress", "--json"]
    jobs = {
        "lora": (["personalize", "lora", "--layout", "kohya", "--out", str(tmp_path / "l.safetensors")], "l.safetensors"),
        "ti": (["personalize", "textual-inversion", "--token", "<zq>", "--num-vectors", "2", "--format", "a1111-pt",
                "--out", str(tmp_path / "zq.pt")], "zq.pt"),
        "db": (["personalize", "dreambooth", "--num-class-images", "1", "--class-steps", "2",
                "--out", str(tmp_path / "db.safetensors")], "db.safetensors"),
    }
    for name, (args, out) in jobs.items():
        result = runner.invoke(app, args + common)
        assert result.exit_code == 0, (name, result.output, result.exception)
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["steps"] == 2 and report["bytes"] == (tmp_path / out).stat().st_size > 0
    assert load_embedding(tmp_path / "zq.pt", token="<zq>").num_vectors == 2
    again = runner.invoke(app, jobs["lora"][0] + common)  # no silent overwrite
    assert again.exit_code != 0 and isinstance(again.exception, FileExistsError)
