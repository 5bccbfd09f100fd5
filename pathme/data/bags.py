"""Slide and patient bags for attention MIL (docs/method.md section 5): the valid tokens of a store with their places.

A bag holds only what stands for tissue: invalid tiles (NaN in the store) never enter, so a model needs no NaN
handling. Every token keeps the level-0 box it covers, so attention maps back onto the slide. Stores are opened
only while a bag is read, never held open, so datasets pickle into DataLoader workers.

Feature sources (parsed once: :class:`~pathme.data.feature_source.FeatureSource`):

* ``"pathme"``: the PatHME region tokens: the 10 scale prompts of every region with tissue, then its valid L1
  tokens (invalid ones are dropped);
* ``"pathme-mean"``: one token per region with tissue, the mean of its valid PatHME tokens (prompts included);
* an expert's name: its L0 (20x) features, valid by ``valid/L0``;
* ``"<expert>@5x"``: its L1 (5x) features, valid by ``valid/L1``; ``"<expert>@1.25x"``: its L2 feature, one per
  region with tissue (the baselines of docs/benchmarks.md "What distillation adds").
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from pathme.data.feature_source import PATHME, PATHME_MEAN, FeatureSource
from pathme.store import StoreError, config_digest, read_store_summary, validate_store
from pathme.store.agreement import agreed_provenance, weights_provenance
from pathme.store.provenance import SlideProvenance
from pathme.store.schema import COORDS, FEATURES, N_PROMPTS, TOKEN_COORDS, TOKENS, VALID
from pathme.store.tokens import is_token_store, linked_region_store
from pathme.store.validate import BLOCK_BYTES
from pathme.wsi.grid import L0_SIDE, L1_SIDE, tile_origins

logger = logging.getLogger(__name__)

REGION_KIND, TILE_KIND = 0, 1

StorePath = str | os.PathLike[str]


@dataclass(frozen=True)
class SlideBag:
    """The valid tokens of one slide, each with the level-0 box it covers."""

    slide_id: str
    patient_id: str
    slide_path: str
    features: np.ndarray  # [N, D] finite, float16 or float32 as stored (float32 for pathme-mean)
    coords: np.ndarray  # [N, 2] int64 level-0 (x, y) top-left of what each token covers
    sizes: np.ndarray  # [N] float64 level-0 side of what each token covers
    kinds: np.ndarray  # [N] int8: REGION_KIND (prompt or region mean) or TILE_KIND


def _sources(has_tokens: bool, experts: Iterable[str]) -> list[str]:
    """PatHME sources first, then experts sorted (one order, whichever attribute listed them)."""
    return ([PATHME, PATHME_MEAN] if has_tokens else []) + sorted(experts)


def available_sources(path: StorePath) -> list[str]:
    """The feature sources a store can give: the PatHME ones when it holds tokens, then every expert."""
    summary = read_store_summary(path)
    return _sources(summary["has_tokens"], summary["experts"])


def _require_source(path: StorePath, attrs: Mapping[str, Any], source: FeatureSource) -> None:
    """A clear error when ``source`` is not in the store, naming what is there instead."""
    sources = _sources(is_token_store(attrs), attrs["experts"])
    if source.tokens:
        if source.name in sources:
            return
        missing = f"dataset '{TOKENS.name}'"
    else:
        if source.expert in attrs["experts"]:
            return
        missing = f"expert '{source.expert}'"
    raise ValueError(
        f"{path}: feature source '{source}' is not in this store ({missing} missing); "
        f"it has: {', '.join(sources) or 'none'} (an expert at 5x or 1.25x: <expert>@5x, <expert>@1.25x)"
    )


def source_provenance(attrs: Mapping[str, Any], source: FeatureSource) -> dict[str, str]:
    """The digests that define the feature space of ``source`` in a store (see
    :func:`~pathme.store.agreement.weights_provenance`): the expert's weights and dimension for an expert source,
    the teacher (and the weights of the expert it took) for the PatHME sources."""
    if source.tokens:
        return weights_provenance(attrs, [], tokens=True)
    return weights_provenance(attrs, [source.expert])


def _keep(file: h5py.File, source: FeatureSource) -> np.ndarray:
    """[R, T] which tokens of each region enter the bag (before any per-region pooling)."""
    level = source.level
    if level == "L0":
        return file[VALID["L0"].name][()]
    valid_l1 = file[VALID["L1"].name][()]
    tissue = valid_l1.any(axis=1, keepdims=True)
    if level is not None:
        return valid_l1 if level == "L1" else tissue
    return np.concatenate([np.repeat(tissue, N_PROMPTS, axis=1), valid_l1], axis=1)


def _count(keep: np.ndarray, source: FeatureSource) -> int:
    return int(keep.any(axis=1).sum() if source.mean else keep.sum())


def _select(data: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return data[keep]


def _region_means(data: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean of the kept tokens of every region that keeps any; NaN of dropped tokens never enters the sum."""
    rows = keep.any(axis=1)
    summed = np.where(keep[..., None], data, 0).sum(axis=1, dtype=np.float64)[rows]
    return (summed / keep[rows].sum(axis=1, keepdims=True)).astype(np.float32)


