"""The experiment report: bootstrap summaries, self-contained HTML, results.json, plots."""

import base64
import io
import json
import math
from html.parser import HTMLParser

import pytest
from PIL import Image

from condiff.experiments.context import ExperimentResult, Figure, Table, fmt_summary, summarize
from condiff.experiments.report import jsonable, plot_bars, plot_curves, plot_tradeoff, run_info, write_report


def test_summarize_gives_a_reproducible_interval_around_the_mean():
    s = summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["mean"] == pytest.approx(4.0) and s["n"] == 5
    lo, hi = s["ci95"]
    assert 1.0 <= lo < 4.0 < hi <= 10.0
    assert summarize([1.0, 2.0, 3.0, 4.0, 10.0]) == s  # fixed resampling seed
    assert summarize([7.0, 7.0, 7.0])["ci95"] == [7.0, 7.0]
    one = summarize([3.5])
    assert one["mean"] == 3.5 and one["ci95"] is None
    dropped = summarize([1.0, math.inf, float("nan"), 3.0])
    assert dropped["mean"] == pytest.approx(2.0) and dropped["dropped"] == 2 and dropped["n"] == 2
    assert summarize([])["mean"] is None
    exact = summarize([math.inf, math.inf])
    assert exact["mean"] == math.inf and fmt_summary(exact) == "∞ (exact)" and jsonable(exact)["mean"] == "inf"
    assert fmt_summary(s, 2) == f"4 [{lo:.2g}, {hi:.2g}]" and fmt_summary(None) == "n/a"


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tables, self.sections = [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "table":
            self.tables += 1
        elif tag == "section":
            self.sections.append(a["id"])


def _result() -> ExperimentResult:
    r = ExperimentResult("demo<x>", "Demo <script>alert(1)</script>", {"seed": 3, "t0": [0.2, 0.6]}, seeds=[3, 4])
    r.figures.append(Figure("grid", "A grid", Image.new("RGB", (20, 10), (200, 10, 10)), "caption & more"))
    r.tables.append(Table("scores", "Scores", ["method", "score", "psnr"],
                          [{"method": "a", "score": summarize([0.1, 0.3]), "psnr": math.inf},
                           {"method": "b", "score": summarize([0.5]), "psnr": 31.25}],
                          feature_extractor="condiff-evalenc (LiT vs. MiniLM)"))
    r.tables.append(Table("pixels", "Pixel table", ["x"], [{"x": 1}]))
    r.metrics = {"a": {"score": summarize([0.1, 0.3]), "psnr": math.inf, "undefined": float("nan")}}
    r.measurements = {"seconds": 1.5}
    r.skip("ControlNet pose", "no weights")
    return r


def test_report_is_self_contained_html_plus_results_json(tmp_path):
    info = run_info("cpu", "condiff demo")
    assert {"condiff", "torch", "python", "device", "device_name", "load_average", "command"} <= set(info)
    report, results = write_report([_result()], tmp_path / "out", info)
    html = report.read_text()
    p = _Collect()
    p.feed(html)
    assert p.sections == ["demo<x>"]
    assert "<script>alert" not in html and "&lt;script&gt;" in html  # text is escaped
    (src,) = p.imgs
    assert src.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert img.size == (20, 10) and img.getpixel((5, 5)) == (200, 10, 10)
    assert (tmp_path / "out" / "figures" / "demo<x>_grid.png").is_file()
    assert p.tables == 3  # run info + two result tables
    assert "features: condiff-evalenc (LiT vs. MiniLM)" in html and "features: none (pixel-space metrics only)" in html
    assert "0.2 [0.1, 0.3]" in html and "∞" in html and "ControlNet pose: no weights" in html
    doc = json.loads(results.read_text())
    exp = doc["experiments"]["demo<x>"]
    assert exp["metrics"]["a"]["psnr"] == "inf" and exp["metrics"]["a"]["undefined"] is None
    assert exp["seeds"] == [3, 4] and exp["config"]["t0"] == [0.2, 0.6] and exp["skipped"] == ["ControlNet pose: no weights"]
    assert exp["figures"][0]["file"] == "figures/demo<x>_grid.png"
    assert exp["tables"][0]["feature_extractor"] == "condiff-evalenc (LiT vs. MiniLM)"
    assert doc["run"]["command"] == "condiff demo"


def test_jsonable_handles_tensors_numpy_and_non_finite():
    import numpy as np
    import torch

    out = jsonable({"t": torch.tensor([1.0, float("inf")]), "n": np.float32(2.5), "tuple": (1, float("-inf"))})
    assert out == {"t": [1.0, "inf"], "n": 2.5, "tuple": [1, "-inf"]}
    json.dumps(out, allow_nan=False)


def test_plots_render_with_intervals_and_missing_values():
    s = [summarize([1.0, 2.0]), summarize([2.0, 4.0]), None]
    a = plot_tradeoff([("t0=0", s[0], s[1]), ("t0=1", s[1], s[0])], xlabel="x", ylabel="y", title="t")
    b = plot_curves([1, 2, 4], {"m": s, "k": [s[1], s[0], s[1]]}, xlabel="γ", title="t", log_x=True)
    c = plot_bars(["a", "b", "c"], {"p": s, "q": s, "r": s, "w": s}, title="t", log_panels=("q",))
    for img in (a, b, c):
        assert img.mode == "RGB" and min(img.size) > 100
    assert b.size[0] > a.size[0]  # one panel per series
