"""The PatHME distillation step as an Ignite engine: student forward, teacher forward without grad, the five
losses, AdamW with scheduled lr and weight decay, gradient clipping, then the EMA teacher update.

Only the student is wrapped by DDP (through :class:`DistillStudent`, whose ``forward`` computes every student
output, so DDP sees one forward per step); the teacher is an EMA copy of the student's network and is never
trained by gradients. Centres of the DINO and iBOT losses are averaged over ranks inside the losses.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.engine.deterministic import DeterministicEngine

from pathme.engines.schedules import Schedules
from pathme.losses import DINOLoss, ExpertKDLoss, IBOTLoss, KoLeoLoss, cross_scale_pairs, hmsa_consistency
from pathme.networks import PatHME

logger = logging.getLogger(__name__)

LOSS_TERMS = ("dino", "ibot", "koleo", "kd", "hmsa")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (docs/method.md section 4); hmsa_consistency already divides by 0.1."""

    dino: float = 1.0
    ibot: float = 1.0
    koleo: float = 0.1
    kd: float = 1.0
    hmsa: float = 1.0


def _encode_views(net: PatHME, batch: Mapping[str, torch.Tensor], masked: bool) -> dict[str, dict[str, torch.Tensor]]:
    """The two global views, masked for the student, unmasked for the teacher."""
    return {
        scale: net.encode(
            batch[f"global_{scale.lower()}"],
            batch[f"global_{scale.lower()}_pos"],
            batch[f"global_{scale.lower()}_valid"],
            scale,
            mask=batch[f"mask_{scale.lower()}"] if masked else None,
        )
        for scale in ("L0", "L1")
    }


def _encode_locals(net: PatHME, batch: Mapping[str, torch.Tensor], scale: str) -> list[torch.Tensor]:
    """CLS outputs of every local view of ``scale`` ([B, D] each), the views of a batch encoded together."""
    key = f"local_{scale.lower()}"
    tokens, positions, valid = batch[key], batch[f"{key}_pos"], batch[f"{key}_valid"]
    size, views = tokens.shape[:2]
    cls = net.encode(tokens.flatten(0, 1), positions.flatten(0, 1), valid.flatten(0, 1), scale)["cls"]
    return list(cls.view(size, views, -1).unbind(1))


class DistillStudent(nn.Module):
    """The trained parts (PatHME network and the expert-KD projector) behind one ``forward`` for DDP."""

    def __init__(self, net: PatHME, expert_dim: int) -> None:
        super().__init__()
        self.net = net
        self.kd = ExpertKDLoss(net.config.embed_dim, expert_dim)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Student outputs of one batch of views: DINO logits of every global and local view, patch logits [B, N, K] per
        scale, HMSA outputs and the expert-KD loss."""
        views = _encode_views(self.net, batch, masked=True)
        l0, l1 = views["L0"], views["L1"]
        globals_cls = [l0["cls"], l1["cls"]]
        locals_cls = _encode_locals(self.net, batch, "L0") + _encode_locals(self.net, batch, "L1")
        head = self.net.head
        return {
            "cls_logits": [head(cls) for cls in globals_cls + locals_cls],
            "cls": globals_cls,
            "patch_logits": [head(l0["patches"]), head(l1["patches"])],
            "hmsa": self.net.hmsa(
                l0["patches"], batch["global_l0_valid"], l1["patches"], batch["global_l1_valid"], l1["prompts"]
            ),
            "kd": self.kd(l0["patches"], batch["kd"], batch["global_l0_valid"]),
        }


@torch.no_grad()
def teacher_outputs(teacher: PatHME, batch: Mapping[str, torch.Tensor]) -> dict[str, list[torch.Tensor] | torch.Tensor]:
    """The teacher's targets on the global views (no masking): DINO logits per scale, patch logits [B, N, K] per scale,
    HMSA outputs."""
    views = _encode_views(teacher, batch, masked=False)
    l0, l1 = views["L0"], views["L1"]
    return {
        "cls_logits": [teacher.head(l0["cls"]), teacher.head(l1["cls"])],
        "patch_logits": [teacher.head(l0["patches"]), teacher.head(l1["patches"])],
        "hmsa": teacher.hmsa(
            l0["patches"], batch["global_l0_valid"], l1["patches"], batch["global_l1_valid"], l1["prompts"]
        ),
    }


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher = momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


class DistillationLosses(nn.Module):
    """The five terms of the objective; holds the DINO and iBOT centres (saved in checkpoints)."""

    def __init__(self, num_prototypes: int, weights: LossWeights, student_temp: float, center_momentum: float) -> None:
        super().__init__()
        self.weights = weights
        self.dino = DINOLoss(num_prototypes, student_temp, center_momentum)
        self.ibot_l0 = IBOTLoss(num_prototypes, student_temp, center_momentum)
        self.ibot_l1 = IBOTLoss(num_prototypes, student_temp, center_momentum)
        self.koleo = KoLeoLoss()

    def forward(
        self, student: Mapping, teacher: Mapping, batch: Mapping, teacher_temp: float
    ) -> dict[str, torch.Tensor]:
        """Every loss term (``dino``, ``ibot``, ``koleo``, ``kd``, ``hmsa``) and their weighted sum ``total``, each a
        scalar tensor; ``teacher_temp`` sharpens the teacher's softmax (METHOD.md, DINOv2)."""
        num_local_l0 = batch["local_l0"].shape[1]
        num_local_l1 = batch["local_l1"].shape[1]
        pairs = cross_scale_pairs(num_local_l0, num_local_l1)
        terms = {
            "dino": self.dino(student["cls_logits"], teacher["cls_logits"], teacher_temp, pairs),
            "ibot": 0.5
            * (
                self.ibot_l0(student["patch_logits"][0], teacher["patch_logits"][0], batch["mask_l0"], teacher_temp)
                + self.ibot_l1(student["patch_logits"][1], teacher["patch_logits"][1], batch["mask_l1"], teacher_temp)
            ),
            "koleo": sum(self.koleo(cls) for cls in student["cls"]) / len(student["cls"]),
            "kd": student["kd"],
            "hmsa": hmsa_consistency(teacher["hmsa"], student["hmsa"], _hmsa_valid(student["hmsa"], batch)),
        }
        terms["total"] = sum(getattr(self.weights, name) * terms[name] for name in LOSS_TERMS)
        return terms

    @torch.no_grad()
    def update_centers(self, teacher: Mapping, batch: Mapping) -> None:
        """Move the DINO and iBOT centres towards the mean teacher logits of this batch (EMA, iBOT only over masked
        patches)."""
        self.dino.update_center(teacher["cls_logits"])
        self.ibot_l0.update_center(teacher["patch_logits"][0], batch["mask_l0"])
        self.ibot_l1.update_center(teacher["patch_logits"][1], batch["mask_l1"])


