"""The region store schema, in one place: the writer builds from it and the validator checks against it.

One HDF5 file per slide holds R regions in the canonical order of :mod:`pathme.wsi.grid`; every dataset has the
region axis first and is chunked one region per chunk, so a region is one read.

Datasets (``D``: the expert's feature dimension; for ``tokens`` the network's token dimension):

* ``coords`` [R, 2] int64: level-0 (x, y) of each region's top-left corner;
* ``valid/L0`` [R, 256] bool and ``valid/L1`` [R, 16] bool: tile validity (an L1 tile is valid when any of its
  16 L0 children is); invalid tiles keep a row in every array but their values mean nothing;
* ``features/<expert>/L0`` [R, 256, D], ``.../L1`` [R, 16, D], ``.../L2`` [R, D] in the store's
  ``feature_dtype`` (float16 by default, float32 on request): one expert's features of every tile at 20x, 5x and
  1.25x; invalid tiles are stored as zeros, which the chunk compression (:data:`COMPRESSION`) reduces to almost
  nothing, so a store costs about the float16 size of its *valid* features.

A token store (:mod:`pathme.store.tokens`, the PatHME stage) has the same attributes, ``coords`` and ``valid``
plus :data:`TOKEN_ATTRS`, no ``features`` (it links its region store instead of copying it), and
``tokens`` [R, 26, D] in ``feature_dtype`` (10 scale prompts, then the 16 L1 tokens in raster order) with
``token_coords`` [R, 26, 2] int64 (level-0 (x, y) of the top-left of what each token stands for: the region for a
prompt, its tile for an L1 token).

Attributes are :data:`REQUIRED_ATTRS` (given by the caller) plus :data:`WRITER_ATTRS`; ``complete`` is set
only when every region is written, just before the file is renamed into place. Version 1 stores (float32,
uncompressed, tokens beside copied features) are refused with the command that rewrites them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pathme.wsi.grid import L0_MPP, L0_SIDE, L1_MPP, L1_SIDE, L2_MPP, REGION_PX, TILE_PX, RegionGrid

SCHEMA_VERSION = 2
FEATURE_DTYPES = ("float16", "float32")  # the `feature_dtype` choices; computed in float32 (bf16 on CUDA) either way
#: the HDF5 filter of feature and token chunks, chosen by measurement (docs/benchmarks.md, scripts/bench_store.py):
#: gzip level 1 after byte shuffling is built into every HDF5 (stores open anywhere with plain h5py), gives ~0.9x
#: the float16 size of valid features and near zero for background tiles; one core decodes ~110 regions/s of
#: distillation reads at UNI + Prov-GigaPath sizes (Zstd, an extra package, read 2.5x faster at the same size)
COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
COMPRESSION_NAME = "gzip-1+shuffle"
N_PROMPTS = 10  # scale prompts in front of the L1 tokens of a region's PatHME output
TOKENS_PER_REGION = N_PROMPTS + L1_SIDE * L1_SIDE


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its name (``{expert}`` for per-expert ones), shape after the region axis, and dtype.

    ``"D"`` in ``trailing`` stands for the feature dimension, which differs per expert.
    """

    name: str
    trailing: tuple[int | str, ...]
    dtype: np.dtype | None  # None: the store's feature_dtype

    def dtype_in(self, feature_dtype: str) -> np.dtype:
        """This dataset's dtype in a store of the given ``feature_dtype``."""
        return self.dtype if self.dtype is not None else np.dtype(feature_dtype)

    def path(self, expert: str = "") -> str:
        """The dataset's path in the store, with ``{expert}`` filled in."""
        return self.name.format(expert=expert)

    def region_shape(self, dim: int | None = None) -> tuple[int, ...]:
        """Shape of one region's entry, with ``"D"`` replaced by ``dim``."""
        return tuple(dim if size == "D" else size for size in self.trailing)

    def shape(self, n_regions: int, dim: int | None = None) -> tuple[int, ...]:
        """Shape of the whole dataset for ``n_regions`` regions, with ``"D"`` replaced by ``dim``."""
        return (n_regions, *self.region_shape(dim))


