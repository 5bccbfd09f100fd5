"""Atomic files: write_atomic (callable, text, bytes) and copy_atomic never leave a partial file at the target; a
write that fails (a full disk) names the target and the cause, and HDF5 and torch files fail the same way."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from real_inputs import with_file_size_limit

import pathme.store.atomic as atomic
from pathme.store import validate_store
from pathme.store.atomic import SUFFIX, WriteError, copy_atomic, write_atomic, write_csv_atomic
from pathme.synthetic.stores import write_store

FULL_DISK = "(the disk is full or a file-size limit is reached); free space and run again"


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.csv"
    target.write_text("old\n")

    def half_then_fail(temp: Path) -> None:
        temp.write_text("slide_id,status\nhalf")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert _siblings(target) == ["summary.csv"]


def test_a_writer_that_raises_writes_nothing_where_there_was_nothing(tmp_path):
    target = tmp_path / "new" / "report.json"
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, lambda temp: (temp.write_bytes(b"{"), (_ for _ in ()).throw(KeyboardInterrupt()))[0])
    assert not target.exists() and _siblings(target) == []


def test_callable_text_and_bytes_replace_the_target(tmp_path):
    frame = pd.DataFrame({"slide_id": ["a", "b"], "regions": [3, 0]})
    csv = write_atomic(tmp_path / "deep" / "er" / "table.csv", lambda temp: frame.to_csv(temp, index=False))
    assert csv == tmp_path / "deep" / "er" / "table.csv"
    pd.testing.assert_frame_equal(pd.read_csv(csv), frame)
    text = tmp_path / "manifest.csv"
    text.write_text("old, longer than the new content\n")
    write_atomic(text, "slide_id,path\r\nµ,x\n")  # line endings as given, UTF-8
    assert text.read_bytes() == "slide_id,path\r\nµ,x\n".encode()
    write_atomic(tmp_path / "blob.bin", b"\x00\xff")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\xff"
    assert not [name for name in _siblings(text) if name.endswith(SUFFIX)]


def test_copy_atomic_copies_and_a_missing_source_writes_nothing(tmp_path):
    source = tmp_path / "teacher.pt"
    source.write_bytes(b"weights" * 1000)
    target = tmp_path / "app" / "mil" / "teacher.pt"
    assert copy_atomic(source, target) == target and target.read_bytes() == source.read_bytes()
    with pytest.raises(FileNotFoundError):
        copy_atomic(tmp_path / "gone.pt", tmp_path / "app" / "gone.pt")
    assert sorted(p.name for p in (tmp_path / "app").iterdir()) == ["mil"]


def test_write_csv_atomic_writes_the_table_without_its_index(tmp_path):
    table = pd.DataFrame({"slide_id": ["a", "b"], "regions": [3, 0]}, index=[7, 9])
    path = write_csv_atomic(tmp_path / "deep" / "summary.csv", table)
    assert path.read_text() == "slide_id,regions\na,3\nb,0\n"
    assert [p.name for p in path.parent.iterdir()] == ["summary.csv"]


def test_a_failed_write_names_the_target_and_the_cause_and_leaves_nothing(tmp_path):
    target = tmp_path / "run_summary.csv"

    def fill_the_disk(temp: Path) -> None:
        temp.write_text("slide_id,status\nhalf")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temp))  # as Python's file objects raise it

    with pytest.raises(WriteError) as caught:
        write_atomic(target, fill_the_disk)
    assert str(caught.value) == f"cannot write {target}: [Errno 28] No space left on device {FULL_DISK}"
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert _siblings(target) == []
    with pytest.raises(WriteError, match=r"^cannot write .*report\.json: \[Errno 13\] Permission denied$"):
        write_atomic(
            tmp_path / "report.json", lambda temp: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
        )


def test_after_a_failed_write_hdf5_goes_on_reading_what_it_wrote_and_nothing_is_published(tmp_path, monkeypatch):
    """The disk fills up in the middle of an HDF5 file: HDF5 sees every write succeed (its error paths crash the
    process later), reads back what it wrote, closes cleanly; the failure is raised when the file is published."""
    real_pwrite, limit = os.pwrite, 20_000

    def pwrite_until_full(fd: int, data: bytes, offset: int) -> int:
        if offset + len(data) > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(atomic.os, "pwrite", pwrite_until_full)
    values = np.random.default_rng(0).standard_normal((4, 64, 64)).astype(np.float32)  # 64 KiB, incompressible
    target = atomic.AtomicTarget(tmp_path / "store.h5")
    with atomic.open_h5(target) as file:
        file.create_dataset("x", data=values, chunks=(1, 64, 64), compression="gzip")
        file.flush()
        assert target.error is not None and target.error.errno == errno.ENOSPC
        np.testing.assert_array_equal(file["x"][()], values)  # partly on disk, partly held in memory
        file.attrs["complete"] = True
    with pytest.raises(WriteError, match=rf"^cannot write {tmp_path / 'store.h5'}: \[Errno 28\] No space"):
        target.raise_if_failed()
    with pytest.raises(WriteError, match=r"\[Errno 28\] No space left on device \(the disk is full"):
        target.publish()
    assert _siblings(target.path) == []


STORES_PAST_A_LIMIT = """
from pathlib import Path
from pathme.synthetic.stores import write_store
from pathme.store.atomic import WriteError
for name, rules in [("big0", ["full"] * 4), ("small0", ["empty"]), ("big1", ["full"] * 4), ("small1", ["empty"])]:
    try:
        write_store(Path("."), name, name, rules, {"e": 64})
        print(f"{name} written")
    except WriteError as error:
        print(error)
