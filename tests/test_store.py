"""The region store: exact round trips, all-or-nothing writes, and a validator that catches every kind of damage."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest

from pathme.store import (
    SCHEMA_VERSION,
    RegionStoreWriter,
    StoreError,
    config_digest,
    file_digest,
    read_store_summary,
    store_is_done,
    validate_store,
    write_features_h5,
)
from pathme.store.schema import TOKEN_ATTRS
from pathme.store.tokens import TokenProvenance, write_token_store
from pathme.synthetic.stores import SLIDE_SIZE, region_arrays, store_attrs
from pathme.wsi.grid import RegionGrid

EXPERTS = {"alpha": 8, "beta": 5}


def make_attrs(**overrides: object) -> dict[str, object]:
    attrs = store_attrs("s1", "p1", EXPERTS) | {
        "slide_path": Path("/data/s1.svs"),
        "slide_digest": "sha256:" + "a" * 64,
        "mpp_source": "metadata:openslide.mpp-x",
        "expert_weights": {"alpha": "random", "beta": "/weights/beta.safetensors"},
        "expert_digests": {"alpha": "random", "beta": "sha256:" + "b" * 64},
    }
    return {**attrs, **overrides}


def make_regions(n: int = 3, seed: int = 0) -> list[dict]:
    """Regions on the slide's grid with random validity; invalid tiles hold NaN, which the store allows."""
    rng = np.random.default_rng(seed)
    origins = RegionGrid(*SLIDE_SIZE, 0.5).origins()
    return [
        {"coords": tuple(int(value) for value in origins[index]), **region_arrays("sparse", rng, EXPERTS)}
        for index in range(n)
    ]


def write_store(path: Path, regions: list[dict] | None = None, feature_dtype: str = "float16", **attrs: object) -> Path:
    regions = make_regions() if regions is None else regions
    writer = RegionStoreWriter(
        path, attrs=make_attrs(**attrs), n_regions=len(regions), experts=EXPERTS, feature_dtype=feature_dtype
    )
    with writer:
        for index, region in enumerate(regions):
            writer.write_region(index, **region)
        return writer.commit()


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "s1.h5")


def as_stored(region: dict, expert: str, position: int, dtype: str) -> np.ndarray:
    """What the store holds: valid tiles in ``dtype``, invalid ones zero (L2 is always valid)."""
    values = region["features"][expert][position]
    valid = (region["valid_l0"], region["valid_l1"], np.array(True))[position]
    return np.where(valid[..., None], values, 0).astype(dtype)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_store_reads_back_exactly(tmp_path, dtype):
    regions = make_regions()
    path = write_store(tmp_path / "s1.h5", regions, feature_dtype=dtype)
    with h5py.File(path, "r") as file:
        np.testing.assert_array_equal(file["coords"][()], [region["coords"] for region in regions])
        assert file["coords"].dtype == np.int64
        for level in ("L0", "L1"):
            np.testing.assert_array_equal(file[f"valid/{level}"][()], [r[f"valid_{level.lower()}"] for r in regions])
        for expert, dim in EXPERTS.items():
            for position, level in enumerate(("L0", "L1", "L2")):
                stored = file[f"features/{expert}/{level}"]
                assert stored.dtype == np.dtype(dtype)
                assert stored.chunks == (1, *stored.shape[1:])  # one region, one chunk read
                assert (stored.compression, stored.compression_opts, stored.shuffle) == ("gzip", 1, True)
                np.testing.assert_array_equal(stored[()], [as_stored(r, expert, position, dtype) for r in regions])
            assert file[f"features/{expert}/L0"].shape == (3, 256, dim)
    attrs = validate_store(path, experts=["beta"])
    assert attrs["slide_size"] == list(SLIDE_SIZE)
    assert attrs["slide_path"] == "/data/s1.svs"
    assert attrs["experts"] == ["alpha", "beta"]
    assert attrs["expert_dims"] == EXPERTS
    assert attrs["expert_digests"] == make_attrs()["expert_digests"]
    assert (attrs["schema_version"], attrs["complete"], attrs["region_extent"]) == (SCHEMA_VERSION, True, 4096.0)
    assert (attrs["feature_dtype"], attrs["compression"]) == (dtype, "gzip-1+shuffle")
    assert (attrs["tile_px"], attrs["region_px"], attrs["l0_mpp"], attrs["l2_mpp"]) == (256, 4096, 0.5, 8.0)
    assert read_store_summary(path) == {
        "path": str(path),
        "slide_id": "s1",
        "complete": True,
        "n_regions": 3,
        "experts": EXPERTS,
        "valid_l0_tiles": int(sum(r["valid_l0"].sum() for r in regions)),
        "valid_l1_tiles": int(sum(r["valid_l1"].sum() for r in regions)),
        "has_tokens": False,
    }
    assert leftovers(tmp_path) == []


