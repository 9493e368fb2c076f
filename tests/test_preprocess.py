"""Inference-time condition extractors: registry, input handling and what each one measures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from condiff.data.builder import render_record, record_specs
from condiff.data.figures import POSE_FAMILIES, sample_figure
from condiff.data.sources import load_small_sets
from condiff.data.svg_render import composite_on_white, get_backend
from condiff.preprocess import get_preprocessor, list_preprocessors
from condiff.preprocess.depth import estimate_depth, height_to_depth8, inflate_layers
from condiff.preprocess.normal import normals_from_depth
from condiff.preprocess.pose import render_openpose, skeleton_heuristic_keypoints, thin


@pytest.fixture(scope="module")
def icon_records():
    specs = [s for s in record_specs(load_small_sets(), seed=0, size=128, n_figures=0) if s["style"] in ("twemoji", "noto")]
    return [render_record(s, 128) for s in specs[:10]]


def _disc_image(size=96, r=30):
    img = np.full((size, size, 3), 255, np.uint8)
    cv2.circle(img, (size // 2, size // 2), r, (220, 60, 40), -1)
    return img


def test_registry_names_and_unknown_name():
    assert list_preprocessors() == ["canny", "lineart", "softedge", "depth", "normal", "pose"]
    with pytest.raises(ValueError, match="canny, lineart, softedge, depth, normal, pose"):
        get_preprocessor("midas")


@pytest.mark.parametrize("name", ["canny", "lineart", "softedge", "depth", "normal", "pose"])
def test_any_rgb_input_gives_rgb_uint8_of_same_size(name):
    fn = get_preprocessor(name)
    img = _disc_image(96)[:, :80]
    for x in (img, Image.fromarray(img), np.dstack([img, np.full(img.shape[:2], 255, np.uint8)]), img[..., 0]):
        out = fn(x)
        assert out.shape == (96, 80, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="uint8"):
        fn(img.astype(np.float32))


def test_canny_is_opencv_canny():
    img = _disc_image()
    want = cv2.Canny(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 100, 200)
    assert np.array_equal(get_preprocessor("canny")(img)[..., 0], want)
    with pytest.raises(ValueError, match="thresholds"):
        get_preprocessor("canny")(img, low=50, high=10)


def test_softedge_responds_at_edges_only():
    img = np.full((64, 64, 3), 255, np.uint8)
    img[:, 32:] = 0
    e = get_preprocessor("softedge")(img)[..., 0].astype(int)
    assert e[:, 31:33].min() > 150 and e[:, :20].max() == 0 and e[:, 45:].max() == 0


def test_lineart_preprocessor_recovers_exact_vector_lineart(icon_records):
    recalls = []
    for rec in icon_records:
        exact = cv2.dilate((rec["lineart"] > 96).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        est = get_preprocessor("lineart")(rec["image"])[..., 0] > 96
        recalls.append((est & exact).sum() / max(1, est.sum()))  # estimated lines lying on exact lines
    assert np.mean(recalls) > 0.9, recalls  # measured 0.99 on the small set


def test_inflation_is_exact_for_a_disc():
    yy, xx = np.mgrid[:101, :101]
    disc = (yy - 50) ** 2 + (xx - 50) ** 2 <= 30 ** 2
    h = inflate_layers([disc], thickness=0.0)
    assert abs(h[50, 50] - 30.5) < 1.5                       # sphere of radius R: height R at the centre
    assert abs(h[50, 65] - np.sqrt(30 ** 2 - 15 ** 2)) < 1.5  # 15 px off-centre: sqrt(R² − 15²)
    stacked = inflate_layers([disc, disc & (xx > 50)], thickness=2.0)
    assert stacked[50, 70] > stacked[50, 30]                 # the second layer lies on top
    with pytest.raises(ValueError):
        inflate_layers([])


def test_depth_estimate_tracks_the_layered_construction(icon_records):
    corr = []
    for rec in icon_records:
        est = estimate_depth(rec["image"])[..., 0].astype(float)
        corr.append(np.corrcoef(est.ravel(), rec["depth"].astype(float).ravel())[0, 1])
    assert np.mean(corr) > 0.85, corr  # measured 0.95 on the small set
    d = estimate_depth(_disc_image())[..., 0]
    assert d[48, 48] == 255 and d[0, 0] == 0


def test_normals_flat_and_ramp():
    flat = normals_from_depth(np.zeros((32, 32), np.uint8))
    assert (flat == [128, 128, 255]).all()
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))  # nearer to the right
    n = normals_from_depth(ramp)[32, 32].astype(int)
    assert n[0] < 118 and abs(n[1] - 128) <= 1 and n[2] > 200   # surface faces left (−x)
    ramp_up = ramp.T[::-1].copy()                                # nearer toward the top
    assert normals_from_depth(ramp_up)[32, 32, 1] < 118          # faces down (−y up-axis)
    est = get_preprocessor("normal")(_disc_image())
    assert est[48, 20, 0] < 100 and est[48, 76, 0] > 156       # left side faces left, right side right


def test_openpose_rendering():
    assert render_openpose(None, 64).max() == 0
    kp = np.zeros((18, 3), np.float32)
    kp[0] = (32, 10, 1)
    kp[1] = (32, 20, 1)
    out = render_openpose(kp, 64)
    assert out[15, 32].max() > 0 and out[50, 5].max() == 0
    assert tuple(out[10, 32]) == (255, 0, 0)                    # nose dot in the OpenPose palette
    with pytest.raises(ValueError, match="18×3"):
        render_openpose(np.zeros((17, 3)), 64)


def test_thinning_gives_one_pixel_lines():
    m = np.zeros((40, 40), bool)
    m[15:24, 5:35] = True
    sk = thin(m)
    assert sk.sum() > 20 and sk[:, 10:30].sum(axis=0).max() == 1


def test_pose_heuristic_finds_procedural_figures():
    rng = np.random.default_rng(5)
    be = get_backend("auto")
    errs = []
    for fam in POSE_FAMILIES:
        fig = sample_figure(rng, 128, fam, "figure-flat")
        kp = skeleton_heuristic_keypoints(composite_on_white(be.render(fig.svg)))
        assert kp is not None, fam
        body = slice(0, 14)
        errs.append(np.median(np.linalg.norm(kp[body, :2] - fig.keypoints[body, :2], axis=1)))
    assert np.median(errs) < 8.0, errs
    assert get_preprocessor("pose")(np.full((64, 64, 3), 255, np.uint8)).max() == 0


# ------------------------------------------------------------------------------ domains
def _photo_like(size=128, seed=0):
    """A photograph stand-in: smooth colour gradients + sensor noise, no plain border."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([120 + 80 * np.sin(3 * x + 1), 100 + 90 * y, 90 + 60 * np.cos(4 * x * y)], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def test_every_extractor_states_its_domain_in_the_control_help():
    import typer
    from typer.testing import CliRunner

    from condiff.commands import control
    from condiff.preprocess import DOMAINS

    assert set(DOMAINS) == set(list_preprocessors()) and all(len(v) > 20 for v in DOMAINS.values())
    app = typer.Typer()
    control.register(app)
    app.command("noop")(lambda: None)  # keep `control` a named sub-command
    out = CliRunner().invoke(app, ["control", "--help"], env={"COLUMNS": "400"}, terminal_width=400).output
    flat = " ".join(out.replace("│", " ").split())
    for name in ("depth", "pose"):
        assert f"{name}: {DOMAINS[name].split(',')[0]}" in flat, name


@pytest.mark.parametrize("name", ["lineart", "depth", "normal", "pose"])
def test_a_photograph_gets_a_domain_warning(name):
    with pytest.warns(UserWarning, match=f"{name}: .*(photograph|no figure)"):
        get_preprocessor(name)(_photo_like())


def test_world_drawings_and_edge_operators_give_no_warning(icon_records):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rec in icon_records[:3]:
            for name in ("lineart", "depth", "normal"):
                get_preprocessor(name)(rec["image"])
        for name in ("canny", "softedge"):  # made for any picture
            get_preprocessor(name)(_photo_like())
    with pytest.warns(UserWarning, match="pose: no figure found"):  # a disc is not a figure
        get_preprocessor("pose")(_disc_image())
