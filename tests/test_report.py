"""report.html of a MIL run: the pooled metric and its interval, the risk groups, and the page as a real browser
(Debian's headless Chromium, installed by scripts/install_test_packages.sh) renders it from disk."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test
from PIL import Image

from pathme.engines.mil_outputs import summarise
from pathme.metrics.classification import auroc
from pathme.viz.heatmap import AttentionMap, ColourScale, write_slide_heatmap, write_top_tiles
from pathme.viz.report import ReportInputs, km_figure, pooled_metric, risk_groups, write_report
from pathme.wsi.slide import Slide

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")
PATIENTS, FOLDS = 30, 3


def _predictions(survival: bool) -> pd.DataFrame:
    """Out-of-fold predictions of 30 patients in 3 folds that carry the signal (with noise)."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, PATIENTS)
    frame = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(PATIENTS)], "fold": np.arange(PATIENTS) % FOLDS})
    score = truth + rng.normal(0, 0.4, PATIENTS)
    if survival:
        return frame.assign(risk=score, time=np.where(truth, 10, 40) + rng.uniform(0, 20, PATIENTS), event=1)
    probs = 1 / (1 + np.exp(-2 * score))
    return frame.assign(prob_a=1 - probs, prob_b=probs, predicted=np.where(probs > 0.5, "b", "a"), target=truth)


def _inputs(tmp_path: Path, make_slide, survival: bool) -> ReportInputs:
    predictions = _predictions(survival)
    if survival:
        results = pd.DataFrame({"fold": range(FOLDS), "c_index": [0.7, 0.8, 0.75]})
    else:
        predictions["target"] = predictions["target"].map({0: "a", 1: "b"})
        results = pd.DataFrame({"fold": range(FOLDS), "auroc": [0.8, 0.9, 0.85], "accuracy": [0.7, 0.8, 0.75]})
    image = np.full((2048, 2048, 3), 240, np.uint8)
    image[256:1792, 256:1792] = (170, 80, 160)
    slide = Slide.open(make_slide(image, 0.5))
    coords = np.array([[x, y] for y in range(0, 2048, 512) for x in range(0, 2048, 512)])
    sizes, scores = np.full(16, 512.0), np.linspace(0.01, 0.1, 16)
    attention = AttentionMap.paint(coords, sizes, scores, slide.size, slide.mpp)
    heatmaps = tmp_path / "heatmaps"
    png = write_slide_heatmap(slide, heatmaps, "s1", attention, ColourScale.of_run([attention]), heatmap_mpp=4.0)
    tiles, values = write_top_tiles(slide, heatmaps, "s1", coords, sizes, scores)
    slides = pd.DataFrame(
        [
            {"slide_id": "s1", "patient_id": "P00", "fold": 0, "status": "done", "png": str(png["png"]),
             "top_tiles": str(tiles), "top_attention": " ".join(f"{v:.3g}" for v in values), "note": ""},
            {"slide_id": "s2", "patient_id": "P01", "fold": 1, "status": "no tokens", "png": "", "top_tiles": "",
             "top_attention": "", "note": "no tissue found"},
        ]
    )  # fmt: skip
    classes = () if survival else ("a", "b")
    return ReportInputs("MIL test run", classes, predictions, results, summarise(results), slides)


def test_the_pooled_auroc_has_a_bootstrap_interval_around_it(tmp_path, make_slide):
    inputs = _inputs(tmp_path, make_slide, survival=False)
    name, value, low, high = pooled_metric(inputs)
    target = (inputs.predictions["target"] == "b").to_numpy().astype(int)
    probs = inputs.predictions[["prob_a", "prob_b"]].to_numpy()
    assert name == "auroc" and value == pytest.approx(auroc(target, probs))
    assert low < value < high and high - low < 0.5
    assert pooled_metric(inputs) == (name, value, low, high)  # seeded: the same interval every time


