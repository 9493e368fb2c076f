"""LoRA (thesis eq. 3.17): zero-init identity, merge/unmerge, stacking, both file layouts, diffusers parity."""

import copy
import importlib.util
import warnings

import pytest
import torch
from safetensors.torch import load_file

from condiff.denoisers import Cond
from condiff.nn.unet import UNet, UNetConfig
from condiff.personalize.lora import LoRAConfig, LoRANetwork, find_target_modules, resolve_targets
from condiff.personalize.lora_formats import kohya_name, load_lora, lora_state_dict, parse_lora_spec, save_lora

CFG = UNetConfig(in_channels=4, out_channels=4, sample_size=8, block_out_channels=(16, 32),
                 attention_levels=(True, True), layers_per_block=1, num_attention_heads=2, cross_attention_dim=16,
                 norm_num_groups=8)
HAS_PEFT = importlib.util.find_spec("peft") is not None


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: see conftest.single_thread


def _unet(seed=0):
    torch.manual_seed(seed)
    return UNet(CFG).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10.0, 700.0]), torch.randn(2, 5, 16, generator=g)


def _run(unet, x, t, ctx):
    with torch.no_grad():
        return unet(x, t, Cond(context=ctx))


def _randomize(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def _reference_merge(unet, nets_and_weights):
    """A copy of the U-Net with W0 + Σ w·(α/r)·B·A written by hand into each target weight."""
    ref = copy.deepcopy(unet)
    for net, w in nets_and_weights:
        for comp, name, _, ad in net.items():
            assert comp == "unet"
            layer = ref.get_submodule(name)
            a, b = ad.down.weight.detach(), ad.up.weight.detach()
            if a.ndim == 4:  # 1x1 conv LoRA
                a, b = a[:, :, 0, 0], b[:, :, 0, 0]
                layer.weight.data += (w * ad.alpha / ad.rank * (b @ a))[:, :, None, None]
            else:
                layer.weight.data += w * ad.alpha / ad.rank * (b @ a)
    for h in list(ref.modules()):  # the deepcopy carried the hooks along: drop them
        h._forward_hooks.clear()
    return ref


def test_fresh_lora_is_bit_identical_and_targets_cross_attention():
    unet, (x, t, ctx) = _unet(), _inputs()
    y0 = _run(unet, x, t, ctx)
    net = LoRANetwork.inject({"unet": unet}, LoRAConfig(rank=4), generator=torch.Generator().manual_seed(0))
    names = [n for _, n, _, _ in net.items()]
    assert names and all(".attn2." in n and n.split(".attn2.")[1] in ("to_q", "to_k", "to_v", "to_out.0") for n in names)
    assert torch.equal(_run(unet, x, t, ctx), y0)  # B = 0 (eq. 3.17 init)
    a = torch.cat([ad.down.weight.flatten() for _, _, _, ad in net.items()])
    assert abs(a.std().item() - 1 / 4) < 0.02 and all(ad.up.weight.abs().max() == 0 for _, _, _, ad in net.items())
    # conv targets (1x1 proj_in/proj_out of SD 1.x) and the self-attention preset are identities too
    net2 = LoRANetwork.inject({"unet": unet}, LoRAConfig(rank=2, targets={"unet": "transformer"}))
    assert any(isinstance(h, torch.nn.Conv2d) for _, _, h, _ in net2.items())
    assert torch.equal(_run(unet, x, t, ctx), y0)
    # the host's state-dict keys are untouched (hooks, not wrappers)
    assert list(unet.state_dict()) == list(_unet().state_dict())


def test_merge_unmerge_restores_exactly_and_stacks_with_weights():
    unet, (x, t, ctx) = _unet(), _inputs()
    w0 = {k: v.clone() for k, v in unet.state_dict().items()}
    n1 = _randomize(LoRANetwork.inject({"unet": unet}, LoRAConfig(rank=4, alpha=2.0)), 1)
    n2 = _randomize(LoRANetwork.inject({"unet": unet}, LoRAConfig(rank=2, targets={"unet": "transformer"})), 2)
    n1.weight, n2.weight = 0.5, -1.5
    y_hooks = _run(unet, x, t, ctx)
    y_ref = _run(_reference_merge(unet, [(n1, 0.5), (n2, -1.5)]), x, t, ctx)
    assert (y_hooks - y_ref).abs().max() < 1e-4 and (y_hooks - _run(_unet(), x, t, ctx)).abs().max() > 1e-2
    n1.merge()
    n2.merge()
    assert (_run(unet, x, t, ctx) - y_ref).abs().max() < 1e-4
    n1.unmerge()  # out of order: n2 stays merged
    assert (_run(unet, x, t, ctx) - y_hooks).abs().max() < 1e-4
    n2.unmerge()
    assert all(torch.equal(w0[k], v) for k, v in unet.state_dict().items())  # exact restore
    n1.disable()
    n2.disable()
    assert torch.equal(_run(unet, x, t, ctx), _run(_unet(), x, t, ctx))
    n1.enable()
    n1.weight = 0.5
    n1.merge()
    n1.weight = 1.0  # re-weighting a merged LoRA re-merges it
    n1.detach()
    n2.detach()
    assert all(torch.equal(w0[k], v) for k, v in unet.state_dict().items())


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_file_round_trip_equals_reference_merge(tmp_path, layout):
    unet, (x, t, ctx) = _unet(), _inputs()
    net = _randomize(LoRANetwork.inject({"unet": unet}, LoRAConfig(rank=4, alpha=3.0, targets={"unet": "transformer"})), 5)
    path = save_lora(net, tmp_path / f"{layout}.safetensors", layout)
    keys = list(load_file(str(path)))
    if layout == "kohya":
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha" in keys
    else:
        assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight" in keys
    ref = _run(_reference_merge(unet, [(net, 0.7)]), x, t, ctx)
    net.detach()
    loaded = load_lora(path, {"unet": unet}, weight=0.7)
    assert len(loaded) == len(net)
    for comp, name, _, ad in loaded.items():
        assert torch.allclose(ad.delta_weight(), net.get(comp, name).delta_weight(), atol=1e-6)
    assert (_run(unet, x, t, ctx) - ref).abs().max() < 1e-4


def test_kohya_and_diffusers_files_of_one_lora_have_the_same_effect(tmp_path):
    unet, (x, t, ctx) = _unet(), _inputs()
    net = _randomize(LoRANetwork.inject({"unet": unet}, LoRAConfig(rank=3, alpha=1.0)), 7)
    kohya = save_lora(net, tmp_path / "k.safetensors", "kohya")
    diff = save_lora(net, tmp_path / "d.safetensors", "diffusers")
    net.detach()
    outs = []
    for path in (kohya, diff):
        loaded = load_lora(path, {"unet": unet})
        outs.append(_run(unet, x, t, ctx))
        loaded.detach()
    assert torch.equal(outs[0], outs[1]) or (outs[0] - outs[1]).abs().max() < 1e-6


def test_alternative_key_forms_load(tmp_path):
    """Older diffusers keys, attention-processor keys, PEFT's raw keys and original-LDM kohya names."""
    unet = _unet()
    net = _randomize(LoRANetwork.inject({"unet": unet}, LoRAConfig(rank=2, alpha=4.0)), 3)
    net.detach()
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0"
    ref = net.get("unet", name).delta_weight()
    ad = net.get("unet", name)
    a, b = ad.down.weight.detach(), ad.up.weight.detach()
    proc = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora"
    forms = [
        {f"unet.{name}.lora.down.weight": a, f"unet.{name}.lora.up.weight": b, f"unet.{name}.alpha": torch.tensor(4.0)},
        {f"{proc}.down.weight": a, f"{proc}.up.weight": b * 2.0},  # alpha = r: scale folded
        {f"base_model.model.{name}.lora_A.weight": a, f"base_model.model.{name}.lora_B.weight": b * 2.0},
        # SD's original layout: with layers_per_block=1, input_blocks.3 is level 1's attention block
        {"lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_out_0.lora_down.weight": a,
         "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_out_0.lora_up.weight": b,
         "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_out_0.alpha": torch.tensor(4.0)},
    ]
    for state in forms:
        loaded = load_lora(state, {"unet": unet})
        assert len(loaded) == 1 and torch.allclose(loaded.get("unet", name).delta_weight(), ref, atol=1e-6)
        loaded.detach()
    meta = {"lora_adapter_metadata": '{"unet.lora_alpha": 4.0, "unet.r": 2}'}
    loaded = load_lora({f"unet.{name}.lora_A.weight": a, f"unet.{name}.lora_B.weight": b}, {"unet": unet}, metadata=meta)
    assert torch.allclose(loaded.get("unet", name).delta_weight(), ref, atol=1e-6)
    assert kohya_name("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj") == \
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def test_keys_that_do_not_fit_are_errors_or_warnings(tmp_path):
    unet = _unet()
    z = torch.zeros(2, 16)
    with pytest.raises(ValueError, match="no key .* matches.*lora_unet_nowhere_to_k"):
        load_lora({"lora_unet_nowhere_to_k.lora_down.weight": z, "lora_unet_nowhere_to_k.lora_up.weight": z.T}, {"unet": unet})
    with pytest.raises(ValueError, match="no key .* matches"):
        load_lora({"unet.mid.attn.to_k.lora_A.weight": z}, {"unet": unet})
    good = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    state = {f"unet.{good}.lora_A.weight": torch.zeros(2, 16), f"unet.{good}.lora_B.weight": torch.zeros(16, 2),
             "unet.bogus.layer.lora_A.weight": z}
    with pytest.warns(UserWarning, match="unet.bogus.layer.lora_A.weight"):
        load_lora(state, {"unet": unet}).detach()
    wrong = {f"unet.{good}.lora_A.weight": torch.zeros(2, 768), f"unet.{good}.lora_B.weight": torch.zeros(16, 2)}
    with pytest.raises(ValueError, match="768->16 but the layer is 16->16"):  # an SD 1.x LoRA on another model
        load_lora(wrong, {"unet": unet})
    with pytest.raises(ValueError, match="LoHa"):
        load_lora({"lora_unet_x.hada_w1_a": z}, {"unet": unet})
    with pytest.raises(ValueError, match="match no Linear"):
        LoRANetwork.inject({"unet": unet}, LoRAConfig(targets={"unet": r".*\.nothing"}))
    assert parse_lora_spec("a/b.safetensors:0.6") == ("a/b.safetensors", 0.6)
    assert parse_lora_spec("C:/x.safetensors") == ("C:/x.safetensors", 1.0)
    assert resolve_targets("cross-attention") and len(find_target_modules(unet, resolve_targets("attention"))) == 56


def _tiny_clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=12)
    return CLIPTextModel(cfg).eval()


