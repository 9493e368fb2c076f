"""Loading Stable Diffusion checkpoints from local files: formats, key maps, detection, offline, safety.

Tiny random-weight SD-shaped models are built with diffusers (a test-only dependency) and saved
(a) as diffusers folders and (b) as single files with ORIGINAL LDM keys. The single files are
written with condiff's export maps, and diffusers' own LDM -> diffusers converters
(``diffusers.loaders.single_file_utils``) must turn them back into exactly the original state dicts;
a few LDM key names known from the real SD 1.5 checkpoint are checked by hand as anchors. So the
LDM layout is checked against an independent implementation, not against the inverse of condiff's
own map. The helpers here are shared with tests/test_sd_parity.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from condiff.denoisers import Cond  # noqa: E402
from condiff.models import sd_keymap as km  # noqa: E402
from condiff.models.inspect import inspect_model  # noqa: E402
from condiff.models.offline import NetworkAccessError, no_network  # noqa: E402
from condiff.models.sd_configs import (  # noqa: E402
    SD_VARIANTS, unet_config_from_ldm, vae_config_from_ldm,
)
from condiff.models.sd_loader import load_controlnet, load_sd  # noqa: E402
from condiff.models.sd_text import canonical_text_state, transformers_to_openclip  # noqa: E402
from condiff.models.sd_tokenizer import SHIPPED_BPE, load_clip_tokenizer, tokenizer_source  # noqa: E402

HIDDEN = 128  # tiny text width = U-Net context width


# ============================================================ tiny SD-shaped models (shared)
def perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add seeded noise to every parameter (diffusers zero-initialises some layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return module.eval()


def tiny_unet(family: str, in_channels: int = 4, seed: int = 0) -> UNet2DConditionModel:
    """3 levels, attention on the first two (like SD's 4 levels with attention on three)."""
    torch.manual_seed(seed)
    if family == "sd1":  # 8 heads per level, 1x1-conv projections
        kw = dict(block_out_channels=(32, 64, 64), attention_head_dim=8, use_linear_projection=False)
    else:  # 64-d heads, linear projections
        kw = dict(block_out_channels=(64, 128, 128), attention_head_dim=[1, 2, 2], use_linear_projection=True)
    net = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=2, cross_attention_dim=HIDDEN,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32, **kw,
    )
    return perturb(net, seed)


def tiny_vae(seed: int = 1) -> AutoencoderKL:
    torch.manual_seed(seed)
    net = AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        sample_size=16,
    )
    return perturb(net, seed)


def tiny_text(family: str, seed: int = 2) -> CLIPTextModel:
    """The full text tower: SD 2.x's has one layer more than its conditioning uses."""
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=3 if family == "sd2" else 2,
        num_attention_heads=HIDDEN // 64, max_position_embeddings=77,
        hidden_act="quick_gelu" if family == "sd1" else "gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407 if family == "sd1" else 0,
    )
    return perturb(CLIPTextModel(cfg), seed)


def conditioning_tower(text: CLIPTextModel, family: str) -> CLIPTextModel:
    """What a diffusers SD folder stores: SD 2.x's tower cut after the penultimate layer."""
    if family == "sd1":
        return text
    cfg = text.config.to_dict()
    cfg["num_hidden_layers"] -= 1
    cut = CLIPTextModel(CLIPTextConfig(**cfg))
    last = f".layers.{cfg['num_hidden_layers']}."
    cut.load_state_dict({k: v for k, v in text.state_dict().items() if last not in k})
    return cut.eval()


def tiny_controlnet(unet: UNet2DConditionModel, seed: int = 5) -> ControlNetModel:
    return perturb(ControlNetModel.from_unet(unet), seed)  # SD's hint encoder (16, 32, 96, 256): 8x the latent


