"""Cross-scale DINO loss on CLS outputs: the "distillation across magnifications" of PatHME.

The reference code counted one global pair twice and dropped another; here the caller passes the pairs
explicitly (:func:`cross_scale_pairs`) and each is counted once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pathme.losses.centering import CenteredCrossEntropy


def cross_scale_pairs(num_local_l0: int, num_local_l1: int) -> list[tuple[int, int]]:
    """(student index, teacher index) pairs over the student views [global L0, global L1, local L0..., local L1...]
    and the teacher views [global L0, global L1].

    The four global pairs S-L0/T-L0, S-L1/T-L1, S-L0/T-L1, S-L1/T-L0 once each, then every local view against
    both teacher scales.
    """
    if num_local_l0 < 0 or num_local_l1 < 0:
        raise ValueError(f"numbers of local views must be >= 0, got {num_local_l0}, {num_local_l1}")
    pairs = [(0, 0), (1, 1), (0, 1), (1, 0)]
    for student in range(2, 2 + num_local_l0 + num_local_l1):
        pairs += [(student, 0), (student, 1)]
    return pairs


class DINOLoss(CenteredCrossEntropy):
    """Cross-entropy between centred, sharpened teacher distributions and student distributions."""

    def forward(
        self,
        student: Sequence[Tensor],
        teacher: Sequence[Tensor],
        teacher_temp: float,
        pairs: Sequence[tuple[int, int]],
    ) -> Tensor:
        """Mean over ``pairs`` (each counted once) of the batch-mean cross-entropy of student[i] against teacher[j].

        ``student[i]`` and ``teacher[j]`` are logits [B, K]; the teacher targets are detached.
        """
        if not pairs:
            raise ValueError("DINOLoss needs at least one (student, teacher) pair")
        targets = {t: self.teacher_probs(teacher[t], teacher_temp) for t in {j for _, j in pairs}}
        return torch.stack([self.cross_entropy(targets[t], student[s]).mean() for s, t in pairs]).mean()

    @torch.no_grad()
    def update_center(self, teacher: Sequence[Tensor]) -> None:
        """EMA of the batch mean of the teacher logits (all views concatenated), averaged over all ranks."""
        self.update_center_from(torch.cat(list(teacher), dim=0))
