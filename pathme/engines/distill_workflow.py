"""A whole distillation run from config values: data, network, optimiser, trainer, handlers, resume.

The bundle's ``train.json`` instantiates :class:`DistillationRun` with its config ids and calls ``run()``.
Checkpoints hold the student, the EMA teacher, the optimiser, the loss centres and the trainer state (iteration,
epoch, data seed, RNG states); schedules are functions of the iteration, so a resumed run continues exactly.
A finished run also writes ``teacher.pt``, the teacher alone: what embedding, ``ckpt_export`` and deployment need.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from pathme.data.distill_dataset import RegionStoreDataset, read_patients, split_holdout
from pathme.data.view_dataset import ViewDataset
from pathme.data.views import ViewConfig, collate_regions
from pathme.device import pick_device
from pathme.engines.distill import (
    DistillationLosses,
    DistillStudent,
    LossWeights,
    build_teacher,
    create_distill_trainer,
    teacher_outputs,
    unwrap,
)
from pathme.engines.schedules import Schedules
from pathme.networks import PatHME, PatHMEConfig, preset_config
from pathme.store.agreement import weights_key
from pathme.store.atomic import save_torch, set_aside

if TYPE_CHECKING:  # tensorboard is imported where a run writes to it, not by every reader of this module
    from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)

TEACHER_FILE = "teacher.pt"
TRAINED_ON = "trained_on"

#: numpy objects inside the trainer's saved RNG states, allowed by ``torch.load(weights_only=True)``
_CHECKPOINT_SAFE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint as state dicts, loaded with ``weights_only=True`` (no arbitrary code); ValueError naming the
    file when it does not load (a run killed while writing it, a truncated copy, not a checkpoint)."""
    try:
        with torch.serialization.safe_globals(_CHECKPOINT_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on damaged files
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error


@dataclass(frozen=True)
class TrainedOn:
    """What a teacher was trained on, recorded in every checkpoint and in ``teacher.pt`` (key ``trained_on``), so
    embedding, inference and the Deploy app build its network and pick its input expert from the file instead of
    repeating them: expert A (whose features it takes) and B, the preset, the network's full config (its
    ``in_dim`` is expert A's feature dimension), and the digests of the experts' weights in the stores it was
    trained on (``expert_digests``; empty in a checkpoint of an older pathme), so embedding refuses region stores
    whose expert-A features come from other weights."""

    expert_a: str
    expert_b: str
    preset: str
    network: dict[str, Any]  # every PatHMEConfig field
    expert_digests: dict[str, str] = field(default_factory=dict)  # expert name -> weights digest of its features

    @property
    def input_dim(self) -> int:
        """Expert A's feature dimension, the network's input."""
        return int(self.network["in_dim"])

    def config(self) -> PatHMEConfig:
        """The PatHME network configuration the checkpoint was trained with."""
        return PatHMEConfig(**self.network)

    def state_dict(self) -> dict[str, Any]:
        """Plain values (``torch.load(weights_only=True)`` reads them); Ignite's Checkpoint saves this."""
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """On resume: the checkpoint must have been trained on what this run trains on (expert weights too, where
        the checkpoint records them)."""
        recorded = {"expert_digests": self.expert_digests} | dict(state)  # an older pathme's records no digests
        if recorded != self.state_dict():
            raise ValueError(
                f"the checkpoint was trained on {recorded}, this run is configured for {self.state_dict()}; "
                "resume with the same experts (and weights), preset and network, or start in a new output_dir"
            )

    @classmethod
    def of(cls, state: Mapping[str, Any], checkpoint: str | Path) -> TrainedOn:
        """From a loaded checkpoint or ``teacher.pt``; ValueError when it records nothing (an older pathme)."""
        if TRAINED_ON not in state:
            raise ValueError(
                f"{checkpoint} does not record what its teacher was trained on (written by an older pathme); "
                "train it again with this one"
            )
        return cls(**state[TRAINED_ON])


@dataclass
class DistillationRun:
    """Train a PatHME teacher on region stores; ``batch_size`` is per device, the global batch is batch_size x ranks.

    The defaults are the paper's run, the values of the pathme_distillation bundle's train.json (a test holds them
    equal); train_tiny.json is the CPU-sized run."""

    dataset_dir: str | Path
    output_dir: str | Path
    expert_a: str = "gigapath"
    expert_b: str = "uni"
    patients: str | Path | Sequence[str] | None = None
    max_iterations: int = 25000
    batch_size: int = 16
    num_workers: int = 4
    preset: str = "paper"
    network: Mapping[str, object] = field(default_factory=dict)
    base_lr: float = 0.004
    min_lr: float = 1e-6
    warmup_iterations: int = 1000
    weight_decay: tuple[float, float] = (0.04, 0.4)
    layer_decay: float = 0.9
    momentum: tuple[float, float] = (0.992, 1.0)
    teacher_temp: tuple[float, float] = (0.04, 0.07)
    teacher_temp_warmup: int = 3000
    freeze_last_layer: int | None = None  # iterations; None = the first epoch
    student_temp: float = 0.1
    center_momentum: float = 0.9
    clip_grad: float = 3.0
    loss_weights: LossWeights = field(default_factory=LossWeights)
    views: ViewConfig = field(default_factory=ViewConfig)
    holdout_fraction: float = 0.05
    validate_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    device: torch.device | str | None = None
    amp: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(
                "the regions per batch and device must be >= 2 (KoLeo and iBOT need 2 samples; the bundle's "
                f"regions_per_batch, pathme distill --regions-per-batch), got {self.batch_size}"
            )
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")
        if self.preset not in ("tiny", "paper"):
            raise ValueError(f"preset must be 'tiny' or 'paper', got {self.preset!r}")
        self.output_dir = Path(self.output_dir)
        self.device = pick_device(self.device)

    def build(self) -> dict:
        """Every component of the run (also used by tests and the benchmark)."""
        torch.manual_seed(self.seed)
        rank, world = idist.get_rank(), idist.get_world_size()
        regions = RegionStoreDataset(self.dataset_dir, self.expert_a, self.expert_b, read_patients(self.patients))
        views = ViewDataset(regions, self.views, seed=self.seed)
        train_ids, holdout_ids = split_holdout(regions, self.holdout_fraction, self.seed)
        if len(train_ids) < self.batch_size * world:
            raise ValueError(
                f"{len(train_ids)} training regions in {self.dataset_dir} are fewer than one global batch "
                f"({self.batch_size} x {world} ranks); lower regions_per_batch "
                "(pathme distill --regions-per-batch) or add slides"
            )
        train_set = Subset(views, train_ids)
        # one permutation per epoch for every world size: rank r takes every world-th index, so a global batch
        # holds the same regions on one process as on several
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=self.seed, drop_last=True)
        loader = DataLoader(
            train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            collate_fn=collate_regions,
            pin_memory=self.device.type == "cuda",
        )
        holdout = DataLoader(Subset(views, holdout_ids), batch_size=self.batch_size, collate_fn=collate_regions)
        net = PatHME(preset_config(self.preset, regions.expert_a_dim, self.network))
        net.set_input_statistics(*regions.feature_statistics(train_ids))
        teacher = build_teacher(net).to(self.device)
        student: torch.nn.Module = DistillStudent(net, regions.expert_b_dim).to(self.device)
        groups = net.param_groups(self.weight_decay[0], self.layer_decay, self.base_lr)
        groups.append({"params": list(student.kd.parameters()), "name": "kd_projector", "lr_scale": 1.0})
        for group in groups:  # the weight-decay schedule applies to the groups that decay at all
            group["apply_wd"] = group.get("weight_decay", self.weight_decay[0]) > 0
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.base_lr)
        losses = DistillationLosses(
            net.config.num_prototypes, self.loss_weights, self.student_temp, self.center_momentum
        ).to(self.device)
        schedules = Schedules(
            total=self.max_iterations,
            global_batch=self.batch_size * world,
            base_lr=self.base_lr,
            min_lr=self.min_lr,
            warmup=min(self.warmup_iterations, self.max_iterations),
            weight_decay=tuple(self.weight_decay),
            momentum=tuple(self.momentum),
            teacher_temp=tuple(self.teacher_temp),
            teacher_temp_warmup=self.teacher_temp_warmup,
            freeze_last_layer=len(loader) if self.freeze_last_layer is None else self.freeze_last_layer,
        )
        if world > 1:
            student = torch.nn.parallel.DistributedDataParallel(
                student, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        trainer = create_distill_trainer(
            student, teacher, losses, optimizer, schedules, self.device, self.clip_grad, self.amp
        )
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: _set_epoch(engine, views, sampler))
        digests = {name: regions.expert_provenance[weights_key(name)] for name in (self.expert_a, self.expert_b)}
        trained_on = TrainedOn(self.expert_a, self.expert_b, self.preset, asdict(net.config), digests)
        return {
            "trained_on": trained_on,
            "regions": regions,
            "loader": loader,
            "holdout": holdout,
            "student": student,
            "teacher": teacher,
            "optimizer": optimizer,
            "losses": losses,
            "schedules": schedules,
            "trainer": trainer,
        }

    def to_save(self, parts: Mapping) -> dict:
        """What Ignite's Checkpoint saves: student (unwrapped from DDP), teacher, optimizer, loss centres, trainer
        state and what the teacher was trained on."""
        return {
            "student": unwrap(parts["student"]),
            "teacher": parts["teacher"],
            "optimizer": parts["optimizer"],
            "losses": parts["losses"],
            "trainer": parts["trainer"],
            TRAINED_ON: parts["trained_on"],
        }

    def run(self) -> dict[str, float]:
        """Train (or resume) to ``max_iterations``; returns the last step's outputs."""
        parts = self.build()
        trainer: Engine = parts["trainer"]
        rank = idist.get_rank()
        checkpoints = self.output_dir / "checkpoints"
        to_save = self.to_save(parts)
        saver = Checkpoint(
            to_save,
            AtomicDiskSaver(checkpoints, require_empty=False),
            filename_prefix="distill",
            n_saved=2,
            global_step_transform=lambda engine, _: engine.state.iteration,
        )
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=self.checkpoint_every) | Events.COMPLETED, saver)
        found = newest_readable_checkpoint(checkpoints) if self.resume else None
        if found is not None:
            latest, state = found
            Checkpoint.load_objects(to_save, state)
            logger.info("resumed from %s at iteration %d", latest, trainer.state.iteration)
            if trainer.state.iteration >= self.max_iterations:
                logger.info("already trained to iteration %d >= max_iterations: nothing to do", trainer.state.iteration)
                if rank == 0:  # a run stopped after its last checkpoint left no teacher file, or an old one
                    save_teacher(
                        parts["teacher"], self.output_dir / TEACHER_FILE, trainer.state.iteration, parts["trained_on"]
                    )
                return {}
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(self.output_dir / "tensorboard") if rank == 0 else None
        _attach_logging(trainer, writer, self.log_every, self.max_iterations)
        if rank == 0:
            _attach_progress(trainer, self.max_iterations)
        _attach_validation(trainer, parts, writer, self.validate_every, self.device)
        trainer.run(parts["loader"], max_iters=self.max_iterations, epoch_length=len(parts["loader"]))
        if rank == 0:
            save_teacher(parts["teacher"], self.output_dir / TEACHER_FILE, trainer.state.iteration, parts["trained_on"])
        if writer is not None:
            writer.close()
        return dict(trainer.state.output or {})