def save_folder(root: Path, unet, vae, text, family: str, prediction: str = "epsilon") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    conditioning_tower(text, family).save_pretrained(root / "text_encoder")
    load_clip_tokenizer(pad_token="<|endoftext|>" if family == "sd1" else "!").save_pretrained(root / "tokenizer")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1, prediction_type=prediction).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def ldm_state(unet, vae, text, family: str) -> dict[str, torch.Tensor]:
    """A single-file state dict with original LDM / CompVis / OpenCLIP names."""
    state = {km.UNET_PREFIX + k: v for k, v in km.unet_diffusers_to_ldm(unet.state_dict()).items()}
    state.update({km.VAE_PREFIX + k: v for k, v in km.vae_diffusers_to_ldm(vae.state_dict()).items()})
    tsd = canonical_text_state(text.state_dict())  # the text_model.* names of SD 1.x files
    if family == "sd1":
        state.update({"cond_stage_model.transformer." + k: v for k, v in tsd.items()})
    else:
        oc = transformers_to_openclip(tsd)
        oc["text_projection"] = torch.eye(HIDDEN)
        oc["logit_scale"] = torch.tensor(4.6)
        state.update({"cond_stage_model.model." + k: v for k, v in oc.items()})
    return {k: v.contiguous() for k, v in state.items()}


def save_single(path: Path, unet, vae, text, family: str, metadata: dict | None = None) -> Path:
    save_file(ldm_state(unet, vae, text, family), str(path), metadata=metadata)
    return path


def build_world(root: Path) -> dict:
    """Tiny SD 1.x (ε) and SD 2.x (v) models in both formats, an inpainting file and a ControlNet."""
    w: dict = {"root": root}
    for fam, pred in (("sd1", "epsilon"), ("sd2", "v_prediction")):
        u, v, t = tiny_unet(fam), tiny_vae(), tiny_text(fam)
        w[fam] = dict(unet=u, vae=v, text=t, tower=conditioning_tower(t, fam),
                      folder=save_folder(root / f"{fam}-folder", u, v, t, fam, pred),
                      single=save_single(root / f"{fam}-tiny-768-v.safetensors" if fam == "sd2"
                                         else root / f"{fam}-tiny.safetensors", u, v, t, fam))
    cn = tiny_controlnet(w["sd1"]["unet"])
    cn.save_pretrained(root / "cn-folder")
    save_file({km.CONTROL_PREFIX + k: v.contiguous() for k, v in km.controlnet_diffusers_to_ldm(cn.state_dict()).items()},
              str(root / "cn-single.safetensors"))
    w["controlnet"] = dict(net=cn, folder=root / "cn-folder", single=root / "cn-single.safetensors")
    return w


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: see conftest.single_thread


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("sd"))


# ============================================================ key maps vs diffusers' converters
def test_ldm_export_agrees_with_diffusers_converters(world):
    from diffusers.loaders import single_file_utils as sfu

    for fam in ("sd1", "sd2"):
        u, v, t = world[fam]["unet"], world[fam]["vae"], world[fam]["text"]
        ldm = ldm_state(u, v, t, fam)
        for ref, back in (
            (u.state_dict(), sfu.convert_ldm_unet_checkpoint(ldm, dict(u.config))),
            (v.state_dict(), sfu.convert_ldm_vae_checkpoint(ldm, dict(v.config))),
        ):
            assert set(back) == set(ref)
            for k in ref:
                assert torch.equal(back[k].reshape(ref[k].shape), ref[k]), k
        if fam == "sd2":
            back = canonical_text_state(sfu.convert_open_clip_checkpoint(t, ldm))
            ref = canonical_text_state(t.state_dict())
            assert set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref)
    cn = world["controlnet"]["net"]
    ldm = {km.CONTROL_PREFIX + k: v for k, v in km.controlnet_diffusers_to_ldm(cn.state_dict()).items()}
    back = sfu.convert_controlnet_checkpoint(ldm, dict(cn.config))
    ref = cn.state_dict()
    assert set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref)


def _meta_sd_models(variant: str):
    with torch.device("meta"):
        return UNet2DConditionModel(**SD_VARIANTS[variant].unet), AutoencoderKL(**SD_VARIANTS[variant].vae)


