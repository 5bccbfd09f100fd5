"""Losses of section 4 against values computed by hand with numpy, plus their gradient and masking properties."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pathme.losses import DINOLoss, ExpertKDLoss, IBOTLoss, KoLeoLoss, cross_scale_pairs, hmsa_consistency

RNG = np.random.default_rng(0)


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ce(teacher: np.ndarray, student: np.ndarray, center: np.ndarray, t_temp: float, s_temp: float) -> np.ndarray:
    """Per-row -sum p log q, with p the centred, sharpened teacher softmax and q the student softmax."""
    return -(softmax((teacher - center) / t_temp) * np.log(softmax(student / s_temp))).sum(axis=-1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32, requires_grad=grad)


# --- DINO -------------------------------------------------------------------------------------------------------


def test_cross_scale_pairs_two_local_views_per_scale():
    assert cross_scale_pairs(2, 2) == [
        (0, 0), (1, 1), (0, 1), (1, 0),
        (2, 0), (2, 1), (3, 0), (3, 1),
        (4, 0), (4, 1), (5, 0), (5, 1),
    ]  # fmt: skip
    assert cross_scale_pairs(0, 0) == [(0, 0), (1, 1), (0, 1), (1, 0)]
    with pytest.raises(ValueError):
        cross_scale_pairs(-1, 0)


def test_dino_uniform_student_gives_log_k():
    loss = DINOLoss(3)
    teacher = [t(RNG.normal(size=(2, 3)))]
    assert loss([torch.zeros(2, 3)], teacher, 0.04, [(0, 0)]).item() == pytest.approx(math.log(3), rel=1e-6)


def test_dino_matches_hand_value_and_counts_each_pair_once():
    students = [RNG.normal(size=(2, 3)) for _ in range(3)]
    teachers = [RNG.normal(size=(2, 3)) for _ in range(2)]
    center = np.array([[0.3, -0.2, 0.1]])
    loss = DINOLoss(3, student_temp=0.1)
    loss.center.copy_(t(center))
    pairs = [*cross_scale_pairs(1, 0)]  # the four global pairs, then the local view against both scales
    value = loss([t(s) for s in students], [t(x) for x in teachers], 0.05, pairs).item()

    per_pair = {(s, j): ce(teachers[j], students[s], center, 0.05, 0.1).mean() for s, j in pairs}
    expected = sum(per_pair.values()) / len(pairs)
    assert value == pytest.approx(expected, rel=1e-5)
    # the reference defect (S-L0/T-L1 counted twice, S-L1/T-L0 dropped) would be visibly different on these data
    buggy = (sum(per_pair.values()) - per_pair[(1, 0)] + per_pair[(0, 1)]) / len(pairs)
    assert abs(buggy - expected) > 1e-3


def test_dino_gradient_reaches_student_only():
    student = [t(RNG.normal(size=(2, 3)), grad=True) for _ in range(2)]
    teacher = [t(RNG.normal(size=(2, 3)), grad=True) for _ in range(2)]
    DINOLoss(3)(student, teacher, 0.04, cross_scale_pairs(0, 0)).backward()
    assert all(x.grad is None for x in teacher)
    assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in student)


def test_dino_is_stable_for_extreme_logits():
    student = [t(np.array([[1e4, -1e4, 0.0], [0.0, 0.0, -1e4]]), grad=True)]
    teacher = [t(np.array([[-1e4, 1e4, 0.0], [1e4, 0.0, 0.0]]))]
    value = DINOLoss(3)(student, teacher, 0.04, [(0, 0)])
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student[0].grad).all()


def test_dino_needs_pairs():
    with pytest.raises(ValueError):
        DINOLoss(3)([torch.zeros(2, 3)], [torch.zeros(2, 3)], 0.04, [])


def test_dino_center_is_ema_of_batch_mean_without_distributed():
    assert not dist.is_initialized()  # the all-reduce must be skipped
    views = [RNG.normal(size=(2, 3)) for _ in range(2)]
    loss = DINOLoss(3, center_momentum=0.9)
    loss.center.copy_(t(np.array([[1.0, 2.0, 3.0]])))
    loss.update_center([t(v) for v in views])
    expected = 0.9 * np.array([[1.0, 2.0, 3.0]]) + 0.1 * np.concatenate(views).mean(axis=0, keepdims=True)
    np.testing.assert_allclose(loss.center.numpy(), expected, rtol=1e-6)
    assert "center" in loss.state_dict()


# --- iBOT -------------------------------------------------------------------------------------------------------


def ibot_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    student = RNG.normal(size=(3, 4, 3))
    teacher = RNG.normal(size=(3, 4, 3))
    masks = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=bool)  # 3, 0 and 1 masked tokens
    return student, teacher, masks


def test_ibot_averages_over_every_sample_counting_an_unmasked_one_as_zero():
    """DINOv2's iBOT normalisation (the paper kept its defaults): sample 1 has no masked token and counts as 0, so
    the loss is the sum of the two masked samples' means over all 3 samples, not their mean (1.5x larger)."""
    student, teacher, masks = ibot_inputs()
    center = np.array([[0.1, 0.0, -0.3]])
    loss = IBOTLoss(3, student_temp=0.1)
    loss.center.copy_(t(center))
    value = loss(t(student), t(teacher), torch.tensor(masks), 0.07).item()
    per_sample = [ce(teacher[b][masks[b]], student[b][masks[b]], center, 0.07, 0.1).mean() for b in (0, 2)]
    assert value == pytest.approx(sum(per_sample) / 3, rel=1e-5)


