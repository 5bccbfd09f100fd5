"""Atomic files: write_atomic (callable, text, bytes) and copy_atomic never leave a partial file at the target."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pathme.store.atomic import SUFFIX, copy_atomic, write_atomic, write_csv_atomic


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
