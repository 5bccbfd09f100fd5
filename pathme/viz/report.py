"""``report.html`` of a cross-validated MIL run: one self-contained page (figures and images embedded, no network)
with what a paper in this field shows.

- The metrics table: mean ± sd over the folds that could score each metric, and the pooled out-of-fold AUROC or
  c-index over every patient's test prediction with a 95 % bootstrap interval (patients resampled with
  replacement, :data:`BOOTSTRAPS` times; percentile interval). Pooling mixes the folds' models, whose scores need
  not share a scale; the per-fold figures are the ones to compare runs by.
- Classification: ROC curves per fold and pooled (scikit-learn's ``roc_curve``; one-vs-rest per class beyond two
  classes) and the pooled confusion matrix of the predicted class (the highest probability).
- Survival: Kaplan-Meier curves (lifelines) of the patients predicted at high and low risk, split at the median
  risk of each fold's test patients (so each fold's model is compared with itself), with the log-rank test's p.
- Per-fold metrics as points, and per slide its heatmap (a reduced copy, linking the full PNG) with its
  best-attended tiles.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pathme.metrics.classification import auroc
from pathme.metrics.concordance import c_index
from pathme.store.atomic import write_atomic

BOOTSTRAPS = 1000
REPORT_FILE = "report.html"
MAX_SLIDES = 60  # slides shown with their heatmaps; the rest are listed with links (a report stays a few MB)
HEATMAP_PREVIEW_PX = 560


@dataclass(frozen=True)
class ReportInputs:
    """What a MIL run hands its report: ``classes`` (empty for survival), the tables the run wrote
    (``predictions``: one row per test patient with its fold, one fold for an evaluation; ``results``: one row per
    fold, or per fold model; ``summary``: mean/sd per metric; ``slides``: slide_summary rows with the heatmap and
    top-tile paths), a title, and how to name the predictions and the rows of results."""

    title: str
    classes: tuple[str, ...]
    predictions: pd.DataFrame
    results: pd.DataFrame
    summary: pd.DataFrame
    slides: pd.DataFrame
    pooled: str = "pooled out-of-fold"  # what the predictions are; an evaluation's: "fold-model ensemble"
    unit: str = "fold"  # what a row of results is: a cross-validation's fold, or an evaluation's fold model

    @property
    def is_survival(self) -> bool:
        """True for a survival run (no classes)."""
        return not self.classes


def _png(figure: Figure) -> str:
    """A matplotlib figure as an <img> tag with the PNG inline."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return _img(buffer.getvalue(), "image/png", "figure")


def _img(data: bytes, mime: str, css: str, alt: str = "") -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


def _jpeg(path: Path, width: int) -> bytes:
    """The image at ``path`` reduced to ``width`` px wide (never enlarged), as JPEG bytes."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _targets(inputs: ReportInputs) -> np.ndarray:
    """Class codes of the predictions' ``target`` column (class names)."""
    codes = {name: code for code, name in enumerate(inputs.classes)}
    return np.array([codes[str(t)] for t in inputs.predictions["target"]])


