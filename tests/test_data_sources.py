"""Sources, SVG transforms, renderers, pack, captions, masks, held-out checks and experiment inputs."""

from __future__ import annotations

import lzma

import numpy as np
import pytest

from condiff.data import captions
from condiff.data.builder import is_flippable, record_specs
from condiff.data.experiment_inputs import EXCLUDED_FROM_TRAINING, load_experiment_inputs
from condiff.data.heldout import HELD_OUT, near_duplicate_check, pixel_hash, thumbnail
from condiff.data.masks import sample_inpaint_mask
from condiff.data.pack import read_pack, write_pack
from condiff.data.sources import Icon, IconSet, load_small_sets
from condiff.data.svg_doc import IconGeometry, layer_svgs, lineart_svg, picture_svg, subset_svg
from condiff.data.svg_render import available_backends, composite_on_white, get_backend

SQUARES = ('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
           '<rect x="8" y="8" width="32" height="32" fill="#d00"/>'
           '<rect x="24" y="24" width="32" height="32" fill="#00d"/></svg>')


def _render(svg):
    return get_backend("auto").render(svg)


def test_lineart_is_visible_outlines_only():
    ink = 255 - composite_on_white(_render(lineart_svg(SQUARES, 1.0, 64)))[..., 0].astype(int)
    assert ink[8, 20] > 100 and ink[56, 40] > 100          # outer edges of both squares
    assert ink[20, 20] < 10 and ink[40, 40] < 10           # interiors are empty
    assert ink[32, 39] < 10                                # the red square's right edge is hidden by the blue one
    assert ink[24, 30] > 100                               # the blue square's top edge crosses the red square


def test_layers_split_in_drawing_order_and_cover_the_picture():
    layers = layer_svgs(SQUARES, 8)
    assert len(layers) == 2
    a = [(_render(s)[..., 3] >= 128) for s in layers]
    assert a[0][12, 12] and not a[0][50, 50] and a[1][50, 50] and a[0][30, 30] and a[1][30, 30]
    full = _render(SQUARES)[..., 3] >= 128
    assert np.array_equal(a[0] | a[1], full)
    assert len(layer_svgs(SQUARES, 1)) == 1
    assert (_render(subset_svg(SQUARES, [1]))[..., 3] >= 128)[12, 12] == False  # noqa: E712


def test_renderers_agree():
    names = available_backends()
    if len(names) < 2:
        pytest.skip(f"needs both resvg and cairosvg, have {names}")
    diffs = []
    for s in load_small_sets():
        for icon in s.icons[:4]:
            svg = picture_svg(icon.body, IconGeometry(icon.width, icon.height), 128)
            a = composite_on_white(get_backend("resvg").render(svg)).astype(float)
            b = composite_on_white(get_backend("cairosvg").render(svg)).astype(float)
            diffs.append(np.abs(a - b).mean())
    assert max(diffs) < 2.5 and np.mean(diffs) < 1.0, diffs


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown SVG backend"):
        get_backend("inkscape")


def _set_with(names):
    body = '<circle cx="8" cy="8" r="6" fill="#f80"/>'
    return IconSet(prefix="noto", title="Noto", author="Google", author_url="", license_title="Apache 2.0",
                   license_spdx="Apache-2.0", license_url="", package="@iconify-json/noto@1.2.9",
                   icons=[Icon(n, "Animals & Nature", body, 16, 16) for n in names])


