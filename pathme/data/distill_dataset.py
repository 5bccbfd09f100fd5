"""Regions of validated region stores, read lazily, for PatHME distillation.

Why lazy and per process: a cohort's features do not fit in memory, and an h5py file handle must not cross a
fork, so each DataLoader worker opens its own handles on first use. Why a patient list: distillation must be
able to leave out a fold's test patients (docs/method.md section 6).
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import h5py
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pathme.store import StoreError, validate_store
from pathme.store.agreement import agreed_provenance, weights_provenance
from pathme.store.provenance import SlideProvenance
from pathme.store.schema import FEATURES, VALID

logger = logging.getLogger(__name__)


def read_patients(value: str | os.PathLike[str] | Sequence[str] | None) -> list[str] | None:
    """The patients to keep: None (all), a list of ids, or a CSV path with a ``patient_id`` column."""
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no patient CSV there")
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            if "patient_id" not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no 'patient_id' column (columns: {reader.fieldnames}); add one")
            ids = [row["patient_id"].strip() for row in reader if (row["patient_id"] or "").strip()]
        if not ids:
            raise ValueError(f"{path}: column 'patient_id' lists no patient")
    else:
        ids = [str(item) for item in value]
    return list(dict.fromkeys(ids))


class RegionStoreDataset(Dataset):
    """Lazily reads regions of validated region stores (h5py files opened per worker process, not in __init__).

    The stores must agree on the weights (and dimension) of experts A and B (:attr:`expert_provenance`): features
    of one expert from two weights are refused with the stores of each named, never distilled together.

    Item ``i`` is one region with at least one valid L0 tile: ``l0`` [256, A] and ``l1`` [16, A] (expert A),
    ``l0_valid`` [256], ``l1_valid`` [16], ``kd`` [256, B] (expert B's L0 features, the KD target) and ``index``
    (``i``); features of invalid tiles are zeros. ``region_ids[i]`` is (slide_id, region index in its store).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike[str],
        expert_a: str,
        expert_b: str,
        patients: Sequence[str] | None = None,
    ):
        if isinstance(patients, str):
            raise TypeError("patients must be a list of ids; use read_patients() for a CSV path")
        self.dataset_dir = Path(dataset_dir)
        self.expert_a, self.expert_b = expert_a, expert_b
        paths = sorted(self.dataset_dir.glob("*.h5"))
        if not paths:
            raise FileNotFoundError(f"{self.dataset_dir}: no region stores (*.h5)")
        stores = [(path, validate_store(path, experts=[expert_a, expert_b])) for path in paths]
        if patients is not None:
            stores = self._keep_patients(stores, patients)
        #: the weights digests and dimensions of experts A and B, the same in every store (ValueError otherwise)
        self.expert_provenance: dict[str, str] = agreed_provenance(
            {path: weights_provenance(attrs, [expert_a, expert_b]) for path, attrs in stores}, self.dataset_dir
        )
        dims = stores[0][1]["expert_dims"]
        self.expert_a_dim: int = dims[expert_a]
        self.expert_b_dim: int = dims[expert_b]
        self.paths: list[Path] = []
        self.region_ids: list[tuple[str, int]] = []
        self._items: list[tuple[int, int]] = []  # (store, region) per item
        skipped = 0
        for path, attrs in stores:
            with h5py.File(path, "r") as file:
                has_tissue = file[VALID["L0"].name][()].any(axis=1)
            store = len(self.paths)
            self.paths.append(path)
            regions = has_tissue.nonzero()[0].tolist()
            self._items += [(store, region) for region in regions]
            slide_id = SlideProvenance.from_attrs(attrs).slide_id
            self.region_ids += [(slide_id, region) for region in regions]
            skipped += len(has_tissue) - len(regions)
        if not self._items:
            raise ValueError(f"{self.dataset_dir}: the kept stores hold no region with a valid L0 tile")
        logger.info(
            "%d regions from %d of %d stores in %s (%d regions without a valid L0 tile skipped)",
            len(self._items),
            len(self.paths),
            len(paths),
            self.dataset_dir,
            skipped,
        )
        self._files: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def _keep_patients(
        self, stores: list[tuple[Path, dict[str, Any]]], patients: Sequence[str]
    ) -> list[tuple[Path, dict[str, Any]]]:
        wanted = set(patients)
        patient = {path: SlideProvenance.from_attrs(attrs).patient_id for path, attrs in stores}
        kept = [(path, attrs) for path, attrs in stores if patient[path] in wanted]
        if not kept:
            available = sorted(set(patient.values()))
            raise ValueError(
                f"{self.dataset_dir}: no store belongs to the {len(wanted)} requested patient(s) "
                f"(e.g. {sorted(wanted)[:5]}); the stores hold patients {available[:10]}"
            )
        absent = wanted - {patient[path] for path, _ in kept}
        if absent:
            logger.warning(
                "%d requested patient(s) have no store in %s, e.g. %s",
                len(absent),
                self.dataset_dir,
                sorted(absent)[:5],
            )
        return kept

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open files (spawned DataLoader workers open their own)."""
        return {**self.__dict__, "_files": {}}

    def _file(self, store: int) -> h5py.File:
        if self._pid != os.getpid():  # a forked worker: handles inherited from the parent must not be used
            self._files, self._pid = {}, os.getpid()
        if store not in self._files:
            self._files[store] = h5py.File(self.paths[store], "r")
        return self._files[store]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        store, region = self._items[index]
        try:
            return self._read(store, region, index)
        except OSError as error:  # h5py's read errors (a checksum or filter failure) name neither file nor region
            path = self.paths[store]
            raise StoreError(f"{path}: region {region} cannot be read ({error}); extract the slide again") from error

    def _read(self, store: int, region: int, index: int) -> dict[str, Tensor]:
        file = self._file(store)
        valid_l0 = torch.from_numpy(file[VALID["L0"].name][region])
        valid_l1 = torch.from_numpy(file[VALID["L1"].name][region])

        def features(expert: str, level: str) -> Tensor:
            """float32 (stored float16 or float32); invalid tiles are zeros in the store."""
            return torch.from_numpy(file[FEATURES[level].path(expert)][region]).float()

        return {
            "l0": features(self.expert_a, "L0"),
            "l1": features(self.expert_a, "L1"),
            "l0_valid": valid_l0,
            "l1_valid": valid_l1,
            "kd": features(self.expert_b, "L0"),
            "index": torch.tensor(index, dtype=torch.long),
        }

    def feature_statistics(self, indices: Sequence[int], min_std: float = 1e-3) -> tuple[Tensor, Tensor]:
        """Mean and std [A] of expert A's features over the valid L0 and L1 tiles of items ``indices``.

        Why: the network standardises its input tokens with them (:meth:`PatHME.set_input_statistics`); taken from
        the training items only, so held-out slides do not leak into training. ``min_std`` keeps constant
        dimensions (dead ReLU units) finite.
        """
        if not indices:
            raise ValueError("feature statistics need at least one item")
        total = torch.zeros(self.expert_a_dim, dtype=torch.float64)
        squares = torch.zeros_like(total)
        count = 0
        for index in indices:  # region by region: a whole slide's features need not fit in memory
            store, region = self._items[index]
            file = self._file(store)
            for level in ("L0", "L1"):
                valid = torch.from_numpy(file[VALID[level].name][region])
                values = torch.from_numpy(file[FEATURES[level].path(self.expert_a)][region])[valid].double()
                total += values.sum(dim=0)
                squares += values.square().sum(dim=0)
                count += values.shape[0]
        mean = total / count
        std = (squares / count - mean.square()).clamp(min=0).sqrt().clamp(min=min_std)
        return mean.float(), std.float()

    def close(self) -> None:
        """Close this process's open store files."""
        for file in self._files.values():
            file.close()
        self._files = {}


class HasRegionIds(Protocol):
    """Anything that lists its items as (slide id, region index) pairs, one per item, in item order."""

    region_ids: list[tuple[str, int]]


def split_holdout(dataset: HasRegionIds, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) item indices, holding out about ``fraction`` of the slides whole, chosen by ``seed``.

    Whole slides, so the validation loss is not measured on neighbours of training regions; with two or more
    slides and ``fraction > 0`` each side gets at least one slide.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must lie in [0, 1), got {fraction}")
    slides = sorted({slide for slide, _ in dataset.region_ids})
    count = 0
    if fraction > 0 and len(slides) >= 2:
        count = min(max(round(fraction * len(slides)), 1), len(slides) - 1)
    elif fraction > 0:
        logger.warning("only one slide: nothing held out for validation")
    held = set(random.Random(seed).sample(slides, count))
    train = [index for index, (slide, _) in enumerate(dataset.region_ids) if slide not in held]
    holdout = [index for index, (slide, _) in enumerate(dataset.region_ids) if slide in held]
    return train, holdout