def _probs(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    return frame[[f"prob_{name}" for name in classes]].to_numpy(dtype=np.float64)


def pooled_metric(inputs: ReportInputs, seed: int = 0) -> tuple[str, float, float, float]:
    """(name, value, low, high): the pooled out-of-fold AUROC or c-index and its 95 % bootstrap interval (NaN
    where undefined, as in resamples without both classes or a comparable pair, which are left out)."""
    frame = inputs.predictions
    if inputs.is_survival:
        time, event, risk = (frame[c].to_numpy(dtype=np.float64) for c in ("time", "event", "risk"))

        def score(rows: np.ndarray) -> float:
            return c_index(time[rows], event[rows], risk[rows])

        name = "c_index"
    else:
        target, probs = _targets(inputs), _probs(frame, inputs.classes)

        def score(rows: np.ndarray) -> float:
            return auroc(target[rows], probs[rows])

        name = "auroc"
    everyone = np.arange(len(frame))
    value = score(everyone)
    rng = np.random.default_rng(seed)
    samples = np.array([score(rng.integers(0, len(frame), len(frame))) for _ in range(BOOTSTRAPS)])
    samples = samples[~np.isnan(samples)]
    low, high = np.percentile(samples, [2.5, 97.5]) if len(samples) else (np.nan, np.nan)
    return name, float(value), float(low), float(high)


def metrics_table(inputs: ReportInputs) -> str:
    """The HTML metrics table: mean ± sd (folds scored / folds) and the pooled value with its interval."""
    rows = [
        f"<tr><td>{html.escape(str(r.metric))}</td><td>{r.mean:.3f} ± {r.sd:.3f}</td>"
        f"<td>{int(r.folds)} / {int(r.folds_total)}</td></tr>"
        for r in inputs.summary.itertuples()
    ]
    name, value, low, high = pooled_metric(inputs)
    pooled = (
        f"<p class='pooled'>{inputs.pooled} {name} over {len(inputs.predictions)} patients: "
        f"<b>{value:.3f}</b> (95 % bootstrap interval {low:.3f}-{high:.3f})</p>"
    )
    header = f"<tr><th>metric</th><th>mean ± sd over {inputs.unit}s</th><th>{inputs.unit}s scored</th></tr>"
    return f"<table class='metrics'>{header}{''.join(rows)}</table>{pooled}"


def roc_figure(inputs: ReportInputs) -> Figure:
    """ROC curves: per fold (thin) and pooled (thick) for two classes; pooled one-vs-rest per class beyond."""
    from sklearn.metrics import roc_curve

    figure = Figure(figsize=(5.2, 4.6))
    axes = figure.add_subplot()
    frame, target, probs = inputs.predictions, _targets(inputs), _probs(inputs.predictions, inputs.classes)
    if len(inputs.classes) == 2:
        groups = frame.groupby("fold").indices
        for fold, rows in groups.items() if len(groups) > 1 else ():
            if len(set(target[rows])) == 2:
                fpr, tpr, _ = roc_curve(target[rows], probs[rows, 1])
                auc = auroc(target[rows], probs[rows])
                axes.plot(fpr, tpr, linewidth=1, alpha=0.6, label=f"fold {fold} (AUROC {auc:.2f})")
        fpr, tpr, _ = roc_curve(target, probs[:, 1])
        axes.plot(fpr, tpr, color="black", linewidth=2.5, label=f"{inputs.pooled} (AUROC {auroc(target, probs):.2f})")
        axes.set_title(f"ROC of '{inputs.classes[1]}' against '{inputs.classes[0]}'", fontsize=10)
    else:
        for code, name in enumerate(inputs.classes):
            positive = target == code
            if positive.any() and not positive.all():
                fpr, tpr, _ = roc_curve(positive, probs[:, code])
                axes.plot(fpr, tpr, linewidth=2, label=f"{name} vs rest")
        axes.set_title(f"ROC, one class against the rest ({inputs.pooled})", fontsize=10)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(fontsize=8, loc="lower right")
    return figure


def confusion_figure(inputs: ReportInputs) -> Figure:
    """The pooled confusion matrix of the predicted class, counts in the cells."""
    from sklearn.metrics import confusion_matrix

    target = _targets(inputs)
    predicted = _probs(inputs.predictions, inputs.classes).argmax(axis=1)
    matrix = confusion_matrix(target, predicted, labels=list(range(len(inputs.classes))))
    figure = Figure(figsize=(4.2, 3.8))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, label="patients")
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > (matrix.min() + matrix.max()) / 2 else "black"
        axes.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=11)
    ticks = range(len(inputs.classes))
    axes.set_xticks(ticks, inputs.classes, rotation=30, ha="right")
    axes.set_yticks(ticks, inputs.classes)
    axes.set(xlabel="predicted", ylabel="true", title=inputs.pooled)
    return figure


def risk_groups(predictions: pd.DataFrame) -> np.ndarray:
    """True for patients at high predicted risk: above the median risk of their fold's test patients (of all
    patients for an evaluation's one fold)."""
    median = predictions.groupby("fold")["risk"].transform("median")
    return (predictions["risk"] > median).to_numpy()


def km_figure(inputs: ReportInputs) -> tuple[Figure, float]:
    """Kaplan-Meier curves of the high and low predicted-risk groups (:func:`risk_groups`) and the log-rank p."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    frame = inputs.predictions
    high = risk_groups(frame)
    time, event = frame["time"].to_numpy(dtype=np.float64), frame["event"].to_numpy(dtype=np.float64)
    figure = Figure(figsize=(5.6, 4.4))
    axes = figure.add_subplot()
    for mask, label, colour in ((~high, "low predicted risk", "#1f77b4"), (high, "high predicted risk", "#d62728")):
        if mask.any():
            fitter = KaplanMeierFitter(label=f"{label} (n = {int(mask.sum())})")
            fitter.fit(time[mask], event[mask]).plot_survival_function(ax=axes, color=colour, ci_show=True)
    p = float("nan")
    if high.any() and (~high).any():
        p = float(logrank_test(time[high], time[~high], event[high], event[~high]).p_value)
    axes.set(xlabel="time (the unit of the labels' time column)", ylabel="survival probability", ylim=(0, 1.02))
    split = "each fold's median" if frame["fold"].nunique() > 1 else "the median"
    axes.set_title(f"Kaplan-Meier by predicted risk (split at {split}); log-rank p = {p:.3g}", fontsize=9)
    return figure, p


def folds_figure(inputs: ReportInputs) -> Figure:
    """Each metric's value per fold as points, the mean as a bar."""
    metrics = [m for m in inputs.summary["metric"] if m in inputs.results.columns]
    figure = Figure(figsize=(max(3.0, 1.3 * len(metrics) + 1), 3.4))
    axes = figure.add_subplot()
    for position, metric in enumerate(metrics):
        values = inputs.results[metric].to_numpy(dtype=np.float64)
        axes.scatter(np.full(len(values), position), values, color="#333333", zorder=3, s=18)
        axes.hlines(np.nanmean(values), position - 0.3, position + 0.3, color="#d62728", linewidth=2)
    axes.set_xticks(range(len(metrics)), metrics, rotation=20)
    axes.set(ylabel=f"value per {inputs.unit} (red: mean)", ylim=(0, 1.02), title=f"metrics per {inputs.unit}")
    return figure