def test_pack_round_trip_checksum_and_held_out_removal(tmp_path):
    sets = load_small_sets() + [_set_with(["unicorn", "unicorn-face", "zebra"])]
    sets[-1].prefix = "extra"
    info = write_pack(sets, tmp_path / "p.json.xz")
    version, back = read_pack(tmp_path / "p.json.xz")
    assert version == "1" and info["bytes"] < 200_000
    assert [s.prefix for s in back] == sorted(s.prefix for s in sets)
    by = {s.prefix: s for s in back}
    assert [i.name for i in by["extra"].icons] == ["zebra"]
    assert by["twemoji"].icons == sorted({s.prefix: s for s in sets}["twemoji"].icons, key=lambda i: i.name)
    # a changed file fails its sidecar checksum, a re-compressed altered payload its internal hash
    raw = bytearray((tmp_path / "p.json.xz").read_bytes())
    raw[100] ^= 1
    (tmp_path / "p.json.xz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        read_pack(tmp_path / "p.json.xz")
    write_pack(sets, tmp_path / "q.json.xz")
    text = lzma.decompress((tmp_path / "q.json.xz").read_bytes()).replace(b"zebra", b"zebru")
    (tmp_path / "q.json.xz").write_bytes(lzma.compress(text))
    (tmp_path / "q.json.xz.sha256").unlink()
    with pytest.raises(ValueError, match="checksum"):
        read_pack(tmp_path / "q.json.xz")


def test_specs_exclude_held_out_and_experiment_inputs():
    s = _set_with(["woman", "unicorn", "cat-face"])
    ids = [r["id"] for r in record_specs([s], seed=0, size=64, n_figures=2, exclude=EXCLUDED_FROM_TRAINING)]
    assert "noto/cat-face" in ids and "noto/woman" not in ids and not any("unicorn" in i for i in ids)
    assert sum(i.startswith("figure") for i in ids) == 2


def test_captions_name_style_and_vary():
    assert captions.humanize("waving-hand-medium-dark-skin-tone") == "waving hand, medium-dark skin tone"
    assert captions.humanize("flag-japan") == "flag of japan"
    assert captions.with_article("owl") == "an owl" and captions.with_article("cat face") == "a cat face"
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        caps = captions.icon_captions("cat-face", "Animals & Nature", "twemoji", rng)
        assert len(caps) == 3 and all("cat face" in c for c in caps)
        seen.update(caps)
    assert len(seen) >= 15
    with pytest.raises(ValueError, match="unknown style"):
        captions.icon_captions("cat-face", "x", "picasso", rng)
    fig = captions.figure_captions({"family": "waving", "shirt": "red", "trousers": "blue", "hair": "brown"},
                                   "figure-flat", rng)
    assert all("person" in c for c in fig)


def test_flip_policy():
    assert is_flippable("cat-face", "Animals & Nature")
    assert not is_flippable("left-arrow", "Symbols")
    assert not is_flippable("keycap-1", "Objects") and not is_flippable("flag-japan", "Flags")


def test_inpaint_masks_binary_mixture_and_regions():
    rng = np.random.default_rng(0)
    regions = np.zeros((64, 64), np.uint8)
    regions[10:40, 10:40] = 1
    regions[20:30, 20:30] = 2
    kinds = []
    for _ in range(2000):
        m, kind = sample_inpaint_mask(rng, 64, regions)
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        kinds.append(kind)
        if kind == "full":
            assert m.all()
        elif kind == "large":
            assert m.mean() >= 0.4
        elif kind == "region":
            assert m[25, 25] == 1 or m[12, 12] == 1
    full = kinds.count("full") / len(kinds)
    assert 0.22 < full < 0.28
    assert {"region", "object", "strokes", "boxes", "large"} <= set(kinds)
    with pytest.raises(ValueError, match="mask probabilities"):
        sample_inpaint_mask(rng, 64, None, {"blob": 1.0})


def test_near_duplicate_check_flags_copies_not_lookalikes():
    exp = load_experiment_inputs()
    held = [s["image"] for s in exp["exp3"]["subject"]]
    horses = [c["image"] for c in exp["exp3"]["class_images"]]
    thumbs = np.stack([thumbnail(h) for h in horses])
    ok = near_duplicate_check(held, thumbs, {pixel_hash(h) for h in horses})
    assert ok["passed"] and ok["exact_matches"] == 0
    leaked = near_duplicate_check(held, np.stack([thumbnail(held[2][:, ::-1])]), {pixel_hash(held[0])})
    assert not leaked["passed"] and leaked["exact_matches"] >= 1 and leaked["max_cosine"] > 0.99


def test_experiment_inputs_are_complete():
    e = load_experiment_inputs()
    assert e["exp1"]["sketch_image"].shape == (128, 128, 3) and e["exp1"]["prompt"]
    sk = e["exp1"]["sketch_image"]
    assert 0.02 < (sk[..., 0] < 128).mean() < 0.4  # black strokes on white
    assert [t["name"] for t in e["exp2"]] == ["remove-face-mask", "remove-sunglasses", "add-scarf"]
    for t in e["exp2"]:
        m = t["mask_array"]
        assert t["image_array"].shape == (128, 128, 3) and m.shape == (128, 128)
        assert set(np.unique(m)) == {0, 1} and 0.02 < m.mean() < 0.5
    assert any("scarf" in t["prompt"] for t in e["exp2"])
    x = e["exp3"]
    assert len(x["subject"]) == 5 and x["class_noun"] == HELD_OUT.class_noun and x["identifier"] == "sks"
    assert len(x["prompts"]) == 3 and "style of" in x["prompts"][1] and "space suit" in x["prompts"][2]
    assert len({pixel_hash(s["image"]) for s in x["subject"]}) == 5 and len(x["class_images"]) >= 4


_CLIP = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:inkscape="http://www.inkscape.org/namespaces/inkscape"
 xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
 xmlns:cc="http://web.resource.org/cc/" width="40pt" height="30pt" inkscape:version="0.42">
 <metadata><rdf:RDF><cc:Work><dc:title>{title}</dc:title></cc:Work></rdf:RDF></metadata>
 <g inkscape:label="Layer 1"><rect x="2" y="2" width="30" height="20" fill="#3a3"/>
 <text x="5" y="10">hello</text></g></svg>"""


def test_clipart_loader_cleans_titles_and_markup(tmp_path):
    from condiff.data.clipart import filter_rendered, load_openclipart

    for rel, title in (("animals/mammals/cow_x_01.svg", "Happy Cow"), ("animals/junk.svg", "Part of the Flat Icon Collection"),
                       ("computer/icons/app.svg", "Nice App"), ("special/grad.svg", "Gradient"),
                       ("signs_and_symbols/stop.svg", "Stop Sign")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(_CLIP.format(title=title))
    s = load_openclipart(tmp_path, "1:0.18")
    assert [(i.name, i.category) for i in s.icons] == [("happy-cow", "Animals"), ("stop-sign", "Symbols")]
    cow = s.icons[0]
    assert (cow.width, cow.height) == pytest.approx((40 * 4 / 3, 30 * 4 / 3))
    assert "inkscape" not in cow.body and "metadata" not in cow.body and "<text" not in cow.body and "<rect" in cow.body
    assert s.license_spdx == "CC-PDDC" and s.style == "clipart"
    assert len(filter_rendered(s).icons) == 2
    assert not is_flippable("stop-sign", "Symbols")
