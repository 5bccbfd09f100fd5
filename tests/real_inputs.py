"""The slides people actually have, built small with tifffile and numpy: tissue blobs on glass, a 72-dpi TIFF,
grayscale, RGBA with deflate tiles, pen-marked glass, truncated files and a cohort mixing them; and the disk they
have, which fills up (:func:`with_file_size_limit`).

"Tissue" is an H&E-like pink/purple noisy blob on glass (RGB 243); slides are 0.5 µm/px unless said otherwise.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from pathme.synthetic.slides import write_pyramid

REPO = Path(__file__).resolve().parents[1]

GLASS = 243
PINK, PURPLE = np.array([225.0, 130.0, 180.0]), np.array([120.0, 60.0, 150.0])
INK = {"blue": (40, 60, 170), "green": (40, 140, 70), "black": (30, 30, 35)}


def tissue_image(
    height: int = 2000, width: int | None = None, blob: tuple[float, float, float, float] | None = None, seed: int = 0
) -> np.ndarray:
    """(H, W, 3) uint8 glass with an elliptical tissue blob (centre y, centre x, radius y, radius x; by default
    centred, radii 35% of the sides)."""
    width = width or height
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), GLASS, dtype=np.uint8)
    cy, cx, ry, rx = blob or (height / 2, width / 2, 0.35 * height, 0.35 * width)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    share = rng.random((height, width, 1))
    colour = PINK * share + PURPLE * (1 - share) + rng.normal(0, 12, (height, width, 3))
    image[inside] = np.clip(colour[inside], 0, 255).astype(np.uint8)
    return image


def half_tissue(ink: tuple[int, int, int] | None = None, seed: int = 5) -> np.ndarray:
    """2000 x 4000 px: tissue on the left half, bare glass on the right, optionally a 400 px wide marker stroke
    on the glass (x 2800-3200)."""
    image = tissue_image(2000, 4000, blob=(1000, 1000, 800, 800), seed=seed)
    if ink is not None:
        image[200:1800, 2800:3200] = ink
    return image


def write_slide(path: Path, image: np.ndarray, mpp: float | None = 0.5, compression: str = "zlib") -> Path:
    """A two-level tiled TIFF (downsamples 1 and 4) with µm/px in its resolution tags (none for ``mpp=None``)."""
    write_pyramid(path, image, mpp, "tiff", (1, 4), compression=compression)
    return path


def rgba(image: np.ndarray) -> np.ndarray:
    """The RGB image with an opaque alpha channel: a TIFF of it has 4 samples, which cuCIM cannot decode deflated."""
    return np.concatenate([image, np.full((*image.shape[:2], 1), 255, dtype=np.uint8)], axis=2)


def grayscale(image: np.ndarray) -> np.ndarray:
    return image.mean(axis=2).astype(np.uint8)


def write_72_dpi_glass(path: Path, side: int = 20_000) -> Path:
    """A ``side`` x ``side`` px tiled TIFF of glass whose resolution tags hold 72 per inch (352.8 µm/px), written
    tile by tile so nothing of its size is ever in memory."""
    tile = np.full((256, 256, 3), GLASS, dtype=np.uint8)
    count = math.ceil(side / 256) ** 2
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            (tile for _ in range(count)),
            shape=(side, side, 3),
            dtype=np.uint8,
            photometric="rgb",
            tile=(256, 256),
            compression="zlib",
            resolution=(72, 72),
            resolutionunit="INCH",
            metadata=None,
        )
    return path


def truncate(source: Path, target: Path, keep: float = 1 / 3) -> Path:
    """A copy of ``source`` cut to ``keep`` of its bytes (an interrupted download)."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def write_manifest(folder: Path, rows: list[dict]) -> Path:
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tissue_cohort(folder: Path, kind: str, n_slides: int = 8) -> tuple[Path, Path]:
    """``n_slides`` tissue slides of patients p0.. with labels A/B alternating; (manifest, labels).

    kind ``no_mpp``: no µm/px in the files, 0.5 in the manifest; ``rgba``: RGBA with deflate tiles (OpenSlide
    reads them, cuCIM cannot); ``plain``: ordinary RGB slides.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for index in range(n_slides):
        image = tissue_image(2000, seed=index)
        path = folder / f"s{index}.tiff"
        row = {"slide_id": f"s{index}", "path": path.name, "patient_id": f"p{index}"}
        if kind == "no_mpp":
            write_slide(path, image, mpp=None)
            row["mpp"] = 0.5
        else:
            write_slide(path, rgba(image) if kind == "rgba" else image)
        rows.append(row)
        labels.append({"patient_id": f"p{index}", "label": "AB"[index % 2]})
    labels_path = folder / "labels.csv"
    pd.DataFrame(labels).to_csv(labels_path, index=False)
    return write_manifest(folder, rows), labels_path


def with_file_size_limit(
    argv: list[str], limit: int, cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (``python`` is this interpreter, with this checkout's ``pathme``) in ``cwd`` with files limited
    to ``limit`` bytes (RLIMIT_FSIZE): a write past it fails with EFBIG (errno 27) as a write to a full disk fails
    with ENOSPC. Returns the finished process, stdout and stderr as text."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    argv = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=limit_files, check=False
    )
