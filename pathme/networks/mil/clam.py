"""CLAM-SB: clustering-constrained attention MIL, single attention branch (Lu et al., Nat. Biomed. Eng. 2021).

The bag side is gated attention MIL (:class:`~pathme.networks.mil.abmil.ABMIL`). The instance side is what CLAM
adds: for the bag's true class, the ``k`` instances with the highest attention are taken as evidence of that class
and the ``k`` with the lowest as evidence against it, and a per-class 2-way instance classifier learns to tell them
apart (pseudo-labels 1 and 0; "in-class" clustering). With ``subtyping`` (classes that exclude each other), the
``k`` highest-attended instances are also negatives for every other class ("out-of-class"). The training loss is
``bag_weight * bag loss + (1 - bag_weight) * instance loss`` (cross-entropy; the paper's smooth top-1 SVM is an
option of its code, not of this one).

Survival has no class to cluster on: CLAM-SB then trains its attention branch alone (the bag loss), which the
summary of such a run says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathme.networks.mil.abmil import ABMIL
from pathme.networks.mil.base import TaskLoss


class CLAMSB(ABMIL):
    """Gated attention MIL with CLAM's instance-level clustering loss on the top/bottom-``k`` attended instances."""

    def __init__(
        self,
        in_dim: int,
        num_outputs: int,
        hidden: int = 512,
        dropout: float = 0.25,
        attention_dim: int = 256,
        k: int = 8,
        bag_weight: float = 0.7,
        subtyping: bool = False,
    ) -> None:
        super().__init__(in_dim, num_outputs, hidden, dropout, attention_dim, gated=True)
        self.k, self.bag_weight, self.subtyping = k, bag_weight, subtyping
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(num_outputs))

    def instance_samples(self, attention: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """(top, bottom): indices of the ``k`` most and ``k`` least attended of a bag's first ``length`` (real)
        instances, attention [N]; ``k`` shrinks to ``length // 2`` on small bags so the two sets never overlap."""
        k = min(self.k, length // 2)
        real = attention[:length]
        return torch.topk(real, k).indices, torch.topk(-real, k).indices

    def instance_loss(self, out: dict[str, Tensor], target: Tensor) -> Tensor:
        """Mean over the batch of the bags' instance losses (0 for a bag under 2 instances): cross-entropy of the
        true class's instance classifier on top-k (label 1) and bottom-k (label 0), plus with ``subtyping`` the
        other classes' classifiers on the top-k (label 0)."""
        losses = []
        for row, label in enumerate(target.tolist()):
            length = int(out["mask"][row].sum())
            top, bottom = self.instance_samples(out["attention"][row], length)
            if not len(top):
                continue
            h = out["instances"][row]
            chosen = torch.cat([h[top], h[bottom]])
            pseudo = torch.cat([torch.ones_like(top), torch.zeros_like(bottom)])
            loss = F.cross_entropy(self.instance_classifiers[label](chosen), pseudo)
            if self.subtyping:
                for other, classifier in enumerate(self.instance_classifiers):
                    if other != label:
                        loss = loss + F.cross_entropy(classifier(h[top]), torch.zeros_like(top))
            losses.append(loss)
        return torch.stack(losses).mean() if losses else out["logits"].new_zeros(())

    def objective(self, out: dict[str, Tensor], task_loss: TaskLoss, target: Tensor | None) -> Tensor:
        """``bag_weight`` × the task loss + (1 − ``bag_weight``) × the instance loss (classification); the task loss
        alone for survival (``target`` None)."""
        bag = task_loss(out["logits"])
        if target is None:
            return bag
        return self.bag_weight * bag + (1 - self.bag_weight) * self.instance_loss(out, target)
