"""Issue 22's examples, one regression test each: every bad input is one line and the right exit status,
bounded resources refused before allocation, outputs checked before compute, nothing half-written."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from condiff import cli
from condiff import validate as V
from condiff.errors import CondiffError, DeviceError, InputError, LimitError, ModelError, OutputError
from condiff.images import load_image, read_png_parameters, save_png

pytestmark = pytest.mark.usefixtures("single_thread")


def run(capsys, *args):
    """(exit status, stdout, stderr) of ``condiff ARGS``."""
    code = cli.run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: proves a check ran before any compute."""
    from condiff.models import registry

    def refuse(*a, **k):
        raise AssertionError("a model was loaded although the input was bad")

    monkeypatch.setattr(registry, "load_model", refuse)


@pytest.fixture
def picture(tmp_path):
    p = tmp_path / "in.png"
    Image.fromarray(np.full((32, 32, 3), 180, np.uint8)).save(p)
    m = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 12)).save(m)
    return p, m


# ----------------------------------------------------------------------------- tracebacks → one line
@pytest.mark.parametrize("batch", ["0", "-1"])
def test_bad_batch_is_one_line_exit_2(capsys, tmp_path, no_model, batch):
    code, _, err = run(capsys, "generate", "a cat", "--batch", batch, "--out", tmp_path / "o.png")
    assert code == 2 and "--batch" in one_line_error(err)


def test_unknown_device_is_one_line_exit_1(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "a cat", "--device", "tpu9", "--steps", 1, "--out", tmp_path / "o.png")
    assert code == 1 and "unknown device 'tpu9'" in one_line_error(err)
    with pytest.raises(DeviceError):
        V.check_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a GPU")
def test_fp16_on_cpu_is_a_clear_device_error(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "a cat", "--dtype", "fp16", "--device", "cpu", "--steps", 1,
                       "--out", tmp_path / "o.png")
    assert code == 1 and "GPU only" in one_line_error(err) and "bf16" in err
    assert not (tmp_path / "o.png").exists()


def test_bf16_on_cpu_generates(capsys, tmp_path):
    code, out, err = run(capsys, "generate", "a cat", "--dtype", "bf16", "--device", "cpu", "--steps", 2,
                         "--no-progress", "--out", tmp_path / "o.png")
    assert code == 0, err
    assert (tmp_path / "o.png").exists() and "wrote" in out


def test_non_finite_result_is_one_line_exit_1(capsys, tmp_path):
    out = tmp_path / "o.png"
    code, _, err = run(capsys, "generate", "a cat", "--guidance", "1e30", "--steps", 2, "--no-progress", "--out", out)
    line = one_line_error(err)
    assert code == 1 and "NaN" in line and "--guidance" in line
    assert not out.exists()


@pytest.mark.parametrize("option", ["--lora", "--embedding"])
def test_corrupt_safetensors_header_is_a_model_error(capsys, tmp_path, no_model, option):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**6).to_bytes(8, "little") + b"{not json")
    code, _, err = run(capsys, "generate", "a cat", option, bad, "--out", tmp_path / "o.png")
    assert code == 2 and "not a valid safetensors file" in one_line_error(err)
    with pytest.raises(ModelError):
        V.check_weight_file(bad)


def test_too_long_output_name_is_found_before_compute(capsys, tmp_path, no_model):
    code, _, err = run(capsys, "generate", "a cat", "--out", tmp_path / ("x" * 300 + ".png"))
    assert code == 2 and "too long" in one_line_error(err)


def test_read_only_folder_is_found_before_compute(capsys, tmp_path, no_model, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root may write anywhere: simulate the permission check's answer
        monkeypatch.setattr(V.os, "access", lambda p, mode: Path(p) != ro)
    try:
        code, _, err = run(capsys, "generate", "a cat", "--out", ro / "o.png")
        assert code == 2 and "not writable" in one_line_error(err)
    finally:
        ro.chmod(0o700)
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "generate", "a cat", "--out", tmp_path / "file" / "o.png")
    assert code == 2 and "is a file, not a folder" in one_line_error(err)


