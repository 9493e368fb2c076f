"""condiff serve in process (FastAPI TestClient) on the built-in model: every route, its errors, the queue."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from condiff.server.app import create_app
from condiff.server.state import Limits, ServerState

SMALL = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def state():
    torch.set_num_threads(1)
    s = ServerState.create("builtin", "cpu")
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(state):
    return TestClient(create_app(state), raise_server_exceptions=False)


def b64_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@pytest.fixture(scope="module")
def picture() -> str:
    rng = np.random.default_rng(0)
    arr = np.full((64, 64, 3), 200, np.uint8)
    arr[16:48, 16:48] = (200, 30, 30)
    arr += rng.integers(0, 10, arr.shape, dtype=np.uint8)
    return b64_png(Image.fromarray(arr))


@pytest.fixture(scope="module")
def mask() -> str:
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (20, 20, 44, 44))
    return b64_png(m)


def assert_error(r, status: int, field: str | None = None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "detail"} and "Traceback" not in r.text
    if field is not None:
        assert field in body["detail"], body


# --------------------------------------------------------------------------------------- txt2img


def test_txt2img_matches_python_pipeline(client, state):
    from condiff.pipelines.text2img import generate

    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "batch_size": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [7, 8] and info["seed"] == 7 and len(info["infotexts"]) == 2
    assert body["parameters"]["prompt"] == "a red circle"
    ref = generate(state.model, "a red circle", guidance=7.0, steps=3, sampler="euler", seed=7, batch_size=2,
                   height=64, width=64, show_progress=False)
    want = (ref.images[1].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(decode(body["images"][1]), want)


def test_txt2img_random_seed_reported_and_reproducible(client):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": -1})
    seed = json.loads(r.json()["info"])["seed"]
    assert seed >= 0
    again = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": seed})
    np.testing.assert_array_equal(decode(r.json()["images"][0]), decode(again.json()["images"][0]))


def test_txt2img_n_iter_and_unknown_fields_ignored(client):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "n_iter": 2, "batch_size": 1, "some_new_field": 1,
                                                "restore_faces": False, "eta": 1.0, "styles": []})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["all_seeds"] == [7, 8] and len(r.json()["images"]) == 2


def test_png_info_roundtrip(client):
    img = client.post("/sdapi/v1/txt2img", json=SMALL).json()["images"][0]
    r = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + img})
    assert r.status_code == 200
    body = r.json()
    assert body["parameters"]["seed"] == 7 and body["parameters"]["pipeline"] == "text2img"
    assert body["format"] == "condiff" and body["info"].splitlines()[0] == "a red circle"  # A1111 infotext
    assert "Seed: 7" in body["info"].splitlines()[-1]


@pytest.mark.parametrize("patch,status,field", [
    ({"steps": 1000}, 413, "steps"),
    ({"batch_size": 5, "n_iter": 2}, 413, "batch_size"),
    ({"width": 4096, "height": 4096}, 413, "width"),
    ({"prompt": "x" * 5000}, 413, "prompt"),
    ({"width": 66}, 422, "width"),
    ({"steps": 0}, 422, "steps"),
    ({"steps": "many"}, 422, "steps"),
    ({"sampler_name": "LMS"}, 422, "sampler_name"),
    ({"scheduler": "sgm_uniform"}, 422, "scheduler"),
    ({"enable_hr": True}, 422, "enable_hr"),
    ({"restore_faces": True}, 422, "restore_faces"),
    ({"subseed_strength": 0.5}, 422, "subseed_strength"),
    ({"save_images": True}, 422, "save_images"),
    ({"override_settings": {"sd_model_checkpoint": "v1-5.safetensors"}}, 422, "sd_model_checkpoint"),
    ({"alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "face"}]}}}, 422, "ADetailer"),
])
def test_txt2img_validation(client, patch, status, field):
    assert_error(client.post("/sdapi/v1/txt2img", json={**SMALL, **patch}), status, field)


def test_malformed_json_is_422(client):
    r = client.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422)


# --------------------------------------------------------------------------------------- img2img


def test_img2img_sdedit_and_strength_zero(client, picture):
    req = {**SMALL, "init_images": [picture], "denoising_strength": 0.5, "steps": 4}
    r = client.post("/sdapi/v1/img2img", json=req)
    assert r.status_code == 200, r.text
    out = decode(r.json()["images"][0])
    assert out.shape == (64, 64, 3)
    assert r.json()["parameters"]["init_images"] is None
    same = client.post("/sdapi/v1/img2img", json={**req, "denoising_strength": 0.0, "include_init_images": True})
    np.testing.assert_array_equal(decode(same.json()["images"][0]), decode(picture))
    assert same.json()["parameters"]["init_images"] == [picture] and len(same.json()["images"]) == 1


def test_img2img_inpaint_keeps_outside(client, picture, mask):
    req = {**SMALL, "init_images": [picture], "mask": mask, "denoising_strength": 1.0, "mask_blur": 0,
           "inpaint_full_res": False}
    r = client.post("/sdapi/v1/img2img", json=req)
    assert r.status_code == 200, r.text
    out, src = decode(r.json()["images"][0]), decode(picture)
    m = np.asarray(Image.open(io.BytesIO(base64.b64decode(mask)))) > 127
    np.testing.assert_array_equal(out[~m], src[~m])
    assert np.abs(out[m].astype(int) - src[m]).mean() > 1
    inv = client.post("/sdapi/v1/img2img", json={**req, "inpainting_mask_invert": 1})
    np.testing.assert_array_equal(decode(inv.json()["images"][0])[m], src[m])
    assert json.loads(r.json()["info"])["is_using_inpainting_conditioning"] is True


@pytest.mark.parametrize("patch,status,field", [
    ({"init_images": []}, 422, "init_images"),
    ({"init_images": ["@@@not-base64@@@"]}, 422, "init_images.0"),
    ({"init_images": [base64.b64encode(b"hello").decode()]}, 422, "init_images.0"),
    ({"init_images": ["/etc/passwd"]}, 422, "init_images.0"),
    ({"resize_mode": 2}, 422, "resize_mode"),
    ({"denoising_strength": 1.5}, 422, "denoising_strength"),
    ({"mask": "MASK", "denoising_strength": 0.75}, 422, "denoising_strength"),
    ({"mask": "EMPTY", "denoising_strength": 1.0}, 422, "mask"),
    ({"mask": "MASK", "denoising_strength": 1.0, "batch_size": 2}, 422, "inpaint_full_res"),
    ({"initial_noise_multiplier": 0.5}, 422, "initial_noise_multiplier"),
])
def test_img2img_validation(client, picture, mask, patch, status, field):
    req = {**SMALL, "init_images": [picture], **patch}
    if req.get("mask") == "MASK":
        req["mask"] = mask
    elif req.get("mask") == "EMPTY":
        req["mask"] = b64_png(Image.new("L", (64, 64), 0))
    assert_error(client.post("/sdapi/v1/img2img", json=req), status, field)


def test_decompression_bomb_refused_before_decoding(client):
    small = Limits(max_image_pixels=1000)
    s2 = ServerState(model=client.app.state.condiff.model, model_name="builtin", device="cpu", limits=small)
    c2 = TestClient(create_app(s2), raise_server_exceptions=False)
    big = b64_png(Image.new("RGB", (64, 64)))
    assert_error(c2.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [big]}), 413, "init_images.0")
    s2.close()


# --------------------------------------------------------------------------------------- ControlNet


def test_controlnet_unit_and_lists(client, picture):
    models = client.get("/controlnet/model_list").json()["model_list"]
    assert "controlnet-canny" in models
    mods = client.get("/controlnet/module_list").json()["module_list"]
    assert mods[0] == "none" and "canny" in mods
    unit = {"input_image": picture, "module": "canny", "model": "control_v11p_sd15_canny [d14c016b]", "weight": 1.0}
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert r.status_code == 200, r.text
    plain = client.post("/sdapi/v1/txt2img", json=SMALL)
    assert not np.array_equal(decode(r.json()["images"][0]), decode(plain.json()["images"][0]))
    off = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"ControlNet": {"args": [{**unit, "enabled": False}]}}})
    np.testing.assert_array_equal(decode(off.json()["images"][0]), decode(plain.json()["images"][0]))
    det = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [picture]})
    assert det.status_code == 200 and decode(det.json()["images"][0]).shape == (64, 64, 3)


@pytest.mark.parametrize("patch,field", [
    ({"model": "None"}, "args.0.model"),
    ({"model": "control_sd15_scribble"}, "args.0.model"),
    ({"module": "depth"}, "args.0.module"),
    ({"module": "openpose_full"}, "args.0.module"),
    ({"input_image": None}, "args.0.image"),
    ({"weight": 5}, "args.0.weight"),
    ({"control_mode": "ControlNet is more important"}, "args.0.control_mode"),
])
def test_controlnet_validation(client, picture, patch, field):
    unit = {"input_image": picture, "module": "canny", "model": "controlnet-canny", **patch}
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert_error(r, 422, field)


def test_controlnet_detect_validation(client, picture):
    assert_error(client.post("/controlnet/detect", json={"controlnet_module": "hed", "controlnet_input_images": [picture]}),
                 422, "controlnet_module")
    assert_error(client.post("/controlnet/detect", json={"controlnet_module": "canny"}), 422, "controlnet_input_images")


# --------------------------------------------------------------------------------------- lists, options, extras


def test_lists_and_options(client):
    names = {s["name"]: s for s in client.get("/sdapi/v1/samplers").json()}
    assert names["Euler a"]["options"]["condiff_sampler"] == "euler_ancestral" and "pc" in names
    assert client.get("/sdapi/v1/sd-models").json()[0]["title"] == "builtin"
    opts = client.get("/sdapi/v1/options").json()
    assert opts["sd_model_checkpoint"] == "builtin"
    assert client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 2, "unknown": 1}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["show_progress_every_n_steps"] == 2
    client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 1})
    assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other.ckpt"}), 422, "sd_model_checkpoint")
    assert_error(client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 0}), 422, "show_progress_every_n_steps")
    assert client.get("/condiff/v1/limits").json()["max_steps"] == 150
    assert client.get("/docs").status_code == 200 and "/sdapi/v1/txt2img" in client.get("/openapi.json").json()["paths"]
    assert_error(client.get("/sdapi/v1/no-such-route"), 404)


def test_extra_single_image(client, picture):
    small = b64_png(Image.fromarray(decode(picture)[16:48, 16:48]))
    r = client.post("/sdapi/v1/extra-single-image", json={"image": small, "upscaler_1": "SR3", "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    assert decode(r.json()["image"]).shape == (64, 64, 3)
    same = client.post("/sdapi/v1/extra-single-image", json={"image": picture})
    np.testing.assert_array_equal(decode(same.json()["image"]), decode(picture))
    assert_error(client.post("/sdapi/v1/extra-single-image", json={"image": picture, "upscaler_1": "R-ESRGAN 4x+"}), 422, "upscaler_1")
    assert_error(client.post("/sdapi/v1/extra-single-image", json={"image": picture, "upscaler_1": "SR3", "upscaling_resize": 4}),
                 422, "upscaling_resize")
    assert_error(client.post("/sdapi/v1/extra-single-image", json={"image": picture, "gfpgan_visibility": 1}), 422, "gfpgan")
    assert_error(client.post("/sdapi/v1/extra-single-image", json={}), 422, "image")


def test_variations(client, picture):
    r = client.post("/condiff/v1/variations", json={"image": picture, "n": 2, "steps": 3, "seed": 1})
    assert r.status_code == 200, r.text
    a, b = (decode(x) for x in r.json()["images"])
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert_error(client.post("/condiff/v1/variations", json={"image": picture, "n": 100}), 413, "n")


# --------------------------------------------------------------------------------------- queue


def _background(client, path, body):
    out = {}

    def go():
        out["r"] = client.post(path, json=body)

    t = threading.Thread(target=go)
    t.start()
    return t, out


def _wait_running(state, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        job = state.queue.current()
        if job is not None and job.step >= 1:
            return job
        time.sleep(0.02)
    raise AssertionError("no job started")


def test_progress_preview_and_interrupt_mid_job(client, state):
    t, out = _background(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 150})
    job = _wait_running(state)
    p = client.get("/sdapi/v1/progress").json()
    assert 0 < p["progress"] < 1 and p["state"]["sampling_steps"] == 150 and p["current_task"] == job.id
    assert decode(p["current_image"]).shape == (64, 64, 3)
    assert client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
    assert client.get(f"/condiff/v1/jobs/{job.id}").json()["state"] == "running"
    assert client.post("/sdapi/v1/interrupt").json() == {}
    t.join(60)
    assert_error(out["r"], 409)
    assert out["r"].json()["error"] == "Interrupted"
    assert job.state == "cancelled" and job.step < 150


def test_skip_and_cancel_by_id(client, state):
    t, out = _background(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 150})
    _wait_running(state)
    client.post("/sdapi/v1/skip")
    t.join(60)
    assert out["r"].json()["error"] == "Interrupted"
    t, out = _background(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 150})
    job = _wait_running(state)
    r = client.post(f"/condiff/v1/jobs/{job.id}/cancel")
    assert r.json()["cancelled"] is True
    t.join(60)
    assert out["r"].status_code == 409 and job.cancel_reason == "cancelled"
    assert client.post(f"/condiff/v1/jobs/{job.id}/cancel").json()["cancelled"] is False
    assert_error(client.get("/condiff/v1/jobs/nope"), 404, "job_id")


def _small_state(state, **limits) -> ServerState:
    return ServerState(model=state.model, model_name="builtin", device="cpu", limits=Limits(**limits))


def test_queue_full_gives_429_with_retry_after(state):
    s2 = _small_state(state, max_queue=1)
    c2 = TestClient(create_app(s2), raise_server_exceptions=False)
    gate = threading.Event()
    blocker = s2.queue.submit("block", lambda p: gate.wait(30))
    r = c2.post("/sdapi/v1/txt2img", json=SMALL)
    assert_error(r, 429)
    assert int(r.headers["Retry-After"]) >= 1
    gate.set()
    blocker.wait(10)
    assert c2.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
    s2.close()


def test_queued_job_cancelled_before_start(state):
    s2 = _small_state(state, max_queue=3)
    gate = threading.Event()
    blocker = s2.queue.submit("block", lambda p: gate.wait(30))
    while blocker.state != "running":
        time.sleep(0.01)
    ran = []
    queued = s2.queue.submit("later", lambda p: ran.append(1))
    assert s2.queue.position(queued) == 1
    assert s2.queue.cancel(queued.id)
    gate.set()
    assert queued.wait(5) and queued.state == "cancelled" and not ran
    s2.close()


def test_job_time_limit(state):
    s2 = _small_state(state, max_job_seconds=0.3)
    c2 = TestClient(create_app(s2), raise_server_exceptions=False)
    r = c2.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 150})
    assert_error(r, 409, "time limit")
    assert r.json()["error"] == "TimedOut"
    s2.close()


def test_client_disconnect_cancels_job(state):
    app = create_app(state)
    body = json.dumps({**SMALL, "steps": 150}).encode()
    sent = []

    async def receive():
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": body, "more_body": False}
        while state.queue.current() is None or state.queue.current().step < 2:
            await asyncio.sleep(0.02)
        return {"type": "http.disconnect"}

    messages = []

    async def send(msg):
        messages.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/sdapi/v1/txt2img", "raw_path": b"/sdapi/v1/txt2img",
             "query_string": b"", "headers": [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode())],
             "http_version": "1.1", "scheme": "http", "server": ("test", 80), "client": ("test", 1), "root_path": ""}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 60))
    job = state.queue.jobs()[-1]
    assert job.state == "cancelled" and job.cancel_reason == "disconnected" and job.step < 150


def test_unexpected_error_is_generic_500(state):
    s2 = _small_state(state)
    app = create_app(s2)

    @app.get("/boom")
    async def boom():
        raise KeyError("secret internal detail")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert_error(r, 500)
    assert "secret" not in r.text and r.json()["detail"] == "internal error (logged on the server)"
    s2.close()


# --------------------------------------------------------------------------------------- auth, body size


def test_auth_on_and_off(state):
    s2 = ServerState(model=state.model, model_name="builtin", device="cpu", auth=("ann", "s3cret"))
    c2 = TestClient(create_app(s2), raise_server_exceptions=False)
    assert_error(c2.get("/sdapi/v1/sd-models"), 401)
    assert c2.get("/sdapi/v1/sd-models").headers["WWW-Authenticate"].startswith("Basic")
    assert_error(c2.get("/sdapi/v1/sd-models", auth=("ann", "wrong")), 401)
    assert_error(c2.get("/sdapi/v1/sd-models", headers={"Authorization": "Basic !!!"}), 401)
    assert c2.get("/sdapi/v1/sd-models", auth=("ann", "s3cret")).status_code == 200
    s2.close()
    s3 = _small_state(state)
    assert TestClient(create_app(s3)).get("/sdapi/v1/sd-models").status_code == 200
    s3.close()


def test_body_limit(state):
    s2 = _small_state(state, max_body_bytes=2000)
    c2 = TestClient(create_app(s2), raise_server_exceptions=False)
    assert_error(c2.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "x" * 3000}), 413, "body")

    def chunks():
        yield b'{"prompt": "'
        yield b"x" * 3000
        yield b'"}'

    assert_error(c2.post("/sdapi/v1/txt2img", content=chunks(), headers={"content-type": "application/json"}), 413, "body")
    s2.close()


def test_serve_flags_bind_safely():
    from condiff.commands.serve import check_bind, parse_auth

    assert check_bind("127.0.0.1", False, None, False) == "127.0.0.1"
    with pytest.raises(ValueError, match="--listen"):
        check_bind("0.0.0.0", False, None, False)
    with pytest.raises(ValueError, match="--api-auth"):
        check_bind("127.0.0.1", True, None, False)
    assert check_bind("127.0.0.1", True, ("a", "b"), False) == "0.0.0.0"
    assert check_bind("127.0.0.1", True, None, True) == "0.0.0.0"
    assert parse_auth("a:b:c") == ("a", "b:c")
    with pytest.raises(ValueError):
        parse_auth("nopassword")


def test_serve_help_states_limits():
    from typer.testing import CliRunner

    from condiff.cli import _register_commands, app

    _register_commands()
    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--max-pixels", "--max-steps", "--max-batch", "--max-body-bytes", "--max-prompt-chars",
                 "--max-image-pixels", "--max-job-seconds", "--max-queue", "--listen", "--api-auth", "--insecure"):
        assert flag in out, flag
