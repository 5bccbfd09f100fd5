"""Where an expert's weights come from: a local file, the Hugging Face hub, or a seed.

Each source returns the model with its weights and a digest that identifies them, so a region store can tell
whether its features came from the same weights. Files load strictly: every key of the file must match a
parameter or buffer of the architecture, with the same shape, and none may be missing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file

from pathme.encoders.registry import ExpertSpec, create_model

logger = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
NESTED_KEYS = ("state_dict", "model")  # where training checkpoints keep the weights
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # in the order timm tries them
LISTED = 5  # names shown per kind of mismatch


class WeightsError(ValueError):
    """Weights that cannot be used; the message names the file or source, the key and the fix."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks so multi-GB weight files never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, unwrapped from a ``state_dict``/``model`` entry and any ``module.`` prefix."""
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}; weights must be a file path, 'hub' or 'random'")
    if path.suffix not in SUFFIXES:
        raise WeightsError(f"weight file {path}: unknown format {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            content = load_file(path)
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler and the safetensors parser raise many types on arbitrary bytes
        raise WeightsError(
            f"weight file {path}: not a readable {path.suffix} weight file ({type(error).__name__}: {error})"
        ) from error
    for key in NESTED_KEYS:
        if isinstance(content, Mapping) and isinstance(content.get(key), Mapping):
            content = content[key]
            break
    if not isinstance(content, Mapping):
        raise WeightsError(f"weight file {path}: holds a {type(content).__name__}, not a state dict")
    state = {str(key).removeprefix("module."): value for key, value in content.items()}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"weight file {path}: entry {key!r} is not a tensor ({type(value).__name__})")
    return state


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:LISTED])
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one WeightsError listing every missing key, unexpected key and shape mismatch."""
    problems = []
    mismatched = [
        f"{key!r} has shape {list(state[key].shape)} in the file but {list(value.shape)} in the model"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:LISTED]))
    missing = [key for key in expected if key not in state]
    if missing:
        problems.append(f"missing key(s) {_listed(missing)}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        problems.append(f"unexpected key(s) {_listed(unexpected)}")
    if problems:
        raise WeightsError(f"{source} does not fit the architecture: " + "; ".join(problems))


def from_file(spec: ExpertSpec, path: str | Path) -> tuple[torch.nn.Module, str]:
    """The architecture with a file's weights (strict, shape-checked) and the file's sha256."""
    path = Path(path)
    state = read_state_dict(path)
    source = f"weight file {path} (expert {spec.name!r}, timm {spec.timm_name})"
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = create_model(spec)
    expected = model.state_dict()
    check_state_dict(state, expected, source)
    state = {key: value.to(expected[key].dtype) for key, value in state.items()}
    if set(dict(model.named_buffers())) - set(expected):
        # buffers computed at construction (not saved) would stay empty on the meta device: build for real
        model = create_model(spec)
        model.load_state_dict(state, strict=True)
    else:
        model.load_state_dict(state, strict=True, assign=True)
    return model, file_sha256(path)


def from_seed(spec: ExpertSpec, seed: int) -> tuple[torch.nn.Module, str]:
    """The architecture with timm's random initialisation under ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(spec)
    return model, f"random:{seed}"


def _hub_digest(hub_id: str) -> str:
    """Hub id, commit and sha256 of the weight file timm just downloaded into the Hugging Face cache."""
    repo_id, _, revision = hub_id.removeprefix("hf-hub:").partition("@")
    for filename in HUB_FILES:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(cached, str):
            commit = Path(cached).parent.name  # the cache keeps files under snapshots/<commit>/
            return f"hf-hub:{repo_id}@{commit}/{filename}:sha256:{file_sha256(cached)}"
    logger.warning("weights of %s loaded, but no weight file found in the hub cache to digest", hub_id)
    return hub_id


def from_hub(spec: ExpertSpec) -> tuple[torch.nn.Module, str]:
    """The architecture with weights downloaded from ``spec.hub_id``; needs a network and, for gated models, a login."""
    if spec.hub_id is None:
        raise WeightsError(f"expert {spec.name!r} has no hub weights; give a weight file path or 'random'")
    try:
        model = timm.create_model(spec.hub_id, pretrained=True, **spec.timm_kwargs)
    except Exception as error:  # network, authentication, gating and cache errors come in many types
        raise WeightsError(
            f"expert {spec.name!r}: could not load {spec.hub_id} ({type(error).__name__}: {error}); "
            "check the network, accept the model's terms on huggingface.co and log in (`hf auth login`), "
            "or download the weights and give the file path"
        ) from error
    return model, _hub_digest(spec.hub_id)