def test_text_encoder_lora_kohya_keys_round_trip(tmp_path):
    clip = _tiny_clip()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y0 = clip(input_ids=ids).last_hidden_state
    net = _randomize(LoRANetwork.inject({"text_encoder": clip}, LoRAConfig(rank=2, targets={"text_encoder": "text-attention"})), 9)
    with torch.no_grad():
        y1 = clip(input_ids=ids).last_hidden_state
    assert (y1 - y0).abs().max() > 1e-3
    path = save_lora(net, tmp_path / "te.safetensors", "kohya")
    assert "lora_te_text_model_encoder_layers_1_self_attn_out_proj.lora_up.weight" in load_file(str(path))
    net.detach()
    load_lora(path, {"text_encoder": clip})
    with torch.no_grad():
        assert (clip(input_ids=ids).last_hidden_state - y1).abs().max() < 1e-5


@pytest.mark.skipif(not HAS_PEFT, reason="diffusers' LoRA loading needs peft (test-only, optional)")
@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_parity_with_diffusers_lora_loading(tmp_path, layout):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    torch.manual_seed(0)
    ref_unet = UNet2DConditionModel(**CFG.to_diffusers_config()).eval()
    unet = UNet(CFG).eval()
    unet.load_state_dict(ref_unet.state_dict(), strict=True)
    x, t, ctx = _inputs()
    net = _randomize(LoRANetwork.inject({"unet": unet}, LoRAConfig(rank=4, alpha=2.0, targets={"unet": "attention"})), 11)
    ours = _run(unet, x, t, ctx)
    path = save_lora(net, tmp_path / f"{layout}.safetensors", layout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state, alphas = Loader.lora_state_dict(str(path.parent), weight_name=path.name)
        Loader.load_lora_into_unet(state, alphas, ref_unet)
    with torch.no_grad():
        theirs = ref_unet(x, t, ctx).sample
    assert (ours - theirs).abs().max() < 1e-5
    assert (ours - _run(_unet(), x, t, ctx)).abs().max() > 1e-2  # the LoRA does something


@pytest.mark.skipif(not HAS_PEFT, reason="diffusers' LoRA loading needs peft (test-only, optional)")
def test_parity_with_diffusers_text_encoder_lora(tmp_path):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    clip, ref = _tiny_clip(), _tiny_clip()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    net = _randomize(LoRANetwork.inject({"text_encoder": clip}, LoRAConfig(rank=2, alpha=1.0, targets={"text_encoder": "text-attention"})), 4)
    with torch.no_grad():
        ours = clip(input_ids=ids).last_hidden_state
    path = save_lora(net, tmp_path / "te.safetensors", "kohya")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state, alphas = Loader.lora_state_dict(str(path.parent), weight_name=path.name)
        Loader.load_lora_into_text_encoder(state, alphas, ref, prefix="text_encoder")
    with torch.no_grad():
        assert (ref(input_ids=ids).last_hidden_state - ours).abs().max() < 1e-5


def test_state_dict_dtype_and_empty_network():
    unet = _unet()
    net = LoRANetwork.inject({"unet": unet}, LoRAConfig(rank=2))
    sd = lora_state_dict(net, "kohya", dtype=torch.float16)
    assert all(v.dtype == torch.float16 for v in sd.values())
    with pytest.raises(ValueError, match="no adapters"):
        lora_state_dict(LoRANetwork(), "diffusers")
    with pytest.raises(ValueError, match="layout"):
        lora_state_dict(net, "comfy")
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = LoRANetwork.inject({"unet": _unet()}, LoRAConfig(rank=2, init="kaiming"), generator=g1)
    b = LoRANetwork.inject({"unet": _unet()}, LoRAConfig(rank=2, init="kaiming"), generator=g2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # seeded init
