"""The pictures of docs/pictures.md, reduced, from a demo's output folder: one preview, the heatmaps of a PatHME-token
and a raw-feature model (classification) and of a survival model, their top-attended tiles, and screenshots of two
report.html pages as headless Chromium draws them.

Usage: ``python scripts/make_doc_pictures.py --demo-output demo_output [--out docs/images]`` (after ``make demo``;
the screenshots need ``chromium-headless-shell``, which ``sudo scripts/install_test_packages.sh`` installs).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

WIDTH = 900  # px: what a README column shows
CHROMIUM = "chromium-headless-shell"


def reduced(source: Path, target: Path, width: int = WIDTH) -> Path:
    """``source`` as a JPEG at most ``width`` px wide (never enlarged)."""
    with Image.open(source) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        image.save(target, format="JPEG", quality=82)
    print(f"{target} <- {source}")
    return target


def screenshot(report: Path, target: Path, height: int) -> Path:
    """The top ``height`` px of ``report`` as Chromium draws it 1,250 px wide, reduced."""
    with tempfile.TemporaryDirectory() as folder:
        shot = Path(folder) / "shot.png"
        command = [shutil.which(CHROMIUM) or CHROMIUM, "--no-sandbox", "--hide-scrollbars", f"--screenshot={shot}"]
        subprocess.run(
            [*command, f"--window-size=1250,{height}", report.resolve().as_uri()], check=True, capture_output=True
        )
        return reduced(shot, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-output", type=Path, default=Path("demo_output"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    parser.add_argument("--slide", default="demo_004", help="the slide whose pictures are shown")
    args = parser.parse_args()
    demo, out, slide = args.demo_output, args.out, args.slide
    out.mkdir(parents=True, exist_ok=True)
    reduced(demo / "previews" / f"{slide}_preview.png", out / "preview.jpg")
    for run, name in (
        ("planted_label_pathme", "heatmap_tokens_classification"),
        ("planted_label_tiny-vit", "heatmap_raw_features_classification"),
        ("planted_survival_pathme", "heatmap_tokens_survival"),
    ):
        reduced(demo / "mil" / run / "heatmaps" / f"{slide}_attention.png", out / f"{name}.jpg")
    reduced(demo / "mil" / "planted_label_pathme" / "heatmaps" / f"{slide}_top_tiles.png", out / "top_tiles.jpg")
    screenshot(demo / "mil" / "planted_label_pathme" / "report.html", out / "report_classification.jpg", 1500)
    screenshot(demo / "mil" / "planted_survival_pathme" / "report.html", out / "report_survival.jpg", 1000)


if __name__ == "__main__":
    main()
