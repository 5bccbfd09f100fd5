"""The MIL aggregators (issue 26): the protocol every member keeps (padding and batch-mates never change an output,
instance scores sum to one over real instances) and each member's defining property from its paper."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from pathme.engines.mil import MILModelConfig
from pathme.networks import AGGREGATORS, aggregator_spec, mil_logits
from pathme.networks.mil import CLAMSB, DSMIL, MaxPoolMIL, MeanPoolMIL
from pathme.networks.mil.transmil import square_padded

DIM, OUTPUTS, HIDDEN = 12, 3, 16
MEMBERS = list(AGGREGATORS)
WITH_SCORES = [name for name in MEMBERS if AGGREGATORS[name].cls.instance_scores]
ORDER_FREE = [name for name in MEMBERS if name != "transmil"]  # TransMIL's PPEG reads the instances' order


def build(name: str, outputs: int = OUTPUTS, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return aggregator_spec(name).build(DIM, outputs, HIDDEN, **options).eval()


def padded(bags: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bags [N_i, D] into [B, Nmax, D] filled with ``fill`` beyond each bag, and the mask of real instances."""
    longest = max(len(bag) for bag in bags)
    features = torch.full((len(bags), longest, DIM), fill)
    mask = torch.zeros(len(bags), longest, dtype=torch.bool)
    for row, bag in enumerate(bags):
        features[row, : len(bag)], mask[row, : len(bag)] = bag, True
    return features, mask


