"""Provenance stamps on condiff's 128×128 pictures: watermark survival, PSNR cost, time per stamp.

    python bench/watermark.py [--n 16] [--steps 20] [--out bench/results/watermark.json]

Pictures: ``--n`` images of the built-in model (default sampler, ``--steps`` steps, seeds 0…n−1,
prompts cycling through a fixed list) — what condiff writes.

1. **Watermark variants** (invisible-watermark ``dwtDct``, payload ``b"condiff\\x01"``, 64 bits):
   ``condiff`` = :func:`condiff.provenance.watermark.embed` (float YUV, re-embedded until it reads
   back); ``library-uint8`` = one pass of the library's own uint8 path at 128² (its size check
   bypassed); ``library-256`` = the library's ``WatermarkEncoder`` as-is on a 2× bicubic upsample,
   downsampled back to 128² (decoded by upsampling again). The library's encoder refuses 128² as
   is (the error is recorded).
2. **Survival** per variant: fraction of pictures whose payload is found (≥ 56 of 64 bits) and mean
   bit accuracy, after: nothing, JPEG quality 90/70/50, resize 0.5× (Lanczos; decoded after a
   bicubic resize back to 128², as ``condiff provenance verify`` does), centre crop to 80 % of each
   side (decoded as is, and after a resize back to 128²). The false-positive row decodes the
   unmarked pictures.
3. **PSNR** of the watermarked picture against the unmarked one (dB; mean and minimum).
4. **Time per image** added by each stamp (median of the pictures): A1111 + JSON text chunks (model
   hash cached; the uncached hash of the built-in weights is listed separately), watermark, C2PA
   signing (ES256, local key, no thumbnail), and the verify side (manifest read, watermark decode).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PROMPTS = ["a red heart", "a cat face", "a yellow star", "a green tree", "a blue car", "a smiling sun",
           "a pizza slice", "a rocket"]


def _pictures(n: int, steps: int) -> list[np.ndarray]:
    from condiff.models.registry import load_model
    from condiff.pipelines.text2img import generate

    model = load_model("builtin")
    out = []
    for i in range(n):
        img = generate(model, PROMPTS[i % len(PROMPTS)], steps=steps, seed=i, show_progress=False).images[0]
        out.append((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return out


def _jpeg(a, q):
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="JPEG", quality=q)
    return np.asarray(Image.open(b).convert("RGB"))


def _resize(a, size, method=Image.BICUBIC):
    return np.asarray(Image.fromarray(a).resize(size, method))


def _crop80(a):
    h, w = a.shape[:2]
    dh, dw = round(h * 0.1), round(w * 0.1)
    return np.ascontiguousarray(a[dh:h - dh, dw:w - dw])


ATTACKS = {
    "none": lambda a: a,
    "jpeg90": lambda a: _jpeg(a, 90),
    "jpeg70": lambda a: _jpeg(a, 70),
    "jpeg50": lambda a: _jpeg(a, 50),
    "resize0.5": lambda a: _resize(_resize(a, (a.shape[1] // 2, a.shape[0] // 2), Image.LANCZOS),
                                   (a.shape[1], a.shape[0])),
    "crop80": _crop80,
    "crop80+resize": lambda a: _resize(_crop80(a), (a.shape[1], a.shape[0])),
}


def _variants():
    from imwatermark import WatermarkDecoder, WatermarkEncoder
    from imwatermark.maxDct import EmbedMaxDct

    from condiff.provenance import watermark as wm

    bits = list(wm._BITS)

    def lib_uint8(a):
        out = EmbedMaxDct(bits, wmLen=64).encode(np.ascontiguousarray(a[..., ::-1]))
        return np.asarray(out, np.uint8)[..., ::-1].copy()

    def lib_uint8_read(a):
        return np.asarray(EmbedMaxDct([], wmLen=64).decode(np.ascontiguousarray(a[..., ::-1])), int)

    enc = WatermarkEncoder()
    enc.set_watermark("bytes", wm.PAYLOAD)
    dec = WatermarkDecoder("bytes", 64)

    def lib256(a):
        up = _resize(a, (256, 256))
        marked = enc.encode(np.ascontiguousarray(up[..., ::-1]), "dwtDct")[..., ::-1]
        return _resize(np.ascontiguousarray(marked), (a.shape[1], a.shape[0]), Image.LANCZOS)

    def lib256_read(a):
        up = _resize(a, (256, 256))
        got = dec.decode(np.ascontiguousarray(up[..., ::-1]), "dwtDct")
        return np.unpackbits(np.frombuffer(got, np.uint8)).astype(int)

    return {
        "condiff": (lambda a: wm.embed(a)[0], wm._read_bits),
        "library-uint8": (lib_uint8, lib_uint8_read),
        "library-256": (lib256, lib256_read),
    }, np.asarray(bits)


def _decode(read, a, bits):
    """Bits matching; a picture under 128 px on its shorter side is resized back first (as verify does)."""
    h, w = a.shape[:2]
    if min(h, w) < 64:
        k = 128 / min(h, w)
        a = _resize(a, (round(w * k), round(h * k)))
    return int((read(a) == bits).sum())


def survival(pics, found_bits: int) -> tuple[dict, dict]:
    variants, bits = _variants()
    table, psnr = {}, {}
    for name, (embed, read) in variants.items():
        marked = [embed(p) for p in pics]
        ps = [10 * np.log10(255 ** 2 / max(np.mean((m.astype(float) - p) ** 2), 1e-12)) for m, p in zip(marked, pics)]
        psnr[name] = {"mean_db": round(float(np.mean(ps)), 2), "min_db": round(float(np.min(ps)), 2)}
        rows = {}
        for attack, fn in ATTACKS.items():
            got = [_decode(read, fn(m), bits) for m in marked]
            rows[attack] = {"found": round(sum(g >= found_bits for g in got) / len(got), 3),
                            "bit_accuracy": round(float(np.mean(got)) / 64, 3)}
        got = [_decode(read, p, bits) for p in pics]
        rows["unmarked (false positive)"] = {"found": round(sum(g >= found_bits for g in got) / len(got), 3),
                                             "bit_accuracy": round(float(np.mean(got)) / 64, 3)}
        table[name] = rows
    return table, psnr


def _median_ms(fn, items) -> float:
    times = []
    for x in items:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2)


def timings(pics) -> dict:
    from condiff.provenance import c2pa_sign, hashes, keys, stamp, verify, watermark

    params = {"model": "builtin", "pipeline": "text2img", "prompt": "a red heart, flat", "negative": "",
              "steps": 20, "sampler": "dpmpp_2m", "guidance": 5.0, "seed": 0}
    with tempfile.TemporaryDirectory() as d:  # empty memory and disk caches: the cost of the first run
        os.environ["XDG_CACHE_HOME"] = d
        hashes._CACHE.clear()
        t = time.perf_counter()
        hashes.model_hash("builtin")
        uncached = (time.perf_counter() - t) * 1000
    ims = [Image.fromarray(p) for p in pics]

    def plain(im):
        im.save(io.BytesIO(), format="PNG")

    def with_text(im):
        rec = stamp.stamp_record(params)
        im.save(io.BytesIO(), format="PNG", pnginfo=stamp.text_chunks(params, rec, im.size))

    base = _median_ms(plain, ims)
    encoded = []
    for im in ims:
        b = io.BytesIO()
        im.save(b, format="PNG", pnginfo=stamp.text_chunks(params, stamp.stamp_record(params), im.size))
        encoded.append(b.getvalue())
    with tempfile.TemporaryDirectory() as d:
        os.environ["XDG_CONFIG_HOME"] = d
        keys.keygen()
        creds = keys.load_credentials()
        signed = [c2pa_sign.sign_png(e, params, {}, creds) for e in encoded]
        anchors = keys.trust_anchors()
        out = {
            "png_encode_without_stamps_ms": base,
            "parameters_text_chunks_ms": round(_median_ms(with_text, ims) - base, 2),
            "model_hash_builtin_uncached_ms (first run; then cached on disk)": round(uncached, 1),
            "watermark_embed_ms": _median_ms(lambda p: watermark.embed(p), pics),
            "c2pa_sign_ms": _median_ms(lambda e: c2pa_sign.sign_png(e, params, {}, creds), encoded),
            "total_png_bytes_ms (all stamps, hash cached)": _median_ms(lambda im: stamp.png_bytes(im, params), ims),
            "verify_manifest_ms": _median_ms(lambda s: c2pa_sign.read_manifest(s, "image/png", anchors), signed),
            "verify_watermark_ms": _median_ms(watermark.detect, pics),
            "file_bytes_unsigned": int(np.median([len(e) for e in encoded])),
            "file_bytes_signed": int(np.median([len(s) for s in signed])),
        }
        assert all(verify.read_png_info(s)["ok"] for s in signed[:2])
    return out


def example(pics, path: Path) -> None:
    """Rows of (unmarked | watermarked | |difference| × 8), shown 3× with nearest-neighbour zoom."""
    from condiff.provenance import watermark as wm

    rows = []
    for p in pics:
        m = wm.embed(p)[0]
        rows.append(np.concatenate([p, m, np.clip(np.abs(m.astype(int) - p) * 8, 0, 255).astype(np.uint8)], 1))
    grid = np.concatenate(rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def library_minimum() -> str:
    from imwatermark import WatermarkEncoder

    enc = WatermarkEncoder()
    enc.set_watermark("bytes", b"condiff\x01")
    try:
        enc.encode(np.zeros((128, 128, 3), np.uint8), "dwtDct")
    except RuntimeError as err:
        return f"WatermarkEncoder.encode on 128x128: RuntimeError({err})"
    return "WatermarkEncoder.encode accepts 128x128"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("bench/results/watermark.json"))
    a = p.parse_args()
    import torch

    from condiff.provenance import watermark as wm

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    pics = _pictures(a.n, a.steps)
    table, psnr = survival(pics, wm.FOUND_BITS)
    result = {
        "command": f"python bench/watermark.py --n {a.n} --steps {a.steps}",
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared), "
                  f"torch threads {torch.get_num_threads()}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pictures": f"{a.n} built-in-model images, 128x128, dpmpp_2m {a.steps} steps, seeds 0..{a.n - 1}",
        "payload": "b'condiff\\x01' (64 bits); found = at least 56 of 64 bits",
        "library_minimum_size": library_minimum(),
        "survival": table,
        "psnr": psnr,
        "time_per_image": timings(pics),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    example(pics[:4], a.out.with_name(a.out.stem + "_example.png"))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
