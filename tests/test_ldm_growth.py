"""Growing the text-to-image U-Net's decoder, family-balanced sampling and int8 shipping of the ldm."""

import json
import shutil

import pytest
import torch

from condiff.data.builder import build_world
from condiff.data.sources import load_small_sets
from condiff.denoisers import Cond
from condiff.models.weights import load_state, read_config
from condiff.nn.unet import UNet, UNetConfig
from condiff.train.grow import GrowthError, grow_into
from training.balance import WeightedBatches, concept_family, family_weights
from training.job_cli import main as job_main
from training.job import run_job
from training.latent import builtin_unet_config

TINY = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=16, norm_num_groups=8,
            sample_size=8, attention_levels=(True, True), num_attention_heads=2, use_linear_projection=True)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10.0, 700.0]), torch.randn(2, 5, 16, generator=g)


@pytest.mark.parametrize("variant", [{}, {"use_linear_projection": False}, {"cross_attention_dim": None}],
                         ids=["linear-cross", "conv-projection", "self-attention-only"])
def test_grown_decoder_computes_the_same_function_and_its_new_blocks_learn(variant):
    torch.manual_seed(0)
    cfg = {**TINY, **variant}
    small = UNet(UNetConfig(**cfg)).eval()
    for p in small.parameters():  # no zero-initialised layer may hide a difference
        p.data.add_(0.05 * torch.randn_like(p))
    deep = UNet(UNetConfig(**cfg, reverse_transformer_layers_per_block=(3, (2, 1)))).eval()
    new = grow_into(deep, small.state_dict())
    assert new and all(".transformer_blocks." in k and k.startswith("up_blocks.") for k in new)
    assert len(deep.up_blocks[0].attentions[0].transformer_blocks) == 3
    x, t, ctx = _inputs()
    cond = Cond(context=ctx if cfg["cross_attention_dim"] else None)
    with torch.no_grad():
        want = small(x, t, cond)
        got = deep(x, t, cond)
    assert want.abs().mean() > 0.1
    assert (want - got).abs().max() <= 1e-5
    deep.train()
    deep(x, t, cond).square().mean().backward()
    out = deep.up_blocks[0].attentions[0].transformer_blocks[2].ff.net[2].weight
    assert out.abs().max() == 0 and out.grad.abs().max() > 0  # zero output, non-zero gradient: it learns


def test_growth_refuses_what_is_not_a_sub_network():
    deep = UNet(UNetConfig(**TINY, reverse_transformer_layers_per_block=(2, 2)))
    wider = UNet(UNetConfig(**{**TINY, "block_out_channels": (32, 96)}))
    with pytest.raises(GrowthError, match="not a sub-network"):
        grow_into(deep, wider.state_dict())
    shallow = UNet(UNetConfig(**TINY)).state_dict()
    with pytest.raises(GrowthError, match="expansive path"):
        grow_into(deep, {k: v for k, v in shallow.items() if k != "conv_out.bias"})
    deeper_encoder = UNet(UNetConfig(**TINY, transformer_layers_per_block=2))
    with pytest.raises(GrowthError, match="ControlNet copies the contracting path"):
        grow_into(deeper_encoder, shallow)


def test_decoder_depth_configs_give_clear_errors():
    with pytest.raises(ValueError, match="one entry per up block"):
        UNetConfig(**TINY, reverse_transformer_layers_per_block=3)
    with pytest.raises(ValueError, match=r"reverse_transformer_layers_per_block\[1\]"):
        UNetConfig(**TINY, reverse_transformer_layers_per_block=(2, (1, 0)))
    with pytest.raises(ValueError, match="one int per layer|layers_per_block \\+ 1"):
        UNetConfig(**TINY, reverse_transformer_layers_per_block=(2, (1, 1, 1)))
    with pytest.raises(ValueError, match="go in reverse_transformer_layers_per_block"):
        UNetConfig(**TINY, transformer_layers_per_block=((1, 2), 1))


def test_builtin_config_deepens_only_the_decoder_attention_levels():
    cfg = builtin_unet_config(decoder_depth=3)
    assert [cfg.up_transformer_depths(b) for b in range(3)] == [(3, 3), (3, 3), (1, 1)]
    assert cfg.transformer_depths == (1, 1, 1)
    assert builtin_unet_config() == cfg  # what ships
    assert builtin_unet_config(decoder_depth=1).reverse_transformer_layers_per_block is None
    with pytest.raises(ValueError, match="at least 1"):
        builtin_unet_config(decoder_depth=0)


def test_family_weights_pool_skin_tones_and_interpolate_from_uniform_to_equal_shares():
    assert concept_family("waving-hand-medium-dark-skin-tone") == "waving-hand"
    assert concept_family("couple-with-heart-man-man-light-skin-tone") == "couple-with-heart-man-man"
    known = {"artist", "traffic-light"}
    assert concept_family("artist-medium-dark", known) == "artist"  # the short form of some icon sets
    assert concept_family("traffic-light", known) == "traffic-light"  # not a tone: "traffic" is no concept
    assert family_weights(["artist", "artist-dark", "artist-light"], 1.0).tolist() == pytest.approx([1 / 3] * 3)
    names = ["waving-hand", "waving-hand-light-skin-tone", "waving-hand-dark-skin-tone", "door"]
    assert torch.allclose(family_weights(names, 0.0), torch.full((4,), 0.25, dtype=torch.float64))
    w = family_weights(names, 1.0)  # two families, equal shares
    assert w[:3].sum().item() == pytest.approx(0.5) and w[3].item() == pytest.approx(0.5)
    assert w[3] > family_weights(names, 0.5)[3] > 0.25
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        family_weights(names, 1.5)


