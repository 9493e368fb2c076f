"""Weighted averages of component folders (condiff.models.merge, `condiff models merge`)."""

import os
import stat

import pytest
import torch
from typer.testing import CliRunner

from condiff import cli
from condiff.denoisers import Cond
from condiff.models.merge import MergeError, merge_components, merge_states
from condiff.models.weights import load_state, read_config, save_weights
from condiff.nn.unet import UNet, UNetConfig

cli._register_commands()
CONFIG = {"kind": "unet", "network": {"width": 8}, "default_guidance": 5.0}


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(8, 4, 3, 3, generator=g), "conv.bias": torch.randn(8, generator=g),
            "norm.steps": torch.tensor(3)}


def _folder(path, seed, config=CONFIG, dtype=torch.float32):
    save_weights(_state(seed), path, config, dtype=dtype)
    return path


def test_merge_states_is_the_normalised_weighted_sum():
    a, b, c = _state(0), _state(1), _state(2)
    uniform = merge_states([a, b, c])
    assert torch.allclose(uniform["conv.weight"], (a["conv.weight"] + b["conv.weight"] + c["conv.weight"]) / 3)
    weighted = merge_states([a, b], [3, 1])  # normalised to 0.75 / 0.25
    assert torch.allclose(weighted["conv.bias"], 0.75 * a["conv.bias"] + 0.25 * b["conv.bias"])
    assert torch.equal(weighted["norm.steps"], a["norm.steps"])  # equal integer buffers are kept
    assert torch.equal(merge_states([a, b], [1, 0])["conv.weight"], a["conv.weight"])


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("conv.bias"), "different parameters"),
    (lambda s: s.update({"conv.bias": torch.zeros(4)}), "different shapes"),
    (lambda s: s.update({"norm.steps": torch.tensor(4)}), "integer buffer"),
    (lambda s: s["conv.weight"].__setitem__((0, 0, 0, 0), float("nan")), "not finite"),
])
def test_merge_states_refuses_what_cannot_be_averaged(change, message):
    b = _state(1)
    change(b)
    with pytest.raises(MergeError, match=message):
        merge_states([_state(0), b])


@pytest.mark.parametrize("weights, message", [([1.0], "one weight per source"), ([1.0, -1.0], "non-negative"),
                                              ([0.0, 0.0], "positive sum"), ([float("inf"), 1.0], "finite")])
def test_merge_states_checks_the_weights(weights, message):
    with pytest.raises(MergeError, match=message):
        merge_states([_state(0), _state(1)], weights)
    with pytest.raises(MergeError, match="at least two"):
        merge_states([_state(0)])


def test_merge_components_writes_the_average_as_a_new_readable_folder(tmp_path):
    a, b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1)
    out = tmp_path / "out"
    config = merge_components([a, b], out, [1, 3], dtype="fp32")
    merged = load_state(out)  # checksums verified
    expect = 0.25 * _state(0)["conv.weight"] + 0.75 * _state(1)["conv.weight"]
    assert torch.allclose(merged["conv.weight"], expect)
    assert config["merged_from"] == [{"source": str(a), "weight": 0.25}, {"source": str(b), "weight": 0.75}]
    assert config["default_guidance"] == 5.0 and read_config(out)["kind"] == "unet"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not left private by the temporary folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary leftovers


def _shard_dtypes(folder):
    from safetensors import safe_open

    with safe_open(str(folder / next(iter(read_config(folder)["files"]))), framework="pt") as f:
        return {k: f.get_tensor(k).dtype for k in f.keys()}


def test_merge_components_keeps_the_sources_storage_int8_or_fp32(tmp_path):
    a = _folder(tmp_path / "a", 0, dtype=torch.int8)
    b = _folder(tmp_path / "b", 1, dtype=torch.int8)
    config = merge_components([a, b], tmp_path / "out")
    assert "int8" in config["weights"] and _shard_dtypes(tmp_path / "out")["conv.weight"] == torch.int8
    avg = (load_state(a)["conv.weight"] + load_state(b)["conv.weight"]) / 2
    got = load_state(tmp_path / "out")["conv.weight"]
    row_scale = avg.flatten(1).abs().amax(1) / 127
    assert ((got - avg).abs().flatten(1).amax(1) <= row_scale * 0.51 + 1e-6).all()
    merge_components([_folder(tmp_path / "c", 0), _folder(tmp_path / "d", 1)], tmp_path / "out32")  # fp32 sources
    assert _shard_dtypes(tmp_path / "out32")["conv.weight"] == torch.float32
    merge_components([tmp_path / "c", tmp_path / "d"], tmp_path / "out16", dtype="fp16")
    assert _shard_dtypes(tmp_path / "out16")["conv.weight"] == torch.float16


