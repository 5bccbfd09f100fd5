"""MIL training and evaluation as Ignite engines (docs/method.md section 5), for any registered aggregator.

One fold: train on its training patients, keep the weights with the lowest validation loss (early stopping),
predict its test patients. A validation split too small to choose on (under ``min_val_patients``) chooses nothing:
the fold trains ``max_epochs`` and keeps the last weights, and its results say so. The task decides the head:
classes with cross-entropy on logits, or survival with the discrete-time NLL over time bins (or Cox); the
aggregator (:mod:`pathme.networks.mil`) adds its own terms to the loss. A fold's model file holds everything needed
to predict again.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from pathme.data.bags import BagDataset, collate_bags
from pathme.losses import cox_partial_likelihood, discrete_time_nll, risk_from_logits
from pathme.metrics import classification_metrics, survival_metrics
from pathme.networks.mil import CLASSIFICATION, SURVIVAL, Aggregator, AggregatorSpec, aggregator_spec
from pathme.store.atomic import save_torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MILModelConfig:
    """Which aggregator and its sizes, saved with its weights so a fold model is rebuilt exactly.

    model: a name of :data:`pathme.networks.mil.AGGREGATORS`; hidden, dropout: None for the member's own;
    options: the member's other arguments (``{"k": 4}`` for CLAM-SB).
    """

    in_dim: int
    num_outputs: int
    model: str = "abmil"
    hidden: int | None = None
    dropout: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> AggregatorSpec:
        """The registry entry of ``model`` (ValueError naming the members when unknown)."""
        return aggregator_spec(self.model)

    def build(self) -> Aggregator:
        """A fresh aggregator with this configuration (random initial weights from torch's current seed)."""
        dropout = {} if self.dropout is None else {"dropout": self.dropout}
        return self.spec.build(self.in_dim, self.num_outputs, self.hidden, **dropout, **self.options)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> MILModelConfig:
        """The config of a fold model's ``model_config``, including those pathme 0.1 saved (ABMIL only:
        ``hidden``, ``attention_dim``, ``dropout``, ``gated``)."""
        if "model" in saved:
            return cls(**{**saved, "options": dict(saved.get("options", {}))})
        model = "abmil" if saved.get("gated", True) else "abmil-plain"
        options = {"attention_dim": saved["attention_dim"]} if "attention_dim" in saved else {}
        return cls(saved["in_dim"], saved["num_outputs"], model, saved.get("hidden"), saved.get("dropout"), options)


@dataclass(frozen=True)
class MILTask:
    """What is predicted: ``classes`` for classification, or survival with ``bin_edges`` (NLL) or Cox."""

    name: str
    classes: tuple[str, ...] = ()
    survival_loss: str = "nll"
    bin_edges: tuple[float, ...] = ()

    @property
    def is_survival(self) -> bool:
        """True when the task predicts survival (no classes)."""
        return not self.classes

    @property
    def kind(self) -> str:
        """``"classification"`` or ``"survival"``, as aggregators declare what they can learn."""
        return SURVIVAL if self.is_survival else CLASSIFICATION

    @property
    def num_outputs(self) -> int:
        """Logits per bag: the class count, the number of time bins (discrete-time NLL) or 1 (Cox)."""
        if not self.is_survival:
            return len(self.classes)
        return 1 if self.survival_loss == "cox" else len(self.bin_edges) - 1

    def loss(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """Mean loss of a batch of bags: cross-entropy, discrete-time NLL (Zadeh & Schmid 2021) or Cox partial
        likelihood; logits [B, num_outputs]."""
        if not self.is_survival:
            return F.cross_entropy(logits, batch["target"].to(logits.device))
        time, event = batch["time"].to(logits.device), batch["event"].to(logits.device)
        if self.survival_loss == "cox":
            return cox_partial_likelihood(logits[:, 0], time, event)
        return discrete_time_nll(logits, batch["bin"].to(logits.device), event)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, C], or risk [B] (higher = worse prognosis)."""
        if not self.is_survival:
            return logits.softmax(dim=-1)
        return logits[:, 0] if self.survival_loss == "cox" else risk_from_logits(logits)

    def metrics(self, predictions: Mapping[str, np.ndarray]) -> dict[str, float]:
        """The task's metrics of stacked predictions (:func:`stack_predictions`); NaN where not computable."""
        if self.is_survival:
            return survival_metrics(predictions["time"], predictions["event"], predictions["risk"])
        return classification_metrics(predictions["target"], predictions["probs"])

    def not_computable(self, predictions: Mapping[str, np.ndarray], metrics: Mapping[str, float]) -> str:
        """Which of ``metrics`` could not be computed and why, from what the test patients hold ("" when all were).

        The metrics are NaN exactly then: AUROC needs every class it averages over among the patients, the
        c-index a pair of patients one of whom had the event before the other's time.
        """
        missing = [name for name, value in metrics.items() if math.isnan(value)]
        if not missing:
            return ""
        if self.is_survival:
            events = int(np.sum(predictions.get("event", [])))
            why = f"{len(predictions.get('event', []))} patients, {events} with an event: no comparable pair"
        else:
            present = sorted({self.classes[int(code)] for code in predictions.get("target", [])})
            why = f"the patients hold class(es) {', '.join(map(repr, present)) or 'none'} of {list(self.classes)}"
        return f"{', '.join(missing)} not computable: {why}"


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation of one fold; ``lr`` and ``weight_decay`` None: the aggregator's defaults (:meth:`for_model`)."""

    max_epochs: int = 30
    min_epochs: int = 10  # early stopping only from here: small validation sets give noisy early losses
    patience: int = 8
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int = 1
    min_val_patients: int = 10  # fewer validation patients: no choice by validation loss, the last epoch is kept

    def for_model(self, spec: AggregatorSpec) -> TrainSettings:
        """These settings with the aggregator's own learning rate and weight decay where they are None."""
        lr = spec.lr if self.lr is None else self.lr
        return replace(self, lr=lr, weight_decay=spec.weight_decay if self.weight_decay is None else self.weight_decay)


def make_loader(dataset: BagDataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """A DataLoader of whole bags, shuffled by a generator seeded with ``seed`` (the same order on every run)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_bags, generator=generator)


def create_mil_trainer(
    model: Aggregator, task: MILTask, optimizer: torch.optim.Optimizer, device: torch.device
) -> Engine:
    """One optimiser step per batch of bags on the aggregator's objective; ``state.output`` is the batch loss."""

    def step(_engine: Engine, batch: Mapping[str, Any]) -> float:
        model.train()
        out = model(batch["features"].to(device), batch["mask"].to(device))
        target = None if task.is_survival else batch["target"].to(device)
        loss = model.objective(out, lambda logits: task.loss(logits, batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return Engine(step)


def create_mil_evaluator(model: Aggregator, task: MILTask, device: torch.device) -> Engine:
    """Runs the model without gradients and collects, in ``state.predictions``, one row per patient: scores,
    targets, the bag embedding and the instance scores ("attention", None for members without) with the token
    coordinates they map to."""

    @torch.no_grad()
    def step(engine: Engine, batch: Mapping[str, Any]) -> None:
        model.eval()
        out = model(batch["features"].to(device), batch["mask"].to(device))
        logits, scores = out["logits"].float().cpu(), task.scores(out["logits"]).float().cpu()
        if _has_targets(batch, task):
            engine.state.losses.append((float(task.loss(out["logits"], batch)), len(logits)))
        for row, patient in enumerate(batch["patient_id"]):
            length = int(batch["mask"][row].sum())
            # copies, not views of the step's tensors: a kept view measured 2-4 MB of heap held per patient
            # (glibc cannot reuse the memory around it), so RSS grew with every bag evaluated
            record = {
                "patient_id": patient,
                "logits": logits[row].numpy().copy(),
                "attention": out["attention"][row, :length].cpu().numpy().copy() if "attention" in out else None,
                "embedding": out["embedding"][row].float().cpu().numpy().copy(),
                "slide_ids": batch["slide_ids"][row],
                "slide_index": batch["slide_index"][row].numpy().copy(),
                "coords": batch["coords"][row].numpy().copy(),
                "sizes": batch["sizes"][row].numpy().copy(),
            }
            record["risk" if task.is_survival else "probs"] = scores[row].numpy().copy()
            for key in ("target", "time", "event"):
                if key in batch:
                    record[key] = batch[key][row].item()
            engine.state.predictions.append(record)

    engine = Engine(step)

    @engine.on(Events.STARTED)
    def reset(engine: Engine) -> None:
        engine.state.predictions, engine.state.losses = [], []

    @engine.on(Events.COMPLETED)
    def summarise(engine: Engine) -> None:
        if engine.state.losses:  # predictions of patients without targets have no loss and no metrics
            total = sum(n for _, n in engine.state.losses)
            engine.state.metrics["loss"] = sum(loss * n for loss, n in engine.state.losses) / total
            engine.state.metrics.update(task.metrics(stack_predictions(engine.state.predictions, task)))

    return engine


def _has_targets(batch: Mapping[str, Any], task: MILTask) -> bool:
    return ("event" in batch) if task.is_survival else ("target" in batch)


def stack_predictions(records: Sequence[Mapping[str, Any]], task: MILTask) -> dict[str, np.ndarray]:
    """Per-patient records as arrays: probs [P, C] or risk [P], and the targets the records carry."""
    columns: dict[str, np.ndarray] = {}
    if not records:
        return columns
    score = "risk" if task.is_survival else "probs"
    columns[score] = np.stack([np.asarray(r[score]) for r in records])
    for key in ("target", "time", "event"):
        if key in records[0]:
            columns[key] = np.array([r[key] for r in records])
    return columns


def train_fold(
    model_config: MILModelConfig,
    task: MILTask,
    train: BagDataset,
    val: BagDataset,
    settings: TrainSettings,
    device: torch.device,
    seed: int,
    writer: SummaryWriter | None = None,
) -> tuple[Aggregator, dict[str, Any]]:
    """Train with early stopping on the validation loss; returns the chosen model (eval mode) and ``best``: its
    epoch, the epochs trained, its validation loss and ``chosen_by`` (how it was chosen).

    ``settings``' None learning rate and weight decay are the aggregator's. With fewer than ``min_val_patients``
    validation patients nothing is chosen on the validation loss (over 2-3 patients it is noise: a fold's model
    would be picked at epoch 1 by chance): the fold trains ``max_epochs`` and keeps the last weights."""
    spec = aggregator_spec(model_config.model, task.kind)  # ValueError naming the members that can learn the task
    settings = settings.for_model(spec)
    choose = len(val) >= settings.min_val_patients
    if task.is_survival and task.survival_loss == "cox":
        if settings.batch_size < 2:
            raise ValueError(
                "the Cox loss compares patients within a batch: set bags_per_batch >= 2 "
                "(pathme mil --bags-per-batch 16)"
            )
        events = sum(int(val.targets[patient]["event"]) for patient in val.patients) if val.targets else 0
        if len(val) < 2 or not events:
            logger.warning(
                "the validation split has %d patient(s), %d with an event: its Cox loss is 0, so early stopping and "
                "the best epoch mean nothing; give the cohort more patients, or use the NLL (survival_loss nll)",
                len(val),
                events,
            )
    torch.manual_seed(seed)
    model = model_config.build().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    trainer = create_mil_trainer(model, task, optimizer, device)
    evaluator = create_mil_evaluator(model, task, device)
    val_loader = make_loader(val, settings.batch_size, shuffle=False, seed=seed)
    best: dict[str, Any] = {"loss": float("inf"), "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    if not choose:
        logger.info(
            "the validation split has %d patient(s), fewer than min_val_patients %d: its loss cannot choose a model, "
            "so the fold trains %d epochs and keeps the last",
            len(val),
            settings.min_val_patients,
            settings.max_epochs,
        )

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine: Engine) -> None:
        evaluator.run(val_loader)
        metrics, epoch = evaluator.state.metrics, engine.state.epoch
        if writer is not None:
            writer.add_scalar("train/loss", float(np.mean(engine.state.epoch_losses)), epoch)
            for name, value in metrics.items():
                writer.add_scalar(f"val/{name}", value, epoch)
        engine.state.epoch_losses = []
        if not choose or metrics["loss"] < best["loss"]:
            best.update(loss=metrics["loss"], epoch=epoch, state=copy.deepcopy(model.state_dict()))

    @trainer.on(Events.EPOCH_STARTED)
    def start_epoch(engine: Engine) -> None:
        engine.state.epoch_losses = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def keep_loss(engine: Engine) -> None:
        engine.state.epoch_losses.append(engine.state.output)

    stopper = EarlyStopping(settings.patience, lambda engine: -engine.state.metrics["loss"], trainer)
    stopper.logger = logger  # Ignite gives it a stderr handler of its own; pathme's goes where the others go

    @evaluator.on(Events.COMPLETED)
    def maybe_stop(engine: Engine) -> None:
        if choose and trainer.state.epoch >= settings.min_epochs:
            stopper(engine)

    trainer.run(make_loader(train, settings.batch_size, shuffle=True, seed=seed), max_epochs=settings.max_epochs)
    model.load_state_dict(best["state"])
    chosen_by = (
        "validation loss" if choose else f"last epoch (validation split of {len(val)} < {settings.min_val_patients})"
    )
    trained = {"best_epoch": best["epoch"], "epochs": trainer.state.epoch, "val_loss": best["loss"]}
    return model.eval(), trained | {"chosen_by": chosen_by}


def predict(model: Aggregator, task: MILTask, dataset: BagDataset, device: torch.device) -> list[dict[str, Any]]:
    """Per-patient prediction records (see :func:`create_mil_evaluator`)."""
    evaluator = create_mil_evaluator(model, task, device)
    evaluator.run(make_loader(dataset, 1, shuffle=False, seed=0))
    return evaluator.state.predictions


def save_fold_model(
    path: Path,
    model: Aggregator,
    config: MILModelConfig,
    task: MILTask,
    feature_source: str,
    inputs_digest: str = "",
    best: Mapping[str, float] | None = None,
    feature_provenance: Mapping[str, str] | None = None,
    training_slides: Sequence[str] = (),
) -> Path:
    """Weights with the network config, the task and the feature source: all a later prediction needs; with the
    digest of the fold's inputs and its best epoch, so a rerun can reuse the fold instead of training it again;
    with ``feature_provenance``, the weights behind its features (``BagIndex.feature_provenance``), so a prediction
    refuses features of other weights; and ``training_slides``, the ``slide_digest`` of every slide of its training
    and validation patients, so an evaluation can say which of its slides the model learnt from. Written atomically
    (:func:`~pathme.store.atomic.save_torch`): WriteError naming ``path`` when the disk is full."""
    payload = {
        "state_dict": model.state_dict(),
        "model_config": {**asdict(config), "options": dict(config.options)},
        "task": {**asdict(task), "classes": list(task.classes), "bin_edges": [float(e) for e in task.bin_edges]},
        "feature_source": feature_source,
        "inputs_digest": inputs_digest,
        "best": dict(best or {}),
        "feature_provenance": dict(feature_provenance or {}),
        "training_slides": sorted(training_slides),
    }
    return save_torch(path, payload)


def read_fold_model(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The saved payload of a fold model (``torch.load(weights_only=True)``); ValueError naming the file when it
    cannot be read (a truncated or damaged file)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on damaged files
        raise ValueError(f"{path}: not a readable fold model ({type(error).__name__}: {error})") from error


def load_fold_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[Aggregator, MILTask, str]:
    """(model in eval mode, task, feature source) of a saved fold model; strict: a mismatch fails loudly."""
    return fold_model_from(read_fold_model(path, device), device)


def fold_model_from(payload: Mapping[str, Any], device: torch.device | str = "cpu") -> tuple[Aggregator, MILTask, str]:
    """(model in eval mode, task, feature source) of a payload :func:`read_fold_model` returned; any registered
    aggregator, and the ABMIL fold models of pathme 0.1."""
    config = MILModelConfig.from_saved(payload["model_config"])
    spec = payload["task"]
    task = MILTask(spec["name"], tuple(spec["classes"]), spec["survival_loss"], tuple(spec["bin_edges"]))
    model = config.build().to(device)
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval(), task, payload["feature_source"]
