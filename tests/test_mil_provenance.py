"""What a store records is checked wherever two things must match (issue 23, kind 2): the stores of one run (the
weights behind their features, one slide file per patient), a fold model and the stores it predicts on, a store
and the slide file reopened for its heatmap."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from real_inputs import tissue_image, write_manifest, write_slide

from pathme.data.bags import BagIndex
from pathme.engines.embed import token_coords
from pathme.engines.extraction import CohortExtractor
from pathme.engines.mil import MILTask, TrainSettings
from pathme.engines.mil_outputs import slide_rows
from pathme.engines.mil_predict import MILPredict
from pathme.engines.mil_workflow import MILRun
from pathme.store.provenance import read_provenance
from pathme.store.tokens import TokenProvenance, write_token_store
from pathme.synthetic.stores import write_store
from pathme.wsi.grid import REGION_PX, RegionGrid
from pathme.wsi.slide_error import SlideError

DIMS = {"exp": 8}
ONE_EPOCH = TrainSettings(max_epochs=1, min_epochs=1, min_val_patients=1)


def _stores(folder: Path, count: int, digest: str = "random:0", start: int = 0, **attrs: object) -> Path:
    """``count`` one-patient slides s<i> (patients P<i>) whose expert 'exp' has weights ``digest``."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(start, start + count):
        write_store(folder, f"s{index}", f"P{index}", ["full", "sparse"], DIMS, {"expert_digests": {"exp": digest}})
    return folder


def _labels(path: Path, count: int) -> Path:
    pd.DataFrame({"patient_id": [f"P{i}" for i in range(count)], "label": ["AB"[i % 2] for i in range(count)]}).to_csv(
        path, index=False
    )
    return path


def _train(features: Path, labels: Path, output: Path) -> pd.DataFrame:
    run = MILRun(features, labels, "label", output, "exp", num_folds=2, settings=ONE_EPOCH, heatmaps=False)
    return run.run()


