"""Region tokens from a trained teacher: one token store per region store, linked to it (pathme.store.tokens).

The teacher is loaded strictly from a distillation checkpoint or ``teacher.pt`` (state dicts,
``weights_only=True``), and its network and input expert are what the file records it was trained on
(:class:`~pathme.engines.distill_workflow.TrainedOn`), never repeated in a config: a checkpoint that does not
fit its network is an error naming it, never a silently random network. Tokens are in
the order [prompts, L1 tokens in raster order]; ``token_coords`` holds the level-0 top-left of what each token
stands for (the region for a prompt, its 5x tile for an L1 token).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from pathme.device import pick_device
from pathme.engines.distill_workflow import TrainedOn, load_checkpoint, newest_readable_checkpoint
from pathme.networks import PatHME
from pathme.shards import ShardRun, WorkItem, resolve_shard
from pathme.store import file_digest, store_is_done, validate_store
from pathme.store.agreement import check_same_features, weights_key, weights_provenance
from pathme.store.provenance import SlideProvenance
from pathme.store.schema import COORDS, FEATURES, VALID
from pathme.store.tokens import TokenProvenance, write_token_store
from pathme.wsi.grid import L1_SIDE, tile_origins
from pathme.wsi.slide_error import failure_text

logger = logging.getLogger(__name__)

COLUMNS = ["slide", "status", "regions", "store", "error"]


def load_teacher(checkpoint: Path) -> PatHME:
    """The EMA teacher of a distillation checkpoint or ``teacher.pt``, loaded strictly into the network the file
    records; ValueError naming the file when it holds no teacher or the teacher does not fit."""
    return teacher_from(load_checkpoint(checkpoint), checkpoint)


def teacher_from(state: Mapping, checkpoint: Path) -> PatHME:
    """The teacher of a loaded checkpoint ``state`` (:func:`load_teacher`); ``checkpoint`` names it in errors."""
    if "teacher" not in state:
        raise ValueError(f"{checkpoint} holds no 'teacher' (keys: {sorted(state)}); is it a distillation checkpoint?")
    teacher = PatHME(TrainedOn.of(state, checkpoint).config())
    try:
        teacher.load_state_dict(state["teacher"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"{checkpoint}: its teacher does not fit the network it records: {error}") from error
    return teacher.eval().requires_grad_(False)


def token_coords(origins: np.ndarray, region_extent: float, num_prompts: int) -> np.ndarray:
    """[R, P + 16, 2] level-0 (x, y): the region origin for prompts, each 5x tile's top-left for L1 tokens."""
    l1 = np.rint(tile_origins(origins, region_extent, L1_SIDE)).astype(np.int64)
    prompts = np.repeat(origins[:, None, :].astype(np.int64), num_prompts, axis=1)
    return np.concatenate([prompts, l1], axis=1)