def test_ibot_without_masked_tokens_is_zero_with_a_graph():
    student = t(RNG.normal(size=(2, 4, 3)), grad=True)
    value = IBOTLoss(3)(student, t(RNG.normal(size=(2, 4, 3))), torch.zeros(2, 4, dtype=torch.bool), 0.04)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_ibot_ignores_unmasked_tokens():
    student, teacher, masks = ibot_inputs()
    loss = IBOTLoss(3)
    s1 = t(student, grad=True)
    v1 = loss(s1, t(teacher), torch.tensor(masks), 0.04)
    v1.backward()
    student2, teacher2 = student.copy(), teacher.copy()
    student2[~masks], teacher2[~masks] = 1e3, np.nan
    s2 = t(student2, grad=True)
    v2 = loss(s2, t(teacher2), torch.tensor(masks), 0.04)
    v2.backward()
    assert v2.item() == v1.item()
    assert torch.equal(s1.grad, s2.grad)
    assert torch.all(s1.grad[torch.tensor(~masks)] == 0)


def test_ibot_gradient_reaches_student_only():
    student, teacher, masks = ibot_inputs()
    s, tt = t(student, grad=True), t(teacher, grad=True)
    IBOTLoss(3)(s, tt, torch.tensor(masks), 0.04).backward()
    assert tt.grad is None and s.grad.abs().sum() > 0


def test_ibot_center_uses_masked_tokens_only():
    _, teacher, masks = ibot_inputs()
    loss = IBOTLoss(3, center_momentum=0.8)
    loss.center.copy_(t(np.array([[1.0, -1.0, 0.5]])))
    loss.update_center(t(teacher), torch.tensor(masks))
    expected = 0.8 * np.array([[1.0, -1.0, 0.5]]) + 0.2 * teacher[masks].mean(axis=0, keepdims=True)
    np.testing.assert_allclose(loss.center.numpy(), expected, rtol=1e-6)
    before = loss.center.clone()
    loss.update_center(t(teacher), torch.zeros(3, 4, dtype=torch.bool))
    assert torch.equal(loss.center, before)


# --- KoLeo ------------------------------------------------------------------------------------------------------


def test_koleo_matches_hand_value():
    x = RNG.normal(size=(4, 5))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    distances = np.linalg.norm(unit[:, None] - unit[None], axis=-1) + np.diag([np.inf] * 4)
    expected = -np.log(distances.min(axis=1) + 1e-8).mean()
    assert KoLeoLoss()(t(x)).item() == pytest.approx(expected, rel=1e-5)


def test_koleo_with_two_samples_is_nonzero_and_has_gradients():
    x = t(np.array([[1.0, 0.0], [0.0, 2.0]]), grad=True)
    value = KoLeoLoss()(x)
    assert value.item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-6)
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_koleo_needs_two_samples():
    with pytest.raises(ValueError):
        KoLeoLoss()(torch.ones(1, 4))


# --- expert KD --------------------------------------------------------------------------------------------------


def test_expert_kd_projector_only_when_dims_differ():
    assert isinstance(ExpertKDLoss(8, 8).projector, torch.nn.Identity)
    projector = ExpertKDLoss(8, 6).projector
    assert isinstance(projector, torch.nn.Linear) and (projector.in_features, projector.out_features) == (8, 6)


