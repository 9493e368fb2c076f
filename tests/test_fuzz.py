"""Property-based hardening suite (issue 22): generated bad images, masks, numbers, strings, paths and
weight files through the command line and the Python API.

Every case must end in one of: refused with condiff's own exception type (API) or a one-line error with
exit status 2/1 (CLI), or reaching the compute with valid input (the model loaders are replaced by a
sentinel, so no model runs). Asserted for every case: no exception outside condiff's hierarchy, no
``unexpected`` CLI error, no output file after a failure, and each case done within a time bound.

Profiles: ``ci`` (default, few examples) and ``long`` (``make fuzz`` / ``bench/fuzz.py``, which also
writes the counts by outcome with ``CONDIFF_FUZZ_REPORT=FILE``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from condiff import cli
from condiff import validate as V
from condiff.errors import Cancelled, CondiffError

_COMMON = dict(database=None, deadline=None, derandomize=False,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=int(os.environ.get("CONDIFF_FUZZ_EXAMPLES", 10)), **_COMMON)
settings.register_profile("long", max_examples=int(os.environ.get("CONDIFF_FUZZ_EXAMPLES", 800)), **_COMMON)
settings.load_profile(os.environ.get("CONDIFF_FUZZ_PROFILE", "ci"))

pytestmark = pytest.mark.usefixtures("single_thread")

CASE_SECONDS = 10.0  # bound per case (a refused case takes milliseconds; loose for a loaded 2-core machine)
OUTCOMES: Counter = Counter()
SLOWEST = {"seconds": 0.0}
SENTINEL = "fuzz: reached compute"


class ReachedCompute(Exception):
    """Raised by the stub model: every check passed and the pipeline started working."""


class StubModel:
    """Answers what pipelines read while checking; any other use means the checks passed."""

    image_size, downscale, name = 32, 4, "stub"
    info: dict = {}

    def __getattr__(self, name):
        raise ReachedCompute(name)


def _sentinel(*a, **k):
    raise Cancelled(SENTINEL)


@contextlib.contextmanager
def _no_models():
    """Replace every model loader the CLI uses with the sentinel."""
    import condiff.commands.personalize as pers
    import condiff.models.cascade as cascade
    import condiff.models.registry as registry
    import condiff.models.unclip as unclip

    saved = [(registry, "load_model"), (cascade, "load_cascade"), (unclip, "load_unclip"), (pers, "load_model")]
    old = [getattr(m, n) for m, n in saved]
    try:
        for m, n in saved:
            setattr(m, n, _sentinel)
        yield
    finally:
        for (m, n), f in zip(saved, old):
            setattr(m, n, f)


def record(kind: str, outcome: str, seconds: float) -> None:
    OUTCOMES[f"{kind}:{outcome}"] += 1
    SLOWEST["seconds"] = max(SLOWEST["seconds"], seconds)
    assert seconds < CASE_SECONDS, f"{kind} case took {seconds:.1f} s"


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("CONDIFF_FUZZ_REPORT")
    if path:
        total = sum(OUTCOMES.values())
        by_outcome = Counter()
        for key, n in OUTCOMES.items():
            by_outcome[key.split(":", 1)[1]] += n
        Path(path).write_text(json.dumps({
            "cases": total, "by_outcome": dict(sorted(by_outcome.items())),
            "by_input_path": dict(sorted(OUTCOMES.items())), "slowest_case_s": round(SLOWEST["seconds"], 3),
            "profile": os.environ.get("CONDIFF_FUZZ_PROFILE", "ci"),
        }, indent=2) + "\n")


# ------------------------------------------------------------------------------------ strategies
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(w: int, h: int) -> bytes:
    """A PNG whose header claims w×h pixels (a few bytes of data)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _png_chunk(b"IEND", b"")


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def image_files(draw):
    """(bytes, suffix) of a valid, odd or broken picture file."""
    kind = draw(st.sampled_from(["random", "truncated", "valid", "float", "int16", "bomb", "empty", "tiny", "rgba"]))
    side = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "random":
        return draw(st.binary(max_size=300)), draw(st.sampled_from([".png", ".jpg", ".webp", ".txt"]))
    if kind == "empty":
        return b"", ".png"
    if kind == "bomb":
        return _bomb_png(draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1))), ".png"
    if kind == "float":
        a = (rng.random((side, side)) * draw(st.sampled_from([1.0, 255.0, 1e6, -1.0]))).astype(np.float32)
        return _encode(a, "TIFF"), ".tiff"
    if kind == "int16":
        return _encode(rng.integers(0, 65535, (side, side)).astype(np.uint16), "PNG"), ".png"
    if kind == "rgba":
        return _encode(rng.integers(0, 255, (side, side, 4), dtype=np.uint8), "PNG"), ".png"
    data = _encode(rng.integers(0, 255, (side if kind != "tiny" else 1, side, 3), dtype=np.uint8), "PNG")
    if kind == "truncated":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    return data, ".png"


