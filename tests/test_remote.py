"""The remote image-edit backend against a local HTTP server (127.0.0.1 only) that checks the request."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from condiff.remote import (API_KEY_ENV, ENDPOINT_ENV, RemoteAPIError, RemoteImageEditor, encode_multipart,
                            rgba_mask_png)

KEY = "sk-test-123"


def _picture(h=16, w=16):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., 4:10, 3:12] = 1.0
    mask[..., 12, 0] = 0.5  # a soft value: its alpha must be the exact inverse
    return image, mask


def _png_answer(color=(10, 200, 30), size=(16, 16)) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return {"data": [{"b64_json": base64.b64encode(buf.getvalue()).decode()}]}


class _Stub:
    """A scripted image-edit endpoint: each request pops the next (status, body, delay, headers)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload, delay, extra = stub.script.pop(0) if stub.script else (500, b"{}", 0, {})
                if delay:
                    time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/images/edits"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _parts(request: dict) -> dict:
    """Parse the multipart body with the standard library's MIME parser (independent of the encoder)."""
    head = f"Content-Type: {request['headers']['Content-Type']}\r\n\r\n".encode()
    msg = BytesParser(policy=HTTP).parsebytes(head + request["body"])
    assert msg.is_multipart()
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[name] = {"filename": part.get_filename(), "type": part.get_content_type(),
                     "data": part.get_payload(decode=True)}
    return out


@pytest.fixture
def client_env(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, KEY)
    delays: list[float] = []
    return delays


def _client(url, delays, **kw):
    kw.setdefault("timeout", 5.0)
    return RemoteImageEditor(url, sleep=delays.append, backoff=0.5, **kw)