def test_merge_components_refuses_other_architectures_existing_outputs_and_in_place(tmp_path):
    a = _folder(tmp_path / "a", 0)
    other = _folder(tmp_path / "other", 1, config={**CONFIG, "network": {"width": 16}})
    with pytest.raises(MergeError, match=r"differs .* in \['network'\]"):
        merge_components([a, other], tmp_path / "out")
    b = _folder(tmp_path / "b", 1)
    taken = _folder(tmp_path / "taken", 2)
    with pytest.raises(MergeError, match="exists"):
        merge_components([a, b], taken)
    merge_components([a, b], taken, overwrite=True)
    assert torch.allclose(load_state(taken)["conv.bias"], (_state(0)["conv.bias"] + _state(1)["conv.bias"]) / 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "other", "taken"]  # the old copy is gone
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(MergeError, match="not a component folder"):
        merge_components([a, b], tmp_path / "user", overwrite=True)
    assert (tmp_path / "user" / "notes.txt").read_text() == "mine"
    nested = _folder(tmp_path / "outer" / "b", 1)
    (tmp_path / "outer" / "config.json").write_text("{}")
    with pytest.raises(MergeError, match="contains one of the sources"):
        merge_components([a, nested], tmp_path / "outer", overwrite=True)
    assert (nested / "config.json").exists()
    (tmp_path / "a_file").write_text("not a folder")
    merge_components([a, b], tmp_path / "a_file", overwrite=True)  # a file in the way is replaced when allowed
    assert (tmp_path / "a_file" / "config.json").exists()
    with pytest.raises(MergeError, match="one of the sources"):
        merge_components([a, b], a, overwrite=True)
    with pytest.raises(MergeError, match="cannot read"):
        merge_components([a, tmp_path / "missing"], tmp_path / "out2")
    bad = _folder(tmp_path / "bad", 3)
    shard = next(bad.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(MergeError, match="cannot read the weights"):
        merge_components([a, bad], tmp_path / "out4")
    with pytest.raises(MergeError, match="unknown dtype"):
        merge_components([a, b], tmp_path / "out3", dtype="bf8")


def test_merge_components_accepts_sources_trained_with_other_dropout(tmp_path):
    """Dropout has no parameters: copies trained with and without it average, and the average (trained by no run)
    is written without it, in nested configs (a ControlNet's ``unet``) too."""
    a = _folder(tmp_path / "a", 0, config={**CONFIG, "network": {"width": 8, "dropout": 0.1}})
    b = _folder(tmp_path / "b", 1, config={**CONFIG, "network": {"width": 8, "dropout": 0.0}})
    merge_components([a, b], tmp_path / "out")
    assert read_config(tmp_path / "out")["network"] == {"width": 8, "dropout": 0.0}
    c = _folder(tmp_path / "c", 2, config={**CONFIG, "network": {"width": 16, "dropout": 0.1}})
    with pytest.raises(MergeError, match="differs"):
        merge_components([a, c], tmp_path / "out2")
    nested = [_folder(tmp_path / f"cn{i}", i, config={**CONFIG, "network": {"unet": {"width": 8, "dropout": p}}})
              for i, p in ((0, 0.1), (1, 0.0))]
    merge_components(nested, tmp_path / "out3")
    assert read_config(tmp_path / "out3")["network"] == {"unet": {"width": 8, "dropout": 0.0}}


def test_cli_merge_of_two_copies_of_a_unet_is_that_unet(tmp_path):
    """Averaging two copies of one network gives that network back; the CLI writes it and names its sources."""
    cfg = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(32, 32), attention_levels=(False, True),
                     layers_per_block=1, cross_attention_dim=16, num_attention_heads=(1, 2), norm_num_groups=8)
    net = UNet(cfg)
    for name in ("a", "b"):
        save_weights(net.state_dict(), tmp_path / name, {"kind": "unet", "network": cfg.to_dict()}, dtype=torch.float32)
    res = CliRunner().invoke(cli.app, ["models", "merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                       "--out", str(tmp_path / "m"), "--dtype", "fp32"])
    assert res.exit_code == 0, res.output
    assert "0.5 ×" in res.output
    merged = UNet(cfg)
    merged.load_state_dict(load_state(tmp_path / "m"))
    x, t, cond = torch.randn(1, 4, 8, 8), torch.tensor([10.0]), Cond(context=torch.randn(1, 3, 16))
    with torch.no_grad():
        assert torch.allclose(merged(x, t, cond), net(x, t, cond), atol=1e-6)
    res = CliRunner().invoke(cli.app, ["models", "merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                       "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "exists" in res.output
    res = CliRunner().invoke(cli.app, ["models", "merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                       "--out", str(tmp_path / "n"), "--weights", "1,x"])
    assert res.exit_code != 0 and "comma-separated numbers" in res.output