@dataclass
class EmbedRun:
    """Write ``output_dir/<slide_id>.h5`` for every region store of ``dataset_dir`` with the teacher's tokens.

    ``checkpoint``: ``teacher.pt`` or a checkpoint file, or a folder (its newest readable checkpoint); the teacher's
    expert and network are what it records.
    """

    dataset_dir: str | Path
    output_dir: str | Path
    checkpoint: str | Path
    batch_size: int = 32
    device: torch.device | str | None = None
    shard: str | None = None  # "I/N"; None: from the SLURM array, torchrun, or all stores (pathme.shards)

    def __post_init__(self) -> None:
        self.dataset_dir, self.output_dir = Path(self.dataset_dir), Path(self.output_dir)
        checkpoint = Path(self.checkpoint)
        found = newest_readable_checkpoint(checkpoint) if checkpoint.is_dir() else None
        self.checkpoint = found[0] if found is not None else checkpoint
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"no distillation checkpoint at {checkpoint}")
        self.device = pick_device(self.device)

    def run(self) -> pd.DataFrame:
        """Write the token store of each region store of ``dataset_dir`` in this task's shard into ``output_dir``;
        returns one row per store (slide, status, regions, store; error when it failed), and ``embed_summary.csv``
        holds every store embedded so far. Raises FileNotFoundError when there is no store."""
        stores = sorted(self.dataset_dir.glob("*.h5"))
        if not stores:
            raise FileNotFoundError(f"no region stores (*.h5) in {self.dataset_dir}")
        run = ShardRun("embed", self.output_dir, resolve_shard(self.shard), "embed_summary.csv", COLUMNS)
        items = run.share([WorkItem(p.stem, p, self.output_dir / p.name) for p in stores], self.dataset_dir)
        state = load_checkpoint(self.checkpoint)
        teacher = teacher_from(state, self.checkpoint).to(self.device)
        recorded = TrainedOn.of(state, self.checkpoint)
        digest = file_digest(self.checkpoint)
        self.output_dir.mkdir(parents=True, exist_ok=True)

        def embed(item: WorkItem, local: Callable[[], Path]) -> dict[str, object]:
            record = {"slide": item.key, "status": "", "regions": "", "store": str(item.target), "error": ""}
            try:
                return record | self._embed_store(teacher, recorded, local(), digest)
            except Exception as error:  # one store's failure, whatever it is, is its row; the others go on
                return record | {"status": "failed", "error": failure_text(error, item.key, logger)}

        return run.run(items, embed)

    def _embed_store(self, teacher: PatHME, recorded: TrainedOn, store: Path, digest: str) -> dict[str, object]:
        """Write the token store of ``store`` unless a valid one is there; the summary row's status and size."""
        target = self.output_dir / store.name
        expected = {"teacher_digest": digest, "region_store_digest": file_digest(store)}  # TokenProvenance's
        if store_is_done(target, expected=expected, experts=[recorded.expert_a]):
            return {"status": "skipped (valid store)"}
        attrs = validate_store(store, experts=[recorded.expert_a])
        expert = recorded.expert_a
        if attrs["expert_dims"][expert] != recorded.input_dim:
            raise ValueError(
                f"{store}: expert {expert!r} has {attrs['expert_dims'][expert]}-d features, "
                f"the teacher of {self.checkpoint} takes {recorded.input_dim}-d ones"
            )
        trained = {weights_key(name): digest for name, digest in recorded.expert_digests.items()}
        check_same_features(trained, weights_provenance(attrs, [expert]), self.checkpoint, store)
        extent = SlideProvenance.from_attrs(attrs).region_extent
        tokens, coords = self._embed(teacher, store, expert, extent)
        write_token_store(store, target, tokens, coords, TokenProvenance(str(self.checkpoint), digest, expert))
        return {"status": "done", "regions": len(tokens)}

    @torch.inference_mode()
    def _embed(self, teacher: PatHME, store: Path, expert: str, region_extent: float) -> tuple[np.ndarray, np.ndarray]:
        with h5py.File(store, "r") as file:
            origins = file[COORDS.name][:]
            valid_l0, valid_l1 = file[VALID["L0"].name][:], file[VALID["L1"].name][:]
            l0_all, l1_all = file[FEATURES["L0"].path(expert)], file[FEATURES["L1"].path(expert)]
            batches = []
            for start in range(0, len(origins), self.batch_size):
                part = slice(start, start + self.batch_size)
                l0, l1 = (torch.from_numpy(a[part]).float() for a in (l0_all, l1_all))  # stored float16 or 32
                batch = [
                    t.to(self.device)
                    for t in (l0, torch.from_numpy(valid_l0[part]), l1, torch.from_numpy(valid_l1[part]))
                ]
                batches.append(teacher.region_tokens(*batch).float().cpu().numpy())
        dim, prompts = teacher.config.embed_dim, teacher.config.num_prompts
        tokens = np.concatenate(batches) if batches else np.zeros((0, prompts + L1_SIDE**2, dim), np.float32)
        return tokens, token_coords(origins, region_extent, prompts)