def test_full_sd15_shape_anchor_keys_and_config_roundtrip():
    from condiff.nn.unet import UNet, UNetConfig, count_parameters

    unet, vae = _meta_sd_models("sd1")
    ldm_unet = km.unet_diffusers_to_ldm(unet.state_dict())
    ldm_vae = km.vae_diffusers_to_ldm(vae.state_dict())
    # names as they appear in the released v1-5-pruned checkpoint (hand-written anchors)
    for key in ("input_blocks.3.0.op.weight", "input_blocks.9.0.op.weight", "input_blocks.11.0.out_layers.3.weight",
                "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "middle_block.1.proj_in.weight",
                "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight", "output_blocks.8.2.conv.weight",
                "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight", "time_embed.2.weight", "out.2.bias"):
        assert key in ldm_unet, key
    assert "output_blocks.2.2.conv.weight" not in ldm_unet and "input_blocks.12.0.op.weight" not in ldm_unet
    for key in ("encoder.down.3.block.1.norm2.weight", "decoder.up.3.upsample.conv.weight",
                "decoder.up.0.block.2.conv2.weight", "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.mid.attn_1.proj_out.weight", "encoder.norm_out.weight"):
        assert key in ldm_vae, key
    assert ldm_vae["decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert "decoder.up.0.upsample.conv.weight" not in ldm_vae and "encoder.down.3.downsample.conv.weight" not in ldm_vae
    n_diffusers = sum(p.numel() for p in unet.parameters())
    assert n_diffusers == 859_520_964  # the SD 1.5 U-Net
    # shapes -> config reproduces the shipped configs of every variant; condiff's U-Net has the same size
    for name, var in SD_VARIANTS.items():
        u, v = _meta_sd_models(name)
        shapes = {k: tuple(x.shape) for k, x in km.unet_diffusers_to_ldm(u.state_dict()).items()}
        assert unet_config_from_ldm(shapes, var.family, var) == var.unet, name
        vshapes = {k: tuple(x.shape) for k, x in km.vae_diffusers_to_ldm(v.state_dict()).items()}
        assert vae_config_from_ldm(vshapes, var) == var.vae, name
        with torch.device("meta"):
            ours = UNet(UNetConfig.from_diffusers_config(var.unet))
        assert count_parameters(ours) == sum(p.numel() for p in u.parameters()), name


def test_keymap_rejects_foreign_keys_with_a_list(world):
    state = km.unet_diffusers_to_ldm(world["sd1"]["unet"].state_dict())
    state["lora_unet_down_blocks_0.alpha"] = torch.zeros(1)
    state["emb_layers.1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"2 key\(s\) do not fit.*lora_unet_down_blocks_0\.alpha"):
        km.unet_ldm_to_diffusers(state)
    with pytest.raises(ValueError, match="not a diffusers U-Net"):
        km.unet_diffusers_to_ldm(state)


# ============================================================ detection
def test_variant_detection(world, tmp_path):
    r1 = inspect_model(world["sd1"]["single"])
    assert (r1.kind, r1.family, r1.variant, r1.prediction) == ("single-file", "sd1", "sd1", "eps")
    r2 = inspect_model(world["sd2"]["single"])  # "768-v" in the name
    assert (r2.family, r2.variant, r2.prediction, r2.prediction_source) == ("sd2", "sd2-768-v", "v", "file name")
    assert inspect_model(world["sd2"]["single"], prediction="eps").variant == "sd2-base"
    rf = inspect_model(world["sd2"]["folder"])
    assert (rf.kind, rf.family, rf.variant, rf.prediction) == ("diffusers-folder", "sd2", "sd2-768-v", "v")
    assert rf.missing == [] and set(rf.components) >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    # 9-channel inpainting U-Net, SD 1.x family
    s = world["sd1"]
    inp = save_single(tmp_path / "inpaint.safetensors", tiny_unet("sd1", in_channels=9), s["vae"], s["text"], "sd1")
    ri = inspect_model(inp)
    assert (ri.variant, ri.prediction) == ("sd1-inpaint", "eps")
    with no_network():
        model = load_sd(inp)
        base = load_sd(s["single"], inpaint=inp)
    assert model.inpaint_unet is model.unet and model.unet.config.in_channels == 9
    assert base.unet.config.in_channels == 4 and base.inpaint_unet.config.in_channels == 9
    with pytest.raises(ValueError, match="not an inpainting checkpoint"):
        load_sd(s["single"], inpaint=s["single"])
    # prediction from safetensors metadata and from an LDM yaml beside the file
    meta = save_single(tmp_path / "sd1-meta.safetensors", s["unet"], s["vae"], s["text"], "sd1",
                       metadata={"modelspec.prediction_type": "v"})
    assert inspect_model(meta).prediction == "v"
    side = save_single(tmp_path / "sd2-plain.safetensors", world["sd2"]["unet"], world["sd2"]["vae"],
                       world["sd2"]["text"], "sd2")
    assert inspect_model(side).prediction_source.startswith("guess")
    side.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: \"eps\"\n")
    assert inspect_model(side).prediction == "eps"
    cn = inspect_model(world["controlnet"]["single"])
    assert cn.kind == "controlnet-file" and "controlnet" in cn.components


def test_folder_missing_parts_are_reported(world, tmp_path):
    import shutil

    folder = shutil.copytree(world["sd1"]["folder"], tmp_path / "partial")
    shutil.rmtree(folder / "tokenizer")
    shutil.rmtree(folder / "scheduler")
    report = inspect_model(folder)
    assert any(m.startswith("tokenizer") for m in report.missing)
    assert any(m.startswith("scheduler") for m in report.missing)
    with no_network():
        model = load_sd(folder)  # falls back to the shipped vocabulary and schedule
    ids, _ = model.text_encoder.tokenize(["a photo of a cat"])
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    shutil.rmtree(folder / "vae")
    assert "vae" in inspect_model(folder).missing
    with pytest.raises(FileNotFoundError, match="vae"):
        load_sd(folder)


# ============================================================ offline, tokenizer
def test_loading_opens_no_socket(world):
    with no_network() as attempts:
        for fam in ("sd1", "sd2"):
            load_sd(world[fam]["folder"])
            load_sd(world[fam]["single"])
        load_controlnet(world["controlnet"]["folder"])
        load_controlnet(world["controlnet"]["single"], family="sd1")
        with pytest.raises(NetworkAccessError):  # the guard is live
            socket.create_connection(("127.0.0.1", 9))
    assert attempts == ["socket.create_connection(('127.0.0.1', 9))"]
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def test_single_file_uses_the_shipped_clip_vocabulary(world):
    digest = hashlib.sha256(SHIPPED_BPE.read_bytes()).hexdigest()
    assert digest in (SHIPPED_BPE.parent / "NOTICE.md").read_text()
    assert inspect_model(world["sd1"]["single"]).components["tokenizer"] == tokenizer_source(None)
    with no_network():
        m1, m2 = load_sd(world["sd1"]["single"]), load_sd(world["sd2"]["single"])
    ids1, mask = m1.text_encoder.tokenize(["a photo of a cat"])
    ids2, _ = m2.text_encoder.tokenize(["a photo of a cat"])
    # the token ids of the real CLIP tokenizer; SD 1.x pads with <|endoftext|>, SD 2.x with "!" (id 0)
    assert ids1.shape == (1, 77) and ids1[0, :9].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 49407, 49407]
    assert ids2[0, :9].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0]
    assert mask[0].sum().item() == 7
    # the folder tokenizer saved by transformers gives the same ids
    tok = load_clip_tokenizer(world["sd1"]["folder"] / "tokenizer")
    assert tok("an astronaut riding a horse")["input_ids"] == load_clip_tokenizer()("an astronaut riding a horse")["input_ids"]


