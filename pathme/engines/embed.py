"""Region tokens from a trained teacher: every region store in, one token store (store + ``tokens``) per slide out.

The teacher is loaded strictly from a distillation checkpoint (state dicts, ``weights_only=True``): a checkpoint
that does not fit the configured network is an error naming the checkpoint and the keys, never a silently
random network. Tokens are in the order [prompts, L1 tokens in raster order]; ``token_coords`` holds the
level-0 top-left of what each token stands for (the region for a prompt, its 5x tile for an L1 token).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pathme.engines.distill_workflow import latest_checkpoint, load_checkpoint
from pathme.networks import PatHME, PatHMEConfig, preset_config
from pathme.store import file_digest, store_is_done, validate_store
from pathme.store.tokens import write_token_store
from pathme.wsi.grid import L1_SIDE, raster_positions

logger = logging.getLogger(__name__)


def load_teacher(checkpoint: Path, config: PatHMEConfig) -> PatHME:
    """The EMA teacher of a distillation checkpoint, loaded strictly into a network built from ``config``."""
    state = load_checkpoint(checkpoint)
    if "teacher" not in state:
        raise ValueError(f"{checkpoint} holds no 'teacher' (keys: {sorted(state)}); is it a distillation checkpoint?")
    teacher = PatHME(config)
    try:
        teacher.load_state_dict(state["teacher"], strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{checkpoint} does not fit the configured network (preset/network ids must match training): {error}"
        ) from error
    return teacher.eval().requires_grad_(False)


def token_coords(origins: np.ndarray, region_extent: float, num_prompts: int) -> np.ndarray:
    """[R, P + 16, 2] level-0 (x, y): the region origin for prompts, each 5x tile's top-left for L1 tokens."""
    tiles = raster_positions(L1_SIDE, L1_SIDE)[:, ::-1] * (region_extent / L1_SIDE)  # (x, y) offsets
    l1 = np.rint(origins[:, None, :] + tiles[None]).astype(np.int64)
    prompts = np.repeat(origins[:, None, :].astype(np.int64), num_prompts, axis=1)
    return np.concatenate([prompts, l1], axis=1)


@dataclass
class EmbedRun:
    """Write ``output_dir/<slide_id>.h5`` for every region store of ``dataset_dir`` with the teacher's tokens."""

    dataset_dir: str | Path
    output_dir: str | Path
    checkpoint: str | Path
    expert_a: str = "tiny-vit"
    preset: str = "tiny"
    network: Mapping[str, object] = field(default_factory=dict)
    batch_size: int = 32
    device: torch.device | str | None = None

    def __post_init__(self) -> None:
        self.dataset_dir, self.output_dir = Path(self.dataset_dir), Path(self.output_dir)
        checkpoint = Path(self.checkpoint)
        self.checkpoint = latest_checkpoint(checkpoint) if checkpoint.is_dir() else checkpoint
        if self.checkpoint is None or not self.checkpoint.is_file():
            raise FileNotFoundError(f"no distillation checkpoint at {checkpoint}")
        self.device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def run(self) -> pd.DataFrame:
        stores = sorted(self.dataset_dir.glob("*.h5"))
        if not stores:
            raise FileNotFoundError(f"no region stores (*.h5) in {self.dataset_dir}")
        digest = file_digest(self.checkpoint)
        teacher: PatHME | None = None
        records = []
        for store in tqdm(stores, desc="embed", unit="slide", disable=None):
            target = self.output_dir / store.name
            expected = {"teacher_digest": digest, "source_digest": file_digest(store)}
            if store_is_done(target, expected=expected, experts=[self.expert_a]):
                records.append({"slide": store.stem, "status": "skipped (valid store)", "store": str(target)})
                continue
            attrs = validate_store(store, experts=[self.expert_a])
            if teacher is None:
                config = preset_config(self.preset, attrs["expert_dims"][self.expert_a], self.network)
                teacher = load_teacher(self.checkpoint, config).to(self.device)
            tokens, coords = self._embed(teacher, store, float(attrs["region_extent"]))
            write_token_store(store, target, tokens, coords, expected | {"teacher_checkpoint": str(self.checkpoint)})
            records.append({"slide": store.stem, "status": "done", "store": str(target), "regions": len(tokens)})
        summary = pd.DataFrame(records)
        summary.to_csv(self.output_dir / "embed_summary.csv", index=False)
        return summary

    @torch.inference_mode()
    def _embed(self, teacher: PatHME, store: Path, region_extent: float) -> tuple[np.ndarray, np.ndarray]:
        with h5py.File(store, "r") as file:
            origins = file["coords"][:]
            valid_l0, valid_l1 = file["valid/L0"][:], file["valid/L1"][:]
            l0_all, l1_all = file[f"features/{self.expert_a}/L0"], file[f"features/{self.expert_a}/L1"]
            batches = []
            for start in range(0, len(origins), self.batch_size):
                part = slice(start, start + self.batch_size)
                batch = [torch.as_tensor(a[part]).to(self.device) for a in (l0_all, valid_l0, l1_all, valid_l1)]
                batches.append(teacher.region_tokens(*batch).float().cpu().numpy())
        dim, prompts = teacher.config.embed_dim, teacher.config.num_prompts
        tokens = np.concatenate(batches) if batches else np.zeros((0, prompts + L1_SIDE**2, dim), np.float32)
        return tokens, token_coords(origins, region_extent, prompts)
