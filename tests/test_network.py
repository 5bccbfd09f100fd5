"""Properties of the PatHME network (METHOD.md section 3) on the tiny config, CPU, fixed seeds."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from pathme.networks import DINOHead, PatHME, PatHMEConfig
from pathme.networks.position import GridPositionEmbedding
from pathme.wsi.grid import L0_PARENT, raster_positions

IN_DIM = 24
P = 10  # prompts in the tiny config
CHILDREN = [torch.as_tensor(L0_PARENT) == j for j in range(16)]


def build(seed: int = 0, **changes) -> PatHME:
    """Tiny network in eval mode; layerscale_init 1.0 unless overridden, so that every path visibly matters."""
    torch.manual_seed(seed)
    changes.setdefault("layerscale_init", 1.0)
    return PatHME(replace(PatHMEConfig.tiny(IN_DIM), **changes)).eval()


def grid(side: int, batch: int, row0: int = 0, col0: int = 0, rows: int | None = None) -> torch.Tensor:
    """(row, col) of a ``rows`` x ``rows`` window at (row0, col0) of a ``side`` grid, [B, rows**2, 2]."""
    rows = rows or side
    positions = torch.as_tensor(raster_positions(rows, rows)) + torch.tensor([row0, col0])
    return positions.expand(batch, -1, -1)


def region(batch: int = 2, seed: int = 1, missing: float = 0.3) -> dict[str, torch.Tensor]:
    """Random expert-A features of whole regions with some missing tiles (each sample keeps a valid L1 tile)."""
    gen = torch.Generator().manual_seed(seed)
    l0_valid = torch.rand(batch, 256, generator=gen) > missing
    l1_valid = torch.rand(batch, 16, generator=gen) > missing
    l1_valid[:, 0] = True
    return {
        "l0_feats": torch.randn(batch, 256, IN_DIM, generator=gen),
        "l0_valid": l0_valid,
        "l1_feats": torch.randn(batch, 16, IN_DIM, generator=gen),
        "l1_valid": l1_valid,
    }


def backbone_outputs(batch: int = 2, seed: int = 2, dim: int = 64) -> dict[str, torch.Tensor]:
    """Random HMSA inputs: L0 and L1 tokens, validity and prompts."""
    gen = torch.Generator().manual_seed(seed)
    l0_valid = torch.rand(batch, 256, generator=gen) > 0.2
    l1_valid = torch.ones(batch, 16, dtype=torch.bool)
    return {
        "l0": torch.randn(batch, 256, dim, generator=gen),
        "l0_valid": l0_valid,
        "l1": torch.randn(batch, 16, dim, generator=gen),
        "l1_valid": l1_valid,
        "prompts": torch.randn(batch, P, dim, generator=gen),
    }


def with_garbage(features: torch.Tensor, valid: torch.Tensor, seed: int = 9) -> torch.Tensor:
    """The same features with large random values wherever the tile is missing."""
    gen = torch.Generator().manual_seed(seed)
    garbage = 1e3 * torch.randn(features.shape, generator=gen)
    return torch.where(valid[..., None], features, garbage)


def encode_both(model: PatHME, data: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    batch = data["l0_feats"].shape[0]
    l0 = model.encode(data["l0_feats"], grid(16, batch), data["l0_valid"], "L0")
    l1 = model.encode(data["l1_feats"], grid(4, batch), data["l1_valid"], "L1")
    return l0, l1


# 1. VPT-deep ---------------------------------------------------------------------------------------------------


def record_blocks(model: PatHME) -> tuple[list, list]:
    """Forward hooks keeping every block's input sequence and output sequence."""
    inputs, outputs = [], []

    def keep(_module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs.append(args[0])
        outputs.append(out)

    for block in model.blocks:
        block.register_forward_hook(keep)
    return inputs, outputs


def test_vpt_deep_keeps_patch_state_and_replaces_prompts() -> None:
    model = build(depth=3)
    data = region()
    inputs, outputs = record_blocks(model)
    with torch.no_grad():
        l1 = model.encode(data["l1_feats"], grid(4, 2), data["l1_valid"], "L1")
    assert len(inputs) == 3 and inputs[0].shape == (2, 1 + P + 16, 64)
    for k in range(3):
        assert torch.equal(inputs[k][:, 1 : 1 + P], model.prompts[k].expand(2, -1, -1)), "prompts are not fresh"
        if k:
            # CLS and patch tokens entering block k are block k-1's outputs, not the input tokens again
            assert torch.equal(inputs[k][:, :1], outputs[k - 1][:, :1])
            assert torch.equal(inputs[k][:, 1 + P :], outputs[k - 1][:, 1 + P :])
            assert not torch.allclose(inputs[k][:, 1 + P :], inputs[0][:, 1 + P :], atol=1e-3)
            assert not torch.allclose(outputs[k - 1][:, 1 : 1 + P], inputs[k][:, 1 : 1 + P], atol=1e-3)
    valid = data["l1_valid"][..., None]
    assert torch.equal(l1["prompts"], model.norm(outputs[-1][:, 1 : 1 + P]))
    assert torch.equal(l1["patches"], torch.where(valid, model.norm(outputs[-1][:, 1 + P :]), 0))

    # perturbing layer 0's prompts changes the L1 patches (they are attended to), not layer 1's prompt inputs
    inputs.clear()
    outputs.clear()
    with torch.no_grad():
        model.prompts[0].add_(torch.randn_like(model.prompts[0]))
        perturbed = model.encode(data["l1_feats"], grid(4, 2), data["l1_valid"], "L1")
    assert not torch.allclose(perturbed["patches"], l1["patches"], atol=1e-3)
    assert torch.equal(inputs[1][:, 1 : 1 + P], model.prompts[1].expand(2, -1, -1))


def test_l0_sequence_has_no_prompts() -> None:
    model = build()
    data = region()
    inputs, _ = record_blocks(model)
    with torch.no_grad():
        l0 = model.encode(data["l0_feats"], grid(16, 2), data["l0_valid"], "L0")
    assert inputs[0].shape == (2, 1 + 256, 64) and "prompts" not in l0


# 2. HMSA locality ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("j", [0, 5, 15])
def test_local_hmsa_sees_only_own_children(j: int) -> None:
    model = build()
    x = backbone_outputs()
    with torch.no_grad():
        base = model.hmsa_local(x["l0"], x["l0_valid"], x["l1"], x["l1_valid"])
        changed_l0 = x["l0"].clone()
        changed_l0[:, CHILDREN[j]] += torch.randn_like(changed_l0[:, CHILDREN[j]])
        out = model.hmsa_local(changed_l0, x["l0_valid"], x["l1"], x["l1_valid"])
    others = torch.arange(16) != j
    assert torch.equal(out[:, others], base[:, others])
    assert not torch.allclose(out[:, j], base[:, j], atol=1e-3)


def test_global_hmsa_sees_every_l0_token() -> None:
    model = build()
    x = backbone_outputs()
    x["l0_valid"][:, 200] = True
    with torch.no_grad():
        base = model.hmsa(**x)
        x["l0"][:, 200] += 1.0  # a child of L1 token 12 only
        out = model.hmsa(**x)
    assert ((out - base).abs().amax(dim=-1) > 1e-4).all(), "every prompt and L1 row attends to every L0 token"


def test_l1_token_without_valid_children_passes_local_layers_unchanged() -> None:
    model = build()
    x = backbone_outputs()
    x["l0_valid"][:, CHILDREN[3]] = False
    with torch.no_grad():
        local = model.hmsa_local(x["l0"], x["l0_valid"], x["l1"], x["l1_valid"])
        full = model.hmsa(**x)
    assert torch.equal(local[:, 3], x["l1"][:, 3])
    assert torch.isfinite(full).all()


# 3. invalid tokens ---------------------------------------------------------------------------------------------


def test_invalid_tokens_affect_no_output() -> None:
    model = build()
    data = region()
    noisy = dict(data)
    noisy["l0_feats"] = with_garbage(data["l0_feats"], data["l0_valid"])
    noisy["l1_feats"] = with_garbage(data["l1_feats"], data["l1_valid"])
    with torch.no_grad():
        clean_out, noisy_out = encode_both(model, data), encode_both(model, noisy)
        for clean, dirty in zip(clean_out, noisy_out, strict=True):
            for key in clean:
                torch.testing.assert_close(dirty[key], clean[key], atol=1e-6, rtol=0)
        # positions of missing tiles do not matter either
        scrambled = torch.where(data["l0_valid"][..., None], grid(16, 2), torch.randint(0, 99, (2, 256, 2)))
        moved = model.encode(data["l0_feats"], scrambled, data["l0_valid"], "L0")
        torch.testing.assert_close(moved["cls"], clean_out[0]["cls"], atol=1e-6, rtol=0)
        torch.testing.assert_close(model.region_tokens(**noisy), model.region_tokens(**data), atol=1e-6, rtol=0)
    assert not clean_out[0]["patches"][~data["l0_valid"]].any(), "outputs of missing tiles are zero"
    assert not clean_out[1]["patches"][~data["l1_valid"]].any()


def test_invalid_tokens_are_masked_not_merely_zeroed() -> None:
    """A sequence with missing tiles gives the same valid outputs as the sequence without them."""
    model = build()
    data = region(batch=1)
    valid = data["l0_valid"][0]
    with torch.no_grad():
        full = model.encode(data["l0_feats"], grid(16, 1), data["l0_valid"], "L0")
        kept = model.encode(data["l0_feats"][:, valid], grid(16, 1)[:, valid], data["l0_valid"][:, valid], "L0")
    torch.testing.assert_close(kept["cls"], full["cls"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kept["patches"], full["patches"][:, valid], atol=1e-5, rtol=1e-5)


def test_invalid_tokens_do_not_reach_hmsa_outputs() -> None:
    model = build()
    x = backbone_outputs()
    x["l1_valid"][:, [2, 9]] = False
    noisy = dict(x)
    noisy["l0"] = with_garbage(x["l0"], x["l0_valid"])
    noisy["l1"] = with_garbage(x["l1"], x["l1_valid"])
    with torch.no_grad():
        torch.testing.assert_close(model.hmsa(**noisy), model.hmsa(**x), atol=1e-6, rtol=0)
        local = (x["l0"], x["l0_valid"], x["l1"], x["l1_valid"])
        noisy_local = (noisy["l0"], x["l0_valid"], noisy["l1"], x["l1_valid"])
        torch.testing.assert_close(model.hmsa_local(*noisy_local), model.hmsa_local(*local), atol=1e-6, rtol=0)


def test_gradients_finite_with_missing_tiles() -> None:
    model = build().train()
    data = region()
    data["l0_valid"][:, CHILDREN[0]] = False  # an L1 tile with no valid child
    model.region_tokens(**data).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# 4. token order through HMSA -----------------------------------------------------------------------------------


def test_hmsa_rows_follow_their_inputs() -> None:
    model = build()
    x = backbone_outputs()
    with torch.no_grad():
        base = model.hmsa(**x)
        for row, key, index in [(3, "prompts", 3), (P + 6, "l1", 6)]:
            changed = dict(x)
            changed[key] = x[key].clone()
            changed[key][:, index] += 1.0
            diff = (model.hmsa(**changed) - base).abs().amax(dim=(0, 2))
            assert diff[row] > 1e-4 and (diff[torch.arange(P + 16) != row] == 0).all()


def test_hmsa_permutes_with_its_inputs() -> None:
    """Moving L1 tiles (children along) to other cells moves their rows; prompts stay first, in order."""
    model = build()
    x = backbone_outputs()
    x["l1_valid"][:, 4] = False
    gen = torch.Generator().manual_seed(3)
    perm = torch.randperm(16, generator=gen)  # new cell j holds old cell perm[j]
    child_index = torch.stack([torch.nonzero(c)[:, 0] for c in CHILDREN])  # [16 cells, 16 children]
    l0_perm = torch.empty(256, dtype=torch.long)
    l0_perm[child_index.flatten()] = child_index[perm].flatten()
    moved = {
        "l0": x["l0"][:, l0_perm],
        "l0_valid": x["l0_valid"][:, l0_perm],
        "l1": x["l1"][:, perm],
        "l1_valid": x["l1_valid"][:, perm],
        "prompts": x["prompts"],
    }
    with torch.no_grad():
        base, out = model.hmsa(**x), model.hmsa(**moved)
        local = model.hmsa_local(x["l0"], x["l0_valid"], x["l1"], x["l1_valid"])
        local_moved = model.hmsa_local(moved["l0"], moved["l0_valid"], moved["l1"], moved["l1_valid"])
    torch.testing.assert_close(local_moved, local[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, :P], base[:, :P], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, P:], base[:, P:][:, perm], atol=1e-5, rtol=1e-5)
    zero_rows = (out.abs().amax(dim=-1) == 0)[0]
    assert zero_rows.nonzero()[:, 0].tolist() == [P + int((perm == 4).nonzero())]


# 5. shapes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_shapes_global_and_local_views(batch: int) -> None:
    model = build()
    data = region(batch=batch)
    with torch.no_grad():
        l0, l1 = encode_both(model, data)
        tokens = model.region_tokens(**data)
        local0 = model.encode(
            torch.randn(batch, 36, IN_DIM), grid(16, batch, 5, 9, 6), torch.ones(batch, 36, dtype=torch.bool), "L0"
        )
        local1 = model.encode(
            torch.randn(batch, 9, IN_DIM), grid(4, batch, 1, 0, 3), torch.ones(batch, 9, dtype=torch.bool), "L1"
        )
    assert l0["cls"].shape == (batch, 64) and l0["patches"].shape == (batch, 256, 64)
    assert l1["patches"].shape == (batch, 16, 64) and l1["prompts"].shape == (batch, P, 64)
    assert local0["patches"].shape == (batch, 36, 64) and local1["patches"].shape == (batch, 9, 64)
    assert local1["prompts"].shape == (batch, P, 64)
    assert tokens.shape == (batch, P + 16, 64)
    assert model.head(l0["cls"]).shape == (batch, 512) and model.head(l0["patches"]).shape == (batch, 256, 512)


def test_positions_come_from_inputs() -> None:
    """A local window's tokens are embedded at their true grid cells; out-of-grid positions are refused."""
    model = build()
    feats, ones = torch.randn(1, 36, IN_DIM), torch.ones(1, 36, dtype=torch.bool)
    with torch.no_grad():
        here = model.encode(feats, grid(16, 1, 0, 0, 6), ones, "L0")
        there = model.encode(feats, grid(16, 1, 10, 10, 6), ones, "L0")
    assert not torch.allclose(here["cls"], there["cls"], atol=1e-4)
    with pytest.raises(ValueError, match="positions"):
        model.encode(feats, grid(16, 1, 0, 0, 6) + 11, ones, "L0")
    l1_table = model.pos_embed.grid("L1")
    torch.testing.assert_close(l1_table[5], model.pos_embed.table[CHILDREN[5]].mean(0))


def test_paper_config_size_and_forward() -> None:
    torch.manual_seed(0)
    model = PatHME(PatHMEConfig(in_dim=1536)).eval()
    backbone = sum(p.numel() for p in model.blocks.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 150e6 < backbone < 153e6  # 12 blocks of 12 D^2 + small terms at D = 1024
    assert 200e6 < total < 220e6  # + projector, HMSA (8 x 4 D^2), DINO head with 65536 prototypes
    data = {
        "l0_feats": torch.randn(1, 256, 1536),
        "l0_valid": torch.ones(1, 256, dtype=torch.bool),
        "l1_feats": torch.randn(1, 16, 1536),
        "l1_valid": torch.ones(1, 16, dtype=torch.bool),
    }
    with torch.no_grad():
        tokens = model.region_tokens(**data)
        logits = model.head(tokens[:, 0])
    assert tokens.shape == (1, 26, 1024) and logits.shape == (1, 65536)


# 6. head and optimiser groups ----------------------------------------------------------------------------------


def test_dino_head_weight_normalised_with_fixed_g() -> None:
    torch.manual_seed(0)
    head = DINOHead(64, 512, 128, 32)
    assert not head.weight_g.requires_grad and torch.equal(head.weight_g, torch.ones(512, 1))
    with torch.no_grad():
        head.last_layer.parametrizations.weight.original1.mul_(7.0)
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(512))
    logits = head(torch.randn(5, 64))
    assert logits.shape == (5, 512) and logits.abs().max() <= 1 + 1e-5  # cosines to unit prototypes
    logits.sum().backward()
    assert head.weight_g.grad is None and head.last_layer.parametrizations.weight.original1.grad is not None


def test_param_groups_decay_and_layer_rates() -> None:
    model = build(depth=3)
    groups = model.param_groups(weight_decay=0.04, layer_decay=0.9, base_lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.04 for p in g["params"]}
    for expected in [
        "blocks.0.attn.qkv.bias",
        "blocks.1.norm1.weight",
        "blocks.2.ls1.gamma",
        "norm.bias",
        "pos_embed.table",
        "cls_token",
        "mask_token",
        "prompts.0",
        "fusion.local_layers.0.norm.weight",
        "head.mlp.0.bias",
    ]:
        assert expected in no_decay, expected
    assert {"blocks.0.attn.qkv.weight", "projector.0.weight", "head.mlp.0.weight"} <= decay
    assert all(model.get_parameter(n).ndim == 2 for n in decay)
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    blocks = [scale[f"blocks.{i}.attn.qkv.weight"] for i in range(3)]
    assert scale["projector.0.weight"] < blocks[0] < blocks[1] < blocks[2] < scale["head.mlp.0.weight"] == 1.0
    assert scale["fusion.global_layers.0.q.weight"] == 1.0 and scale["prompts.1"] == blocks[1]
    torch.testing.assert_close(torch.tensor(blocks), 0.9 ** torch.tensor([3.0, 2.0, 1.0]))
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) and g["name"] for g in groups)