NUMBERS = st.one_of(
    st.integers(-10**15, 10**15), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "", "0x10", "1_000", "one", "-0", "1e-320"]),
)
TEXT = st.one_of(
    st.text(max_size=60), st.text(min_size=2001, max_size=2100),
    st.binary(max_size=30).map(lambda b: os.fsdecode(b)),  # undecodable bytes as argv gives them
)
NAMES = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\0/", blacklist_categories=["Cs"]), min_size=1, max_size=40),
    st.integers(250, 400).map(lambda n: "x" * n),
    st.sampled_from(["a/b/c", "..", ".", "sub/", "-o", "--help"]),
)


@st.composite
def weight_files(draw):
    """(bytes, suffix) of a corrupt or odd LoRA/embedding file."""
    kind = draw(st.sampled_from(["random", "bad_len", "bad_json", "header_only", "valid_empty", "pt"]))
    if kind == "random":
        return draw(st.binary(max_size=200)), ".safetensors"
    if kind == "pt":
        return draw(st.binary(max_size=200)), ".pt"
    header = draw(st.sampled_from([b"{}", b"{not json", b'{"a": {"dtype": "F32", "shape": [2], '
                                   b'"data_offsets": [0, 999]}}', b'{"a": 1}']))
    n = len(header) if kind != "bad_len" else draw(st.integers(0, 2**63))
    body = struct.pack("<Q", n) + header
    if kind == "valid_empty":
        body = struct.pack("<Q", 2) + b"{}"
    return body, ".safetensors"


OPTIONS = {
    "generate": ["--steps", "--batch", "--guidance", "--seed", "--eta", "--width", "--height", "--threads"],
    "inpaint": ["--feather", "--steps", "--guidance", "--padding", "--jump-length", "--resamples", "--seed"],
    "sdedit": ["--strength", "--steps", "--guidance", "--seed", "--eta"],
    "variations": ["--n", "--steps", "--sr-steps", "--noise-level", "--seed"],
    "upscale": ["--steps", "--noise-level", "--guidance", "--seed"],
    "control": ["--scale", "--start", "--end", "--steps", "--seed"],
    "personalize": ["--steps", "--batch-size", "--lr", "--rank", "--checkpoint-every", "--seed"],
}


def _argv(command: str, folder: Path, image: Path, mask: Path) -> list[str]:
    base = {
        "generate": ["generate", "a cat"],
        "inpaint": ["inpaint", str(image), str(mask), "a hat"],
        "sdedit": ["sdedit", str(image), "a cat"],
        "variations": ["variations", str(image)],
        "upscale": ["upscale", str(image)],
        "control": ["control", str(image), "a cat", "--type", "canny"],
        "personalize": ["personalize", "lora", "--images", str(folder), "--class-noun", "cat"],
    }[command]
    return base


