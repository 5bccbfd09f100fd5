"""Every bundle's metadata verifies offline against the schema it ships, and a broken copy is caught."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

BUNDLES = sorted(path for path in (REPO / "bundles").iterdir() if (path / "configs" / "metadata.json").is_file())


def test_every_bundle_is_listed():
    assert [bundle.name for bundle in BUNDLES] == ["pathme_distillation", "pathme_feature_extraction", "pathme_mil"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_verify_metadata_passes_offline_and_catches_a_bad_file(bundle, tmp_path):
    schema = bundle / "configs" / "metadata_schema.json"
    assert schema.is_file() and (bundle / "LICENSE").is_file() and (bundle / "docs" / "README.md").is_file()
    command = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--filepath", str(schema)]
    metadata = bundle / "configs" / "metadata.json"
    ok = subprocess.run([*command, "--meta_file", str(metadata)], capture_output=True, text=True)
    assert ok.returncode == 0 and "metadata is verified with no error" in ok.stdout + ok.stderr
    bad = tmp_path / "metadata.json"
    bad.write_text(metadata.read_text().replace('"version": "0.1.0"', '"version": "one"'))
    failed = subprocess.run([*command, "--meta_file", str(bad)], capture_output=True, text=True)
    assert failed.returncode != 0 and "version" in failed.stdout + failed.stderr
