"""The slide readers pathme supports, by MONAI WSIReader backend name (importable without MONAI)."""

BACKENDS = ("cucim", "openslide")