def save_teacher(teacher: torch.nn.Module, path: Path, iteration: int, trained_on: TrainedOn) -> Path:
    """``{"teacher": state dict, "iteration", "trained_on"}``, atomically: plain tensors and values that
    ``torch.load(weights_only=True)`` reads, unlike the full checkpoints whose trainer state holds NumPy RNG states
    (MONAI's ``ckpt_export`` loads that way and refuses them)."""
    state = {"teacher": teacher.state_dict(), "iteration": iteration, TRAINED_ON: trained_on.state_dict()}
    return save_torch(path, state)


class AtomicDiskSaver(DiskSaver):
    """Ignite's :class:`DiskSaver` writing through :func:`~pathme.store.atomic.save_torch`: a failed checkpoint write
    is a WriteError naming the checkpoint file and the cause (DiskSaver's is torch's "PytorchStreamWriter failed
    writing file data/0", naming neither), and a run killed while writing leaves only a hidden temporary sibling,
    which the next write of that file removes (DiskSaver's ``tmp*`` files stayed forever)."""

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Save ``checkpoint`` as ``<dirname>/<filename>`` on the saving rank."""
        if self.save_on_rank == idist.get_rank():
            save_torch(self.dirname / filename, checkpoint)


def newest_readable_checkpoint(folder: Path) -> tuple[Path, dict] | None:
    """(path, state) of the newest checkpoint of ``folder`` that loads; None when there is none.

    A checkpoint that does not load (a run killed while writing it, a truncated copy) is named, set aside as
    ``<name>.damaged`` (never deleted) and the next newest is tried; when none is left that is said too.
    """
    found = sorted(folder.glob("distill_checkpoint_*.pt"), key=lambda path: int(path.stem.rsplit("_", 1)[-1]))
    for path in reversed(found):
        try:
            return path, load_checkpoint(path)
        except ValueError as error:
            logger.warning("checkpoint %s is damaged (%s); set aside as %s", path, error.__cause__, set_aside(path))
    if found:
        logger.warning("no readable checkpoint left in %s: training starts from iteration 0", folder)
    return None


def _set_epoch(engine: Engine, views: ViewDataset, sampler: DistributedSampler) -> None:
    views.set_epoch(engine.state.epoch)
    sampler.set_epoch(engine.state.epoch)


def _attach_logging(trainer: Engine, writer: SummaryWriter | None, every: int, total: int) -> None:
    """Every loss term, lr, wd, momentum and teacher temperature to TensorBoard; a log line every ``every``
    iterations: ``iteration 17/40 (2.1 it/s, ETA 00:11): total 9.87, ...``."""
    first: dict[str, float] = {}  # the clock and iteration at this process's first step (a resumed run's included)

    @trainer.on(Events.ITERATION_COMPLETED)
    def log(engine: Engine) -> None:
        output, iteration = engine.state.output, engine.state.iteration
        if writer is not None:
            for name, value in output.items():
                writer.add_scalar(f"train/{name}", value, iteration)
        if not first:
            first.update(clock=time.perf_counter(), iteration=iteration - 1)
        if iteration % every == 0 or iteration == 1:
            rate = (iteration - first["iteration"]) / max(time.perf_counter() - first["clock"], 1e-9)
            eta = tqdm.format_interval((total - iteration) / rate) if rate > 0 else "?"
            losses = ", ".join(f"{k} {v:.4g}" for k, v in output.items())
            logger.info("iteration %d/%d (%.2f it/s, ETA %s): %s", iteration, total, rate, eta, losses)


def _attach_progress(trainer: Engine, total: int) -> None:
    """On a terminal, one bar over the whole run (a resumed run starts where it stopped): iterations done/total,
    rate, ETA and the total loss; tqdm rather than Ignite's ProgressBar, which starts a bar per epoch."""
    if not sys.stderr.isatty():
        return
    bar: dict[str, tqdm] = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def advance(engine: Engine) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, initial=engine.state.iteration - 1, desc="distillation", unit="it")
        bar["bar"].update(1)
        bar["bar"].set_postfix(total=f"{engine.state.output['total']:.4g}", refresh=False)

    @trainer.on(Events.COMPLETED | Events.TERMINATE | Events.EXCEPTION_RAISED)
    def close(_: Engine) -> None:
        if "bar" in bar:
            bar.pop("bar").close()


