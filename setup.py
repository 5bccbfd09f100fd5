"""The package list, which pyproject.toml cannot express: pathme's packages, plus the top-level ``bundles/``
folder, which the wheel carries as ``pathme/_bundles`` (``pathme.bundles`` finds it there once installed, and
beside the package in a source checkout). Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup

#: bundles/ and each folder in it, as packages of data files (configs, docs, licence; never model weights)
BUNDLE_PACKAGES = ["pathme._bundles", *(f"pathme._bundles.{name}" for name in find_namespace_packages(where="bundles"))]

setup(
    packages=[*find_packages(include=["pathme", "pathme.*"]), *BUNDLE_PACKAGES],
    package_dir={"pathme._bundles": "bundles"},
    package_data={package: ["LICENSE", "*.json", "*.conf", "*.md"] for package in BUNDLE_PACKAGES},
)