"""


def test_hdf5_stores_that_hit_a_full_disk_fail_one_by_one_and_the_process_goes_on(tmp_path):
    """Before: HDF5's failed flush left a dataset pointing at a freed file, and the next store's close (or the
    interpreter) died of a segmentation fault: the cohort's other slides were never tried."""
    run = with_file_size_limit(["python", "-c", STORES_PAST_A_LIMIT], 48 * 1024, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]  # was -11 (SIGSEGV)
    assert run.stdout.splitlines() == [
        f"cannot write big0.h5: [Errno 27] File too large {FULL_DISK}",
        "small0 written",
        f"cannot write big1.h5: [Errno 27] File too large {FULL_DISK}",
        "small1 written",
    ]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small0.h5", "small1.h5"]  # no temporary file left
    for name in ("small0", "small1"):
        validate_store(tmp_path / f"{name}.h5")
    write_store(tmp_path, "big0", "big0", ["full"] * 4, {"e": 64})  # without the limit it is written
    with h5py.File(tmp_path / "big0.h5", "r") as store:
        assert store["features/e/L0"].shape == (4, 256, 64)


TORCH_FILES_PAST_A_LIMIT = """
from pathlib import Path
from ignite.engine import Engine
from ignite.handlers import Checkpoint
from pathme.engines.distill_workflow import AtomicDiskSaver
from pathme.engines.mil import MILModelConfig, MILTask, save_fold_model
from pathme.store.atomic import WriteError
config = MILModelConfig(in_dim=256, num_outputs=2)
model = config.build()
try:
    save_fold_model(Path("fold_0/model.pt"), model, config, MILTask("label", ("A", "B")), "e")
except WriteError as error:
    print(error)
trainer = Engine(lambda engine, batch: None)
trainer.state.iteration = 7
saver = Checkpoint({"student": model, "teacher": model}, AtomicDiskSaver("checkpoints"), filename_prefix="distill")
try:
    saver(trainer)
except WriteError as error:
    print(error)
"""


def test_fold_models_and_checkpoints_that_hit_a_full_disk_are_named(tmp_path):
    """Before: torch.save's own failure ("PytorchStreamWriter failed writing file data/0"), naming neither file."""
    run = with_file_size_limit(["python", "-c", TORCH_FILES_PAST_A_LIMIT], 100 * 1024, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == [
        f"cannot write fold_0/model.pt: [Errno 27] File too large {FULL_DISK}",
        f"cannot write checkpoints/distill_checkpoint_7.pt: [Errno 27] File too large {FULL_DISK}",
    ]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == []


MAPS_AND_TABLES_PAST_A_LIMIT = """
import json
import numpy as np
import pandas as pd
from PIL import Image
from pathme.store.atomic import WriteError, write_atomic, write_csv_atomic
from pathme.viz.nifti import write_map_nifti
noise = np.random.default_rng(0).random((200, 200)).astype(np.float32)  # 160 kB, hardly compressible
image = Image.fromarray(np.uint8(noise * 255))
writes = [
    lambda: write_map_nifti("maps/s0_attention.nii.gz", noise, 0.5, 16),
    lambda: write_atomic("maps/s0_attention.png", lambda temp: image.save(temp, "PNG")),
    lambda: write_atomic("maps/s0_attention.geojson", json.dumps({"scores": noise.tolist()})),
    lambda: write_csv_atomic("predictions.csv", pd.DataFrame(noise)),
]
for write in writes:
    try:
        write()
    except WriteError as error:
        print(error)
"""


def test_maps_images_and_tables_that_hit_a_full_disk_are_named(tmp_path):
    """Before: each raised the OSError of its hidden temporary file (".s0_attention.png.3f2a....tmp")."""
    run = with_file_size_limit(["python", "-c", MAPS_AND_TABLES_PAST_A_LIMIT], 32 * 1024, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    names = ["maps/s0_attention.nii.gz", "maps/s0_attention.png", "maps/s0_attention.geojson", "predictions.csv"]
    assert run.stdout.splitlines() == [f"cannot write {name}: [Errno 27] File too large {FULL_DISK}" for name in names]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
