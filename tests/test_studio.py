"""Unit tests of the studio's helpers (no browser, no model): canvases, PNG info, outputs, job
panel, command lines of the long jobs, the personalization library and the vocabulary."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from condiff.errors import InputError
from condiff.images import load_image, save_png
from condiff.server.jobs import JobQueue
from condiff.studio import canvas, pnginfo, vocab
from condiff.studio.outputs import OutputStore
from condiff.studio.personal import Library
from condiff.studio.runner import progress_html, user_message


def _layer(h=8, w=8, box=(2, 5, 1, 4), alpha=255, color=(255, 0, 255)):
    a = np.zeros((h, w, 4), np.uint8)
    a[box[0]:box[1], box[2]:box[3]] = [*color, alpha]
    return a


# ------------------------------------------------------------------------------------------ canvas


def test_editor_mask_is_the_painted_strokes_whatever_their_colour():
    bg = np.full((8, 8, 4), 200, np.uint8)
    value = {"background": bg, "layers": [_layer(color=(10, 10, 10)), _layer(box=(6, 7, 6, 8), alpha=128)],
             "composite": bg}
    mask = canvas.editor_mask(value)
    assert mask.shape == (1, 1, 8, 8)
    assert mask[0, 0, 2:5, 1:4].eq(1).all() and mask[0, 0, 6, 6:8].allclose(torch.tensor(128 / 255))
    assert mask.sum() == pytest.approx(9 + 2 * 128 / 255)


@pytest.mark.parametrize("value, words", [
    ({"background": np.zeros((8, 8, 4), np.uint8), "layers": [], "composite": None}, "no mask was painted"),
    ({"background": np.zeros((8, 8, 4), np.uint8), "layers": [_layer(alpha=0)], "composite": None}, "mask is empty"),
    ({"background": np.zeros((8, 8, 4), np.uint8), "layers": [_layer(h=4)], "composite": None}, "clear the canvas"),
    (None, "no mask was painted"),
])
def test_editor_mask_refuses_what_is_not_a_mask(value, words):
    with pytest.raises(InputError, match=words):
        canvas.editor_mask(value)


def test_editor_picture_reads_strokes_over_white_paper_even_without_a_composite():
    layer = _layer(color=(0, 0, 0))
    for value in ({"background": None, "layers": [], "composite": layer},
                  {"background": None, "layers": [layer], "composite": None}):
        img = canvas.editor_picture(value)
        assert img.shape == (1, 3, 8, 8)
        assert img[0, :, 2:5, 1:4].eq(0).all() and img[0, :, 0].eq(1).all()
    with pytest.raises(InputError, match="canvas is empty"):
        canvas.editor_picture({"background": None, "layers": [_layer(alpha=0)], "composite": None})


def test_canvas_decoding_respects_the_pixel_limit():
    with pytest.raises(ValueError, match="over the limit"):
        canvas.editor_picture({"background": None, "layers": [], "composite": _layer(h=64, w=64)}, max_pixels=100)


def test_mask_outline_draws_only_just_outside_the_mask():
    img = torch.full((1, 3, 16, 16), 0.5)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    out = canvas.mask_outline(img, mask)
    changed = (out != img).any(1)[0]
    assert changed.any() and not changed[4:12, 4:12].any() and not changed[:2].any()
    assert torch.allclose(out[0, :, 3, 6], torch.tensor([1.0, 0.15, 0.1]))


# ------------------------------------------------------------------------------------------ PNG info


def test_png_info_reads_condiff_and_a1111_files(tmp_path):
    ours = save_png(torch.rand(1, 3, 8, 8), tmp_path / "ours.png", {"prompt": "a cat face", "seed": 5, "steps": 9})
    params = pnginfo.read_parameters(ours, 10_000)
    assert params == {"prompt": "a cat face", "seed": 5, "steps": 9, "format": "condiff"}
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a dog, flat style\nNegative prompt: blurry\nSteps: 12, Sampler: Euler a, "
                                "CFG scale: 7.5, Seed: 42, Size: 512x768, Model hash: abc")
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    params = pnginfo.read_parameters(tmp_path / "a1111.png", 10_000)
    assert params["prompt"] == "a dog, flat style" and params["negative"] == "blurry"
    assert (params["steps"], params["sampler"], params["guidance"], params["seed"]) == (12, "euler_ancestral", 7.5, 42)
    assert (params["width"], params["height"]) == (512, 768) and params["a1111"] == {"Model hash": "abc"}
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert pnginfo.read_parameters(tmp_path / "plain.png", 10_000) == {}


def test_pasted_parameters_in_either_format():
    assert pnginfo.parse_parameters_text('{"prompt": "x", "seed": 1}') == {"prompt": "x", "seed": 1, "format": "condiff"}
    p = pnginfo.parse_parameters_text("a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 3")
    assert p == {"format": "a1111", "prompt": "a cat", "steps": 20, "sampler": "dpmpp_2m", "guidance": 5.0, "seed": 3}
    for bad, words in (("", "empty"), ("{not json", "do not parse"), ("{\"a\": 1", "do not parse"),
                       ("x\nSteps: many, Seed: 1", "not a number")):
        with pytest.raises(InputError, match=words):
            pnginfo.parse_parameters_text(bad)


def test_pnginfo_fills_the_text_to_image_widgets():
    from condiff.studio.tabs.pnginfo_tab import txt2img_updates

    got = txt2img_updates({"prompt": "a cat", "negative": "", "sampler": "ddim", "steps": 500, "guidance": 7,
                           "seed": 9}, current_steps_max=150)
    assert got == ["a cat", "", "ddim", 150, 7.0, 9]
    kept = txt2img_updates({"sampler": "no such sampler"}, 150)
    assert all(isinstance(v, dict) and v.get("__type__") == "update" and len(v) == 1 for v in kept)


# ------------------------------------------------------------------------------------------ outputs


def test_outputs_carry_their_parameters_and_old_job_folders_go(tmp_path):
    from condiff.pipelines.common import PipelineResult

    store = OutputStore(tmp_path / "out", keep=2)
    res = PipelineResult(torch.rand(2, 3, 8, 8), {"prompt": "p", "seeds": [4, 5]})
    folder = store.new_folder("txt2img")
    paths = store.save_result(folder, "img", res)
    assert [p.name for p in paths] == ["img-0.png", "img-1.png"]
    assert [pnginfo.read_parameters(p, 1000)["seed"] for p in paths] == [4, 5]
    assert np.array_equal(load_image(paths[1])[0].numpy(), (res.images[1] * 255).round().numpy() / 255)
    time.sleep(0.02)
    store.new_folder("a")
    time.sleep(0.02)
    store.new_folder("b")
    assert not folder.exists() and len(list((tmp_path / "out").iterdir())) == 2


# ------------------------------------------------------------------------------------------ progress and errors


def test_progress_line_states():
    assert 'value="0.250"' in progress_html("running", 5, 20, eta=3.0) and "step 5 / 20" in progress_html("running", 5, 20)
    assert "position 2" in progress_html("queued", position=2)
    assert 'role="alert"' in progress_html("failed", message="<b>bad</b>") and "&lt;b&gt;" in progress_html("failed", message="<b>")
    assert "cd-cancelled" in progress_html("cancelled") and "cd-idle" in progress_html("idle")


def test_user_messages_never_carry_a_traceback(caplog):
    assert user_message(InputError("steps: 999 is over the limit\nsecond line")) == "steps: 999 is over the limit"
    assert user_message(ValueError("mask size differs")) == "mask size differs"
    msg = user_message(KeyError("secret internals"))
    assert msg.startswith("internal error (KeyError)") and "secret" not in msg
    assert "secret internals" in caplog.text  # logged on the server instead


@pytest.fixture
def server_state():
    """What a JobPanel needs of the server: limits and a real job queue."""
    from condiff.server.state import Limits

    class State:
        limits = Limits()
        queue = JobQueue(4)

    yield State
    State.queue.close()


def test_job_panel_streams_progress_and_result_through_the_queue(server_state):
    gr = pytest.importorskip("gradio")
    from condiff.studio.runner import JobPanel

    State = server_state
    with gr.Blocks():
        panel = JobPanel(State, "unit")
        out = gr.Textbox()

    def work(progress):
        for i in range(3):
            progress.update(i + 1, 3, torch.full((1, 3, 4, 4), 0.5))
            time.sleep(0.05)
        return "result"

    updates = list(panel.drive(work, lambda r: {out: r}))
    assert updates[0][panel.job] and "queue" in updates[0][panel.status]
    assert updates[-1][out] == "result" and "cd-done" in updates[-1][panel.status] and updates[-1][panel.job] is None

    def boom(progress):
        raise InputError("prompt: too long")

    with pytest.raises(gr.Error, match="prompt: too long"):
        for u in panel.drive(boom, lambda r: {}):
            last = u
    assert "prompt: too long" in last[panel.status]


def test_cancel_button_cancels_the_queued_job(server_state):
    gr = pytest.importorskip("gradio")
    from condiff.studio.runner import JobPanel

    State = server_state
    with gr.Blocks():
        panel = JobPanel(State, "unit2")

    def slow(progress):
        for i in range(200):
            progress.update(i, 200)
            time.sleep(0.02)

    stream = panel.drive(slow, lambda r: {})
    job_id = next(stream)[panel.job]
    assert "cancelling" in panel._cancel(job_id)
    updates = list(stream)
    assert "cd-cancelled" in updates[-1][panel.status]
    assert State.queue.get(job_id).state == "cancelled"


# ------------------------------------------------------------------------------------------ long jobs, library, vocabulary


def test_training_command_line_per_method(tmp_path):
    from condiff.studio.tabs.personalize import training_args

    common = dict(token="sks", class_noun="horse", steps=10, seed=1, lr=None, batch_size=1, checkpoint_every=2,
                  model="builtin", device="cpu")
    extra = dict(rank=8, alpha=None, targets="cross-attention", text_targets="", layout="kohya", num_vectors=2,
                 initializer="", learnable="object", prior_weight=0.5, num_class_images=4, class_steps=3,
                 train_text_encoder=True, gradient_checkpointing=False, use_8bit_adam=False)
    lora = training_args("LoRA", tmp_path, tmp_path / "o.safetensors", tmp_path / "w", extra=extra, **common)
    assert lora[:2] == ["personalize", "lora"] and lora[lora.index("--rank") + 1] == "8" and "--layout" in lora
    ti = training_args("Textual inversion", tmp_path, tmp_path / "o.safetensors", tmp_path / "w", extra=extra, **common)
    assert ti[1] == "textual-inversion" and ti[ti.index("--num-vectors") + 1] == "2"
    db = training_args("DreamBooth", tmp_path, tmp_path / "o.safetensors", tmp_path / "w", extra=extra, **common)
    assert db[1] == "dreambooth" and "--train-text-encoder" in db and "--use-8bit-adam" not in db
    with pytest.raises(InputError, match="one word"):
        training_args("LoRA", tmp_path, tmp_path / "o", tmp_path / "w", extra=extra, **{**common, "token": "a b"})
    import typer
    from typer.testing import CliRunner

    from condiff.commands import personalize

    app = typer.Typer()  # every flag exists in the CLI
    personalize.register(app)
    for args in (lora, ti, db):
        result = CliRunner().invoke(app, [*args[:2], "--help"], env={"COLUMNS": "200"})  # no flag wrapped in two
        flags = {a for a in args if a.startswith("--")}
        assert result.exit_code == 0 and all(f in result.output for f in flags), flags


def test_experiment_command_line(tmp_path):
    from condiff.studio.tabs.experiments import experiment_args, report_frame

    args = experiment_args(["sketch"], model="builtin", device="cpu", out=str(tmp_path), quick=True, seed=3,
                           train=False, threads=None)
    assert args == ["experiment", "run", "sketch", "--out", str(tmp_path), "--model", "builtin", "--device", "cpu",
                    "--no-progress", "--quick", "--seed", "3"]
    with pytest.raises(InputError, match="no experiment"):
        experiment_args([], model="b", device="cpu", out="o", quick=True, seed=None, train=False,
                        threads=None)
    frame = report_frame('<p class="x">"a" & b</p>')
    assert 'sandbox=""' in frame and "&quot;a&quot; &amp; b" in frame


def test_library_lists_files_and_refuses_paths(tmp_path):
    lib = Library(tmp_path)
    (lib.folder("lora") / "a.safetensors").write_bytes(b"x")
    (lib.folder("lora") / "notes.txt").write_text("x")
    assert lib.names("lora") == ["a.safetensors"] and lib.names("embeddings") == []
    assert lib.path("lora", "a.safetensors").is_file()
    for bad in ("../a.safetensors", "missing.safetensors", "", ".hidden"):
        with pytest.raises(InputError):
            lib.path("lora", bad)
    with pytest.raises(InputError, match="unknown personalization kind"):
        lib.folder("checkpoints")


def test_vocabulary_is_the_built_in_world():
    names = vocab.concepts()
    assert len(names) > 1000 and "cat face" in names and list(names) == sorted(names)
    assert "flat" in vocab.styles() and "glossy" in vocab.styles()
    assert vocab.compose_prompt("cat face", "flat") == "a cat face, flat style"
    assert vocab.compose_prompt("", "glossy", "a dog, flat style") == "a dog, glossy style"
    assert vocab.compose_prompt(None, None, "as it was") == "as it was"
    assert json.dumps(vocab.example_prompts())