def test_a_slide_without_tissue_has_a_valid_empty_store(tmp_path):
    path = write_store(tmp_path / "empty.h5", [])
    validate_store(path, experts=list(EXPERTS))
    with h5py.File(path, "r") as file:
        assert file["coords"].shape == (0, 2)
        assert file["valid/L0"].shape == (0, 256)
        assert file["features/alpha/L0"].shape == (0, 256, 8)
        assert file["features/beta/L2"].shape == (0, 5)
    assert read_store_summary(path)["n_regions"] == 0


def test_identical_writes_give_identical_bytes(tmp_path):
    first = write_store(tmp_path / "a.h5")
    second = write_store(tmp_path / "b.h5")
    assert first.read_bytes() == second.read_bytes()
    with h5py.File(first, "r") as file:  # no modification times, so the bytes do not depend on the clock
        names: list[str] = []
        file.visit(names.append)
        assert all(h5py.h5o.get_info(file[name].id).mtime == 0 for name in names)


def test_an_exception_inside_the_writer_leaves_nothing(tmp_path):
    path = tmp_path / "s1.h5"
    with (
        pytest.raises(RuntimeError, match="encoder crashed"),
        RegionStoreWriter(path, attrs=make_attrs(), n_regions=3, experts=EXPERTS) as writer,
    ):
        writer.write_region(0, **make_regions()[0])
        raise RuntimeError("encoder crashed")
    assert list(tmp_path.iterdir()) == []


def test_leaving_the_writer_without_commit_is_an_error_and_leaves_nothing(tmp_path):
    path = tmp_path / "s1.h5"
    with (
        pytest.raises(StoreError, match="without commit"),
        RegionStoreWriter(path, attrs=make_attrs(), n_regions=1, experts=EXPERTS) as writer,
    ):
        writer.write_region(0, **make_regions(1)[0])
    assert list(tmp_path.iterdir()) == []


def test_commit_refuses_a_store_with_unwritten_regions(tmp_path):
    with (
        pytest.raises(StoreError, match="1 of 3 regions never written, e.g. 2"),
        RegionStoreWriter(tmp_path / "s1.h5", attrs=make_attrs(), n_regions=3, experts=EXPERTS) as writer,
    ):
        for index, region in enumerate(make_regions(2)):
            writer.write_region(index, **region)
        writer.commit()
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import os, signal, sys
sys.path[:0] = [{tests!r}]
from test_store import EXPERTS, make_attrs, make_regions
from pathme.store import RegionStoreWriter
writer = RegionStoreWriter({path!r}, attrs=make_attrs(), n_regions=3, experts=EXPERTS)
writer.write_region(0, **make_regions()[0])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_leaves_no_store_and_the_next_run_cleans_up(tmp_path):
    path = tmp_path / "s1.h5"
    script = KILLED_WRITER.format(tests=str(Path(__file__).parent), path=str(path))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert result.returncode == -9, result.stderr
    assert not path.exists()
    assert len(leftovers(tmp_path)) == 1
    assert not store_is_done(path)
    write_store(path)
    assert store_is_done(path, experts=list(EXPERTS))
    assert leftovers(tmp_path) == []


