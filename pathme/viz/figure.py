"""A slide picture as a figure a person reads: the image at its own pixels, a title, a side panel (a colour bar or
a legend) and a scale bar in micrometres under it, drawn with matplotlib (its object API, no pyplot state).

Why a layout of our own around matplotlib: the slide image must keep its pixels one to one (a heatmap's cell, a
preview's tile outline land on the pixels they mean), which ``fig.savefig(bbox_inches="tight")`` would resample;
so the figure is sized in pixels around the image, and :class:`SlideFigure` says where each part landed
(:class:`Box`, PNG pixels from the top-left) for whoever checks the picture.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from pathme.store.atomic import write_atomic

DPI = 100
TITLE_PX, TITLE_LINE_PX, FOOTER_PX, PAD_PX, PANEL_PX, MIN_BODY_PX = 58, 19, 46, 12, 230, 300


@dataclass(frozen=True)
class Box:
    """A part of the PNG: pixel columns [left, right) and rows [top, bottom), rows counted from the top."""

    left: int
    top: int
    right: int
    bottom: int

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        """The [rows, columns, ...] of ``pixels`` (the PNG as an array) inside the box."""
        return pixels[self.top : self.bottom, self.left : self.right]


def scale_bar_length(mpp: float, width_px: int) -> float:
    """The scale bar's length in µm: 1, 2 or 5 times a power of ten, the longest not over a fifth of an image
    ``width_px`` pixels of ``mpp`` µm wide (at least one pixel long)."""
    target = max(width_px * mpp / 5, mpp)
    power = 10 ** math.floor(math.log10(target))
    return max(step * power for step in (1, 2, 5) if step * power <= target)


def micrometres(length_um: float) -> str:
    """``length_um`` as a scale bar says it: "500 µm", "2 mm"."""
    return f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"


@dataclass
class SlideFigure:
    """A figure of an [H, W, 3] uint8 image at one image pixel per PNG pixel, with ``title`` lines above, a side
    panel (``panel_axes``, :data:`PANEL_PX` wide and as high as the body, left empty for the caller) and a scale
    bar of ``mpp`` µm per image pixel in the footer. ``image_axes`` draws on the image in its pixel coordinates
    (pixel centres at integers). :meth:`save` writes the PNG atomically."""

    figure: Figure
    image: Box
    panel: Box
    scale_bar: Box
    scale_bar_um: float
    image_axes: Axes
    panel_axes: Axes
    parts: dict[str, Box] = field(default_factory=dict)  # what the caller added with add_axes, by name

    @classmethod
    def around(cls, image: np.ndarray, mpp: float, title: str) -> SlideFigure:
        """The figure for ``image``; see the class. ``title``: its lines, each wrapped to the figure's width (the
        image moves down below :data:`TITLE_PX` past two lines)."""
        height, width = image.shape[:2]
        body = max(height, MIN_BODY_PX)
        total_w = PAD_PX + width + PAD_PX + PANEL_PX
        lines = [part for line in title.splitlines() for part in textwrap.wrap(line, (total_w - 2 * PAD_PX) // 7)]
        title, top = "\n".join(lines), max(TITLE_PX, 20 + TITLE_LINE_PX * len(lines))
        total_h = top + body + FOOTER_PX
        figure = Figure(figsize=(total_w / DPI, total_h / DPI), dpi=DPI, facecolor="white")
        FigureCanvasAgg(figure)
        image_box = Box(PAD_PX, top, PAD_PX + width, top + height)
        axes = figure.add_axes(_fraction(image_box, total_w, total_h))
        axes.imshow(image, interpolation="none", resample=False)
        axes.set_axis_off()
        figure.text(PAD_PX / total_w, 1 - 8 / total_h, title, va="top", ha="left", fontsize=11)
        panel = Box(image_box.right + PAD_PX, top, total_w - PAD_PX, top + body)
        panel_axes = figure.add_axes(_fraction(panel, total_w, total_h))
        length = scale_bar_length(mpp, width)
        bar = Box(PAD_PX, top + body + 14, PAD_PX + round(length / mpp), top + body + 20)
        figure.patches.append(_rectangle(figure, bar, total_w, total_h))
        figure.text(
            (bar.right + 8) / total_w, 1 - (bar.top + 3) / total_h, micrometres(length), va="center", fontsize=10
        )
        return cls(figure, image_box, panel, bar, length, axes, panel_axes)

    def add_axes(self, name: str, box: Box) -> Axes:
        """New axes over ``box`` (PNG pixels), recorded in :attr:`parts` under ``name``."""
        self.parts[name] = box
        width, height = self.figure.canvas.get_width_height()
        return self.figure.add_axes(_fraction(box, width, height))

    def pixels(self) -> np.ndarray:
        """The figure drawn, as an [H, W, 3] uint8 array (what the PNG holds)."""
        self.figure.canvas.draw()
        return np.asarray(self.figure.canvas.buffer_rgba())[..., :3].copy()

    def save(self, path: str | Path) -> Path:
        """Write the figure as an RGB PNG (no alpha: a quarter smaller) to ``path`` atomically; returns the path."""
        image = Image.fromarray(self.pixels())
        return write_atomic(path, lambda temp: image.save(temp, format="PNG"))


def _fraction(box: Box, total_w: int, total_h: int) -> list[float]:
    """``box`` as matplotlib's [left, bottom, width, height] in figure fractions (its y runs upwards)."""
    return [
        box.left / total_w,
        1 - box.bottom / total_h,
        (box.right - box.left) / total_w,
        (box.bottom - box.top) / total_h,
    ]


def _rectangle(figure: Figure, box: Box, total_w: int, total_h: int) -> Rectangle:
    """A black rectangle filling ``box`` (PNG pixels) in figure coordinates."""
    left, bottom, width, height = _fraction(box, total_w, total_h)
    return Rectangle(
        (left, bottom), width, height, transform=figure.transFigure, figure=figure, color="black", linewidth=0
    )
