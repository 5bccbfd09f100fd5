"""PatHME training losses (docs/method.md section 4): one small module per term.

Cross-scale DINO and iBOT (centred, sharpened teacher targets), KoLeo, multi-expert KD and HMSA consistency.
Every loss takes gradients through the student only.
"""

from pathme.losses.dino import DINOLoss, cross_scale_pairs
from pathme.losses.expert_kd import ExpertKDLoss
from pathme.losses.hmsa_consistency import hmsa_consistency
from pathme.losses.ibot import IBOTLoss
from pathme.losses.koleo import KoLeoLoss
from pathme.losses.survival_likelihood import (
    assign_bins,
    cox_partial_likelihood,
    discrete_time_nll,
    risk_from_logits,
    survival_bins,
)

__all__ = [
    "DINOLoss",
    "ExpertKDLoss",
    "IBOTLoss",
    "KoLeoLoss",
    "assign_bins",
    "cox_partial_likelihood",
    "cross_scale_pairs",
    "discrete_time_nll",
    "hmsa_consistency",
    "risk_from_logits",
    "survival_bins",
]