def test_stores_of_one_expert_from_different_weights_are_refused_naming_the_stores(tmp_path: Path) -> None:
    """t03: four slides extracted with weights random:0 and three re-extracted with random:1 in one folder; every
    expert source (also at 5x) is refused before training, naming both digests and the stores of each."""
    folder = _stores(tmp_path / "mixed", 4, "random:0")
    _stores(folder, 3, "random:1", start=4)
    for source in ("exp", "exp@5x"):
        with pytest.raises(
            ValueError,
            match=r"stores in .*mixed disagree on the exp weights behind their features: 'random:0' in 4 store\(s\) "
            r"\(s0.h5, s1.h5, s2.h5, s3.h5\), 'random:1' in 3 store\(s\) \(s4.h5, s5.h5, s6.h5\); features of "
            r"different weights are not comparable: re-extract those slides with the same weights",
        ):
            BagIndex(folder, source)
    with pytest.raises(ValueError, match="disagree on the exp weights"):
        _train(folder, _labels(tmp_path / "labels.csv", 7), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    same = _stores(tmp_path / "same", 3, "random:1")
    assert BagIndex(same, "exp").feature_provenance == {"exp weights": "random:1", "exp dimension": "8"}


def _token_stores(folder: Path, teachers: list[str], experts: list[str]) -> Path:
    """Token stores of slides s<i>, made by teacher ``teachers[i]`` from region stores of 'exp' weights
    ``experts[i]``."""
    origins = RegionGrid(2 * REGION_PX, REGION_PX, 0.5).origins()
    for index, (teacher, weights) in enumerate(zip(teachers, experts, strict=True)):
        _stores(folder / "regions", 1, weights, start=index)
        tokens = np.zeros((2, 26, 4), np.float32)
        write_token_store(
            folder / "regions" / f"s{index}.h5",
            folder / "tokens" / f"s{index}.h5",
            tokens,
            token_coords(origins, REGION_PX, 10),
            TokenProvenance("t.pt", teacher, "exp"),
        )
    return folder / "tokens"


@pytest.mark.parametrize(
    "teachers, experts, key",
    [
        (["sha256:t1", "sha256:t1", "sha256:t2"], ["random:0"] * 3, "teacher"),
        (["sha256:t1"] * 3, ["random:0", "random:0", "random:1"], "exp weights"),
    ],
    ids=["two-teachers", "one-teacher-two-expert-weights"],
)
def test_token_stores_of_other_teachers_or_expert_weights_are_refused(
    tmp_path: Path, teachers: list[str], experts: list[str], key: str
) -> None:
    tokens = _token_stores(tmp_path, teachers, experts)
    for source in ("pathme", "pathme-mean"):
        with pytest.raises(ValueError, match=rf"disagree on the {key} behind their features: .* in 2 store\(s\) "):
            BagIndex(tokens, source)


def test_one_slide_file_in_two_patients_is_refused_and_twice_in_one_patient_is_warned(tmp_path: Path, caplog) -> None:
    """The stores' slide fingerprints show one slide file extracted under two slide ids: across two patients it
    would sit in a training and a test split at once."""
    folder = _stores(tmp_path / "stores", 3)
    copy = {"slide_digest": "size-ends-sha256:9:abc"}
    write_store(folder, "dup_a", "P7", ["full"], DIMS, copy | {"expert_digests": {"exp": "random:0"}})
    write_store(folder, "dup_b", "P8", ["full"], DIMS, copy | {"expert_digests": {"exp": "random:0"}})
    labels = _labels(tmp_path / "labels.csv", 3)
    with pytest.raises(
        ValueError,
        match=r"are of one slide file \(slide_digest size-ends-sha256:9:abc\): 'dup_a' \(patient 'P7', dup_a.h5\), "
        r"'dup_b' \(patient 'P8', dup_b.h5\); one slide in two patients leaks between the folds",
    ):
        _train(folder, labels, tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="pathme.data.bags"):
        BagIndex(folder, "exp").check_same_slides(refuse_across_patients=False)  # prediction: each copy predicted
    assert "it is predicted for each patient" in caplog.text
    write_store(folder, "dup_b", "P7", ["full"], DIMS, copy | {"expert_digests": {"exp": "random:0"}})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pathme.data.bags"):
        BagIndex(folder, "exp").check_same_slides(refuse_across_patients=True)
    assert "its tokens count twice in the patient's bag" in caplog.text


def test_fold_models_predict_only_on_features_of_the_weights_they_were_trained_on(tmp_path: Path, caplog) -> None:
    """t03: models trained on random:0 stores refuse random:1 stores (naming both); a model file of an older pathme
    (no record) is named as unchecked; slides the models learnt from are named when predicted again."""
    seed0 = _stores(tmp_path / "seed0", 8, "random:0")
    _train(seed0, _labels(tmp_path / "labels.csv", 8), tmp_path / "mil")
    payload = torch.load(tmp_path / "mil" / "fold_0" / "model.pt", weights_only=True)
    assert payload["feature_provenance"] == {"exp weights": "random:0", "exp dimension": "8"}
    folds = pd.read_csv(tmp_path / "mil" / "folds.csv", index_col="patient_id")
    learnt = folds.index[folds["fold_0"] != "test"]
    assert payload["training_slides"] == sorted(read_provenance(seed0 / f"s{p[1:]}.h5").slide_digest for p in learnt)

    seed1 = _stores(tmp_path / "seed1", 4, "random:1", start=20)
    with pytest.raises(
        ValueError,
        match=r"fold_0/model.pt was trained on features of other weights than the stores in .*seed1 hold \(exp "
        r"weights 'random:0' in training, 'random:1' in .*seed1\); features of different weights are not "
        r"comparable: use stores extracted",
    ):
        MILPredict(seed1, tmp_path / "mil", tmp_path / "pred", heatmaps=False).run()
    assert not (tmp_path / "pred").exists()

    new = _stores(tmp_path / "new", 2, "random:0", start=20)
    with caplog.at_level(logging.WARNING, logger="pathme.engines.mil_workflow"):
        MILPredict(new, tmp_path / "mil", tmp_path / "pred_new", heatmaps=False).run()
    assert not caplog.text  # new slides of the same weights: nothing to say
    with caplog.at_level(logging.WARNING, logger="pathme.engines.mil_workflow"):
        MILPredict(seed0, tmp_path / "mil", tmp_path / "again", _labels(tmp_path / "l.csv", 8), heatmaps=False).run()
    assert "8 of the slides in" in caplog.text and "were in the training or validation patients" in caplog.text

    for model in (tmp_path / "mil").glob("fold_*/model.pt"):  # as an older pathme saved them
        old = torch.load(model, weights_only=True)
        del old["feature_provenance"], old["training_slides"]
        torch.save(old, model)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pathme.engines.mil_workflow"):
        MILPredict(seed1, tmp_path / "mil", tmp_path / "old", heatmaps=False).run()
    assert "saved by an older pathme, without the weights behind their features" in caplog.text


def test_a_slide_file_changed_since_extraction_gets_no_heatmap_drawn_on_it(tmp_path: Path) -> None:
    """t15: after extraction another image is saved under s0's name (same size) and s1 is replaced by a 2x
    re-scan (0.25 µm/px): reopening either for a heatmap is refused, saying what the file holds now, and the
    heatmap is the store's GeoJSON only."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for index in range(3):
        write_slide(cohort / f"s{index}.tiff", tissue_image(1200, seed=index))
    rows = [{"slide_id": f"s{i}", "path": f"s{i}.tiff", "patient_id": f"P{i}"} for i in range(3)]
    summary = CohortExtractor(write_manifest(cohort, rows), tmp_path / "features", ["tiny-vit"]).run()
    assert (summary["status"] == "done").all(), summary
    write_slide(cohort / "s0.tiff", tissue_image(1200, seed=7))
    write_slide(cohort / "s1.tiff", np.repeat(np.repeat(tissue_image(1200, seed=1), 2, axis=0), 2, axis=1), 0.25)

    provenance = {sid: read_provenance(tmp_path / "features" / f"{sid}.h5") for sid in ("s0", "s1", "s2")}
    assert provenance["s2"].open_slide().size == (1200, 1200)  # unchanged: opened as at extraction
    with pytest.raises(
        SlideError,
        match=r"slide s0: .*s0.tiff changed since extraction \(its fingerprint differs from the store's; level-0 1200 "
        r"x 1200 px at 0.500 µm/px now, 1200 x 1200 px at 0.500 µm/px in its store\): .*re-extract the slide",
    ):
        provenance["s0"].open_slide()
    with pytest.raises(SlideError, match=r"level-0 2400 x 2400 px at 0.250 µm/px now, 1200 x 1200 px at 0.500"):
        provenance["s1"].open_slide()

    index = BagIndex(tmp_path / "features", "tiny-vit")
    records = []
    for patient in ("P0", "P1", "P2"):
        bag = index.patient_bag(patient)[0]
        count = len(bag.features)
        records.append(
            {
                "patient_id": patient,
                "slide_ids": [bag.slide_id],
                "slide_index": np.zeros(count, np.int64),
                "coords": bag.coords,
                "sizes": bag.sizes,
                "attention": np.full(count, 1 / count),
                "probs": np.array([0.4, 0.6]),
            }
        )
    task = MILTask("label", ("0", "1"))
    rows = pd.DataFrame(slide_rows(records, index, task, tmp_path / "heatmaps", 16.0)).set_index("slide_id")
    assert rows["status"].to_dict() == {"s0": "geojson only", "s1": "geojson only", "s2": "done"}
    assert "changed since extraction" in rows.loc["s1", "note"] and not rows.loc["s0", "png"]
    assert (tmp_path / "heatmaps" / "s1_attention.geojson").is_file()
    assert not (tmp_path / "heatmaps" / "s1_attention.png").exists()