def test_request_format_rgba_inverted_mask_and_auth(client_env):
    image, mask = _picture()
    with _Stub([(200, _png_answer(size=(32, 32)), 0, {})]) as stub:
        out = _client(stub.url, client_env).edit(image, mask, "a woman wearing a scarf", n=1, size="256x256")
    assert out.shape == (1, 3, 16, 16)  # resized back to the input size
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([10, 200, 30]) / 255, atol=1e-6)
    (req,) = stub.requests
    assert req["path"] == "/v1/images/edits"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    parts = _parts(req)
    assert {k: parts[k]["data"].decode() for k in ("model", "prompt", "n", "size", "response_format")} == {
        "model": "dall-e-2", "prompt": "a woman wearing a scarf", "n": "1", "size": "256x256",
        "response_format": "b64_json"}
    assert parts["image"]["filename"] == "image.png" and parts["image"]["type"] == "image/png"
    assert parts["mask"]["filename"] == "mask.png" and parts["mask"]["type"] == "image/png"
    rgb = np.asarray(Image.open(io.BytesIO(parts["image"]["data"])))
    rgba = Image.open(io.BytesIO(parts["mask"]["data"]))
    assert rgba.mode == "RGBA"
    rgba = np.asarray(rgba)
    expected_rgb = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(rgb, expected_rgb)  # the original, losslessly
    np.testing.assert_array_equal(rgba[..., :3], expected_rgb)  # RGB of the RGBA = the original
    expected_alpha = 255 - (mask[0, 0] * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(rgba[..., 3], expected_alpha)  # alpha = inverted mask
    assert rgba[5, 5, 3] == 0 and rgba[0, 0, 3] == 255 and rgba[12, 0, 3] == 127  # transparent = edit
    assert client_env == []  # no retry on success


def test_4xx_raises_at_once_with_server_message(client_env):
    image, mask = _picture()
    answer = {"error": {"message": "Invalid input image - format must be in ['RGBA', 'LA', 'L'], got RGB."}}
    with _Stub([(400, answer, 0, {}), (200, _png_answer(), 0, {})]) as stub:
        with pytest.raises(RemoteAPIError, match=r"HTTP 400.*Invalid input image") as err:
            _client(stub.url, client_env).edit(image, mask, "x")
    assert err.value.status == 400 and err.value.attempts == 1
    assert "format must be" in err.value.server_message
    assert len(stub.requests) == 1 and client_env == []  # not retried


def test_5xx_and_429_are_retried_with_backoff(client_env):
    image, mask = _picture()
    script = [(503, {"error": "overloaded"}, 0, {}), (429, {"error": {"message": "rate limit"}}, 0, {"Retry-After": "3"}),
              (200, _png_answer(), 0, {})]
    with _Stub(script) as stub:
        out = _client(stub.url, client_env, retries=3).edit(image, mask, "x")
    assert out.shape == (1, 3, 16, 16) and len(stub.requests) == 3
    assert client_env == [0.5, 3.0]  # backoff·2^0, then max(backoff·2^1, Retry-After)


def test_5xx_gives_up_after_retries(client_env):
    image, mask = _picture()
    with _Stub([(500, {"error": {"message": "boom"}}, 0, {})] * 5) as stub:
        with pytest.raises(RemoteAPIError, match=r"failed after 3 attempt.*HTTP 500: boom") as err:
            _client(stub.url, client_env, retries=2).edit(image, mask, "x")
    assert err.value.attempts == 3 and len(stub.requests) == 3
    assert client_env == [0.5, 1.0]


def test_timeout_is_retried_then_error(client_env):
    image, mask = _picture()
    with _Stub([(200, _png_answer(), 1.0, {}), (200, _png_answer(), 1.0, {})]) as stub:
        t0 = time.perf_counter()
        with pytest.raises(RemoteAPIError, match=r"failed after 2 attempt.*timed out"):
            _client(stub.url, client_env, retries=1, timeout=0.2).edit(image, mask, "x")
        assert time.perf_counter() - t0 < 1.5
    assert len(stub.requests) == 2 and client_env == [0.5]


def test_timeout_then_success(client_env):
    image, mask = _picture()
    with _Stub([(200, _png_answer(), 1.0, {}), (200, _png_answer((1, 2, 3)), 0, {})]) as stub:
        out = _client(stub.url, client_env, retries=1, timeout=0.2).edit(image, mask, "x")
    assert torch.allclose(out[0, :, 3, 3], torch.tensor([1, 2, 3]) / 255)


def test_configuration_guards(monkeypatch):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    assert RemoteImageEditor.from_env() is None  # nothing configured: no client, no call
    with pytest.raises(ValueError, match="no remote endpoint configured"):
        RemoteImageEditor("")
    with pytest.raises(ValueError, match="http"):
        RemoteImageEditor("ftp://127.0.0.1/x")
    with pytest.raises(ValueError, match="unencrypted"):
        RemoteImageEditor("http://api.example.com/v1/images/edits")
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:9/v1/images/edits")
    assert RemoteImageEditor.from_env().endpoint.endswith("/edits")
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    image, mask = _picture()
    with pytest.raises(ValueError, match=API_KEY_ENV):  # raised before any connection is made
        RemoteImageEditor.from_env().build_request(image, mask, "x")
    with pytest.raises(ValueError, match="empty"):
        rgba_mask_png(image, torch.zeros_like(mask))


def test_multipart_boundary_never_occurs_in_content(monkeypatch):
    body, ctype = encode_multipart({"prompt": "hello"}, [("image", "a.png", "image/png", b"\x89PNG data")])
    boundary = ctype.split("boundary=")[1]
    assert body.count(boundary.encode()) == 3 and body.endswith(f"--{boundary}--\r\n".encode())
    assert encode_multipart({"prompt": "hello"}, [("image", "a.png", "image/png", b"\x89PNG data")])[1] == ctype

    # force the first-choice boundary to collide with the content: a new one must be picked
    import hashlib

    real, calls = hashlib.sha256, []

    class FirstDigestFixed:
        def __init__(self, data=b""):
            self.h = real(data)
            calls.append(self)

        def update(self, data):
            self.h.update(data)

        def hexdigest(self):
            return "a" * 64 if calls[0] is self else self.h.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", FirstDigestFixed)
    clash = "condiff-" + "a" * 32
    body, ctype = encode_multipart({"prompt": f"x {clash} y"}, [("image", "a.png", "image/png", b"png")])
    chosen = ctype.split("boundary=")[1]
    assert chosen != clash and body.count(chosen.encode()) == 3 and clash.encode() in body