COORDS = DatasetSpec("coords", (2,), np.dtype(np.int64))
VALID = {
    "L0": DatasetSpec("valid/L0", (L0_SIDE * L0_SIDE,), np.dtype(bool)),
    "L1": DatasetSpec("valid/L1", (L1_SIDE * L1_SIDE,), np.dtype(bool)),
}
FEATURES = {
    "L0": DatasetSpec("features/{expert}/L0", (L0_SIDE * L0_SIDE, "D"), None),
    "L1": DatasetSpec("features/{expert}/L1", (L1_SIDE * L1_SIDE, "D"), None),
    "L2": DatasetSpec("features/{expert}/L2", ("D",), None),
}
FEATURES_GROUP = "features"
TOKENS = DatasetSpec("tokens", (TOKENS_PER_REGION, "D"), None)
TOKEN_COORDS = DatasetSpec("token_coords", (TOKENS_PER_REGION, 2), np.dtype(np.int64))

#: attributes the caller supplies: name -> (kind, meaning); kinds are checked by :mod:`pathme.store.checks`
REQUIRED_ATTRS: dict[str, tuple[str, str]] = {
    "slide_id": ("text", "the manifest's slide id"),
    "patient_id": ("text", "the manifest's patient id (the slide id where none is given)"),
    "slide_path": ("text", "the slide (file, or DICOM WSI series folder) the features came from"),
    "slide_size": ("size", "level-0 (width, height) in pixels"),
    "mpp": ("positive number", "level-0 µm per pixel"),
    "mpp_source": ("text", "where mpp came from (manifest or the slide's metadata field)"),
    "reader_backend": ("text", "the WSI reader that decoded the slide"),
    "slide_digest": ("text", "fingerprint of the slide's file or files (pathme.store.digests.slide_fingerprint)"),
    "config_digest": ("text", "digest of the extraction config"),
    "experts": ("names", "expert names, in the order their features were computed"),
    "expert_dims": ("expert dims", "expert name -> feature dimension D"),
    "expert_weights": ("per expert", "expert name -> where its weights came from"),
    "expert_digests": ("per expert", "expert name -> digest of its weights"),
    "package_version": ("text", "pathme version that wrote the store"),
}

#: attributes a store may carry: name -> meaning (absent or empty when there is nothing to say)
OPTIONAL_ATTRS: dict[str, str] = {
    "reader_note": "why the reader 'auto' passed over cuCIM for this slide",
    "no_region_reason": "why the slide has no region (single channel, no tissue, smaller than one tile, ...)",
    "resampling": "how the 20x tiles were resampled up from a level 0 a little coarser than 0.5 µm/px (the µm/px "
    "tolerance)",
}

#: attributes the writer adds: name -> meaning
WRITER_ATTRS: dict[str, str] = {
    "schema_version": "version of this schema",
    "feature_dtype": "dtype of the stored features and tokens: float16 or float32",
    "compression": "HDF5 filter of the feature and token chunks",
    "tile_px": "tile side in pixels at every scale",
    "region_px": "region side in pixels at l0_mpp",
    "l0_mpp": "µm per pixel of the L0 tiles (20x)",
    "l1_mpp": "µm per pixel of the L1 tiles (5x)",
    "l2_mpp": "µm per pixel of the L2 tile (1.25x)",
    "region_extent": "region side in level-0 pixels of this slide",
    "created_with": "library versions of the writer",
    "complete": "True once every region is written",
}


#: attributes a token store adds to its region store's: name -> meaning
TOKEN_ATTRS: dict[str, str] = {
    "region_store": "the region store the tokens came from, relative to the token store's folder",
    "region_store_digest": "digest of that region store's file when the tokens were computed",
    "teacher_checkpoint": "the distillation checkpoint whose teacher computed the tokens",
    "teacher_digest": "digest of that checkpoint",
    "teacher_expert": "the expert whose features the teacher took (expert A); absent in stores of an older pathme",
}


def geometry_attrs(slide_size: Sequence[int], mpp: float) -> dict[str, int | float]:
    """The tile and region geometry of a slide, as stored (and checked) in its attributes."""
    return {
        "tile_px": TILE_PX,
        "region_px": REGION_PX,
        "l0_mpp": L0_MPP,
        "l1_mpp": L1_MPP,
        "l2_mpp": L2_MPP,
        "region_extent": RegionGrid(int(slide_size[0]), int(slide_size[1]), float(mpp)).region_extent,
    }