def _gather(
    dataset: h5py.Dataset, keep: np.ndarray, reduce: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """``reduce`` over blocks of regions: memory stays bounded however large the slide's features are."""
    region_bytes = dataset.dtype.itemsize * math.prod(dataset.shape[1:])
    step = max(1, BLOCK_BYTES // max(1, region_bytes))
    parts = [
        reduce(dataset[start : start + step], keep[start : start + step])
        for start in range(0, len(keep), step)
        if keep[start : start + step].any()
    ]
    return np.concatenate(parts) if parts else np.zeros((0, dataset.shape[-1]), np.float32)


def _pathme_tokens(file: h5py.File, keep: np.ndarray, extent: float) -> tuple[np.ndarray, ...]:
    kinds = np.repeat(np.array([REGION_KIND, TILE_KIND], np.int8), [N_PROMPTS, L1_SIDE * L1_SIDE])
    kinds = np.broadcast_to(kinds, keep.shape)[keep]
    sizes = np.where(kinds == REGION_KIND, extent, extent / L1_SIDE)
    return _gather(file[TOKENS.name], keep, _select), file[TOKEN_COORDS.name][()][keep], sizes, kinds


def _mean_tokens(file: h5py.File, keep: np.ndarray, extent: float) -> tuple[np.ndarray, ...]:
    coords = file[COORDS.name][()][keep.any(axis=1)]
    return _gather(file[TOKENS.name], keep, _region_means), coords, np.full(len(coords), extent), _kinds(coords)


def _select_regions(data: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return data[keep[:, 0]]


def _expert_tokens(file: h5py.File, keep: np.ndarray, extent: float, source: FeatureSource) -> tuple[np.ndarray, ...]:
    """An expert's features at the source's scale: every valid tile of a region at 20x or 5x, or the region."""
    expert, level = source.expert, source.level
    side = {"L0": L0_SIDE, "L1": L1_SIDE, "L2": 1}[level]
    coords = np.rint(tile_origins(file[COORDS.name][()], extent, side)).astype(np.int64)[keep]
    features = _gather(file[FEATURES[level].path(expert)], keep, _select_regions if level == "L2" else _select)
    return (
        features,
        coords,
        np.full(len(coords), extent / side),
        _kinds(coords, REGION_KIND if side == 1 else TILE_KIND),
    )


def _kinds(coords: np.ndarray, kind: int = REGION_KIND) -> np.ndarray:
    return np.full(len(coords), kind, np.int8)


def _load_bag(path: StorePath, attrs: Mapping[str, Any], source: FeatureSource) -> SlideBag:
    """The bag of a store already validated (``attrs`` from :func:`validate_store`); an expert's features of a
    token store come from the region store it links."""
    provenance = SlideProvenance.from_attrs(attrs)
    _require_source(path, attrs, source)
    with h5py.File(path if source.tokens else linked_region_store(path, attrs), "r") as file:
        keep, extent = _keep(file, source), provenance.region_extent
        if source.mean:
            features, coords, sizes, kinds = _mean_tokens(file, keep, extent)
        elif source.tokens:
            features, coords, sizes, kinds = _pathme_tokens(file, keep, extent)
        else:
            features, coords, sizes, kinds = _expert_tokens(file, keep, extent, source)
    if not np.isfinite(features).all():  # cheap, and the one promise every model relies on
        raise StoreError(f"{path}: non-finite '{source}' features in valid tiles")
    return SlideBag(
        slide_id=provenance.slide_id,
        patient_id=provenance.patient_id,
        slide_path=str(provenance.slide_path),
        features=np.ascontiguousarray(features),
        coords=coords.astype(np.int64),
        sizes=sizes.astype(np.float64),
        kinds=kinds.astype(np.int8),
    )


def default_cache_bytes() -> int:
    """The default bag cache: an eighth of this machine's physical memory (3 GiB on a 24 GiB machine)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8


def _bag_bytes(bags: Sequence[SlideBag]) -> int:
    return sum(bag.features.nbytes + bag.coords.nbytes + bag.sizes.nbytes + bag.kinds.nbytes for bag in bags)


def read_slide_bag(path: StorePath, feature_source: str | FeatureSource) -> SlideBag:
    """The bag of one store, validated first (StoreError when broken, ValueError when the source is absent or
    unknown)."""
    return _load_bag(path, validate_store(path), FeatureSource.parse(feature_source))


class BagIndex:
    """Every store of a folder, read lazily: which slides belong to which patient.

    The stores must agree on the weights behind the feature source (:attr:`feature_provenance`; ValueError naming
    the stores of each digest otherwise); :meth:`check_same_slides` finds one slide file under several slide ids.

    Patient bags read are kept in a least-recently-used cache of at most ``cache_bytes`` (features as stored,
    float16 by default; :func:`default_cache_bytes` when None; 0 reads the stores every time), so memory stays
    bounded whatever the cohort's size, and a cohort that fits is read once for all epochs and folds.
    """

    def __init__(
        self, features_dir: StorePath, feature_source: str | FeatureSource, cache_bytes: int | str | None = None
    ) -> None:
        self.features_dir, self.feature_source = Path(features_dir), FeatureSource.parse(feature_source)
        self.cache_bytes = default_cache_bytes() if cache_bytes is None else int(cache_bytes)
        if self.cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {self.cache_bytes}")
        self._cache: OrderedDict[str, list[SlideBag]] = OrderedDict()
        self._cached_bytes = 0
        paths = sorted(self.features_dir.glob("*.h5"))
        if not paths:
            raise FileNotFoundError(f"no stores (*.h5) in {self.features_dir}")
        self._stores: dict[str, tuple[Path, dict[str, Any]]] = {}
        self._provenance: dict[str, SlideProvenance] = {}
        for path in paths:
            attrs = validate_store(path)
            _require_source(path, attrs, self.feature_source)
            provenance = SlideProvenance.from_attrs(attrs)
            if provenance.slide_id in self._stores:
                raise ValueError(
                    f"slide '{provenance.slide_id}' is in two stores: {self._stores[provenance.slide_id][0]} and {path}"
                )
            self._stores[provenance.slide_id] = (path, attrs)
            self._provenance[provenance.slide_id] = provenance
        #: what defines the feature space, shared by every store (a fold model keeps it: see MILPredict)
        self.feature_provenance: dict[str, str] = agreed_provenance(
            {path: source_provenance(attrs, self.feature_source) for path, attrs in self._stores.values()},
            self.features_dir,
        )
        self.slide_patients: dict[str, str] = {slide: p.patient_id for slide, p in self._provenance.items()}

    def check_same_slides(self, refuse_across_patients: bool) -> None:
        """Stores of one slide file (the same ``slide_digest``) under several slide ids: a warning, or a ValueError
        naming them when they are in different patients and ``refuse_across_patients`` (cross-validation: the slide
        would be in a training and a test split at once)."""
        by_digest: dict[str, list[SlideProvenance]] = {}
        for provenance in self._provenance.values():
            by_digest.setdefault(provenance.slide_digest, []).append(provenance)
        for digest, same in by_digest.items():
            if len(same) < 2:
                continue
            slides = ", ".join(
                f"'{p.slide_id}' (patient '{p.patient_id}', {self._stores[p.slide_id][0].name})" for p in same
            )
            where = f"stores in {self.features_dir} are of one slide file (slide_digest {digest}): {slides}"
            one_patient = len({p.patient_id for p in same}) == 1
            if not one_patient and refuse_across_patients:
                raise ValueError(
                    f"{where}; one slide in two patients leaks between the folds: remove the duplicate store(s), or "
                    "correct the manifest (one slide_id and patient_id per slide file) and extract again"
                )
            twice = "its tokens count twice in the patient's bag" if one_patient else "it is predicted for each patient"
            logger.warning("%s; %s: remove the duplicate store(s)", where, twice)

    def patient_slides(self, patient_id: str) -> list[str]:
        """The patient's slide ids, sorted (the order of its bag)."""
        slides = sorted(slide for slide, patient in self.slide_patients.items() if patient == patient_id)
        if not slides:
            raise KeyError(f"patient '{patient_id}' has no store in {self.features_dir}")
        return slides

    def token_counts(self) -> dict[str, int]:
        """Patient id -> valid tokens over its slides; only validity flags are read, so labels are checked cheaply."""
        counts = dict.fromkeys(self.slide_patients.values(), 0)
        for slide, (path, _) in self._stores.items():
            with h5py.File(path, "r") as file:
                counts[self.slide_patients[slide]] += _count(_keep(file, self.feature_source), self.feature_source)
        return counts

    def provenance(self, slide_id: str) -> SlideProvenance:
        """The slide behind a store: its file, reader and µm/px as at extraction (for heatmaps)."""
        return self._provenance[slide_id]

    def store_digest(self, slide_id: str) -> str:
        """Digest of a slide's store attributes, which name every input of its content (slide, weights, config,
        teacher): equal digests, equal features."""
        return config_digest(self._stores[slide_id][1])

    def empty_reasons(self, counts: Mapping[str, int]) -> dict[str, str]:
        """Patient id -> why it has no token, for the patients ``counts`` (:meth:`token_counts`) gives none: each
        slide's reason from its store (single channel, no tissue, ...)."""
        reasons = {}
        for patient in (patient for patient, count in counts.items() if count == 0):
            slides = self.patient_slides(patient)
            why = [f"slide {s}: {self._provenance[s].no_region_reason or 'no valid tile'}" for s in slides]
            reasons[patient] = "; ".join(why)
        return reasons

    def feature_dim(self) -> int:
        """Dimension of this feature source's tokens, from the first store (no features read)."""
        path, attrs = next(iter(self._stores.values()))
        if not self.feature_source.tokens:
            return int(attrs["expert_dims"][self.feature_source.expert])
        with h5py.File(path, "r") as file:
            return int(file[TOKENS.name].shape[-1])

    def patient_bag(self, patient_id: str) -> list[SlideBag]:
        """The bags of the patient's slides, in slide id order (from the cache when there)."""
        bags = self._cache.get(patient_id)
        if bags is not None:
            self._cache.move_to_end(patient_id)
            return bags
        bags = [_load_bag(*self._stores[slide], self.feature_source) for slide in self.patient_slides(patient_id)]
        size = _bag_bytes(bags)
        if size <= self.cache_bytes:
            while self._cached_bytes + size > self.cache_bytes:
                self._cached_bytes -= _bag_bytes(self._cache.popitem(last=False)[1])
            self._cache[patient_id] = bags
            self._cached_bytes += size
        return bags


def _target_tensor(value: float | int) -> torch.Tensor:
    integer = isinstance(value, bool | int | np.integer | np.bool_)
    return torch.tensor(value, dtype=torch.long if integer else torch.float32)


def _patient_item(patient_id: str, bags: Sequence[SlideBag]) -> dict[str, Any]:
    """The union of a patient's slide bags (features as float32), each token tagged with the index of its slide."""
    return {
        "features": torch.from_numpy(np.concatenate([bag.features for bag in bags], dtype=np.float32)),
        "patient_id": patient_id,
        "slide_index": torch.cat([torch.full((len(bag.features),), i, dtype=torch.long) for i, bag in enumerate(bags)]),
        "slide_ids": [bag.slide_id for bag in bags],
        "coords": torch.from_numpy(np.concatenate([bag.coords for bag in bags])),
        "sizes": torch.from_numpy(np.concatenate([bag.sizes for bag in bags])),
        "kinds": torch.from_numpy(np.concatenate([bag.kinds for bag in bags])),
    }


class BagDataset(Dataset):
    """One item per patient: the union of its slides' bags (concatenated in slide_id order), read through the
    index's bounded cache (:class:`BagIndex`)."""

    def __init__(
        self,
        index: BagIndex,
        patients: Sequence[str],
        targets: Mapping[str, dict[str, float | int]] | None = None,
    ) -> None:
        known = set(index.slide_patients.values())
        unknown = [patient for patient in patients if patient not in known]
        if unknown:
            raise ValueError(f"patient(s) without a store in {index.features_dir}: {', '.join(unknown[:10])}")
        unlabelled = [patient for patient in patients if targets is not None and patient not in targets]
        if unlabelled:
            raise ValueError(f"patient(s) without targets: {', '.join(unlabelled[:10])}")
        self.index, self.patients, self.targets = index, list(patients), targets

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, position: int) -> dict[str, Any]:
        patient = self.patients[position]
        item = _patient_item(patient, self.index.patient_bag(patient))
        targets = self.targets[patient] if self.targets is not None else {}
        return item | {key: _target_tensor(value) for key, value in targets.items()}


def collate_bags(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Bags of different sizes as one batch: features zero-padded to [B, Nmax, D] with ``mask`` True on real
    tokens, 0-d targets stacked, and per-bag metadata as lists."""
    lengths = [len(item["features"]) for item in items]
    first = items[0]["features"]
    features = first.new_zeros((len(items), max(lengths), first.shape[-1]))
    mask = torch.zeros(features.shape[:2], dtype=torch.bool)
    for row, (item, length) in enumerate(zip(items, lengths, strict=True)):
        features[row, :length] = item["features"]
        mask[row, :length] = True
    batch: dict[str, Any] = {"features": features, "mask": mask}
    for key in items[0]:
        if key == "features":
            continue
        values = [item[key] for item in items]
        stack = isinstance(values[0], torch.Tensor) and values[0].ndim == 0
        batch[key] = torch.stack(values) if stack else values
    return batch