# ============================================================ formats and errors
def test_ckpt_sharded_folder_and_ema_load_the_right_weights(world, tmp_path):
    import shutil

    s = world["sd1"]
    ckpt = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": ldm_state(s["unet"], s["vae"], s["text"], "sd1"), "global_step": 1}, ckpt)
    sharded = shutil.copytree(s["folder"], tmp_path / "sharded")
    shutil.rmtree(sharded / "unet")
    s["unet"].save_pretrained(sharded / "unet", max_shard_size="2MB")
    assert (sharded / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    # a training checkpoint with a flattened EMA copy (model_ema.diffusion_modelinput_blocks00weight …)
    ema_unet = tiny_unet("sd1", seed=9)
    with_ema = ldm_state(s["unet"], s["vae"], s["text"], "sd1")
    for k, v in km.unet_diffusers_to_ldm(ema_unet.state_dict()).items():
        with_ema["model_ema.diffusion_model" + k.replace(".", "")] = v.contiguous()
    save_file(with_ema, str(tmp_path / "with-ema.safetensors"))
    assert any("EMA" in n for n in inspect_model(tmp_path / "with-ema.safetensors").notes)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ctx = torch.randn(1, 77, HIDDEN, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for path, ref_net, kw in ((ckpt, s["unet"], {}), (sharded, s["unet"], {}),
                                  (tmp_path / "with-ema.safetensors", s["unet"], {}),
                                  (tmp_path / "with-ema.safetensors", ema_unet, {"ema": True})):
            with no_network():
                model = load_sd(path, text_encoder=False, **kw)
            ref = ref_net(x, 300, encoder_hidden_states=ctx).sample
            assert (model.unet(x, torch.tensor([300.0]), Cond(context=ctx)) - ref).abs().max() < 1e-5, (path, kw)


class Evil:
    """A pickled object that ``torch.load(weights_only=True)`` must refuse."""


def test_unsafe_or_broken_files_give_clear_errors(world, tmp_path):
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": Evil()}}, bad)
    with pytest.raises(ValueError, match="weights_only"):
        load_sd(bad)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(world["sd1"]["single"].read_bytes()[:5000])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load_sd(trunc)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    with pytest.raises(ValueError, match="not an SD 1.x/2.x checkpoint"):
        load_sd(lora)
    # a U-Net tensor removed: the error names it
    state = ldm_state(world["sd1"]["unet"], world["sd1"]["vae"], world["sd1"]["text"], "sd1")
    state.pop("model.diffusion_model.output_blocks.3.0.skip_connection.weight")
    save_file(state, str(tmp_path / "holey.safetensors"))
    with pytest.raises(ValueError, match=r"up_blocks\.1\.resnets\.0\.conv_shortcut\.weight"):
        load_sd(tmp_path / "holey.safetensors")
    with pytest.raises(ValueError, match="ControlNet"):
        load_sd(world["controlnet"]["single"])
    with pytest.raises(ValueError, match="family"):
        load_controlnet(world["controlnet"]["single"])  # tiny context width: the family must be given


# ============================================================ precision safety
def test_fp16_vae_nan_is_retried_in_fp32_never_black(world):
    with no_network():
        m32 = load_sd(world["sd1"]["single"], text_encoder=False)
        m16 = load_sd(world["sd1"]["single"], dtype=torch.float16, text_encoder=False)
    for m in (m32, m16):  # activations above the fp16 range (65504) in the decoder
        with torch.no_grad():
            m.vae.decoder.conv_in.weight.mul_(1e4)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = m16.vae.decode((z / m16.scaling_factor).half())
    assert not torch.isfinite(raw).all()  # the fp16 path really overflows
    img = m16.decode(z)
    assert torch.isfinite(img).all() and img.std() > 0.05  # not a black (constant) image
    assert m16.info.get("vae_fp32_retry") is True
    assert next(m16.vae.parameters()).dtype == torch.float16  # back to fp16 afterwards
    assert (img - m32.decode(z)).abs().max() < 5e-3  # equals the fp32 model up to fp16 weight rounding


def test_cli_inspect(world):
    import typer
    from typer.testing import CliRunner

    from condiff.commands.models import register

    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["models", "inspect", str(world["sd2"]["single"])])
    assert res.exit_code == 0, res.output
    assert "variant:     sd2-768-v" in res.output and "prediction:  v" in res.output
    res = CliRunner().invoke(app, ["models", "inspect", str(world["sd1"]["folder"]), "--json"])
    assert json.loads(res.output)["variant"] == "sd1"
