"""KoLeo regulariser: spreads the student CLS tokens of a batch uniformly over the sphere.

It is the Kozachenko-Leonenko differential-entropy estimator; it needs at least 2 samples per device, which
is why the reference (batch 1 per GPU) got a constant KoLeo term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimator: -mean log(min distance to another sample) of L2-normalised vectors."""

    def forward(self, x: Tensor, eps: float = 1e-8) -> Tensor:
        """``x`` [B, D], B >= 2. The nearest neighbour is chosen without a graph; the distance to it has one."""
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"KoLeo needs [B, D] with B >= 2 samples per device, got {tuple(x.shape)}")
        x = F.normalize(x.float(), dim=-1)
        with torch.no_grad():
            similarity = x @ x.T
            similarity.fill_diagonal_(-torch.inf)
            nearest = similarity.argmax(dim=1)
        distance = torch.linalg.vector_norm(x - x[nearest], dim=-1)
        return -torch.log(distance + eps).mean()
