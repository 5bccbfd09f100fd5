"""PatHME training losses (METHOD.md section 4): one small module per term.

Cross-scale DINO and iBOT (centred, sharpened teacher targets), KoLeo, multi-expert KD and HMSA consistency.
Every loss takes gradients through the student only.
"""

from pathme.losses.dino import DINOLoss, cross_scale_pairs
from pathme.losses.expert_kd import ExpertKDLoss
from pathme.losses.hmsa import hmsa_consistency
from pathme.losses.ibot import IBOTLoss
from pathme.losses.koleo import KoLeoLoss

__all__ = ["DINOLoss", "ExpertKDLoss", "IBOTLoss", "KoLeoLoss", "cross_scale_pairs", "hmsa_consistency"]
