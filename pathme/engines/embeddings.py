"""One embedding per slide and per patient, for linear probes and retrieval on features already extracted.

``embeddings.h5`` (HDF5, read with h5py; ``docs/mil_models.md`` shows the pandas lines) holds two groups,
``slides`` and ``patients``, each with

* ``ids`` [n] (slide or patient ids, UTF-8), ``tokens`` [n] (the valid tokens behind each row; 0: the row is NaN),
* ``mean`` [n, D] float32: the mean of the bag's tokens or features (a patient's over all its slides' tokens),
* with fold models, ``fold_<k>`` [n, H] float32: fold model k's pooled bag embedding (attention-pooled for ABMIL
  and CLAM-SB, the class token for TransMIL, ...), of the slide's bag alone or the patient's whole bag,

and ``slides`` also ``patient_ids`` and ``slide_digests`` (each file's fingerprint at extraction). The file's
attributes say the feature source, the weights behind the features, the pathme version and, per fold model, its
aggregator and file digest. Rows are in patient id order, a patient's slides in slide id order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from pathme import __version__
from pathme.data.bags import BagIndex, SlideBag
from pathme.data.feature_source import PATHME
from pathme.device import pick_device
from pathme.engines.mil import MILModelConfig, fold_model_from, read_fold_model
from pathme.engines.mil_predict import check_models_fit, fold_models
from pathme.store.atomic import atomic_h5
from pathme.store.digests import file_digest

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.h5"
TEXT_COLUMNS = ("ids", "patient_ids", "slide_digests")


def _mean(features: np.ndarray, dim: int) -> np.ndarray:
    return features.astype(np.float64).mean(axis=0).astype(np.float32) if len(features) else np.full(dim, np.nan)


@torch.no_grad()
def _pooled(model: torch.nn.Module, features: np.ndarray, device: torch.device) -> np.ndarray:
    """A fold model's bag embedding [H] of ``features`` [N, D] (NaN [H] for an empty bag)."""
    if not len(features):
        width = model(torch.zeros(1, features.shape[1], device=device))["embedding"].shape[-1]
        return np.full(width, np.nan, np.float32)
    bag = torch.from_numpy(features.astype(np.float32)).to(device)
    return model(bag)["embedding"][0].float().cpu().numpy()


def write_embeddings(
    features_dir: str | Path,
    output_dir: str | Path,
    feature_source: str | None = None,
    models_dir: str | Path | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Write ``output_dir/embeddings.h5`` (see the module docstring) for every store of ``features_dir``.

    feature_source: as ``pathme mil``'s (default ``pathme``, or the fold models' source); models_dir: a MIL run's
    output folder, whose fold models add their pooled embeddings. ValueError when the fold models were trained on
    another feature source or on features of other weights than the stores hold; FileNotFoundError when
    ``models_dir`` has no fold models.
    """
    device = pick_device(device)
    loaded, digests = [], []
    if models_dir is not None:
        paths = fold_models(models_dir)
        payloads = [read_fold_model(path, device) for path in paths]
        loaded = [fold_model_from(payload, device) for payload in payloads]
        sources = {source for _, _, source in loaded}
        if len(sources) > 1 or (feature_source is not None and feature_source not in sources):
            raise ValueError(
                f"the fold models in {models_dir} take {', '.join(sorted(sources))} features, not {feature_source!r}: "
                "give --feature-source as the models' or leave it out"
            )
        feature_source = sources.pop()
        digests = [
            (path.parent.name, MILModelConfig.from_saved(payload["model_config"]).model, file_digest(path))
            for path, payload in zip(paths, payloads, strict=True)
        ]
    index = BagIndex(features_dir, feature_source or PATHME, cache_bytes=0)
    if loaded:
        check_models_fit(paths, payloads, index)
    dim = index.feature_dim()
    rows: dict[str, dict[str, list[Any]]] = {
        level: {"ids": [], "tokens": [], "mean": [], **{name: [] for name, _, _ in digests}}
        for level in ("slides", "patients")
    }
    rows["slides"] |= {"patient_ids": [], "slide_digests": []}
    for patient in sorted(set(index.slide_patients.values())):
        bags: list[SlideBag] = index.patient_bag(patient)
        union = np.concatenate([bag.features for bag in bags])
        for level, key, features in [
            *(("slides", bag.slide_id, bag.features) for bag in bags),
            ("patients", patient, union),
        ]:
            rows[level]["ids"].append(key)
            rows[level]["tokens"].append(len(features))
            rows[level]["mean"].append(_mean(features, dim))
            for (name, _, _), (model, _, _) in zip(digests, loaded, strict=True):
                rows[level][name].append(_pooled(model, features, device))
        for bag in bags:
            rows["slides"]["patient_ids"].append(patient)
            rows["slides"]["slide_digests"].append(index.provenance(bag.slide_id).slide_digest)
    path = Path(output_dir) / EMBEDDINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = h5py.string_dtype("utf-8")
    with atomic_h5(path) as file:
        file.attrs["feature_source"] = str(index.feature_source)
        file.attrs["feature_provenance"] = json.dumps(index.feature_provenance, sort_keys=True)
        file.attrs["pathme_version"] = __version__
        file.attrs["features_dir"] = str(index.features_dir)
        file.attrs["fold_models"] = json.dumps(
            {name: {"model": model, "file_digest": digest} for name, model, digest in digests}, sort_keys=True
        )
        for level, columns in rows.items():
            group = file.create_group(level)
            for name, values in columns.items():
                if name in TEXT_COLUMNS:
                    group.create_dataset(name, data=np.array(values, dtype=object), dtype=text)
                elif name == "tokens":
                    group.create_dataset(name, data=np.array(values, dtype=np.int64))
                else:
                    group.create_dataset(name, data=np.stack(values).astype(np.float32))
    counts = len(rows["slides"]["ids"]), len(rows["patients"]["ids"])
    logger.info("embeddings of %d slides and %d patients in %s", *counts, path)
    return path
