"""A backend for hosted image-edit APIs of the kind the thesis used for DALL-E 2 (thesis §4.3.2).

The thesis sent its inpainting tasks to OpenAI's image-edit endpoint: "the mask is adapted by
converting it into a RGBA image, incorporating the inverted mask in the alpha channel and
retaining the original image in the RGB channels. Subsequently, the mask and the original image
are converted into byte format before initiating the request." This module does exactly that
with the standard library only:

* :func:`rgba_mask_png`: RGB = the original picture, alpha = 255·(1 − mask) — condiff's masks are
  1 = repaint, the API's convention is *transparent = edit*;
* :func:`encode_multipart`: a ``multipart/form-data`` body (RFC 7578) written by hand, with a
  boundary derived from a hash of the content (deterministic, checked not to occur in it);
* :class:`RemoteImageEditor`: POSTs ``model``, ``prompt``, ``n``, ``size``, ``response_format=b64_json``
  and the files ``image`` (the original, PNG) and ``mask`` (the RGBA PNG) with
  ``Authorization: Bearer <key>``, the key read from an environment variable at call time (never
  stored, never logged). Timeouts, HTTP 429 and 5xx are retried with exponential backoff
  (``backoff·2^k`` s, at least the server's ``Retry-After``, capped); other 4xx answers raise
  :class:`RemoteAPIError` at once, carrying the server's own error message.

Nothing here runs unless the user configures an endpoint (argument or ``CONDIFF_REMOTE_ENDPOINT``):
there is no default URL. Plain ``http://`` is refused for any host but the local machine unless
``allow_insecure=True``, so an API key never travels unencrypted by accident.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import ipaddress
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = [
    "ENDPOINT_ENV",
    "API_KEY_ENV",
    "RemoteAPIError",
    "RemoteImageEditor",
    "rgba_mask_png",
    "image_png",
    "encode_multipart",
]

ENDPOINT_ENV = "CONDIFF_REMOTE_ENDPOINT"
API_KEY_ENV = "CONDIFF_REMOTE_API_KEY"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class RemoteAPIError(RuntimeError):
    """The remote API refused the request or could not be reached after the allowed retries."""

    def __init__(self, message: str, *, status: int | None = None, server_message: str | None = None,
                 attempts: int = 1):
        super().__init__(message)
        self.status = status
        self.server_message = server_message
        self.attempts = attempts


# --------------------------------------------------------------------------- request payload


def _to_uint8_hwc(image: Tensor, channels: int, what: str) -> np.ndarray:
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != channels:
        raise ValueError(f"{what} must be a tensor [1, {channels}, H, W] with values in [0, 1], got "
                         f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    if not torch.isfinite(image).all() or float(image.min()) < 0 or float(image.max()) > 1:
        raise ValueError(f"{what} values must lie in [0, 1]")
    return (image[0].detach().float().cpu() * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _png_bytes(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def image_png(image: Tensor) -> bytes:
    """The original picture [1, 3, H, W] in [0, 1] as RGB PNG bytes."""
    return _png_bytes(_to_uint8_hwc(image, 3, "image"), "RGB")


def rgba_mask_png(image: Tensor, mask: Tensor) -> bytes:
    """RGBA PNG bytes: RGB = the original image, alpha = round(255·(1 − mask)) (transparent = edit)."""
    rgb = _to_uint8_hwc(image, 3, "image")
    m = _to_uint8_hwc(mask, 1, "mask")
    if m.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"mask size {m.shape[1]}×{m.shape[0]} differs from image size {rgb.shape[1]}×{rgb.shape[0]}")
    if int(m.max()) == 0:
        raise ValueError("the mask is empty (all 0): nothing to edit; paint the region to change white")
    alpha = 255 - m  # (1 − mask)·255, rounded the same way as the mask itself
    return _png_bytes(np.concatenate([rgb, alpha], axis=-1), "RGBA")


def encode_multipart(fields: dict[str, str], files: Sequence[tuple[str, str, str, bytes]]) -> tuple[bytes, str]:
    """``multipart/form-data`` body and Content-Type (RFC 7578).

    ``fields``: name -> text value; ``files``: (field name, file name, content type, bytes). The
    boundary is a hash of the content, extended until it occurs in no part.
    """
    for name in list(fields) + [f[0] for f in files]:
        if not name or any(c in name for c in '"\r\n'):
            raise ValueError(f"invalid form field name {name!r}")
    digest = hashlib.sha256()
    for k, v in fields.items():
        digest.update(k.encode() + b"\0" + str(v).encode() + b"\0")
    for name, filename, ctype, data in files:
        digest.update(name.encode() + filename.encode() + ctype.encode() + data)
    boundary = "condiff-" + digest.hexdigest()[:32]
    payloads = [str(v).encode("utf-8") for v in fields.values()] + [f[3] for f in files]
    salt = 0
    while any(boundary.encode() in p for p in payloads):
        salt += 1
        boundary = "condiff-" + hashlib.sha256(f"{boundary}{salt}".encode()).hexdigest()[:32]
    lines: list[bytes] = []
    for k, v in fields.items():
        lines += [f"--{boundary}".encode(), f'Content-Disposition: form-data; name="{k}"'.encode(), b"",
                  str(v).encode("utf-8")]
    for name, filename, ctype, data in files:
        lines += [f"--{boundary}".encode(),
                  f'Content-Disposition: form-data; name="{name}"; filename="{filename}"'.encode(),
                  f"Content-Type: {ctype}".encode(), b"", data]
    lines += [f"--{boundary}--".encode(), b""]
    return b"\r\n".join(lines), f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------- the client


def _is_local(host: str | None) -> bool:
    if host in (None, ""):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_message(body: bytes) -> str:
    """The error text of an API answer: ``{"error": {"message": ...}}``, ``{"error": "..."}``, or the raw text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return text[:500] or "(empty response)"
    err = doc.get("error", doc) if isinstance(doc, dict) else doc
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:500]
    return str(err)[:500]


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class RemoteImageEditor:
    """Client of a hosted image-edit endpoint (OpenAI ``/v1/images/edits``-style).

    Args:
        endpoint: the full URL to POST to (required; there is no default).
        api_key_env: environment variable holding the API key (read at each call); None for an
            endpoint without authentication.
        model: the ``model`` form field ("dall-e-2" as in the thesis).
        timeout: seconds per attempt (connect + read).
        retries: extra attempts after a timeout, a connection error, HTTP 429 or 5xx.
        backoff: first wait in seconds; attempt k waits ``backoff·2^k`` (≥ Retry-After), ≤ ``max_backoff``.
        sleep: the waiting function (injectable for tests).
        allow_insecure: permit ``http://`` to a non-local host.
    """

    def __init__(self, endpoint: str, *, api_key_env: str | None = API_KEY_ENV, model: str = "dall-e-2",
                 timeout: float = 60.0, retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep, allow_insecure: bool = False):
        if not endpoint or not isinstance(endpoint, str):
            raise ValueError(f"no remote endpoint configured: pass endpoint=... or set {ENDPOINT_ENV}")
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"remote endpoint {endpoint!r} must be an http(s) URL such as "
                             "https://api.openai.com/v1/images/edits")
        if url.scheme == "http" and not _is_local(url.hostname) and not allow_insecure:
            raise ValueError(f"refusing plain http to {url.hostname}: the API key would travel unencrypted; "
                             "use https or pass allow_insecure=True")
        if not (timeout > 0) or retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("timeout must be > 0 and retries, backoff, max_backoff >= 0")
        self.endpoint = endpoint
        self.api_key_env = api_key_env
        self.model = model
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.sleep = sleep

    @classmethod
    def from_env(cls, **kwargs) -> "RemoteImageEditor | None":
        """A client for ``$CONDIFF_REMOTE_ENDPOINT``, or None when the user configured none."""
        endpoint = os.environ.get(ENDPOINT_ENV, "").strip()
        return cls(endpoint, **kwargs) if endpoint else None

    def __repr__(self) -> str:
        return f"RemoteImageEditor({self.endpoint!r}, model={self.model!r})"

    # ---------------------------------------------------------------- request
    def _headers(self, content_type: str) -> dict[str, str]:
        from . import __version__

        headers = {"Content-Type": content_type, "Accept": "application/json", "User-Agent": f"condiff/{__version__}"}
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env, "").strip()
            if not key:
                raise ValueError(f"no API key: set the environment variable {self.api_key_env} "
                                 "(or pass api_key_env=None for an endpoint without authentication)")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def build_request(self, image: Tensor, mask: Tensor, prompt: str, *, n: int = 1,
                      size: str | None = None) -> urllib.request.Request:
        """The POST request (multipart body + headers) for one edit of ``image`` where ``mask`` = 1."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the remote edit needs a non-empty prompt")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        fields = {"model": self.model, "prompt": prompt, "n": str(n), "response_format": "b64_json"}
        if size is not None:
            fields["size"] = size
        files = [("image", "image.png", "image/png", image_png(image)),
                 ("mask", "mask.png", "image/png", rgba_mask_png(image, mask))]
        body, ctype = encode_multipart(fields, files)
        return urllib.request.Request(self.endpoint, data=body, headers=self._headers(ctype), method="POST")

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        delay = self.backoff * (2 ** attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        self.sleep(min(delay, self.max_backoff))

    def send(self, request: urllib.request.Request) -> dict:
        """POST with retries; returns the decoded JSON answer or raises :class:`RemoteAPIError`."""
        attempts = self.retries + 1
        last = "no attempt made"
        for attempt in range(attempts):
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    body = resp.read()
                try:
                    return json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise RemoteAPIError(f"{self.endpoint} answered with a body that is not JSON: "
                                         f"{body[:200]!r}", attempts=attempt + 1) from None
            except urllib.error.HTTPError as err:
                message = _server_message(err.read() or b"")
                if err.code not in _RETRY_STATUS:
                    raise RemoteAPIError(f"the remote API refused the request (HTTP {err.code}): {message}",
                                         status=err.code, server_message=message, attempts=attempt + 1) from None
                last = f"HTTP {err.code}: {message}"
                retry_after = _retry_after(err.headers)
                status = err.code
            except (TimeoutError, socket.timeout) as err:
                last, status = f"timed out after {self.timeout:g} s ({err})", None
            except urllib.error.URLError as err:
                if isinstance(err.reason, (TimeoutError, socket.timeout)):
                    last = f"timed out after {self.timeout:g} s"
                else:
                    last = f"connection failed: {err.reason}"
                status = None
            except (ConnectionError, http.client.HTTPException) as err:
                last, status = f"connection failed: {err}", None
            if attempt + 1 < attempts:
                self._wait(attempt, retry_after)
        raise RemoteAPIError(f"the remote API at {self.endpoint} failed after {attempts} attempt(s); last error: {last}",
                             status=status, server_message=last, attempts=attempts)

    # ---------------------------------------------------------------- the edit
    def edit(self, image: Tensor, mask: Tensor, prompt: str, *, n: int = 1, size: str | None = None,
             output_size: tuple[int, int] | None = None) -> Tensor:
        """Edited images [n, 3, H, W] in [0, 1] (mask: [1, 1, H, W], 1 = repaint).

        ``size``: the API's size field (e.g. "256x256"; omitted when None). The answers are resized
        to ``output_size`` = (W, H) (default: the input's), so they can be composited.
        """
        answer = self.send(self.build_request(image, mask, prompt, n=n, size=size))
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not data:
            raise RemoteAPIError(f"unexpected answer from {self.endpoint}: no 'data' list ({str(answer)[:200]})")
        w, h = output_size or (image.shape[-1], image.shape[-2])
        out = []
        for item in data:
            if not isinstance(item, dict) or "b64_json" not in item:
                raise RemoteAPIError("the remote API returned no 'b64_json' image (a URL answer is not fetched); "
                                     "the endpoint must honour response_format=b64_json")
            try:
                im = Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB")
            except Exception as err:  # PIL raises several error types for bad data
                raise RemoteAPIError(f"the remote API returned an image that cannot be decoded: {err}") from None
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.LANCZOS)
            out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255)
        return torch.stack(out)