def _hmsa_valid(hmsa: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Validity of the HMSA output rows [prompts, L1 tokens]: prompts always, L1 tokens by their flags."""
    l1_valid = batch["global_l1_valid"]
    prompts = l1_valid.new_ones(l1_valid.shape[0], hmsa.shape[1] - l1_valid.shape[1])
    return torch.cat([prompts, l1_valid], dim=1)


def create_distill_trainer(
    student: nn.Module,
    teacher: PatHME,
    losses: DistillationLosses,
    optimizer: torch.optim.Optimizer,
    schedules: Schedules,
    device: torch.device,
    clip_grad: float = 3.0,
    amp: bool = True,
) -> Engine:
    """A deterministic Ignite engine whose iteration is one distillation step; ``engine.state.output`` holds floats
    of every loss term, the total, lr, wd, teacher momentum and temperature."""
    net = unwrap(student).net
    use_amp = amp and device.type == "cuda"

    def step(engine: Engine, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        iteration = engine.state.iteration - 1
        lr, wd = schedules.lr(iteration), schedules.wd(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            group["weight_decay"] = wd if group["apply_wd"] else 0.0
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        temperature = schedules.teacher_temperature(iteration)
        student.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            teacher_out = teacher_outputs(teacher, batch)
            student_out = student(batch)
            terms = losses(student_out, teacher_out, batch, temperature)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        if schedules.last_layer_frozen(iteration):
            for parameter in net.head.last_layer.parameters():
                parameter.grad = None
        if clip_grad:
            nn.utils.clip_grad_norm_(student.parameters(), clip_grad)
        optimizer.step()
        momentum = schedules.teacher_momentum(iteration)
        ema_update(teacher, net, momentum)
        losses.update_centers(teacher_out, batch)
        output = {name: float(value.detach()) for name, value in terms.items()}
        return output | {"lr": lr, "wd": wd, "momentum": momentum, "teacher_temp": temperature}

    engine = DeterministicEngine(step)
    engine.add_event_handler(Events.STARTED, lambda _: teacher.eval())
    return engine


def build_teacher(net: PatHME) -> PatHME:
    """An EMA teacher: a frozen copy of the student's network."""
    teacher = copy.deepcopy(net)
    teacher.requires_grad_(False)
    return teacher.eval()
