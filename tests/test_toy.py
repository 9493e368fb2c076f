"""The toy end-to-end job: each objective trains a model that beats a stated sliced-W distance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from condiff.cli import _register_commands, app
from condiff.nn.toy import ToyMLP
from condiff.testing.gmm import GaussianMixture, sliced_wasserstein, two_moons_mixture
from condiff.toy import ToyConfig, run_toy
from condiff.train import load_recipe

REPO = Path(__file__).resolve().parents[1]

# SW₁ between 2000 samples and 2000 fresh mixture points. For scale: two independent data samples
# give ≈ 0.075, the exact denoiser through the same sampler ≈ 0.07–0.08, and the best single Gaussian
# (the mixture's mean and covariance) ≈ 0.47. A model below 0.2 has learned the three modes.
SW_BOUND = 0.2
FAST = dict(steps=400, hidden=64, lr=3e-3, sample_steps=24, log_every=100, checkpoint_every=0)


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: see conftest.single_thread


def test_moment_matched_gaussian_does_not_pass_the_bound():
    mix = two_moons_mixture()
    gauss = GaussianMixture(torch.ones(1), mix.mean()[None], mix.covariance()[None])
    fresh = mix.sample(2000, torch.Generator().manual_seed(20_000)).float()
    assert sliced_wasserstein(gauss.sample(2000, torch.Generator().manual_seed(1)).float(), fresh) > 2 * SW_BOUND


@pytest.mark.parametrize("loss", ["eps", "dsm", "v", "edm"])
def test_trained_toy_model_beats_the_sliced_w_bound(loss):
    result = run_toy(ToyConfig(loss=loss, **FAST), progress=False)
    assert result.steps == 400
    assert result.sliced_w < SW_BOUND, result
    assert result.sliced_w_data_floor < 0.1 and result.sliced_w_exact_denoiser < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("loss", ["eps", "edm"])
def test_toy_trains_on_cuda_with_bf16(loss):
    result = run_toy(ToyConfig(loss=loss, **FAST), progress=False, device="cuda")
    assert result.sliced_w < SW_BOUND, result


def test_toy_mlp_contract_and_class_labels():
    net = ToyMLP(2, 16, 1, num_classes=3)
    x = torch.randn(4, 2)
    from condiff.denoisers import Cond

    with torch.no_grad():
        torch.nn.init.normal_(net.out.weight)
        a = net(x, torch.full((4,), 5.0), Cond(class_labels=torch.tensor([0, 1, 2, -1])))
        b = net(x, torch.full((4,), 5.0), None)  # no labels = the null label
    assert a.shape == (4, 2) and torch.allclose(a[3], b[3]) and not torch.allclose(a[0], b[0])
    with pytest.raises(ValueError, match=r"\[-1, 3\)"):
        net(x, torch.zeros(4), Cond(class_labels=torch.tensor([0, 1, 2, 3])))
    with pytest.raises(ValueError, match="expects input"):
        net(torch.randn(4, 3), torch.zeros(4))


def test_cli_train_toy_writes_outputs_and_resumes(tmp_path):
    _register_commands()
    runner = CliRunner()
    out = tmp_path / "toy"
    def args(steps, *extra):
        return ["train", "toy", "--loss", "edm", "--steps", str(steps), "--out", str(out), "--device", "cpu",
                "--no-progress", *extra]

    res = runner.invoke(app, args(60))
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "sliced_w:" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loss"] == "edm" and metrics["steps"] == 60 and metrics["sliced_w"] > 0
    weights = load_file(str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    net = ToyMLP(**config["network"])
    net.load_state_dict(weights)  # the shipped file rebuilds the network
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # same folder again: refused without --resume/--overwrite; --resume continues to the new step count
    again = runner.invoke(app, args(60))
    assert again.exit_code != 0 and isinstance(again.exception, FileExistsError)
    res = runner.invoke(app, args(90, "--resume"))
    assert res.exit_code == 0, res.output + repr(res.exception)
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [50, 60, 90]
    # --resume of the finished run keeps its record (it used to rewrite final_loss as NaN)
    final = json.loads((out / "metrics.json").read_text())["final_loss"]
    res = runner.invoke(app, args(90, "--resume"))
    assert res.exit_code == 0, res.output + repr(res.exception)
    again = json.loads((out / "metrics.json").read_text())
    assert again["final_loss"] == final and again["steps"] == 90


def test_cli_train_run_recipe(tmp_path):
    _register_commands()
    shipped = load_recipe(REPO / "recipes" / "toy2d.toml")
    assert shipped["kind"] == "toy2d" and ToyConfig.from_dict(shipped["toy"]).loss == "eps"
    recipe = tmp_path / "r.toml"
    recipe.write_text('kind = "toy2d"\n[toy]\nloss = "v"\nsteps = 20\nn_eval = 200\nsample_steps = 4\n')
    res = CliRunner().invoke(app, ["train", "run", str(recipe), "--out", str(tmp_path / "o"), "--device", "cpu",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["loss"] == "v"
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "unet-on-mars"\n')
    res = CliRunner().invoke(app, ["train", "run", str(bad)])
    assert isinstance(res.exception, ValueError) and "unknown recipe kind 'unet-on-mars'" in str(res.exception)
    assert "toy2d" in str(res.exception)
    typo = tmp_path / "typo.toml"
    typo.write_text('kind = "toy2d"\n[toy]\nstepz = 3\n')
    res = CliRunner().invoke(app, ["train", "run", str(typo)])
    assert isinstance(res.exception, ValueError) and "stepz" in str(res.exception)