def test_risk_groups_split_each_fold_at_its_median_and_the_log_rank_p_is_lifelines(tmp_path, make_slide):
    inputs = _inputs(tmp_path, make_slide, survival=True)
    frame = inputs.predictions
    high = risk_groups(frame)
    for _, rows in frame.groupby("fold").indices.items():
        risk = frame["risk"].to_numpy()[rows]
        np.testing.assert_array_equal(high[rows], risk > np.median(risk))
    _, p = km_figure(inputs)
    time, event = frame["time"].to_numpy(), frame["event"].to_numpy()
    assert p == pytest.approx(logrank_test(time[high], time[~high], event[high], event[~high]).p_value)
    assert p < 0.05  # the planted signal separates the groups


def _rendered(report: Path, tmp_path: Path) -> dict:
    """What Chromium renders of ``report``: a page beside it loads it in a frame and reads its DOM once loaded."""
    probe = tmp_path / "probe.html"
    probe.write_text(
        f"""<html><body><iframe id="r" src="{report.as_uri()}" width="1250" height="3000"></iframe><pre id="out"></pre>
<script>document.getElementById('r').onload = function () {{
  var d = this.contentDocument;
  document.getElementById('out').textContent = JSON.stringify({{
    title: d.title, sections: Array.from(d.querySelectorAll('h2')).map(function (h) {{ return h.textContent; }}),
    images: Array.from(d.images).map(function (i) {{ return [i.className, i.naturalWidth, i.complete]; }}),
    rows: d.querySelectorAll('table.metrics tr').length, text: d.body.innerText}});
}};</script></body></html>"""
    )
    command = [CHROMIUM, "--no-sandbox", "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    dom = subprocess.run([*command, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    start = dom.index('<pre id="out">') + len('<pre id="out">')
    return json.loads(dom[start : dom.index("</pre>", start)].replace("&amp;", "&").replace("&lt;", "<"))


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium: sudo scripts/install_test_packages.sh")
@pytest.mark.parametrize("survival", [False, True], ids=["classification", "survival"])
def test_the_report_renders_in_chromium_with_its_figures(tmp_path, make_slide, survival):
    report = write_report(_inputs(tmp_path, make_slide, survival), tmp_path)
    assert report == tmp_path / "report.html"
    page = _rendered(report, tmp_path)
    assert page["title"] == "MIL test run" and page["sections"] == ["Metrics", "Figures", "Slides"]
    kinds = [kind for kind, width, complete in page["images"] if width > 0 and complete]
    figures = 2 if survival else 3  # KM and folds; or ROC, confusion matrix and folds
    assert kinds == ["figure"] * figures + ["heatmap", "tiles"], page["images"]
    assert page["rows"] == 1 + (1 if survival else 2)
    pooled = "pooled out-of-fold c_index over 30 patients" if survival else "pooled out-of-fold auroc over 30 patients"
    assert pooled in page["text"] and "95 % bootstrap interval" in page["text"]
    assert ("log-rank p = " in page["text"]) == survival and "s2: no tokens no tissue found" in page["text"]
    shot = tmp_path / "shot.png"
    command = [CHROMIUM, "--no-sandbox", "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1250,900"]
    subprocess.run([*command, report.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 60  # curves, bars and cells, not grey text or white
    assert coloured[300:].sum() > 1500  # the figures below the metrics table are drawn (their curves, cells)


def test_an_evaluation_report_names_the_ensemble_and_the_fold_models(tmp_path, make_slide):
    inputs = _inputs(tmp_path, make_slide, survival=False)
    results = inputs.results.assign(fold=[f"fold_{k}" for k in range(FOLDS)])
    evaluation = ReportInputs(
        "evaluation", inputs.classes, inputs.predictions.assign(fold="ensemble"), results, summarise(results),
        inputs.slides.assign(fold=""), pooled="fold-model ensemble", unit="fold model",
    )  # fmt: skip
    page = write_report(evaluation, tmp_path).read_text()
    assert "fold-model ensemble auroc over 30 patients" in page and "mean ± sd over fold models" in page
    assert "ROC curves of the fold-model ensemble predictions</p>" in page and " · fold " not in page
