"""Invisible watermark: the ``dwtDct`` method of PyPI ``invisible-watermark`` (as in the Stable
Diffusion reference scripts), with the payload :data:`PAYLOAD` = ``b"condiff"`` + a version byte.

The method (``imwatermark.maxDct.EmbedMaxDct``) takes the one-level Haar DWT of the image's U
channel (YUV), cuts its approximation band into 4×4 blocks and quantises the largest-magnitude
coefficient of block *k* with step 36 so that its remainder encodes payload bit *k mod 64*; a
reader averages the votes of every block per bit.

Two departures from the library's ``WatermarkEncoder``, both measured (bench/watermark.py):

* The encoder refuses images under 256×256 px; condiff's pictures are 128×128, so condiff calls
  the same ``EmbedMaxDct`` directly. At 128² each of the 64 bits has 4 blocks instead of 64.
* The library converts to YUV in uint8 and clips RGB, which loses most bits on flat clip-art
  (0.71 of the bits read back at 128²). condiff works in float32 and re-embeds the rounded image
  until the payload reads back exactly (at most :data:`MAX_PASSES` passes).

A payload counts as found when at least :data:`FOUND_BITS` of its 64 bits match (a random image
does so with probability < 1e-9). Images smaller than :data:`MIN_PIXELS` are not watermarked
(too few blocks per bit); the reason is recorded.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PAYLOAD", "PAYLOAD_TEXT", "METHOD", "MIN_PIXELS", "FOUND_BITS", "embed", "detect"]

PAYLOAD = b"condiff\x01"
PAYLOAD_TEXT = "condiff v1"  # how reports name PAYLOAD: the bytes "condiff" and version byte 1
METHOD = "dwtDct"
MIN_PIXELS = 128 * 128
FOUND_BITS = 56
MAX_PASSES = 16
_SCALES = [0, 36, 36]  # the library's defaults: only the U channel is used (its loop covers channels 0-1)
_BITS = np.unpackbits(np.frombuffer(PAYLOAD, np.uint8)).astype(int)


def _coder(bits):
    from imwatermark.maxDct import EmbedMaxDct

    return EmbedMaxDct(list(bits), wmLen=len(_BITS), scales=_SCALES)


def _embed_once(rgb: np.ndarray) -> np.ndarray:
    bgr = np.ascontiguousarray(rgb[..., ::-1], dtype=np.float32)
    out = _coder(_BITS).encode(bgr)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)[..., ::-1].copy()


def _read_bits(rgb: np.ndarray) -> np.ndarray:
    bgr = np.ascontiguousarray(rgb[..., ::-1], dtype=np.float32)
    return np.asarray(_coder([]).decode(bgr), dtype=int)


def embed(rgb: np.ndarray) -> tuple[np.ndarray, dict]:
    """Watermark an RGB uint8 array [H, W, 3]; returns (image, record of what was done)."""
    h, w = rgb.shape[:2]
    record = {"method": METHOD, "payload": PAYLOAD_TEXT, "library": "invisible-watermark"}
    if h * w < MIN_PIXELS:
        return rgb, {**record, "embedded": False, "reason": f"{w}x{h} px is under the {MIN_PIXELS} px minimum"}
    out = rgb
    for passes in range(1, MAX_PASSES + 1):
        out = _embed_once(out)
        if (_read_bits(out) == _BITS).all():
            break
    bits_ok = int((_read_bits(out) == _BITS).sum())
    return out, {**record, "embedded": True, "passes": passes, "bits_read_back": bits_ok}


def detect(rgb: np.ndarray) -> dict:
    """Look for the payload in an RGB uint8 array: ``{"found", "bits", "bit_accuracy", "size"}``.

    A picture under 128 px on its shorter side (e.g. a 0.5× copy) is first resized back so that
    its shorter side is 128 px (bicubic), the size condiff writes.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < 128:
        from PIL import Image

        k = 128 / min(h, w)
        rgb = np.asarray(Image.fromarray(rgb).resize((round(w * k), round(h * k)), Image.BICUBIC))
    if rgb.shape[0] * rgb.shape[1] < 64 * 16 * 4:
        return {"found": False, "bits": 0, "bit_accuracy": 0.0, "reason": "image too small to hold the payload"}
    ok = int((_read_bits(rgb) == _BITS).sum())
    return {"found": ok >= FOUND_BITS, "bits": ok, "bit_accuracy": round(ok / len(_BITS), 4),
            "payload": PAYLOAD_TEXT if ok >= FOUND_BITS else None}