# 7. iBOT masking -----------------------------------------------------------------------------------------------


def test_mask_token_replaces_masked_inputs() -> None:
    model = build()
    with torch.no_grad():
        model.mask_token.normal_()
    data = region()
    feats, valid, pos = data["l0_feats"], data["l0_valid"], grid(16, 2)
    masked_valid = torch.zeros(2, 256, dtype=torch.bool)
    masked_valid[:, valid[0] & valid[1]] = True
    masked_valid[:, 128:] = False
    masked_invalid = ~valid
    with torch.no_grad():
        plain = model.encode(feats, pos, valid, "L0")
        masked = model.encode(feats, pos, valid, "L0", mask=masked_valid)
        other = torch.where(masked_valid[..., None], torch.randn_like(feats), feats)
        masked_other = model.encode(other, pos, valid, "L0", mask=masked_valid)
        invalid_only = model.encode(feats, pos, valid, "L0", mask=masked_invalid)
    assert not torch.allclose(masked["cls"], plain["cls"], atol=1e-4)
    for key in plain:
        torch.testing.assert_close(masked_other[key], masked[key], atol=1e-6, rtol=0)  # masked inputs are gone
        torch.testing.assert_close(invalid_only[key], plain[key], atol=1e-6, rtol=0)


# 8. determinism ------------------------------------------------------------------------------------------------