def test_a_second_writer_leaves_a_live_writers_file_alone(tmp_path):
    path = tmp_path / "s1.h5"
    regions = make_regions(1)
    with RegionStoreWriter(path, attrs=make_attrs(), n_regions=1, experts=EXPERTS) as first:
        write_store(path, regions)
        assert len(leftovers(tmp_path)) == 1  # the first writer's temporary file survived the second's clean-up
        first.write_region(0, **regions[0])
        first.commit()
    assert store_is_done(path)
    assert leftovers(tmp_path) == []


def _damage(path: Path, change: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "a") as file:
        change(file)


def _set_dataset(name: str, value: np.ndarray) -> Callable[[h5py.File], None]:
    def change(file: h5py.File) -> None:
        if name in file:
            del file[name]
        file[name] = value

    return change


def _poke(name: str, index: tuple, value: object) -> Callable[[h5py.File], None]:
    def change(file: h5py.File) -> None:
        data = file[name][()]
        data[index] = value
        file[name][...] = data

    return change


def _del_attr(name: str) -> Callable[[h5py.File], None]:
    return lambda file: file.attrs.__delitem__(name)


def _set_attr(name: str, value: object) -> Callable[[h5py.File], None]:
    return lambda file: file.attrs.__setitem__(name, value)


def _first_valid(path: Path, region: int) -> int:
    with h5py.File(path, "r") as file:
        return int(np.flatnonzero(file["valid/L0"][region])[0])


