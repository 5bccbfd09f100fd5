"""Feature extraction over a cohort: resumable, one bad slide never stops the others, sharded over tasks.

A slide is skipped only when its region store opens and validates against the schema and the digests of its
inputs (slide fingerprint, expert weights, extraction config); anything else is redone from scratch, and the
store appears only when complete (written to a temporary name, then renamed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

import pathme
from pathme.cohorts.manifest import ManifestRow, read_manifest
from pathme.device import cpu_budget, decode_threads, pick_device, reader_workers
from pathme.encoders import Expert, build_expert
from pathme.engines.region_encoding import SlideTimes, encode_regions
from pathme.engines.region_loader import RegionDataset, SlideSource, region_loader
from pathme.shards import ShardRun, Stager, WorkItem, check_room, resolve_shard
from pathme.shards.staging import stageable
from pathme.shards.status import write_merged
from pathme.store import RegionStoreWriter, config_digest, read_store_summary, store_is_done, write_features_h5
from pathme.store.digests import slide_fingerprint
from pathme.store.interop import interop_attrs
from pathme.store.provenance import read_provenance, slide_attrs
from pathme.store.schema import COORDS, FEATURE_DTYPES, FEATURES, VALID
from pathme.wsi.grid import L0_MPP, L0_SIDE, L1_MPP, L2_MPP, REGION_PX, TILE_PX, tile_origins
from pathme.wsi.mpp import MPP_TOLERANCE
from pathme.wsi.readers import AUTO
from pathme.wsi.reading import refuse_too_coarse
from pathme.wsi.regions import plan_regions
from pathme.wsi.slide_error import SlideError, failure_text
from pathme.wsi.tissue import TissueConfig

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = [
    "slide_id",
    "status",
    "reader_backend",
    "regions",
    "tiles",
    "seconds",
    "read_s",
    "encode_s",
    "write_s",
    "store",
    "note",
    "error",
]


@dataclass
class CohortExtractor:
    """Extract every slide of ``manifest`` into ``output_dir/<slide_id>.h5`` and write ``run_summary.csv``."""

    manifest: str | Path
    output_dir: str | Path
    experts: Sequence[str]
    weights: Mapping[str, str] = field(default_factory=dict)
    reader_backend: str = AUTO
    batch_size: int = 64
    num_workers: int | str | None = None  # region-reading processes; None: the CPU budget less one (reader_workers)
    device: torch.device | str | None = None
    tissue: TissueConfig = field(default_factory=TissueConfig)
    interop_h5: bool = False
    seed: int = 0
    feature_dtype: str = "float16"
    mpp_tolerance: float = MPP_TOLERANCE  # how much coarser than 0.5 µm/px a level 0 may be and be read at 20x
    shard: str | None = None  # "I/N"; None: from the SLURM array, torchrun, or the whole cohort
    stage_dir: str | Path | None = None  # node-local folder slides are copied to before they are read

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
        self.num_workers = reader_workers() if self.num_workers is None else int(self.num_workers)
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
        """Extract this task's shard of the slides (:func:`~pathme.shards.resolve_shard`: ``shard``, a SLURM array
        task, a torchrun rank, or all) and return its summary rows; under torchrun, rank 0 returns the summary of
        every rank's slides. ``run_summary.csv`` holds every slide that has a record (:mod:`pathme.shards`).

        Each slide is extracted under its store's claim (:class:`~pathme.shards.ShardRun`): a slide another task or
        run is extracting is put off to the end and then waited for, and its store is checked like any other
        (skipped when valid, redone when that run failed). So two tasks encode each slide once between them.
        ShardError, StageError or ValueError (bad shard, stage folder or expert) before anything is written."""
        shard = resolve_shard(self.shard)
        entries = {entry.slide_id: entry for entry in read_manifest(self.manifest)}
        run = ShardRun("extract", self.output_dir, shard, "run_summary.csv", SUMMARY_COLUMNS)
        items = run.share([WorkItem(key, e.path, self._store(e)) for key, e in entries.items()], self.manifest)
        if self.stage_dir is not None:
            check_room(self.stage_dir, [item.path.stat().st_size for item in items if stageable(item.path)])
        experts = {
            name: build_expert(name, self.weights.get(name), device=self.device, seed=self.seed)
            for name in self.experts
        }
        torch.set_num_threads(min(torch.get_num_threads(), cpu_budget()))
        self.output_dir.mkdir(parents=True, exist_ok=True)  # after the experts: a refused one leaves no folder
        with Stager(self.stage_dir) if self.stage_dir is not None else nullcontext() as stager:
            rows = run.run(items, lambda item, local: self._extract_or_skip(entries[item.key], experts, local), stager)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()  # every rank's records are written: rank 0's merged summary holds them all
            if dist.get_rank() == 0:
                write_merged(run.records, run.plan, self.output_dir, run.summary, run.columns)
                rows = pd.read_csv(self.output_dir / run.summary, keep_default_na=False)
        _log_failures(rows, self.output_dir / "run_summary.csv")
        return rows

    def _store(self, entry: ManifestRow) -> Path:
        return self.output_dir / f"{entry.slide_id}.h5"

    def _extract_or_skip(self, entry: ManifestRow, experts: Mapping[str, Expert], local: Callable[[], Path]) -> dict:
        """The summary row of one slide, read (when its store is not valid already) from ``local()``: the slide's
        file or its staged copy."""
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
                regions, times = self._extract(entry, experts, store, expected, local())
                record |= {"status": "done", "regions": regions} | times.record()
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
        if not entry.path.exists():
            raise SlideError(f"slide {entry.slide_id}: file not found: {entry.path}")
        return {
            "slide_digest": slide_fingerprint(entry.path),  # its ends only: cheap over the network
            "config_digest": config_digest(self.config() | {"mpp_override": entry.mpp}),
            "expert_digests": {name: expert.weights_digest for name, expert in experts.items()},
        }

    def _extract(
        self, entry: ManifestRow, experts: Mapping[str, Expert], store: Path, expected: dict, path: Path
    ) -> tuple[int, SlideTimes]:
        threads = decode_threads(self.num_workers)
        source = SlideSource(path, entry.slide_id, self.reader_backend, entry.mpp, self.mpp_tolerance, threads)
        slide = source.open()
        source = replace(source, backend=slide.backend)  # workers: the reader that worked
        plan = plan_regions(slide, self.tissue)
        attrs = (
            expected
            | slide_attrs(slide, entry.patient_id, plan.reason, plan.resampling)
            | {
                "slide_path": str(entry.path.absolute()),  # the slide, not the staged copy it was read from
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
            times = encode_regions(iter(loader), plan.regions, experts, writer, self.batch_size, self.device, bar)
            start = time.perf_counter()
            writer.commit()
            times.write_s += time.perf_counter() - start
        logger.info(
            "slide %s: %d regions, %d tiles encoded -> %s", entry.slide_id, len(plan.regions), times.tiles, store
        )
        return len(plan.regions), times

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


def _log_failures(summary: pd.DataFrame, path: Path) -> None:
    failed = summary[summary["status"] == "failed"]
    for row in failed.itertuples():  # each said on the console as it failed: the log keeps them together
        logger.info("FAILED %s: %s", row.slide_id, row.error)
    done = int((summary["status"] == "done").sum())
    skipped = int(summary["status"].str.startswith("skipped").sum())
    logger.info("%d slides: %d done, %d skipped, %d failed; see %s", len(summary), done, skipped, len(failed), path)