def test_weighted_batches_follow_the_weights_and_the_generator():
    table = {"x": torch.arange(4), "y": torch.arange(4) * 10}
    draw = WeightedBatches(table, torch.tensor([0.7, 0.1, 0.1, 0.1]), batch_size=4000)
    a = draw(3, torch.Generator().manual_seed(11))
    assert torch.equal(a["x"], draw(3, torch.Generator().manual_seed(11))["x"])  # same seed, same rows
    assert torch.equal(a["y"], a["x"] * 10)  # rows stay whole
    assert (a["x"] == 0).float().mean().item() == pytest.approx(0.7, abs=0.03)
    with pytest.raises(ValueError, match="one entry per row"):
        WeightedBatches(table, torch.ones(3), 4)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    build_world(folder, load_small_sets(), small=True, workers=1, limit=24)
    return folder


def test_job_grows_a_shallow_ldm_trains_it_balanced_with_dropout_and_ships_it_int8(world_dir, tmp_path, capsys):
    run_job(world_dir, tmp_path / "a", ["vae", "ldm"], small=True, device="cpu", ldm_decoder_depth=1, int8=())
    shallow = tmp_path / "a" / "weights"
    assert "weights" not in read_config(shallow / "ldm")  # fp16 when asked
    log = run_job(world_dir, tmp_path / "b", ["ldm"], small=True, device="cpu", init=shallow, ldm_decoder_depth=2,
                  balance={"ldm": 0.5}, dropout={"ldm": 0.1})  # int8 by default
    assert "grown by" in capsys.readouterr().out
    assert log["ldm"]["balance_alpha"] == 0.5
    folder = tmp_path / "b" / "weights" / "ldm"
    conf = read_config(folder)
    assert conf["weights"].startswith("int8")
    net = UNet(UNetConfig.from_dict(conf["network"]))
    net.load_state_dict(load_state(folder))  # int8 shards dequantize into the deeper network
    assert len(net.up_blocks[0].attentions[0].transformer_blocks) == 2
    assert log["ldm"]["dropout"] == 0.1  # the run trained with it ...
    assert conf["network"]["dropout"] == 0.0  # ... but the weights do not carry it to ControlNets or fine-tunes
    shutil.copytree(shallow / "vae", tmp_path / "b" / "weights" / "vae")
    run_job(world_dir, tmp_path / "c", ["ldm"], small=True, device="cpu", init=tmp_path / "b" / "weights")
    assert "grown by" not in capsys.readouterr().out  # no depth given: the --init component's (2) is kept
    assert read_config(tmp_path / "c" / "weights" / "ldm")["network"] == conf["network"]
    log = run_job(world_dir, tmp_path / "d", ["inpaint"], small=True, device="cpu", init=tmp_path / "b" / "weights",
                  dropout={"inpaint": 0.2}, overrides={"inpaint": {"steps": 3}})
    assert log["inpaint"]["dropout"] == 0.2 and log["inpaint"]["balance_alpha"] == 0.0
    inpaint = tmp_path / "d" / "weights" / "ldm-inpaint"
    assert read_config(inpaint)["network"]["dropout"] == 0.0
    assert "dropout 0.2" in json.loads((inpaint / "card.json").read_text())["card"]["summary"]
    stored = {p.name: p.stat().st_size for p in folder.glob("*.safetensors")}
    fp16 = sum(v.numel() * 2 for v in net.state_dict().values())
    assert sum(stored.values()) < 0.6 * fp16
    card = json.loads((folder / "card.json").read_text())["card"]
    assert "family-balanced" in card["summary"] and "int8" in card["summary"] and "dropout 0.1" in card["summary"]


def test_dropout_is_active_in_training_and_ignored_in_inference():
    torch.manual_seed(0)
    net = UNet(builtin_unet_config(decoder_depth=1, dropout=0.3))
    x, t, c = torch.randn(1, 4, 32, 32), torch.tensor([500.0]), Cond(context=torch.randn(1, 3, 384))
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(x, t, c), net(x, t, c))  # a fresh mask each call
        net.eval()
        assert torch.equal(net(x, t, c), net(x, t, c))
        plain = UNet(builtin_unet_config(decoder_depth=1)).eval()
        plain.load_state_dict(net.state_dict())  # no parameters of its own: the same weights, the same output
        assert torch.equal(plain(x, t, c), net(x, t, c))


@pytest.mark.parametrize("args, message", [
    (["--balance", "vae=0.5"], "use ldm or inpaint"), (["--balance", "ldm=2"], r"\[0, 1\]"),
    (["--int8", "evalenc"], "use ldm or inpaint"), (["--ldm-decoder-depth", "0"], "at least 1"),
    (["--dropout", "vae=0.1"], "use ldm or inpaint"), (["--dropout", "ldm=1"], r"\[0, 1\)"),
    (["--dropout", "ldm=x"], "--dropout"),
])
def test_bad_growth_balance_int8_and_dropout_options_are_refused(args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        job_main(["--world", str(tmp_path), "--out", str(tmp_path / "o"), *args])


def test_run_job_checks_its_options_before_any_stage(tmp_path):
    with pytest.raises(ValueError, match="list of stage names"):
        run_job(tmp_path, tmp_path / "o", ["ldm"], int8="ldm")
    with pytest.raises(ValueError, match="use ldm or inpaint"):
        run_job(tmp_path, tmp_path / "o", ["ldm"], balance={"vae": 0.5})
    with pytest.raises(ValueError, match="--dropout: probabilities"):
        run_job(tmp_path, tmp_path / "o", ["ldm"], dropout={"ldm": "0.1"})