def slide_section(inputs: ReportInputs, output_dir: Path) -> str:
    """Per slide: its prediction, its heatmap (reduced, linking the full PNG) and its best-attended tiles."""
    slides = inputs.slides
    drawn = slides[slides["status"] == "done"]
    cards = []
    for row in drawn.head(MAX_SLIDES).itertuples():
        png = Path(str(row.png))
        link = html.escape(png.relative_to(output_dir).as_posix() if png.is_relative_to(output_dir) else str(png))
        heatmap = _img(_jpeg(png, HEATMAP_PREVIEW_PX), "image/jpeg", "heatmap", f"heatmap of {row.slide_id}")
        tiles = ""
        if str(getattr(row, "top_tiles", "")) and Path(str(row.top_tiles)).is_file():
            strip = _jpeg(Path(str(row.top_tiles)), HEATMAP_PREVIEW_PX)
            tiles = _img(strip, "image/jpeg", "tiles", f"top tiles of {row.slide_id}")
            tiles = f"<p>best-attended tiles (attention {html.escape(str(row.top_attention))}):</p>{tiles}"
        fold = f" · fold {html.escape(str(row.fold))}" if str(row.fold) not in ("", "nan") else ""
        cards.append(
            f"<div class='slide'><h3>{html.escape(str(row.slide_id))} · patient {html.escape(str(row.patient_id))}"
            f"{fold}</h3><a href='{link}'>{heatmap}</a>{tiles}</div>"
        )
    rest = len(drawn) - MAX_SLIDES
    more = f"<p>{rest} more slide(s) in heatmaps/ (slide_summary.csv lists them).</p>" if rest > 0 else ""
    if drawn.empty:
        cards = ["<p>No heatmap was drawn in this run (heatmaps off, or none could be).</p>"]
    missing = slides[~slides["status"].isin(["done", "scored"])]
    notes = "".join(
        f"<li>{html.escape(str(r.slide_id))}: {html.escape(str(r.status))} {html.escape(str(r.note))}</li>"
        for r in missing.itertuples()
    )
    undrawn = f"<p>Slides without a heatmap:</p><ul>{notes}</ul>" if notes else ""
    return "".join(cards) + more + undrawn


STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ccc; margin-top: 28px; }
h3 { font-size: 14px; margin: 6px 0; }
table.metrics { border-collapse: collapse; } table.metrics td, table.metrics th { border: 1px solid #bbb;
  padding: 4px 10px; text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
img.figure { max-width: 560px; } img.heatmap { max-width: 560px; border: 1px solid #ddd; }
img.tiles { max-width: 560px; } .slide { display: inline-block; vertical-align: top; margin: 8px; width: 570px; }
.caption { color: #555; font-size: 13px; }
"""


def write_report(inputs: ReportInputs, output_dir: str | Path) -> Path:
    """Write ``<output_dir>/report.html`` atomically (see the module docstring); returns its path."""
    output_dir = Path(output_dir)
    if inputs.is_survival:
        km, p = km_figure(inputs)
        figures = [(_png(km), f"Kaplan-Meier curves of the predicted risk groups; log-rank p = {p:.3g}")]
    else:
        per_fold = " and of each fold's test patients" if inputs.predictions["fold"].nunique() > 1 else ""
        figures = [
            (_png(roc_figure(inputs)), f"ROC curves of the {inputs.pooled} predictions" + per_fold),
            (_png(confusion_figure(inputs)), f"confusion matrix of the predicted class, {inputs.pooled}"),
        ]
    figures.append((_png(folds_figure(inputs)), f"each {inputs.unit}'s metrics"))
    blocks = "".join(f"<div><div>{image}</div><p class='caption'>{caption}</p></div>" for image, caption in figures)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(inputs.title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(inputs.title)}</h1>
<p class="caption">written {when}; every figure is from this run's {inputs.pooled} predictions
(predictions.csv) and its metrics per {inputs.unit}</p>
<h2>Metrics</h2>
{metrics_table(inputs)}
<h2>Figures</h2>
<div class="figures">{blocks}</div>
<h2>Slides</h2>
<p class="caption">attention heatmaps (click for the full PNG; GeoJSON and NIfTI beside it in heatmaps/)</p>
{slide_section(inputs, output_dir)}
</body></html>
"""
    return write_atomic(output_dir / REPORT_FILE, page)
