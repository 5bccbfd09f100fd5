"""Per-iteration schedules (DINOv2 defaults the paper kept), as plain functions of the iteration.

Being functions of the iteration alone, they need no state of their own in a checkpoint: a resumed run reads
the iteration back and every schedule continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine(start: float, end: float, progress: float) -> float:
    """Cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(iteration: int, total: int, warmup: int, peak: float, end: float, start: float = 0.0) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup`` iterations, then cosine to ``end`` at ``total``."""
    if iteration < warmup:
        return start + (peak - start) * iteration / warmup
    return cosine(peak, end, (iteration - warmup) / max(1, total - warmup))


@dataclass(frozen=True)
class Schedules:
    """Every scheduled quantity of a distillation run at a given iteration (0-based)."""

    total: int
    global_batch: int
    base_lr: float = 0.004
    min_lr: float = 1e-6
    warmup: int = 0
    weight_decay: tuple[float, float] = (0.04, 0.4)
    momentum: tuple[float, float] = (0.992, 1.0)
    teacher_temp: tuple[float, float] = (0.04, 0.07)
    teacher_temp_warmup: int = 0
    freeze_last_layer: int = 0

    @property
    def peak_lr(self) -> float:
        """Base lr scaled by sqrt(global batch / 1024)."""
        return self.base_lr * math.sqrt(self.global_batch / 1024)

    def lr(self, iteration: int) -> float:
        """Learning rate at ``iteration``: linear warm-up to the peak, then cosine to ``min_lr`` (DINOv2)."""
        return warmup_cosine(iteration, self.total, self.warmup, self.peak_lr, self.min_lr)

    def wd(self, iteration: int) -> float:
        """Weight decay at ``iteration``: cosine from the first to the second value of ``weight_decay``."""
        return cosine(*self.weight_decay, iteration / max(1, self.total))

    def teacher_momentum(self, iteration: int) -> float:
        """Teacher EMA momentum at ``iteration``: cosine from the first to the second value of ``momentum``."""
        return cosine(*self.momentum, iteration / max(1, self.total))

    def teacher_temperature(self, iteration: int) -> float:
        """Teacher softmax temperature at ``iteration``: linear warm-up over ``teacher_temp_warmup`` iterations, then
        constant."""
        if iteration < self.teacher_temp_warmup:
            low, high = self.teacher_temp
            return low + (high - low) * iteration / self.teacher_temp_warmup
        return self.teacher_temp[1]

    def last_layer_frozen(self, iteration: int) -> bool:
        """True while the DINO head's last layer stays frozen (the first ``freeze_last_layer`` iterations)."""
        return iteration < self.freeze_last_layer
