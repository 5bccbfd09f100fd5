"""The distillation trainer: every term reaches TensorBoard, and a resumed run continues exactly."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_config import tiny_distillation
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pathme.data.views import ViewConfig
from pathme.engines.distill_workflow import DistillationRun, load_checkpoint, newest_readable_checkpoint
from pathme.engines.schedules import Schedules
from pathme.synthetic.stores import write_store

DIMS = {"a": 12, "b": 10}
TERMS = ["dino", "ibot", "koleo", "kd", "hmsa", "total"]
SCHEDULED = ["lr", "wd", "momentum", "teacher_temp"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stores")
    for index in range(5):
        write_store(folder, f"s{index}", f"p{index}", ["full", "sparse", "sparse", "full", "sparse"], DIMS)
    return folder


def _run(stores: Path, output: Path, **overrides) -> DistillationRun:
    settings = (
        tiny_distillation(dataset_dir=stores, output_dir=output)
        | {
            "expert_a": "a",
            "expert_b": "b",
            "max_iterations": 6,
            "batch_size": 4,
            "holdout_fraction": 0.2,
            "validate_every": 3,
            "checkpoint_every": 3,
            "log_every": 1,
            "warmup_iterations": 2,
            "teacher_temp_warmup": 2,
            "views": ViewConfig(num_local=4),
        }
        | overrides
    )
    return DistillationRun(**settings)


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_a_short_run_logs_every_term_and_schedule_to_tensorboard(stores, tmp_path):
    _run(stores, tmp_path).run()
    scalars = _scalars(tmp_path / "tensorboard")
    for name in TERMS + SCHEDULED:
        assert sorted(scalars[f"train/{name}"]) == [1, 2, 3, 4, 5, 6], name
        assert np.isfinite(list(scalars[f"train/{name}"].values())).all()
    assert sorted(scalars["validation/total"]) == [3, 6]
    assert min(scalars["train/ibot"].values()) > 0 and min(scalars["train/koleo"].values()) != 0
    assert scalars["train/lr"][1] == 0 and scalars["train/lr"][3] > scalars["train/lr"][6]
    assert scalars["train/momentum"][6] > scalars["train/momentum"][1]


def test_a_resumed_run_continues_exactly(stores, tmp_path, caplog, capsys, monkeypatch):
    _run(stores, tmp_path / "whole").run()
    whole = _scalars(tmp_path / "whole" / "tensorboard")
    checkpoint = tmp_path / "whole" / "checkpoints" / "distill_checkpoint_3.pt"
    newest, _ = newest_readable_checkpoint(tmp_path / "whole" / "checkpoints")
    assert checkpoint.is_file() and newest.name.endswith("_6.pt")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, tmp_path / "resumed" / "checkpoints")  # as if the run had been killed after step 3
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the progress bar is drawn
    with caplog.at_level(logging.INFO, logger="pathme"):
        _run(stores, tmp_path / "resumed").run()
    # one bar over the whole run, from where it was stopped: iterations done/total, rate, ETA
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert "distillation:  50%" in bar and "3/6 [" in bar and "6/6 [" in bar and "it/s" in bar
    assert "Epoch" not in bar and "1/6" not in bar
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert [line.split(" (")[0] for line in logged] == ["iteration 4/6", "iteration 5/6", "iteration 6/6"]
    assert all("it/s, ETA " in line for line in logged)
    resumed = _scalars(tmp_path / "resumed" / "tensorboard")
    assert sorted(resumed["train/total"]) == [4, 5, 6]
    for name in TERMS + SCHEDULED:
        for step in (4, 5, 6):
            expected = pytest.approx(whole[f"train/{name}"][step], rel=1e-5, abs=1e-6)  # float32 summation order
            assert resumed[f"train/{name}"][step] == expected, name


def test_a_finished_run_is_not_trained_again(stores, tmp_path):
    _run(stores, tmp_path, max_iterations=3).run()
    before = sorted((tmp_path / "checkpoints").iterdir())
    assert _run(stores, tmp_path, max_iterations=3).run() == {}
    assert sorted((tmp_path / "checkpoints").iterdir()) == before
    (tmp_path / "teacher.pt").write_bytes(b"stale")  # a run stopped after its last checkpoint left an old file
    assert _run(stores, tmp_path, max_iterations=3).run() == {}
    assert sorted((tmp_path / "checkpoints").iterdir()) == before
    teacher = torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert teacher["iteration"] == 3 and teacher["teacher"].keys() == load_checkpoint(before[-1])["teacher"].keys()


def test_too_few_regions_for_a_batch_is_a_clear_error(stores, tmp_path):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        _run(stores, tmp_path, batch_size=64).build()


def test_schedules_follow_the_method():
    schedules = Schedules(total=100, global_batch=256, warmup=10, teacher_temp_warmup=30, freeze_last_layer=5)
    assert schedules.peak_lr == pytest.approx(0.004 * 0.5)
    assert schedules.lr(0) == 0 and schedules.lr(10) == pytest.approx(0.002)
    assert schedules.lr(100) == pytest.approx(1e-6)
    assert schedules.wd(0) == pytest.approx(0.04) and schedules.wd(100) == pytest.approx(0.4)
    assert schedules.teacher_momentum(0) == pytest.approx(0.992) and schedules.teacher_momentum(100) == pytest.approx(1)
    assert schedules.teacher_temperature(0) == pytest.approx(0.04)
    assert schedules.teacher_temperature(15) == pytest.approx(0.055)
    assert schedules.teacher_temperature(30) == pytest.approx(0.07)
    assert schedules.last_layer_frozen(4) and not schedules.last_layer_frozen(5)