def test_same_seed_same_network_and_outputs() -> None:
    data = region()
    a, b, c = build(seed=0, drop_path=0.2), build(seed=0, drop_path=0.2), build(seed=1, drop_path=0.2)
    with torch.no_grad():
        assert torch.equal(a.region_tokens(**data), b.region_tokens(**data))
        assert not torch.allclose(a.region_tokens(**data), c.region_tokens(**data))
        a.train(), b.train()
        outs = []
        for model in (a, b):
            torch.manual_seed(5)
            outs.append(model.region_tokens(**data))
    assert torch.equal(*outs)
    teacher = copy.deepcopy(a).eval()  # an EMA teacher is a deep copy
    a.eval()
    assert torch.equal(teacher.region_tokens(**data), a.region_tokens(**data))
    assert set(teacher.state_dict()) == set(a.state_dict())


# 9. Input standardisation and the CLS at initialisation ----------------------------------------------------------


def test_input_statistics_standardise_the_tokens() -> None:
    data = region()
    mean, std = torch.linspace(-2, 2, IN_DIM), torch.linspace(0.5, 3, IN_DIM)
    plain, standardised = build(), build()
    standardised.set_input_statistics(mean, std)
    shifted = {**data, "l0_feats": data["l0_feats"] * std + mean, "l1_feats": data["l1_feats"] * std + mean}
    for expected, got in zip(encode_both(plain, data), encode_both(standardised, shifted), strict=True):
        torch.testing.assert_close(got["cls"], expected["cls"], rtol=1e-4, atol=1e-4)
    assert "input_mean" in standardised.state_dict() and "input_std" in standardised.state_dict()
    with pytest.raises(ValueError, match="positive"):
        standardised.set_input_statistics(mean, torch.zeros(IN_DIM))