def bags(*lengths: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(sum(lengths))
    return [torch.randn(n, DIM, generator=generator) for n in lengths]


def test_the_registry_holds_the_members_the_field_compares_against() -> None:
    assert set(MEMBERS) == {"abmil", "abmil-plain", "clam-sb", "transmil", "dsmil", "mean-pool", "max-pool"}
    for spec in AGGREGATORS.values():
        assert spec.instance_scores, f"{spec.name} says neither what its scores mean nor why it has none"
        assert spec.defaults_source and spec.lr > 0 and spec.weight_decay >= 0


def test_an_unknown_model_names_every_member() -> None:
    with pytest.raises(ValueError, match=r"unknown MIL model 'clam-mb': choose one of abmil, abmil-plain, clam-sb"):
        aggregator_spec("clam-mb")


@pytest.mark.parametrize("name", MEMBERS)
@pytest.mark.parametrize("fill", [1e30, float("inf"), float("nan")])
def test_padding_values_never_change_an_output(name: str, fill: float) -> None:
    net = build(name)
    clean, dirty = net(*padded(bags(7, 3))), net(*padded(bags(7, 3), fill))
    assert clean.keys() == dirty.keys()
    for key in ("logits", "attention", "embedding"):
        if key in clean:
            assert torch.equal(clean[key], dirty[key]), key
    assert torch.isfinite(clean["logits"]).all()


@pytest.mark.parametrize("name", MEMBERS)
def test_a_bag_alone_equals_the_same_bag_padded_among_others(name: str) -> None:
    long, short = bags(9, 4)
    net = build(name)
    alone = net(short)  # [N, D] is a batch of one
    batch = net(*padded([long, short]))
    torch.testing.assert_close(batch["logits"][1:], alone["logits"])
    torch.testing.assert_close(batch["embedding"][1:], alone["embedding"])
    if "attention" in alone:
        torch.testing.assert_close(batch["attention"][1, :4], alone["attention"][0])


@pytest.mark.parametrize("name", MEMBERS)
def test_instance_scores_sum_to_one_over_real_instances_and_are_zero_on_padding(name: str) -> None:
    features, mask = padded(bags(7, 3))
    out = build(name)(features, mask)
    assert out["logits"].shape == (2, OUTPUTS) and out["embedding"].shape[0] == 2
    if name not in WITH_SCORES:
        assert "attention" not in out and AGGREGATORS[name].cls.no_instance_scores
        return
    assert out["attention"].shape == (2, 7)
    torch.testing.assert_close(out["attention"].sum(dim=1), torch.ones(2))
    assert (out["attention"][~mask] == 0).all() and (out["attention"] >= 0).all()


@pytest.mark.parametrize("name", ORDER_FREE)
def test_pooling_members_are_blind_to_instance_order(name: str) -> None:
    (bag,), order = bags(10), torch.randperm(10, generator=torch.Generator().manual_seed(3))
    net = build(name)
    plain, permuted = net(bag), net(bag[order])
    torch.testing.assert_close(permuted["logits"], plain["logits"])
    if "attention" in plain:
        torch.testing.assert_close(permuted["attention"][0], plain["attention"][0, order])


def test_transmil_reads_the_order_of_its_instances_through_the_ppeg() -> None:
    """The PPEG convolves the instances laid out on a square grid: the same instances in another order give
    other logits (what attention pooling cannot see)."""
    (bag,) = bags(10)
    net = build("transmil")
    assert not torch.allclose(net(bag)["logits"], net(bag.flip(0))["logits"])


def test_transmil_squares_a_sequence_with_copies_of_its_first_instances() -> None:
    for length, side in ((1, 1), (2, 2), (5, 3), (9, 3), (10, 4)):
        h = torch.arange(float(length)).unsqueeze(-1)
        grid, got = square_padded(h)
        assert got == side and len(grid) == side * side
        assert torch.equal(grid[:length], h) and torch.equal(grid[length:, 0], torch.arange(float(side**2 - length)))


@pytest.mark.parametrize("outputs", [1, 2])
def test_dsmil_critical_instance_is_the_highest_scoring_real_instance(outputs: int) -> None:
    """DSMIL's max stream: per output, the critical instance is the one the instance classifier scores highest,
    never a padded row however large its values; the bag logit is the mean of the two streams."""
    net = build("dsmil", outputs)
    assert isinstance(net, DSMIL)
    features, mask = padded(bags(6, 4), fill=1e6)
    out = net(features, mask)
    for row, length in enumerate((6, 4)):
        scores = net.instance_classifier(features[row, :length])
        assert torch.equal(out["critical"][row], scores.argmax(dim=0))
        torch.testing.assert_close(out["max_logits"][row], scores.max(dim=0).values)
    torch.testing.assert_close(out["logits"], (out["max_logits"] + out["bag_logits"]) / 2)
    loss = net.objective(out, lambda logits: logits.sum(), None)
    torch.testing.assert_close(loss, (out["max_logits"].sum() + out["bag_logits"].sum()) / 2)


def test_clam_instance_loss_uses_exactly_k_top_and_k_bottom_real_instances() -> None:
    """CLAM-SB's clustering loss: the true class's instance classifier sees the k most and the k least attended
    real instances (labels 1 and 0) and nothing else: its gradient reaches exactly those 2k instances."""
    net = build("clam-sb", 2, k=3)
    assert isinstance(net, CLAMSB)
    features, mask = padded(bags(11, 5))
    features.requires_grad_(True)
    out = net(features, mask)
    net.instance_loss(out, torch.tensor([1, 0])).backward()
    touched = features.grad.abs().sum(dim=-1) > 0
    for row, length in enumerate((11, 5)):
        k = min(3, length // 2)
        top, bottom = net.instance_samples(out["attention"][row].detach(), length)
        attention = out["attention"][row, :length].detach()
        assert len(top) == len(bottom) == k
        assert set(top.tolist()) == set(attention.argsort(descending=True)[:k].tolist())
        assert set(bottom.tolist()) == set(attention.argsort()[:k].tolist())
        assert set(torch.nonzero(touched[row]).flatten().tolist()) == set(top.tolist()) | set(bottom.tolist())


def test_clam_loss_weighs_bag_and_instance_losses_and_is_the_bag_loss_for_survival() -> None:
    net = build("clam-sb", 2)
    features, mask = padded(bags(10, 8))
    out = net(features, mask)
    target = torch.tensor([0, 1])
    bag = F.cross_entropy(out["logits"], target)
    both = net.objective(out, lambda logits: F.cross_entropy(logits, target), target)
    torch.testing.assert_close(both, 0.7 * bag + 0.3 * net.instance_loss(out, target))
    torch.testing.assert_close(net.objective(out, lambda logits: F.cross_entropy(logits, target), None), bag)


def test_max_pool_scores_are_the_share_of_embedding_dimensions_each_instance_supplied() -> None:
    net = build("max-pool")
    assert isinstance(net, MaxPoolMIL)
    (bag,) = bags(6)
    out, h = net(bag), net.encoder(bag)
    torch.testing.assert_close(out["embedding"][0], h.max(dim=0).values)
    at_max = (h == h.max(dim=0).values).float()  # [6, HIDDEN]; ties (ReLU zeros) share their dimension
    shares = (at_max / at_max.sum(dim=0)).sum(dim=1) / HIDDEN
    torch.testing.assert_close(out["attention"][0], shares)
    assert (at_max.sum(dim=0) > 1).any(), "the bag should hold a tie for this test to check the sharing"


def test_mean_pool_embedding_is_the_mean_of_the_real_instances() -> None:
    net = build("mean-pool")
    assert isinstance(net, MeanPoolMIL)
    features, mask = padded(bags(6, 2))
    out = net(features, mask)
    torch.testing.assert_close(out["embedding"][1], net.encoder(features[1, :2]).mean(dim=0))


@pytest.mark.parametrize("name", MEMBERS)
def test_every_member_learns_a_toy_multiple_instance_task(name: str) -> None:
    """Positive bags hold one instance shifted along a direction; every member separates the classes after a
    short training, so each one really trains through its objective."""
    generator = torch.Generator().manual_seed(0)
    direction = torch.zeros(DIM)
    direction[0] = 4.0
    data = []
    for i in range(40):
        bag = torch.randn(int(torch.randint(4, 12, (1,), generator=generator)), DIM, generator=generator)
        if i % 2:
            bag[0] += direction
        data.append((bag, i % 2))
    net = build(name, 2).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(12):
        for bag, label in data:
            target = torch.tensor([label])
            out = net(bag)
            loss = net.objective(out, lambda logits, t=target: F.cross_entropy(logits, t), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    net.eval()
    with torch.no_grad():
        correct = sum(int(net(bag)["logits"].argmax()) == label for bag, label in data)
    assert correct >= 34, f"{name}: {correct}/40"


@pytest.mark.parametrize("name", MEMBERS)
def test_the_channel_first_view_loads_a_fold_models_weights_and_gives_its_logits(name: str) -> None:
    config = MILModelConfig(DIM, 2, name, HIDDEN)
    torch.manual_seed(0)
    trained = config.build().eval()
    view = mil_logits(name, DIM, 2, HIDDEN).eval()
    view.load_state_dict(trained.state_dict(), strict=True)
    (bag,) = bags(9)
    with torch.no_grad():
        torch.testing.assert_close(view(bag.T.unsqueeze(0)), trained(bag)["logits"])
    if name == "transmil":  # its Nyström attention (einops) does not script
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(view)
    for length in (3, 40):
        (other,) = bags(length)
        with torch.no_grad():
            torch.testing.assert_close(scripted(other.T.unsqueeze(0)), view(other.T.unsqueeze(0)))


def test_fold_models_of_pathme_0_1_load_as_abmil() -> None:
    old = {"in_dim": DIM, "num_outputs": 2, "hidden": 16, "attention_dim": 8, "dropout": 0.25, "gated": False}
    config = MILModelConfig.from_saved(old)
    assert (config.model, config.hidden, config.options) == ("abmil-plain", 16, {"attention_dim": 8})
    assert config.build().attention.v[0].out_features == 8


def test_gated_abmil_has_the_gate_plain_abmil_lacks() -> None:
    gated, plain = build("abmil"), build("abmil-plain")
    assert sum(p.numel() for p in gated.parameters()) > sum(p.numel() for p in plain.parameters())


@pytest.mark.parametrize("name", MEMBERS)
def test_dropout_is_active_only_in_training(name: str) -> None:
    net = build(name, dropout=0.5, **({"passing_v": True} if name == "dsmil" else {}))
    (bag,) = bags(20)
    torch.testing.assert_close(net(bag)["logits"], net(bag)["logits"])
    net.train()
    assert not torch.equal(net(bag)["logits"], net(bag)["logits"])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's deprecation notice for trace and script
def test_abmil_traces_and_scripts_with_masks_to_the_same_outputs() -> None:
    net = build("abmil")
    example = padded(bags(6))
    traced = torch.jit.trace(net, example, strict=False)
    scripted = torch.jit.script(net)
    for inputs in (example, padded(bags(9, 2))):  # another bag count and length
        expected = net(*inputs)
        for compiled in (traced, scripted):
            got = compiled(*inputs)
            for key in expected:
                torch.testing.assert_close(got[key], expected[key])


def test_abmil_attention_finds_the_one_instance_that_matters() -> None:
    """A bag is positive when any instance carries a marker: ABMIL's attention must find that instance."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(64, 10, DIM, generator=generator)
    labels = torch.arange(64) % 2
    features[labels == 1, 0, 0] += 4.0
    torch.manual_seed(0)
    net = aggregator_spec("abmil").build(DIM, 2, 16, dropout=0.0, attention_dim=8)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(net(features)["logits"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    assert (net(features)["logits"].argmax(dim=1) == labels).float().mean() > 0.95
    assert net(features)["attention"][labels == 1].argmax(dim=1).eq(0).float().mean() > 0.9
