"""Feature extraction over a cohort: resumable, one bad slide never stops the others, slides sharded over ranks.

A slide is skipped only when its region store opens and validates against the schema and the digests of its
inputs (slide fingerprint, expert weights, extraction config); anything else is redone from scratch, and the
store appears only when complete (written to a temporary name, then renamed).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import h5py
import ignite.distributed as idist
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from filelock import Timeout
from tqdm import tqdm

import pathme
from pathme.console import announce
from pathme.device import pick_device
from pathme.encoders import Expert, build_expert
from pathme.extract.engine import encode_regions
from pathme.extract.loader import RegionDataset, SlideSource, region_loader
from pathme.store import RegionStoreWriter, config_digest, read_store_summary, store_is_done, write_features_h5
from pathme.store.atomic import write_csv_atomic, writer_lock
from pathme.store.digests import slide_fingerprint
from pathme.store.interop import interop_attrs
from pathme.store.provenance import read_provenance, slide_attrs
from pathme.store.schema import COORDS, FEATURE_DTYPES, FEATURES, VALID
from pathme.wsi.backends import AUTO
from pathme.wsi.grid import L0_MPP, L0_SIDE, L1_MPP, L2_MPP, REGION_PX, TILE_PX, tile_origins
from pathme.wsi.manifest import ManifestRow, read_manifest
from pathme.wsi.mpp import MPP_TOLERANCE
from pathme.wsi.reading import refuse_too_coarse
from pathme.wsi.regions import plan_regions
from pathme.wsi.slide_error import SlideError, failure_text
from pathme.wsi.tissue import TissueConfig

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["slide_id", "status", "reader_backend", "regions", "tiles", "seconds", "store", "note", "error"]


@dataclass
class CohortExtractor:
    """Extract every slide of ``manifest`` into ``output_dir/<slide_id>.h5`` and write ``run_summary.csv``."""

    manifest: str | Path
    output_dir: str | Path
    experts: Sequence[str]
    weights: Mapping[str, str] = field(default_factory=dict)
    reader_backend: str = AUTO
    batch_size: int = 64
    num_workers: int = 1
    device: torch.device | str | None = None
    tissue: TissueConfig = field(default_factory=TissueConfig)
    interop_h5: bool = False
    seed: int = 0
    feature_dtype: str = "float16"
    mpp_tolerance: float = MPP_TOLERANCE  # how much coarser than 0.5 µm/px a level 0 may be and be read at 20x

    def __post_init__(self) -> None:
        if not self.experts:
            raise ValueError("experts: give at least one expert name (see `pathme experts`)")
        stray = sorted(set(self.weights) - set(self.experts))
        if stray:
            raise ValueError(
                f"weights: {stray} name(s) no expert of this run {list(self.experts)}; give weights as "
                "<expert>=<file, folder, hub or random> for the experts listed in experts"
            )
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype must be one of {', '.join(FEATURE_DTYPES)}, got {self.feature_dtype!r}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {self.batch_size}, {self.num_workers}")
        self.output_dir = Path(self.output_dir)
        self.device = pick_device(self.device)

    def config(self) -> dict:
        """Everything that changes a store's content; its digest decides whether a store can be reused."""
        return {
            "schema": "pathme.store",
            "experts": list(self.experts),
            "reader_backend": self.reader_backend,
            "tissue": asdict(self.tissue),
            "geometry": {"tile_px": TILE_PX, "region_px": REGION_PX, "mpp": [L0_MPP, L1_MPP, L2_MPP]},
            "seed": self.seed,
            "feature_dtype": self.feature_dtype,
        }

    def run(self) -> pd.DataFrame:
        """Extract this rank's share of the slides; rank 0 returns (and writes) the summary of all ranks.

        Each slide is extracted under its store's :func:`~pathme.store.atomic.writer_lock`: a slide that another run
        on the same output folder is extracting is put off to the end of this run's list and then waited for, and
        its store is checked like any other (skipped when valid, redone when that run failed). So two runs encode
        each slide once between them, and each run's summary lists every slide."""
        rank, world = idist.get_rank(), idist.get_world_size()
        entries = read_manifest(self.manifest)[rank::world]
        experts = {
            name: build_expert(name, self.weights.get(name), device=self.device, seed=self.seed)
            for name in self.experts
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)  # after the experts: a refused one leaves no folder
        records: dict[int, dict] = {}
        queue = deque((position, False) for position in range(len(entries)))  # (manifest position, wait for it)
        desc = f"extract (rank {rank})" if world > 1 else "extract"
        with tqdm(total=len(entries), desc=desc, unit="slide", disable=None) as slides:
            while queue:
                position, wait = queue.popleft()
                entry = entries[position]
                record = self._extract_locked(entry, experts, wait)
                if record is None:
                    logger.info("slide %s: another run is extracting it; put off to the end", entry.slide_id)
                    queue.append((position, True))
                    continue
                records[position] = record
                slides.update()
                slides.set_postfix(status=record["status"], tiles_per_s=_rate(record))
        return self._summarise([records[position] for position in range(len(entries))], rank, world)

    def _store(self, entry: ManifestRow) -> Path:
        return self.output_dir / f"{entry.slide_id}.h5"

    def _extract_locked(self, entry: ManifestRow, experts: Mapping[str, Expert], wait: bool) -> dict | None:
        """:meth:`_extract_or_skip` holding the store's writer lock; None when another run holds it and ``wait`` is
        False. A lock that cannot be taken at all (no room for its empty file) is done without: it only saves work."""
        lock = writer_lock(self._store(entry))
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if not wait:
                    return None
                announce(logger, "slide %s: waiting for the other run that is extracting it", entry.slide_id)
                lock.acquire()
        except OSError as error:  # (filelock's Timeout is one too, but is handled above)
            logger.warning("slide %s: extracted without a lock, which cannot be taken (%s)", entry.slide_id, error)
            return self._extract_or_skip(entry, experts)
        try:
            return self._extract_or_skip(entry, experts)
        finally:
            lock.release()

    def _extract_or_skip(self, entry: ManifestRow, experts: Mapping[str, Expert]) -> dict:
        store = self._store(entry)
        record = dict.fromkeys(SUMMARY_COLUMNS, "") | {"slide_id": entry.slide_id, "store": str(store)}
        start = time.perf_counter()
        try:
            expected = self._expected(entry, experts)
            if store_is_done(store, expected=expected, experts=list(experts)):
                # the tolerance is not in the config digest (changing it must not redo every store), so a store
                # read under a looser one is held to this run's
                refuse_too_coarse(entry.slide_id, read_provenance(store).mpp, L0_MPP, self.mpp_tolerance)
                record |= {"status": "skipped (valid store)", "regions": read_store_summary(store)["n_regions"]}
            else:
                regions, tiles = self._extract(entry, experts, store, expected)
                record |= {"status": "done", "regions": regions, "tiles": tiles}
            provenance = read_provenance(store)
            note = "; ".join(filter(None, (provenance.reader_note, provenance.resampling)))
            record |= {"reader_backend": provenance.reader_backend, "note": note}
            if provenance.no_region_reason:  # a store that says why it is empty, but a slide with nothing to use
                logger.error("slide %s failed: %s", entry.slide_id, provenance.no_region_reason)
                record |= {"status": "failed", "error": provenance.no_region_reason}
            elif self.interop_h5:
                self._write_interop(store, entry.slide_id, list(experts))
        except Exception as error:  # one slide's failure, whatever it is, is its row; the others go on
            record |= {"status": "failed", "error": failure_text(error, entry.slide_id, logger)}
            record["store"] = str(store) if store.is_file() else ""  # a store that is there, valid or not
        record["seconds"] = round(time.perf_counter() - start, 3)
        return record

    def _expected(self, entry: ManifestRow, experts: Mapping[str, Expert]) -> dict:
        if not entry.path.is_file():
            raise SlideError(f"slide {entry.slide_id}: file not found: {entry.path}")
        return {
            "slide_digest": slide_fingerprint(entry.path),
            "config_digest": config_digest(self.config() | {"mpp_override": entry.mpp}),
            "expert_digests": {name: expert.weights_digest for name, expert in experts.items()},
        }

    def _extract(
        self, entry: ManifestRow, experts: Mapping[str, Expert], store: Path, expected: dict
    ) -> tuple[int, int]:
        source = SlideSource(entry.path, entry.slide_id, self.reader_backend, entry.mpp, self.mpp_tolerance)
        slide = source.open()
        source = replace(source, backend=slide.backend)  # workers: the reader that worked
        plan = plan_regions(slide, self.tissue)
        attrs = (
            expected
            | slide_attrs(slide, entry.patient_id, plan.reason, plan.resampling)
            | {
                "experts": list(experts),
                "expert_dims": {name: expert.dim for name, expert in experts.items()},
                "expert_weights": {name: expert.weights_source for name, expert in experts.items()},
                "package_version": pathme.__version__,
            }
        )
        loader = region_loader(
            RegionDataset(source, plan.regions), self.num_workers, pin_memory=self.device.type == "cuda"
        )
        dims = {name: expert.dim for name, expert in experts.items()}
        with (
            RegionStoreWriter(
                store, attrs=attrs, n_regions=len(plan.regions), experts=dims, feature_dtype=self.feature_dtype
            ) as writer,
            tqdm(total=len(plan.regions), desc=entry.slide_id, unit="region", leave=False, disable=None) as bar,
        ):
            tiles = encode_regions(iter(loader), plan.regions, experts, writer, self.batch_size, self.device, bar)
            writer.commit()
        logger.info("slide %s: %d regions, %d tiles encoded -> %s", entry.slide_id, len(plan.regions), tiles, store)
        return len(plan.regions), tiles

    def _write_interop(self, store: Path, slide_id: str, experts: list[str]) -> None:
        """CLAM/TRIDENT-style files (`coords` [N, 2], `features` [N, D]) of the valid L0 tiles, from the store, with
        the geometry those tools read on `coords` (:func:`interop_attrs`)."""
        provenance = read_provenance(store)
        with h5py.File(store, "r") as handle:
            origins = handle[COORDS.name][:]
            valid = handle[VALID["L0"].name][:]
            tile_xy = np.rint(tile_origins(origins, provenance.region_extent, L0_SIDE)).astype(np.int64)
            for name in experts:
                target = self.output_dir / "h5_files" / name / f"{slide_id}.h5"
                features = handle[FEATURES["L0"].path(name)][:].astype(np.float32)  # as CLAM/TRIDENT write them
                attrs = interop_attrs(provenance) | {"expert": name}
                write_features_h5(target, tile_xy[valid], features[valid], attrs=attrs)

    def _summarise(self, records: list[dict], rank: int, world: int) -> pd.DataFrame:
        part = pd.DataFrame(records, columns=SUMMARY_COLUMNS)
        if world == 1:
            return _save_summary(part, self.output_dir / "run_summary.csv")
        write_csv_atomic(self.output_dir / f".run_summary.rank{rank}.csv", part)
        dist.barrier()
        if rank != 0:
            return part
        parts = [self.output_dir / f".run_summary.rank{r}.csv" for r in range(world)]
        summary = pd.concat([pd.read_csv(p, keep_default_na=False) for p in parts], ignore_index=True)
        for path in parts:
            path.unlink()
        return _save_summary(summary.sort_values("slide_id", ignore_index=True), self.output_dir / "run_summary.csv")


def _rate(record: dict) -> str:
    tiles, seconds = record.get("tiles"), record.get("seconds")
    return f"{tiles / seconds:.0f}" if isinstance(tiles, int) and seconds else "-"


def _save_summary(summary: pd.DataFrame, path: Path) -> pd.DataFrame:
    write_csv_atomic(path, summary)
    failed = summary[summary["status"] == "failed"]
    for row in failed.itertuples():
        logger.error("FAILED %s: %s", row.slide_id, row.error)
    done = int((summary["status"] == "done").sum())
    skipped = int(summary["status"].str.startswith("skipped").sum())
    logger.info("%d slides: %d done, %d skipped, %d failed; see %s", len(summary), done, skipped, len(failed), path)
    return summary
