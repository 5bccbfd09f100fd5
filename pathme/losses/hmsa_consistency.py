"""HMSA consistency: the student's region representation should agree in direction with the teacher's."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def hmsa_consistency(teacher: Tensor, student: Tensor, valid: Tensor, scale: float = 0.1) -> Tensor:
    """(1 - mean cosine(teacher HMSA output, student HMSA output)) / scale over valid tokens; teacher detached.

    ``teacher``, ``student`` [B, T, D]; ``valid`` [B, T] bool (prompts valid, L1 tokens by tile validity).
    Returns 0 (with a graph to the student) when no token is valid.
    """
    if teacher.shape != student.shape or valid.shape != student.shape[:2]:
        raise ValueError(f"shapes differ: teacher {teacher.shape}, student {student.shape}, valid {valid.shape}")
    valid = valid.bool()
    cosine = F.cosine_similarity(teacher[valid].detach().float(), student[valid].float(), dim=-1)
    if cosine.numel() == 0:
        return cosine.sum()
    return (1 - cosine.mean()) / scale