def _attach_validation(
    trainer: Engine, parts: Mapping, writer: SummaryWriter | None, every: int, device: torch.device
) -> None:
    """The distillation loss on held-out slides' regions (no update of anything), every ``every`` iterations."""
    if len(parts["holdout"].dataset) < 2:
        logger.warning("no held-out regions: validation loss is not computed")
        return
    validated: set[int] = set()

    @trainer.on(Events.ITERATION_COMPLETED(every=every) | Events.COMPLETED)
    def validate(engine: Engine) -> None:
        if engine.state.iteration in validated:  # COMPLETED right after a scheduled validation
            return
        validated.add(engine.state.iteration)
        student, teacher, losses = parts["student"], parts["teacher"], parts["losses"]
        student.eval()
        totals: dict[str, float] = {}
        batches = 0
        temperature = parts["schedules"].teacher_temperature(engine.state.iteration - 1)
        with torch.no_grad():
            for batch in parts["holdout"]:
                if len(batch["index"]) < 2:
                    continue
                batch = {k: v.to(device) for k, v in batch.items()}
                terms = losses(unwrap(student)(batch), teacher_outputs(teacher, batch), batch, temperature)
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + float(value)
                batches += 1
        if batches and writer is not None:
            for name, value in totals.items():
                writer.add_scalar(f"validation/{name}", value / batches, engine.state.iteration)
        if batches:
            logger.info("validation at iteration %d: total %.4g", engine.state.iteration, totals["total"] / batches)