def run_cli(argv: list[str], out_dir: Path, kind: str) -> str:
    """Run one CLI case; classify it; assert the boundary's promises."""
    before = set(out_dir.rglob("*"))
    t0 = time.perf_counter()
    with _no_models(), contextlib.redirect_stdout(io.StringIO()) as out, \
            contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = cli.run(argv)
        except SystemExit as e:  # --help and friends
            code = e.code or 0
    seconds = time.perf_counter() - t0
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    if code == 0:
        outcome = "ok"
    elif code == 1 and SENTINEL in text:
        outcome = "reached_compute"
    else:
        assert code in (1, 2), (argv, code, text)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, text, out.getvalue())
        assert "unexpected" not in lines[0], (argv, lines[0])
        outcome = "refused_input" if code == 2 else "refused_runtime"
    if code != 0:
        new = set(out_dir.rglob("*")) - before
        assert not new, (argv, new)
    record(kind, outcome, seconds)
    return outcome


def run_api(fn, kind: str) -> str:
    t0 = time.perf_counter()
    try:
        fn()
        outcome = "ok"
    except ReachedCompute:
        outcome = "reached_compute"
    except CondiffError as e:
        outcome = "refused_input" if isinstance(e, ValueError) or isinstance(e, OSError) else "refused_runtime"
    record(kind, outcome, time.perf_counter() - t0)
    return outcome


@pytest.fixture(scope="module")
def workspace():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        folder = root / "subject"
        folder.mkdir()
        arr = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / "a.png")
        Image.fromarray(arr).save(root / "img.png")
        Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 12)).save(root / "mask.png")
        yield root


# ------------------------------------------------------------------------------------ CLI properties
@given(command=st.sampled_from(sorted(OPTIONS)), data=st.data())
def test_cli_numbers_and_strings(workspace, command, data):
    out_dir = workspace / "out-numbers"
    out_dir.mkdir(exist_ok=True)
    argv = _argv(command, workspace / "subject", workspace / "img.png", workspace / "mask.png")
    for opt in data.draw(st.lists(st.sampled_from(OPTIONS[command]), min_size=1, max_size=3, unique=True)):
        argv += [opt, str(data.draw(NUMBERS))]
    if data.draw(st.booleans()):
        argv += ["--negative" if command in ("generate", "inpaint", "sdedit") else "--seed", data.draw(TEXT)]
    suffix = ".safetensors" if command == "personalize" else ".png"
    argv += ["--out", str(out_dir / f"o{suffix}"), "--no-progress"]
    run_cli(argv, out_dir, "cli-numbers")


OUT_NAMES = st.tuples(NAMES, st.booleans()).map(lambda t: t[0] + ".png" if t[1] else t[0])


@given(prompt=TEXT, name=OUT_NAMES, command=st.sampled_from(["generate", "sdedit", "control"]))
def test_cli_prompts_and_paths(workspace, prompt, name, command):
    out_dir = workspace / "out-paths"
    out_dir.mkdir(exist_ok=True)
    argv = _argv(command, workspace / "subject", workspace / "img.png", workspace / "mask.png")
    argv[2 if command != "generate" else 1] = prompt
    argv += ["--out", str(out_dir / name), "--steps", "1", "--no-progress"]
    run_cli(argv, out_dir, "cli-prompts-paths")


@given(img=image_files(), msk=image_files(), command=st.sampled_from(["inpaint", "sdedit", "upscale", "variations",
                                                                       "control", "personalize"]))
def test_cli_images_and_masks(workspace, img, msk, command):
    case = Path(tempfile.mkdtemp(dir=workspace))
    (case / f"img{img[1]}").write_bytes(img[0])
    (case / f"mask{msk[1]}").write_bytes(msk[0])
    folder = case / "subject"
    folder.mkdir()
    (folder / f"a{img[1]}").write_bytes(img[0])
    argv = _argv(command, folder, case / f"img{img[1]}", case / f"mask{msk[1]}")
    suffix = ".safetensors" if command == "personalize" else ".png"
    run_cli(argv + ["--out", str(case / f"o{suffix}"), "--no-progress"], case, "cli-images")


@given(weights=weight_files(), option=st.sampled_from(["--lora", "--embedding"]), scale=st.sampled_from(["", ":0.5",
                                                                                                          ":nan", ":x"]))