DAMAGE = {
    "missing complete": (_del_attr("complete"), "not complete"),
    "wrong schema version": (_set_attr("schema_version", 99), "schema version 99"),
    "missing attribute": (_del_attr("slide_digest"), "missing attribute.*slide_digest"),
    "bad slide size": (_set_attr("slide_size", "[9000, -1]"), "slide_size"),
    "wrong geometry": (_set_attr("region_extent", 8192.0), "region_extent.*8192.0.*4096.0"),
    "missing dataset": (lambda file: file.__delitem__("features/beta/L1"), "dataset 'features/beta/L1' missing"),
    "shape mismatch": (
        _set_dataset("features/beta/L1", np.zeros((3, 16, 4), np.float16)),
        r"'features/beta/L1' has shape \(3, 16, 4\), expected \(3, 16, 5\)",
    ),
    "dtype mismatch": (
        _set_dataset("features/alpha/L2", np.zeros((3, 8), np.float64)),
        r"'features/alpha/L2' has dtype float64, expected float16 \(attribute 'feature_dtype'\)",
    ),
    "feature_dtype says float32": (_set_attr("feature_dtype", "float32"), "has dtype float16, expected float32"),
    "feature_dtype unknown": (_set_attr("feature_dtype", "bfloat16"), "'feature_dtype' is 'bfloat16', expected one"),
    "not compressed as recorded": (
        _set_dataset("features/alpha/L2", np.zeros((3, 8), np.float16)),
        r"'features/alpha/L2' has filters \(None, None, False\), not the gzip-1\+shuffle",
    ),
    "compression unknown": (_set_attr("compression", "zstd"), "'compression' is 'zstd', but this pathme writes"),
    "version 1 store": (
        _set_attr("schema_version", 1),
        r"schema version 1 was written by an older .*rerun `pathme extract`",
    ),
    "fewer regions in one dataset": (_set_dataset("valid/L1", np.ones((2, 16), bool)), "'valid/L1' has shape"),
    "unlisted expert": (
        _set_dataset("features/gamma/L2", np.zeros((3, 2), np.float16)),
        "expert.*gamma.*does not list",
    ),
    "valid/L1 inconsistent": (_poke("valid/L1", (2,), False), r"region 2 at level-0 \(8192, 0\): valid/L1 differs"),
    "NaN in L2": (_poke("features/beta/L2", (1, 3), np.nan), "region 1 .*features/beta/L2 has non-finite"),
    "coords outside": (_poke("coords", (2, 0), 9000), r"region 2 at level-0 \(9000, 0\) lies outside"),
    "duplicate coords": (_poke("coords", (2,), (0, 0)), r"regions \[0, 2\] share the level-0 position \(0, 0\)"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_validation_names_the_file_and_the_problem(store, case):
    change, message = DAMAGE[case]
    validate_store(store)
    _damage(store, change)
    with pytest.raises(StoreError, match=message) as caught:
        validate_store(store)
    assert str(caught.value).startswith(f"{store}: ")
    assert not store_is_done(store)


def test_nan_in_a_valid_tile_is_caught(store):
    tile = _first_valid(store, 1)
    _damage(store, _poke("features/alpha/L0", (1, tile, 0), np.nan))
    with pytest.raises(StoreError, match="region 1 at level-0 .*features/alpha/L0 has non-finite values"):
        validate_store(store)


def test_damaged_bytes_are_a_store_error_not_an_h5py_traceback(store, tmp_path):
    data = store.read_bytes()
    truncated, garbage = tmp_path / "truncated.h5", tmp_path / "garbage.h5"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    for path in (truncated, garbage):
        with pytest.raises(StoreError, match=f"{path}: unreadable as a region store"):
            validate_store(path)
        with pytest.raises(StoreError, match="unreadable"):
            read_store_summary(path)
        assert not store_is_done(path)


def test_flipped_bytes_inside_a_feature_chunk_are_caught(store):
    with h5py.File(store, "r") as file:
        chunk = file["features/alpha/L0"].id.get_chunk_info(1)
    data = bytearray(store.read_bytes())
    data[chunk.byte_offset + 100] ^= 0xFF
    store.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="unreadable as a region store .*filter returned failure"):
        validate_store(store)


def test_inputs_must_match_what_the_rerun_expects(store):
    assert validate_store(store, expected={"slide_digest": "sha256:" + "a" * 64, "slide_size": SLIDE_SIZE})
    with pytest.raises(StoreError, match="attribute 'slide_digest' is 'sha256:a+', expected 'sha256:b+'"):
        validate_store(store, expected={"slide_digest": "sha256:" + "b" * 64})
    changed = {"alpha": "random", "beta": "sha256:" + "d" * 64}
    with pytest.raises(StoreError, match="attribute 'expert_digests' is .*'sha256:b+'.*expected .*'sha256:d+'"):
        validate_store(store, expected={"expert_digests": changed})
    with pytest.raises(StoreError, match="attribute 'seed' missing"):
        validate_store(store, expected={"seed": 0})
    with pytest.raises(StoreError, match=r"expert\(s\) gamma missing \(the store has alpha, beta\)"):
        validate_store(store, experts=["alpha", "gamma"])


def test_missing_store_is_not_done_and_says_why(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pathme.store"):
        assert not store_is_done(tmp_path / "absent.h5")
    assert "absent.h5: no store there" in caplog.text


TEACHER = TokenProvenance(teacher_checkpoint="/runs/teacher.pt", teacher_digest="sha256:" + "e" * 64)


def write_tokens(store: Path, target: Path, dim: int = 4) -> np.ndarray:
    """The token store of ``store`` at ``target`` with random tokens [3, 26, dim]; returns the tokens."""
    tokens = np.random.default_rng(1).standard_normal((3, 26, dim)).astype(np.float32)
    write_token_store(store, target, tokens, np.zeros((3, 26, 2), np.int64), TEACHER)
    return tokens


@pytest.fixture
def token_store(store: Path) -> Path:
    target = store.parent / "tokens" / store.name
    target.parent.mkdir()
    write_tokens(store, target)
    return target


def test_a_token_store_links_its_region_store_instead_of_copying_it(store, tmp_path):
    target = tmp_path / "tokens" / "s1.h5"
    target.parent.mkdir()
    tokens = write_tokens(store, target, dim=64)
    attrs = validate_store(target, experts=["alpha"], expected=TEACHER.attrs())
    assert (attrs["region_store"], attrs["region_store_digest"]) == ("../s1.h5", file_digest(store))
    assert attrs["slide_id"] == "s1" and attrs["feature_dtype"] == "float16"
    with h5py.File(target, "r") as file:
        assert "features" not in file
        keep = np.concatenate([np.ones((3, 10), bool), file["valid/L1"][()]], axis=1)  # prompts, valid L1 tokens
        np.testing.assert_array_equal(file["tokens"][()], np.where(keep[..., None], tokens, 0).astype(np.float16))
        names = ("tokens", "token_coords", "coords", "valid/L0", "valid/L1")
        own = sum(file[name].size * file[name].dtype.itemsize for name in names)
    assert target.stat().st_size <= own + 16 * 1024  # its own arrays plus HDF5 structure and attributes
    assert read_store_summary(target)["has_tokens"]
    assert not read_store_summary(store)["has_tokens"]


def test_a_token_store_whose_region_store_changed_is_refused(store, token_store):
    write_store(store, make_regions(seed=5))  # re-extracted since: other features
    with pytest.raises(StoreError, match=r"its region store .*s1.h5 changed after the tokens .*rerun `pathme embed`"):
        validate_store(token_store)
    assert not store_is_done(token_store)


TOKEN_DAMAGE = {
    "inf in a prompt": (_poke("tokens", (2, 0, 1), np.inf), "region 2 .*tokens has non-finite"),
    "copied features": (_set_dataset("features/alpha/L2", np.zeros((3, 8), np.float16)), "holds no features"),
    "tokens alone": (lambda file: file.__delitem__("token_coords"), "'tokens' without its companion"),
    "no tokens": (lambda f: (f.__delitem__("token_coords"), f.__delitem__("tokens")), "without dataset 'tokens'"),
}


@pytest.mark.parametrize("case", list(TOKEN_DAMAGE))
def test_token_store_damage_is_named(token_store, case):
    change, message = TOKEN_DAMAGE[case]
    _damage(token_store, change)
    with pytest.raises(StoreError, match=f"{token_store}: .*{message}"):
        validate_store(token_store)


def _short_l0(region: dict) -> None:
    region["features"]["alpha"][0] = region["features"]["alpha"][0][:255]


def _int_flags(region: dict) -> None:
    region["valid_l0"] = region["valid_l0"].astype(int)


def _l1_flags(region: dict) -> None:
    region["valid_l1"][:] = True


def _nan_l2(region: dict) -> None:
    region["features"]["beta"][2][0] = np.nan


def _huge_l2(region: dict) -> None:
    region["features"]["beta"][2][0] = 1e6


def _float_coords(region: dict) -> None:
    region["coords"] = (0.5, 0)


WRITER_REFUSALS = {
    "L0 shape": (_short_l0, r"features/alpha/L0 has shape \(255, 8\)"),
    "expert missing": (lambda region: region["features"].pop("beta"), r"features given for \['alpha'\]"),
    "int flags": (_int_flags, "valid/L0 must be bool"),
    "L1 flags": (_l1_flags, "valid/L1 differs"),
    "NaN": (_nan_l2, "features/beta/L2 has non-finite"),
    "beyond float16": (_huge_l2, "features/beta/L2: a value of 1e\\+06 exceeds the range of float16 .* float32"),
    "coords": (_float_coords, "coords must be two integers"),
}


@pytest.mark.parametrize("case", list(WRITER_REFUSALS))
def test_the_writer_refuses_bad_regions_early(tmp_path, case):
    change, message = WRITER_REFUSALS[case]
    region = make_regions(1)[0]
    region["valid_l0"][:64] = False  # the top four L1 tiles become invalid
    region["valid_l1"][:4] = False
    change(region)
    with (
        pytest.raises(StoreError, match=f"s1.h5: region 0: {message}"),
        RegionStoreWriter(tmp_path / "s1.h5", attrs=make_attrs(), n_regions=1, experts=EXPERTS) as writer,
    ):
        writer.write_region(0, **region)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"mpp": None}, "attribute 'mpp' .* is not a positive number"),
        ({"complete": True}, "complete are set by the writer"),
        ({"expert_digests": {"alpha": "x"}}, "'expert_digests' .* one entry per expert"),
        ({"experts": ["beta", "alpha"]}, "attribute 'experts' is .* but experts gives"),
    ],
)
def test_the_writer_refuses_bad_attributes(tmp_path, attrs, message):
    with pytest.raises(StoreError, match=message):
        RegionStoreWriter(tmp_path / "s1.h5", attrs=make_attrs(**attrs), n_regions=1, experts=EXPERTS)
    assert list(tmp_path.iterdir()) == []