def test_cls_outputs_differ_between_regions_at_initialisation() -> None:
    """With LayerScale near zero (the paper's 1e-5) a large CLS token made every region's CLS output the same at
    initialisation (cosine 1.000), which left DINO's centring nothing to keep and collapsed it to uniform."""
    model = build(layerscale_init=1e-5)
    data = region(batch=2)
    data["l0_feats"] = data["l0_feats"] + torch.tensor([1.0, -1.0])[:, None, None]  # two different tissues
    cls = torch.nn.functional.normalize(encode_both(model, data)[0]["cls"].detach(), dim=-1)
    assert float(cls[0] @ cls[1]) < 0.97  # 1.000 before the fix


def test_position_embedding_gradient_repeats_bit_for_bit_on_two_threads() -> None:
    """Many tiles share a grid cell; their gradients must sum in a fixed order, or a distillation run on a 2-core
    CPU gives a different teacher each time (indexing's backward did: 12 of 20 repeats differed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generator = torch.Generator().manual_seed(0)
        embedding = GridPositionEmbedding(32)
        positions = torch.randint(0, 16, (16, 256, 2), generator=generator)
        valid = torch.rand(16, 256, generator=generator) > 0.3
        weights = torch.randn(16, 256, 32, generator=generator)

        def gradient() -> torch.Tensor:
            embedding.zero_grad()
            (embedding(positions, valid, "L0") * weights).sum().backward()
            return embedding.table.grad.clone()

        first = gradient()
        assert all(torch.equal(first, gradient()) for _ in range(20))
    finally:
        torch.set_num_threads(threads)