def test_cli_weight_files(workspace, weights, option, scale):
    case = Path(tempfile.mkdtemp(dir=workspace))
    f = case / f"w{weights[1]}"
    f.write_bytes(weights[0])
    spec = str(f) + (scale if option == "--lora" else "")
    outcome = run_cli(["generate", "a cat", option, spec, "--out", str(case / "o.png"), "--no-progress"], case,
                      "cli-weights")
    if weights[1] == ".safetensors" and weights[0][:8] != struct.pack("<Q", 2):
        assert outcome == "refused_input"


# ------------------------------------------------------------------------------------ API properties
TENSORS = st.builds(
    lambda shape, dtype, scale, nan: _tensor(shape, dtype, scale, nan),
    st.lists(st.integers(0, 9), min_size=0, max_size=5), st.sampled_from(["float32", "float64", "uint8", "int64",
                                                                          "bool", "float16"]),
    st.sampled_from([1.0, 255.0, -1.0, 1e30]), st.booleans(),
)


def _tensor(shape, dtype, scale, nan):
    x = torch.rand(*shape) * scale if shape else torch.tensor(scale)
    if nan and x.numel():
        x.view(-1)[0] = float("nan")
    if dtype in ("uint8", "int64", "bool"):
        x = x.nan_to_num().clamp(0, 255)
    return x.to(getattr(torch, dtype))


@given(image=TENSORS, mask=TENSORS, data=st.data())
def test_api_tensors(image, mask, data):
    from condiff.pipelines.cascade import upscale
    from condiff.pipelines.inpaint import inpaint
    from condiff.pipelines.text2img import sdedit
    from condiff.pipelines.unclip import variations

    which = data.draw(st.sampled_from(["sdedit", "inpaint", "upscale", "variations", "to_pil"]))
    num = data.draw(NUMBERS)
    calls = {
        "sdedit": lambda: sdedit(StubModel(), image, "a cat", strength=num),
        "inpaint": lambda: inpaint(StubModel(), image, mask, "a hat", feather=num),
        "upscale": lambda: upscale(StubModel(), image, steps=num),
        "variations": lambda: variations(StubModel(), image, n=num),
        "to_pil": lambda: __import__("condiff.images", fromlist=["to_pil"]).to_pil(image),
    }
    run_api(calls[which], f"api-{which}")


@given(data=st.data())
def test_api_numbers(data):
    from condiff.models.registry import load_model
    from condiff.pipelines.text2img import generate

    kw = {k: data.draw(st.one_of(st.none(), NUMBERS, st.lists(st.integers(0, 9), max_size=3)))
          for k in data.draw(
        st.lists(st.sampled_from(["steps", "guidance", "batch_size", "height", "width", "seed", "eta"]), max_size=4,
                 unique=True))}
    for k in ("sampler", "schedule", "negative"):
        if data.draw(st.booleans()):
            kw[k] = data.draw(st.one_of(TEXT, st.sampled_from(["ddim", "heun", "karras", "model"])))
    prompt = data.draw(st.one_of(TEXT, st.lists(TEXT, max_size=3), st.integers(), st.none()))
    if data.draw(st.integers(0, 9)) == 0:
        run_api(lambda: load_model(data.draw(st.one_of(st.integers(), TEXT, st.none())),
                                   device=data.draw(st.sampled_from(["cpu", "tpu9", "cuda:7", "", "meta"]))),
                "api-load_model")
    else:
        run_api(lambda: generate(StubModel(), prompt, **kw), "api-generate")


@given(name=OUT_NAMES, overwrite=st.booleans())
def test_api_paths(workspace, name, overwrite):
    run_api(lambda: V.check_output(workspace / "paths" / name, overwrite), "api-paths")
    assert not (workspace / "paths").exists()  # checking creates nothing


@given(img=image_files())
def test_api_image_files(workspace, img):
    from condiff.images import load_image, load_mask

    f = Path(tempfile.mkdtemp(dir=workspace)) / f"x{img[1]}"
    f.write_bytes(img[0])
    run_api(lambda: (load_image(f), load_mask(f)), "api-images")