def test_config_digest_ignores_key_order_and_container_types_but_not_values():
    config = {"experts": ["alpha", "beta"], "tiles": {"size": 256, "mpp": (0.5, 2.0)}, "out": Path("/o")}
    reordered = {"out": "/o", "tiles": {"mpp": [0.5, 2.0], "size": 256}, "experts": ("alpha", "beta")}
    digest = config_digest(config)
    assert digest == config_digest(reordered)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert digest != config_digest({**config, "tiles": {"size": 256, "mpp": (0.5, 2.5)}})
    assert digest != config_digest({**config, "experts": ["beta", "alpha"]})


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "slide.bin"
    path.write_bytes(np.random.default_rng(0).bytes(3 * 2**20 + 17))  # crosses chunk boundaries
    assert file_digest(path) == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_interop_features_round_trip(tmp_path):
    coords = np.array([[0, 0], [256, 0], [512, 256]])
    features = np.random.default_rng(0).standard_normal((3, 8))
    path = write_features_h5(tmp_path / "s1.h5", coords, features, {"patch_size": 256, "patch_level": 0})
    with h5py.File(path, "r") as file:
        assert file["coords"].dtype == np.int64 and file["features"].dtype == np.float32
        np.testing.assert_array_equal(file["coords"][()], coords)
        np.testing.assert_array_equal(file["features"][()], features.astype(np.float32))
        assert (file["coords"].attrs["patch_size"], file["coords"].attrs["patch_level"]) == (256, 0)
    empty = write_features_h5(tmp_path / "empty.h5", np.zeros((0, 2), np.int64), np.zeros((0, 8), np.float32))
    with h5py.File(empty, "r") as file:
        assert file["features"].shape == (0, 8)
    with pytest.raises(StoreError, match=r"features must be floats of shape \[3, D\]"):
        write_features_h5(tmp_path / "bad.h5", coords, features[:2])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty.h5", "s1.h5"]