def test_expert_kd_identical_is_zero_orthogonal_is_one():
    valid = torch.ones(1, 2, dtype=torch.bool)
    student = t(np.array([[[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]]))
    loss = ExpertKDLoss(3, 3)
    assert loss(student, 5 * student, valid).item() == pytest.approx(0.0, abs=1e-6)
    orthogonal = t(np.array([[[-2.0, 1.0, 7.0], [1.0, 3.0, 1.0]]]))
    assert loss(student, orthogonal, valid).item() == pytest.approx(1.0, abs=1e-6)


def test_expert_kd_matches_hand_value_and_ignores_invalid_tiles():
    student, expert = RNG.normal(size=(2, 3, 4)), RNG.normal(size=(2, 3, 4))
    valid = np.array([[1, 0, 1], [1, 1, 0]], dtype=bool)
    loss = ExpertKDLoss(4, 4)
    value = loss(t(student), t(expert), torch.tensor(valid)).item()
    assert value == pytest.approx(1 - cosine(student[valid], expert[valid]).mean(), rel=1e-5)
    student[~valid], expert[~valid] = np.nan, np.nan
    assert loss(t(student), t(expert), torch.tensor(valid)).item() == pytest.approx(value, rel=1e-6)


def test_expert_kd_gradients_and_no_valid_tile():
    loss = ExpertKDLoss(4, 3)
    student, expert = t(RNG.normal(size=(2, 3, 4)), grad=True), t(RNG.normal(size=(2, 3, 3)), grad=True)
    loss(student, expert, torch.ones(2, 3, dtype=torch.bool)).backward()
    assert expert.grad is None and student.grad.abs().sum() > 0 and loss.projector.weight.grad is not None
    empty = loss(student, expert, torch.zeros(2, 3, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


# --- HMSA consistency -------------------------------------------------------------------------------------------


def test_hmsa_consistency_matches_hand_value_and_detaches_teacher():
    teacher, student = RNG.normal(size=(2, 5, 4)), RNG.normal(size=(2, 5, 4))
    valid = np.array([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)
    tt, s = t(teacher, grad=True), t(student, grad=True)
    value = hmsa_consistency(tt, s, torch.tensor(valid))
    assert value.item() == pytest.approx((1 - cosine(teacher[valid], student[valid]).mean()) / 0.1, rel=1e-5)
    value.backward()
    assert tt.grad is None and s.grad.abs().sum() > 0
    assert torch.all(s.grad[torch.tensor(~valid)] == 0)


def test_hmsa_consistency_identical_directions_is_zero():
    x = t(RNG.normal(size=(2, 5, 4)))
    assert hmsa_consistency(3 * x, x, torch.ones(2, 5, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-5)


# --- centre all-reduce over two gloo processes ------------------------------------------------------------------


def _rank_views(rank: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + rank)
    views = [rng.normal(size=(2, 3)) for _ in range(2)]
    patches = rng.normal(size=(2, 4, 3))
    masks = np.zeros((2, 4), dtype=bool)
    masks[0, : 1 + 2 * rank] = True  # rank 0 masks 1 token, rank 1 masks 3: the mean must weight tokens, not ranks
    return views, patches, masks


def _center_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        views, patches, masks = _rank_views(rank)
        dino, ibot = DINOLoss(3), IBOTLoss(3)
        dino.update_center([t(v) for v in views])
        ibot.update_center(t(patches), torch.tensor(masks))
        torch.save({"dino": dino.center, "ibot": ibot.center}, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_center_all_reduce_over_two_gloo_processes(tmp_path: Path):
    mp.spawn(_center_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    ranks = [_rank_views(r) for r in range(2)]
    dino_mean = np.concatenate([v for views, _, _ in ranks for v in views]).mean(axis=0, keepdims=True)
    ibot_mean = np.concatenate([p[m] for _, p, m in ranks]).mean(axis=0, keepdims=True)
    for rank in range(2):
        centers = torch.load(tmp_path / f"{rank}.pt")
        np.testing.assert_allclose(centers["dino"].numpy(), 0.1 * dino_mean, rtol=1e-5)
        np.testing.assert_allclose(centers["ibot"].numpy(), 0.1 * ibot_mean, rtol=1e-5)
