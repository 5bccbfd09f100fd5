"""The region store: one HDF5 file per slide with every expert's features of every region at L0, L1 and L2.

Written atomically (:class:`RegionStoreWriter`), checked completely before reuse (:func:`validate_store`,
:func:`store_is_done`); the layout is in :mod:`pathme.store.schema`: float16 features by default, compressed
chunks of one region, and token stores (:mod:`pathme.store.tokens`) that link their region store.
"""

from pathme.store.digests import config_digest, file_digest
from pathme.store.interop import write_features_h5
from pathme.store.schema import SCHEMA_VERSION
from pathme.store.store_error import StoreError
from pathme.store.validate import read_store_attrs, read_store_summary, store_is_done, validate_store
from pathme.store.writer import RegionStoreWriter

__all__ = [
    "SCHEMA_VERSION",
    "RegionStoreWriter",
    "StoreError",
    "config_digest",
    "file_digest",
    "read_store_attrs",
    "read_store_summary",
    "store_is_done",
    "validate_store",
    "write_features_h5",
]
