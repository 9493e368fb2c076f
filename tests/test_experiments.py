"""The thesis's experiments: a reduced `condiff demo` end to end on a tiny model, sweeps, configs, personalization."""

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from condiff.experiments import config as cfgmod
from condiff.experiments import runner
from condiff.experiments.context import EvalEncoder, ExperimentContext
from condiff.experiments.sweep import Axis, image_grid, parse_axis, pipeline_renderer, run_sweep
from condiff.models import registry
from condiff.nn.controlnet import ControlNet
from condiff.nn.image_encoder import ImageEncoder, ImageEncoderConfig
from condiff.testing.tiny import HashTextEncoder, tiny_ldm

STAND_IN = "untrained evalenc stand-in (test)"


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: see conftest.single_thread


def stand_in_evalenc() -> EvalEncoder:
    """A random-weight image tower + hashed word vectors: the real evalenc's interface, no weights needed."""
    torch.manual_seed(0)
    enc = ImageEncoder(ImageEncoderConfig(image_size=32, block_out_channels=(8, 16), embed_dim=32, norm_num_groups=4))
    text = HashTextEncoder(dim=32, max_length=8)

    def pooled(prompts):
        ctx, mask = text(prompts)
        return (ctx * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    return EvalEncoder(enc.eval(), pooled, name=STAND_IN, image_size=32)


def controlnet_for(model, seed: int) -> ControlNet:
    """A ControlNet for the tiny model with random (non-zero) zero-convolutions, so that it acts."""
    net = ControlNet.from_unet(model.unet, conditioning_embedding_out_channels=(8, 16, 16))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            m.weight.copy_(0.3 * torch.randn(m.weight.shape, generator=g))
    return net.eval().requires_grad_(False)


def builtin_tiny():
    return dataclasses.replace(tiny_ldm(), name="builtin")


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A built-in world of tiny networks: model, evalenc stand-in, int8 canny/depth ControlNets; the CLI."""
    from condiff.commands import experiment as cmd
    from condiff.models.weights import quantize_int8, save_weights

    weights = tmp_path / "weights"
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(runner, "load_experiment_model", lambda spec, device: builtin_tiny())
    monkeypatch.setattr(runner, "load_evaluation_encoder", lambda device: stand_in_evalenc())
    monkeypatch.setenv("CONDIFF_CACHE", str(tmp_path / "cache"))
    model = builtin_tiny()
    for i, kind in enumerate(("canny", "depth")):
        net = controlnet_for(model, i)
        save_weights(quantize_int8(net.state_dict()), weights / f"controlnet-{kind}",
                     {"kind": "controlnet", "network": net.controlnet_config.to_dict()}, dtype=None)
    app = typer.Typer()
    cmd.register(app)
    cli = CliRunner()
    return lambda *args: cli.invoke(app, [str(a) for a in args])


FIGURES = {
    "sketch": {"inputs", "sdedit_grid", "tradeoff_t0", "cfg_grid", "adherence_gamma", "controlnet_conditions",
               "controlnet_grid", "controlnet_adherence"},
    "inpainting": {"inputs", "autoencoder_artefacts", "raw_grid", "composite_grid", "architecture_bars"},
    "personalization": {"dataset", "results_grid", "method_bars"},
}


def test_demo_threads_follow_the_environment_and_the_load(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runner.demo_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert runner.demo_threads(2, 0.1) == 2 and runner.demo_threads(2, 1.2) == 1 and runner.demo_threads(2, 19.0) == 1


def test_demo_reports_every_experiment_figure_and_metric_and_repeats_bit_for_bit(world, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same thread count in both runs, whatever the machine's load
    docs = []
    for name in ("a", "b"):
        res = world("demo", "--out", tmp_path / name, "--no-progress", "--device", "cpu")
        assert res.exit_code == 0, (res.output, res.exception)
        docs.append(json.loads((tmp_path / name / "results.json").read_text()))
    doc, html = docs[0], (tmp_path / "a" / "report.html").read_text()
    exps = doc["experiments"]
    assert list(exps) == ["sketch", "inpainting", "personalization"]
    assert doc["run"]["feature_extractor"] == STAND_IN and doc["run"]["quick"] is True
    for exp, figs in FIGURES.items():
        assert {f["name"] for f in exps[exp]["figures"]} == figs and exps[exp]["headlines"]
        for f in figs:
            assert (tmp_path / "a" / "figures" / f"{exp}_{f}.png").is_file() and f'id="{exp}-{f}"' in html
    assert html.count("data:image/png;base64,") == sum(len(f) for f in FIGURES.values())
    # every table names its feature extractor
    assert html.count("<table id=") == html.count("features: ") == sum(len(e["tables"]) for e in exps.values())
    # experiment 1: the thesis's sweeps, with CIs; t0 = 0 returns the sketch itself
    sk = exps["sketch"]["metrics"]
    assert list(sk["sdedit"]) == [f"strength={t:g}" for t in (0, .2, .4, .6, .8, 1)]
    assert list(sk["cfg"]) == [f"guidance={g:g}" for g in (1, 2.5, 5, 10, 20, 40)]
    for cell in [*sk["sdedit"].values(), *sk["cfg"].values()]:
        assert set(cell) == {"ssim_sketch", "lpips_like_sketch", "lpips_like_reference", "evalenc_prompt",
                             "evalenc_reference", "train_rmse"} and all(len(v["ci95"]) == 2 for v in cell.values())
        assert cell["train_rmse"]["mean"] > 0  # no generated picture is a training picture
    assert sk["sdedit"]["strength=0"]["ssim_sketch"]["mean"] == 1.0
    assert sk["sdedit"]["strength=1"]["ssim_sketch"]["mean"] < 0.9
    assert set(sk["controlnet"]) == {"canny", "depth"}
    assert 0 <= sk["controlnet"]["canny"]["adherence"]["mean"] <= 1
    skipped = " ".join(exps["sketch"]["skipped"])
    assert all(f"ControlNet {k}" in skipped for k in ("normal", "pose", "lineart", "softedge"))
    # experiment 2: both latent architectures, composite exact outside the mask, round-trip map
    inp = exps["inpainting"]["metrics"]
    assert set(inp["architectures"]) == {"ldm-inpaint", "ldm-blend"}
    for arch in inp["architectures"].values():
        assert arch["outside_exact_after_composite"] is True
        assert {"evalenc_inside", "seam_added", "psnr_outside_raw"} <= set(arch)
        assert set(arch["per_task"]) == {"remove-face-mask", "remove-sunglasses", "add-scarf"}
    assert set(inp["autoencoder_round_trip"]) == {"remove-face-mask", "remove-sunglasses", "add-scarf"}
    assert any(s.startswith("cascade:") for s in exps["inpainting"]["skipped"])
    assert "time_s" in exps["inpainting"]["measurements"]["architectures"]["ldm-blend"]
    mem = inp["memorisation"]
    assert len(mem) == 2 * 3 * 2 and all(r["train_rmse"] > 0 and "/" in r["train_nearest"] for r in mem)
    assert any(n.startswith("Input provenance") for n in exps["inpainting"]["notes"])
    assert not any("time budget" in s for e in exps.values() for s in e["skipped"])
    # experiment 3: nothing trained or shipped -> the base model only, and the report says so
    pers = exps["personalization"]
    assert set(pers["metrics"]["variants"]) == {"base"}
    assert {"subject_fidelity", "prompt_fidelity", "lpips_like_subject"} <= set(pers["metrics"]["variants"]["base"])
    assert sum("--train" in s for s in pers["skipped"]) == 3 and "--train" in html
    # same seed, same device: the same numbers bit for bit (times and memory are measurements, not metrics)
    for exp in exps:
        assert docs[0]["experiments"][exp]["metrics"] == docs[1]["experiments"][exp]["metrics"]


def test_every_cell_is_made_and_the_run_records_its_time_and_load(world, tmp_path):
    out = runner.run_experiments(["inpainting", "sketch"], out=tmp_path / "r", quick=True, show_progress=False)
    assert [r.name for r in out.results] == ["sketch", "inpainting"]  # the thesis's order
    assert not any("time budget" in s for r in out.results for s in r.skipped)
    for key in ("wall_s", "cpu_s", "load_average", "load_average_end"):
        assert key in out.info
    cells = out.results[0].measurements["cell_seconds"]
    assert len([k for k in cells if k.startswith("SDEdit")]) == 6 and len([k for k in cells if k.startswith("CFG")]) == 6
    assert all(set(v) == {"wall_s", "cpu_s"} for v in cells.values())
    assert len(out.results[1].measurements["cell_seconds"]) == 2 * 2  # architectures × seeds
    html = (tmp_path / "r" / "report.html").read_text()
    assert "load_average_end" in html and "Input provenance" in html and "emojione" in html and "Made in " in html
    assert "Every generated picture and its nearest training picture" in html


def test_cfg_cell_equal_to_an_sdedit_cell_is_sampled_once():
    from condiff.experiments.sketch import _memoized

    calls = []

    def render(params):
        calls.append(dict(params))
        return torch.full((1, 3, 4, 4), float(len(calls)))

    once = _memoized(render)
    a = once({"strength": 0.6, "guidance": 5.0})
    b = once({"guidance": 5.0, "strength": 0.6})
    c = once({"strength": 0.6, "guidance": 10.0})
    assert a is b and len(calls) == 2 and float(c[0, 0, 0, 0]) == 2.0


def test_experiment_run_refuses_to_replace_a_report_without_overwrite(world, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "report.html").write_text("mine")
    res = world("experiment", "run", "sketch", "--out", tmp_path / "o", "--no-progress")
    assert isinstance(res.exception, FileExistsError) and (tmp_path / "o" / "report.html").read_text() == "mine"
    res = world("experiment", "run", "nonsense", "--out", tmp_path / "p")
    assert isinstance(res.exception, ValueError) and "sketch, inpainting, personalization" in str(res.exception)


# ----------------------------------------------------------------------------------------------- sweeps


def _flat_render(params):
    """Cell colour from the parameters: red = guidance/10, green = steps/10, blue = 1 for ddim."""
    c = torch.tensor([params["guidance"] / 10, params["steps"] / 10, 1.0 if params.get("sampler") == "ddim" else 0.0])
    return c.view(1, 3, 1, 1).expand(2, 3, 16, 16).clone()


def test_sweep_grid_shape_order_labels_and_table():
    axes = [Axis("guidance", (1, 5, 9)), Axis("steps", (2, 8)), Axis("sampler", ("ddim", "euler"))]
    sw = run_sweep(_flat_render, axes, {"prompt": "x"}, {"red": lambda im, p: im[:, 0].mean((1, 2))})
    assert sw.shape == (3, 2, 2) and len(sw.cells) == 12
    c = sw.cell(2, 1, 0)
    assert (c.params["guidance"], c.params["steps"], c.params["sampler"]) == (9.0, 8, "ddim") and c.index == (2, 1, 0)
    assert c.metrics["red"] == pytest.approx([0.9, 0.9])
    grids = sw.grids()
    assert len(grids) == 2 and grids[0].size == grids[1].size
    table = sw.table("t", "title")
    assert table.columns == ["guidance", "steps", "sampler", "red"] and len(table.rows) == 12
    assert "| guidance | steps | sampler | red |" in sw.markdown()
    # labelled grid: dark label pixels above the columns / left of the rows, cell colours in place
    g = np.asarray(image_grid([[sw.cell(x, y).images for x in range(3)] for y in range(2)],
                              row_labels=axes[1].labels(), col_labels=axes[0].labels(), min_cell=16))
    assert g.shape[1] > 3 * 32 and (g[:10].min(-1) < 100).any() and (g[:, :10].min(-1) < 100).any()
    bottom_right = g[-6, -6].astype(int)  # inside the last cell: guidance 9, steps 8, ddim -> (230, 204, 255)
    assert np.abs(bottom_right - np.array([230, 204, 255])).max() <= 1
    with pytest.raises(ValueError, match="labels"):
        image_grid([[c.images]], row_labels=["a", "b"], col_labels=["c"])


def test_axis_parsing_and_sweep_errors_are_clear():
    assert parse_axis("steps=10:50:10").values == (10, 20, 30, 40, 50)
    assert parse_axis("guidance=1, 2.5,5").values == (1.0, 2.5, 5.0)
    assert parse_axis("sampler=ddim,heun").labels() == ["sampler=ddim", "sampler=heun"]
    for spec, msg in (("colour=1,2", "sweepable"), ("guidance=abc", "float"), ("guidance", "NAME="),
                      ("steps=10:1:5", "never reaches")):
        with pytest.raises(ValueError, match=msg):
            parse_axis(spec)
    with pytest.raises(ValueError, match="one axis only"):
        run_sweep(_flat_render, [Axis("steps", (1,)), Axis("steps", (2,))])
    with pytest.raises(ValueError, match="1 to 3 axes"):
        run_sweep(_flat_render, [Axis(n, (1,)) for n in ("steps", "seed", "guidance", "strength")])
    with pytest.raises(ValueError, match="both fixed and swept"):
        run_sweep(_flat_render, [Axis("steps", (1,))], {"steps": 3})


def test_pipeline_sweeps_share_seeds_and_lora_weight_acts():
    from condiff.personalize import LoRAConfig, LoRANetwork

    model = tiny_ldm(with_inpaint=False)
    sketch = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    render = pipeline_renderer(model, "sdedit", image=sketch, images_per_cell=2)
    sw = run_sweep(render, [Axis("strength", (0.0, 0.75))], {"prompt": "a cat", "steps": 4, "seed": 5})
    assert torch.equal(sw.cell(0).images, sketch.expand(2, -1, -1, -1))  # t0 = 0: the input itself
    again = run_sweep(render, [Axis("strength", (0.75,))], {"prompt": "a cat", "steps": 4, "seed": 5})
    assert torch.equal(again.cell(0).images, sw.cell(1).images)
    assert not torch.equal(sw.cell(1).images[0], sw.cell(1).images[1])  # image i uses seed + i
    lora = LoRANetwork.inject({"unet": model.unet}, LoRAConfig(rank=2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _, _, _, ad in lora.items():
            ad.up.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    t2i = pipeline_renderer(model, "text2img", lora=lora)
    sw = run_sweep(t2i, [Axis("lora_weight", (0.0, 1.0))], {"prompt": "a cat", "steps": 3})
    lora.detach()
    plain = pipeline_renderer(model, "text2img")({"prompt": "a cat", "steps": 3})
    assert torch.equal(sw.cell(0).images, plain) and not torch.equal(sw.cell(1).images, plain)
    with pytest.raises(ValueError, match="LoRA file"):
        plain_render = pipeline_renderer(model, "text2img")
        plain_render({"prompt": "a cat", "lora_weight": 0.5})
    with pytest.raises(ValueError, match="no parameter"):
        render({"prompt": "a cat", "control_type": "canny"})
    with pytest.raises(ValueError, match="input image"):
        pipeline_renderer(model, "inpaint")


def test_cli_sweep_writes_grids_table_and_report(world, tmp_path):
    res = world("experiment", "sweep", "text2img", "a cat face", "-x", "guidance=1,3", "-y", "steps=2,3", "--images", "1",
                "--out", tmp_path / "s", "--no-progress")
    assert res.exit_code == 0, (res.output, res.exception)
    doc = json.loads((tmp_path / "s" / "results.json").read_text())["experiments"]["sweep"]
    assert [(c["guidance"], c["steps"]) for c in doc["metrics"]["cells"]] == [(1.0, 2), (3.0, 2), (1.0, 3), (3.0, 3)]
    assert all("evalenc_prompt" in c for c in doc["metrics"]["cells"])
    assert Image.open(tmp_path / "s" / "figures" / "sweep_grid_0.png").size[0] > 2 * 96


# ----------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", cfgmod.EXPERIMENT_NAMES)
def test_recipes_hold_the_thesis_parameters_and_match_the_builtin_defaults(name, monkeypatch):
    from_file = cfgmod.load_config(name)
    quick_file = cfgmod.load_config(name, quick=True)
    monkeypatch.setattr(cfgmod, "RECIPES_DIR", cfgmod.RECIPES_DIR / "absent")
    assert cfgmod.load_config(name) == from_file and cfgmod.load_config(name, quick=True) == quick_file
    if name == "sketch":
        assert from_file.sdedit.strengths == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] and from_file.sdedit.guidance == 5.0
        assert from_file.cfg.guidances == [1.0, 2.5, 5.0, 10.0, 20.0, 40.0] and from_file.cfg.strength == 0.6
        assert len(from_file.controlnet.types) == 6
    if name == "personalization":
        # the thesis's learning rates ×10 (DreamBooth: ×20 for half the steps; LoRA: ×3), see the recipe
        assert (from_file.dreambooth.lr, from_file.lora.lr, from_file.textual_inversion.lr) == (1e-4, 3e-4, 5e-3)
        assert from_file.lora.lr_schedule == "cosine" and from_file.lora.steps == 400 == 2 * from_file.dreambooth.steps
    assert quick_file.run.steps < from_file.run.steps


@pytest.mark.parametrize("text, message", [
    ('experiment = "sketch"\n[sdedit]\nstrenghts = [0.5]\n', r"bad.toml: unknown key\(s\) \[.strenghts.\] in \[sdedit\]"),
    ('experiment = "sketch"\n[run]\nsteps = "ten"\n', r"bad.toml: \[run\].steps must be an integer"),
    ('experiment = "sketch"\n[sdedit]\nstrengths = [0.5, 1.5]\n', r"t0 must lie in \[0, 1\]"),
    ('experiment = "sketch"\n[controlnet]\ntypes = ["scribble"]\n', "unknown types"),
    ('experiment = "inpainting"\n[quick.run]\nimages = 2\n', r"\[quick\]"),
    ('experiment = "inpainting"\narchitectures = ["dalle"]\n', "choose from ldm-inpaint"),
    ('experiment = "personalization"\n[lora]\nrank = 0\n', "rank ≥ 1"),
    ('experiment = "painting"\n', "unknown experiment 'painting'"),
    ('[run]\nseed = 1\n', "say which experiment"),
    ('experiment = "sketch"\n[run\n', "not valid TOML"),
    ('experiment = "sketch"\n[run]\nsampler = "magic"\n', "sampler 'magic' is unknown"),
])
def test_config_errors_name_the_file_the_key_and_the_fix(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        cfgmod.load_config(path)


def test_config_of_another_experiment_and_unknown_sources_are_refused(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('experiment = "sketch"\n[run]\nseed = 3\n')
    assert cfgmod.load_config(path).run.seed == 3
    with pytest.raises(ValueError, match="not 'inpainting'"):
        cfgmod.load_config(path, experiment="inpainting")
    with pytest.raises(ValueError, match="no experiment config"):
        cfgmod.load_config("skech")


# ----------------------------------------------------------------------------------------------- personalization


def test_personalization_trains_caches_and_reuses_results(tmp_path, monkeypatch):
    from condiff.experiments.personalization import find_result, run_personalization
    from test_embeddings import TinyText  # a 1-layer BERT with the real MiniLM tokenizer

    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    model = dataclasses.replace(tiny_ldm(with_inpaint=False), text_encoder=TinyText())
    unet0 = {k: v.clone() for k, v in model.unet.state_dict().items()}
    config = cfgmod.load_config("personalization", quick=True)
    for section in (config.dreambooth, config.lora, config.textual_inversion):
        section.steps = 2
    config.dreambooth.num_class_images, config.dreambooth.class_steps = 1, 2
    ctx = ExperimentContext(model, evalenc=stand_in_evalenc(), train=True, cache_dir=tmp_path / "cache",
                            show_progress=False)
    first = run_personalization(ctx, config)
    rows = {r["variant"]: r for r in first.tables[0].rows}
    assert list(rows) == ["base", "dreambooth", "lora", "textual_inversion"] and not first.skipped
    assert all(rows[m]["source"] == "trained now" for m in ("dreambooth", "lora", "textual_inversion"))
    # the thesis's sizes: whole U-Net (here its 4-bit weight difference) >> LoRA >> one embedding
    assert rows["dreambooth"]["file_bytes"] > 2 * rows["lora"]["file_bytes"] > 10 * rows["textual_inversion"]["file_bytes"]
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in unet0.items())  # base model untouched
    assert rows["textual_inversion"]["class_drift"]["mean"] == pytest.approx(0.0, abs=1e-3)  # new token only
    record = json.loads((find_result(ctx, config, "lora").folder / "train.json").read_text())
    assert record["settings"]["steps"] == 2 and record["seconds"] >= 0 and record["bytes"] > 0
    ctx.train = False
    second = run_personalization(ctx, config)
    assert [r["source"] for r in second.tables[0].rows[1:]] == ["cache"] * 3
    assert second.metrics == first.metrics  # loaded results reproduce the trained ones bit for bit
    shipped = tmp_path / "weights" / "personalization" / "lora"
    shutil.copytree(find_result(ctx, config, "lora").folder, shipped)
    assert find_result(ctx, config, "lora").source == "shipped"
    config.lora.steps = 3  # other settings: not in the cache, the shipped one still applies
    config.dreambooth.steps = 3
    assert find_result(ctx, config, "dreambooth") is None and find_result(ctx, config, "lora").folder == shipped
    assert find_result(ctx, config, "lora").source == "shipped (other settings)"
    ctx.train = True  # --train: the config's settings are trained, not stood in for by the shipped result
    assert find_result(ctx, config, "lora") is None
    # a result trained on other base weights (e.g. an older built-in ldm) never stands in, shipped or cached
    ctx.train = False
    config.lora.steps = 2
    assert find_result(ctx, config, "lora").source == "shipped"
    other = dataclasses.replace(model, unet=copy.deepcopy(model.unet))
    with torch.no_grad():
        next(other.unet.parameters()).add_(1e-3)
    ctx.model = other
    assert find_result(ctx, config, "lora") is None


def test_quiet_mode_prints_one_line_per_finished_cell(capsys):
    """`experiment run --no-progress` still shows progress: one stderr line per finished cell."""
    from condiff.experiments.context import cell_timer

    timings: dict = {}
    with cell_timer(timings, "sdedit: t0=0.6", announce=True):
        pass
    with cell_timer(timings, "silent cell"):
        pass
    err = capsys.readouterr().err.splitlines()
    assert err == [f"done: sdedit: t0=0.6 ({timings['sdedit: t0=0.6']['wall_s']:.1f} s)"]
    assert set(timings) == {"sdedit: t0=0.6", "silent cell"}