@pytest.mark.parametrize("content", [b"hello, not a picture", "truncated"])
def test_bad_file_in_a_personalization_folder_names_it(capsys, tmp_path, content):
    folder = tmp_path / "subject"
    folder.mkdir()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(folder / "a.png")
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "b.png")
        data = (folder / "b.png").read_bytes()
        (folder / "b.png").write_bytes(data[: len(data) // 2])
    else:
        (folder / "b.png").write_bytes(content)
    from condiff.personalize import ImageSet

    with pytest.raises(InputError, match="b.png"):
        ImageSet.from_folder(folder, 16)


def test_undecodable_prompt_is_refused(capsys, tmp_path, no_model):
    prompt = os.fsdecode(b"a cat \xff\xfe")  # what Python makes of undecodable argv bytes
    code, _, err = run(capsys, "generate", prompt, "--out", tmp_path / "o.png")
    assert code == 2 and "not valid text" in one_line_error(err)


@pytest.mark.parametrize("feather,word", [("1e9", "limit"), ("-3", "≥ 0"), ("nan", "finite")])
def test_feather_out_of_range(capsys, tmp_path, picture, no_model, feather, word):
    img, mask = picture
    code, _, err = run(capsys, "inpaint", img, mask, "a hat", "--feather", feather, "--out", tmp_path / "o.png")
    assert code == 2 and word in one_line_error(err)


def test_api_bad_arguments_raise_condiff_types():
    from condiff.models.registry import load_model
    from condiff.pipelines.text2img import generate

    class Model:  # generate checks its arguments before touching the model
        image_size, downscale = 32, 4
        info: dict = {}

    with pytest.raises(InputError, match="height"):
        generate(Model(), "a cat", height=-64)
    with pytest.raises(InputError, match="model must be"):
        load_model(5)
    with pytest.raises(LimitError, match="Mpx"):
        generate(Model(), "a cat", height=100_000, width=100_000)
    with pytest.raises(LimitError, match="steps"):
        generate(Model(), "a cat", steps=10_000_000)
    with pytest.raises(LimitError, match="batch"):
        generate(Model(), "a cat", batch_size=1_000_000)


# ----------------------------------------------------------------------------- upper bounds
@pytest.mark.parametrize("args", [
    ["generate", "a cat", "--steps", "10000000"],
    ["generate", "a cat", "--batch", "1000000"],
    ["generate", "a cat", "--width", "100000", "--height", "100000"],
])
def test_limits_refused_before_allocation(capsys, tmp_path, no_model, args):
    code, _, err = run(capsys, *args, "--out", tmp_path / "o.png")
    assert code == 2 and "over the limit" in one_line_error(err) and "--limit" in err


def test_variations_n_limit_and_raising_a_limit(capsys, tmp_path, picture, monkeypatch):
    img, _ = picture
    code, _, err = run(capsys, "variations", img, "--n", 1_000_000, "--out", tmp_path / "v.png")
    assert code == 2 and "over the limit of 64" in one_line_error(err)
    monkeypatch.setenv("CONDIFF_MAX_N", "2000000")
    assert V.check_count(1_000_000, "n", limit="n") == 1_000_000
    monkeypatch.setattr(V, "_OVERRIDES", {})
    code, _, err = run(capsys, "--limit", "steps=x", "samplers")
    assert code == 2 and "not a number" in one_line_error(err)


# ----------------------------------------------------------------------------- silently accepted before
def test_upscale_steps_zero_is_refused(capsys, tmp_path, picture):
    from condiff.pipelines.cascade import upscale

    img, _ = picture
    code, _, err = run(capsys, "upscale", img, "--steps", 0, "--out", tmp_path / "o.png")
    assert code == 2 and "--steps" in one_line_error(err)
    with pytest.raises(InputError, match="steps"):
        upscale(None, torch.rand(1, 3, 8, 8), steps=0)


def test_personalize_steps_zero_is_refused(capsys, tmp_path, picture):
    from condiff.personalize.train_common import LoopConfig

    code, _, err = run(capsys, "personalize", "lora", "--images", tmp_path, "--class-noun", "cat", "--steps", 0,
                       "--out", tmp_path / "l.safetensors")
    assert code == 2 and "--steps" in one_line_error(err)
    with pytest.raises(InputError, match="untrained"):
        LoopConfig(steps=0).validate()


def test_tensors_outside_unit_range_are_refused(tmp_path):
    from condiff.pipelines.text2img import sdedit

    with pytest.raises(InputError, match="0-255"):
        sdedit(None, torch.full((1, 3, 8, 8), 200.0), "a cat")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        save_png(torch.full((1, 3, 8, 8), 200.0), tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()
    u8 = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(1, 3, 8, 8)  # a 0-255 uint8 tensor is read as such
    save_png(u8, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), u8[0].permute(1, 2, 0).numpy())
    assert torch.equal(V.check_image_tensor(u8), u8.float() / 255)


def test_float_tiff_in_unit_range_loads_as_its_values(tmp_path):
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(a, mode="F").save(tmp_path / "f.tiff")
    x = load_image(tmp_path / "f.tiff")
    assert x.shape == (1, 3, 8, 8)
    assert torch.allclose(x[0, 0], torch.from_numpy(np.round(a * 255) / 255).float(), atol=1e-6)
    assert float(x.max()) == 1.0  # not black


# ----------------------------------------------------------------------------- wasted or leftover work
def test_existing_out_refused_before_compute(capsys, tmp_path, no_model):
    out = tmp_path / "o.png"
    out.write_bytes(b"keep me")
    code, _, err = run(capsys, "generate", "a cat", "--out", out)
    assert code == 2 and "exists" in one_line_error(err) and out.read_bytes() == b"keep me"
    (tmp_path / "v-1.png").write_bytes(b"x")
    code, _, err = run(capsys, "generate", "a cat", "--batch", 2, "--out", tmp_path / "v.png")
    assert code == 2 and "v-1.png exists" in one_line_error(err)


@pytest.fixture
def tiny_personalize(monkeypatch, tmp_path):
    from test_personalize import tiny_ldm

    from condiff.commands import personalize as cmd

    monkeypatch.setattr(cmd, "load_model", lambda name, device: tiny_ldm())
    folder = tmp_path / "subject"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    return ["personalize", "lora", "--images", folder, "--class-noun", "cat", "--device", "cpu", "--no-progress"]


@pytest.mark.filterwarnings("ignore:the identifier may carry")
def test_failed_personalization_leaves_no_work_folder(capsys, tmp_path, monkeypatch, tiny_personalize):
    import condiff.personalize as P

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(P, "train_lora", boom)
    out = tmp_path / "l.safetensors"
    code, _, err = run(capsys, *tiny_personalize, "--steps", 2, "--out", out)
    assert code == 1 and "simulated crash" in one_line_error(err)
    assert not out.exists() and not (tmp_path / "l.work").exists()
    code, _, err = run(capsys, *tiny_personalize, "--steps", 2, "--out", out, "--keep-work")
    assert code == 1 and (tmp_path / "l.work").is_dir() and "kept work folder" in err


@pytest.mark.filterwarnings("ignore:the identifier may carry")
def test_success_removes_work_folder_and_resume_keeps_metrics(capsys, tmp_path, tiny_personalize):
    out = tmp_path / "l.safetensors"
    code, stdout, err = run(capsys, *tiny_personalize, "--steps", 2, "--out", out, "--json")
    assert code == 0, err
    assert out.exists() and not (tmp_path / "l.work").exists()
    first = json.loads(stdout.strip().splitlines()[-1])
    code, stdout, err = run(capsys, *tiny_personalize, "--steps", 2, "--out", out, "--overwrite", "--keep-work",
                            "--json")
    assert code == 0 and "kept work folder" in err and (tmp_path / "l.work" / "checkpoint.pt").exists()
    code, stdout, err = run(capsys, *tiny_personalize, "--steps", 2, "--out", out, "--overwrite", "--resume",
                            "--json")
    again = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and again["resumed_from"] == 2 and again["final_loss"] == first["final_loss"]
    assert np.isfinite(again["final_loss"])


def test_orphan_tmp_is_cleaned_by_the_next_write(tmp_path):
    from condiff.io import atomic_path

    dead = 2**22 + 12345  # above the usual pid_max: no such process
    orphan = tmp_path / f".old.png.{dead}-abcdefgh.tmp"
    orphan.write_bytes(b"half")
    live = tmp_path / f".other.png.{os.getppid()}-abcdefgh.tmp"
    live.write_bytes(b"being written by a running process")
    with atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("ok")
    assert not orphan.exists() and live.exists() and (tmp_path / "new.txt").read_text() == "ok"


# ----------------------------------------------------------------------------- batch invariance (README: Guarantees)
def test_batch_invariance_guarantee():
    """Batched: image i equals the single image of seed + i within one grey level; --deterministic: bit-exact."""
    from condiff.models.registry import load_model
    from condiff.pipelines.text2img import generate

    m = load_model("builtin")
    kw = dict(steps=2, show_progress=False)
    batch = generate(m, "a red heart", seed=5, batch_size=3, **kw).images
    exact = generate(m, "a red heart", seed=5, batch_size=3, deterministic=True, **kw)
    assert exact.params["seeds"] == [5, 6, 7]
    for i in range(3):
        single = generate(m, "a red heart", seed=5 + i, **kw).images[0]
        q = lambda x: (x * 255).round()  # noqa: E731 - the 8-bit pixels written to the PNG
        assert float((q(batch[i]) - q(single)).abs().max()) <= 1
        assert torch.equal(exact.images[i], single)


# ----------------------------------------------------------------------------- the boundary itself
def test_unexpected_error_is_one_line_exit_1(capsys, monkeypatch, tmp_path):
    from condiff.commands import _common

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(_common, "load", broken)
    code, _, err = run(capsys, "generate", "a cat", "--out", tmp_path / "o.png")
    line = one_line_error(err)
    assert code == 1 and "ZeroDivisionError" in line and "--debug" in line
    monkeypatch.setenv("CONDIFF_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.run(["generate", "a cat", "--out", str(tmp_path / "o.png")])


def test_hierarchy_subclasses_builtin_types():
    assert issubclass(InputError, ValueError) and issubclass(LimitError, InputError)
    assert issubclass(OutputError, OSError) and issubclass(V.OutputExistsError, FileExistsError)
    assert issubclass(V.InputFileNotFound, FileNotFoundError) and issubclass(ModelError, CondiffError)
    assert read_png_parameters  # imported API stays


def test_threads_default_and_option(capsys, monkeypatch, tmp_path):
    from condiff.models.registry import default_threads, set_threads

    n = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert default_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        cores = len(os.sched_getaffinity(0))
        assert 1 <= default_threads() <= cores
        monkeypatch.setattr(os, "getloadavg", lambda: (cores + 5.0, 0.0, 0.0))  # a busy machine: one thread
        assert default_threads() == 1
        code, out, err = run(capsys, "samplers", "--json")
        assert code == 0
        cli.run(["--threads", "2", "samplers"])
        assert torch.get_num_threads() == 2
        code, _, err = run(capsys, "generate", "a cat", "--threads", "0", "--out", tmp_path / "o.png")
        assert code == 2 and "--threads" in one_line_error(err)
        with pytest.raises(InputError):
            set_threads(0)
    finally:
        torch.set_num_threads(n)