def test_experts_out_of_alphabetical_order_validate(tmp_path):
    """Mappings are stored as sorted JSON; the expert order of the run must not make its own store invalid."""
    experts = {"zeta": 4, "alpha": 3}
    valid_l0 = np.ones(256, dtype=bool)
    features = {
        name: (np.ones((256, dim), np.float32), np.ones((16, dim), np.float32), np.ones(dim, np.float32))
        for name, dim in experts.items()
    }
    attrs = make_attrs(
        expert_weights={"zeta": "random", "alpha": "random"}, expert_digests={"zeta": "random", "alpha": "random"}
    )
    path = tmp_path / "s1.h5"
    with RegionStoreWriter(path, attrs=attrs, n_regions=1, experts=experts) as writer:
        writer.write_region(0, coords=(0, 0), valid_l0=valid_l0, valid_l1=np.ones(16, bool), features=features)
        writer.commit()
    assert validate_store(path, experts=["zeta", "alpha"])["expert_dims"] == experts


def test_token_store_attributes_are_read_and_written_through_one_record(store, token_store):
    attrs = validate_store(token_store)
    made_by = TokenProvenance.from_attrs(attrs)
    assert made_by.attrs() == {name: attrs[name] for name in TOKEN_ATTRS if name in attrs}
    assert set(asdict(made_by)) == set(TOKEN_ATTRS)  # the schema's table and the record name the same attributes
    assert (made_by.teacher_digest, made_by.teacher_expert) == (TEACHER.teacher_digest, "")
    assert made_by.region_store == f"../{store.name}" and made_by.region_store_digest == file_digest(store)
    with pytest.raises(KeyError):  # a region store has none
        TokenProvenance.from_attrs(validate_store(store))
