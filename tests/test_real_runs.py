"""Whole runs on the inputs people actually have (issue 11): provenance from the store (K1), a cohort of every bad
kind (K2-K5), resuming with damaged checkpoints and interrupted cross-validation (K6), the CLI and honest
metrics (K7), features other tools open (K8); a disk that fills up (issue 23)."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from real_inputs import (
    INK,
    grayscale,
    half_tissue,
    rgba,
    tissue_cohort,
    tissue_image,
    truncate,
    with_file_size_limit,
    write_72_dpi_glass,
    write_manifest,
    write_slide,
)

import pathme.engines.mil_workflow as mil_workflow
from pathme.cli import main
from pathme.engines.distill_workflow import load_checkpoint, newest_readable_checkpoint
from pathme.engines.mil import TrainSettings
from pathme.engines.mil_workflow import MILRun
from pathme.store.atomic import SUFFIX
from pathme.store.provenance import read_provenance
from pathme.synthetic.stores import write_store

pytestmark = pytest.mark.slow  # minutes of CPU: the stages run end to end on slides people have


MIL = ["--num-folds", "2", "--max-epochs", "2"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def pathme_log():
    """What pathme logged, also after a bundle run has replaced the root logger's handlers (caplog's among them)."""
    handler, logger = _Records(), logging.getLogger("pathme")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _extract(manifest: Path, output: Path, *extra: str) -> int:
    return main(["extract", "--manifest", str(manifest), "--output-dir", str(output), "--experts", "tiny-vit", *extra])


def _mil(features: Path, labels: Path, output: Path, *extra: str) -> int:
    command = ["mil", "--dataset-dir", str(features), "--feature-source", "tiny-vit", "--labels", str(labels)]
    return main([*command, "--output-dir", str(output), *extra])


def _assert_complete_run(output: Path, slides: int) -> None:
    assert (output / "results.csv").is_file() and (output / "summary.csv").is_file()
    for index in range(slides):
        assert (output / "heatmaps" / f"s{index}_attention.png").is_file()
        assert (output / "heatmaps" / f"s{index}_attention.geojson").is_file()


# K1: provenance flows from the store


def test_slides_whose_mpp_came_from_the_manifest_get_their_mil_run_and_heatmaps(tmp_path, pathme_log, monkeypatch):
    """Input a: no µm/px in the files, 0.5 in the manifest. MIL draws heatmaps with the store's µm/px (there is
    no manifest at that stage) from another working directory; a slide image that is gone is a row of
    slide_summary.csv, and the run finishes; a patient whose only slide has no region is refused naming that
    slide's reason."""
    manifest, labels = tissue_cohort(tmp_path / "cohort", "no_mpp")
    features = tmp_path / "features"
    monkeypatch.chdir(tmp_path)
    assert _extract(Path("cohort/manifest.csv"), Path("features")) == 0  # relative paths, as users type them
    provenance = read_provenance(features / "s0.h5")
    assert provenance.slide_path == tmp_path / "cohort" / "s0.tiff" and provenance.mpp_source == "manifest"
    assert provenance.open_slide().mpp_source == "its store (manifest)"  # as later stages open it
    monkeypatch.chdir(tmp_path / "cohort")
    assert _mil(features, labels, tmp_path / "mil", *MIL, "--task", "label") == 0
    _assert_complete_run(tmp_path / "mil", 8)

    (tmp_path / "cohort" / "s3.tiff").unlink()  # the image is gone after extraction
    assert _mil(features, labels, tmp_path / "gone", *MIL, "--task", "label") == 0
    slides = pd.read_csv(tmp_path / "gone" / "slide_summary.csv", keep_default_na=False).set_index("slide_id")
    assert slides.loc["s3", "status"] == "geojson only" and "file not found" in slides.loc["s3", "note"]
    assert (slides.drop(index="s3")["status"] == "done").all() and (tmp_path / "gone" / "results.csv").is_file()

    write_slide(tmp_path / "cohort" / "gray.tiff", grayscale(tissue_image(2000, seed=9)))
    rows = [*pd.read_csv(manifest).to_dict("records"), {"slide_id": "gray", "path": "gray.tiff", "patient_id": "p8"}]
    assert _extract(write_manifest(tmp_path / "cohort", rows), features) == 1  # s3's image is gone, gray is gray
    pd.concat([pd.read_csv(labels), pd.DataFrame([{"patient_id": "p8", "label": "A"}])]).to_csv(labels, index=False)
    assert _mil(features, labels, tmp_path / "gray", *MIL, "--task", "label") == 2
    assert "'p8': slide gray: no region: a single-channel (grayscale) image" in pathme_log.text


def test_slides_only_openslide_decodes_get_their_heatmaps_with_openslide(tmp_path):
    """Input b: RGBA with deflate tiles, extracted with --reader-backend openslide: the heatmaps read the slides
    with the reader the store records (the default auto falling back to openslide: the every-bad-kind cohort)."""
    manifest, labels = tissue_cohort(tmp_path / "cohort", "rgba")
    assert _extract(manifest, tmp_path / "features", "--reader-backend", "openslide") == 0
    assert read_provenance(tmp_path / "features" / "s0.h5").reader_backend == "openslide"
    assert _mil(tmp_path / "features", labels, tmp_path / "mil", *MIL, "--task", "label") == 0
    _assert_complete_run(tmp_path / "mil", 8)


# K2-K5 in one cohort, with a truncated and a missing file


def test_a_cohort_of_every_bad_kind_finishes_every_good_slide_and_reports_every_bad_one(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    good = [write_slide(folder / f"good{i}.tiff", tissue_image(2000, seed=i)) for i in range(2)]
    write_72_dpi_glass(folder / "dpi72.tiff")
    write_slide(folder / "gray.tiff", grayscale(tissue_image(2000, seed=3)))
    write_slide(folder / "rgba.tiff", rgba(tissue_image(2000, seed=4)))
    write_slide(folder / "pen.tiff", half_tissue(INK["blue"]))
    truncate(good[0], folder / "truncated.tiff")
    names = ["good0", "dpi72", "gray", "rgba", "pen", "truncated", "missing", "good1"]
    manifest = write_manifest(folder, [{"slide_id": name, "path": f"{name}.tiff"} for name in names])
    reasons = {
        "dpi72": "no plausible µm/px in its metadata (tiff resolution tags give 352.8 µm/px",
        "gray": "single-channel (grayscale)",
        "truncated": "is truncated",
        "missing": "file not found",
    }
    assert main(["preview", "--manifest", str(manifest), "--output-dir", str(tmp_path / "previews")]) == 1
    previews = pd.read_csv(tmp_path / "previews" / "preview_summary.csv", keep_default_na=False).set_index("slide_id")
    assert _extract(manifest, tmp_path / "features") == 1
    extracted = pd.read_csv(tmp_path / "features" / "run_summary.csv", keep_default_na=False).set_index("slide_id")
    for summary in (previews, extracted):
        assert list(summary.index) == names
        for name, reason in reasons.items():
            assert reason in summary.loc[name, "error"], (name, summary.loc[name, "error"])
        assert (summary.loc[["good0", "good1", "rgba", "pen"], "error"] == "").all()
    assert (extracted.loc[["good0", "good1", "rgba", "pen"], "status"] == "done").all()
    assert extracted.loc["rgba", "reader_backend"] == "openslide" and "cucim" in extracted.loc["rgba", "note"]
    assert (extracted.loc[["dpi72", "truncated", "missing"], "store"] == "").all()  # no store was written for them
    with h5py.File(tmp_path / "features" / "pen.h5", "r") as store:
        origins, valid = store["coords"][:], store["valid/L0"][:]
    tile_x = origins[:, None, 0] + np.arange(256) % 16 * 256
    assert valid.any() and tile_x[valid].max() < 2000  # no valid tile on the inked glass half


# K6: every stage resumes; damaged checkpoints do not stop a run


def test_a_truncated_checkpoint_is_named_set_aside_and_training_goes_on(tmp_path, pathme_log):
    stores = tmp_path / "stores"
    stores.mkdir()
    for index in range(4):
        write_store(
            stores, f"s{index}", f"p{index}", ["full", "sparse", "full", "sparse"], {"tiny-vit": 64, "tiny-cnn": 64}
        )
    command = [
        "distill",
        "--tiny",
        "--dataset-dir",
        str(stores),
        "--output-dir",
        str(tmp_path / "run"),
        "--regions-per-batch",
        "4",
    ]
    assert main([*command, "--max-iterations", "10"]) == 0
    last = tmp_path / "run" / "checkpoints" / "distill_checkpoint_10.pt"
    truncate(last, last)
    assert main([*command, "--max-iterations", "20"]) == 0
    assert f"checkpoint {last} is damaged" in pathme_log.text and "starts from iteration 0" in pathme_log.text
    assert last.with_name(last.name + ".damaged").stat().st_size > 0  # set aside, never deleted
    assert torch.load(tmp_path / "run" / "teacher.pt", weights_only=True)["iteration"] == 20
    truncate(stores / "s3.h5", stores / "s3.h5")  # one damaged store does not stop the others' tokens
    embed = ["embed", "--dataset-dir", str(stores), "--output-dir", str(tmp_path / "tokens")]
    assert main([*embed, "--checkpoint", str(tmp_path / "run" / "checkpoints")]) == 1
    summary = pd.read_csv(tmp_path / "tokens" / "embed_summary.csv", keep_default_na=False).set_index("slide")
    assert list(summary["status"]) == ["done", "done", "done", "failed"] and "s3.h5" in summary.loc["s3", "error"]
    damaged = truncate(tmp_path / "run" / "teacher.pt", tmp_path / "teacher_copy.pt")
    assert main([*embed, "--checkpoint", str(damaged)]) == 2
    assert f"{damaged}: not a readable checkpoint" in pathme_log.text


def test_the_newest_readable_checkpoint_is_the_one_resumed_from(tmp_path):
    for iteration in (10, 20, 30):
        torch.save({"iteration": iteration}, tmp_path / f"distill_checkpoint_{iteration}.pt")
    truncate(tmp_path / "distill_checkpoint_30.pt", tmp_path / "distill_checkpoint_30.pt")
    (tmp_path / "distill_checkpoint_20.pt").write_bytes(b"")
    path, state = newest_readable_checkpoint(tmp_path)
    assert path.name == "distill_checkpoint_10.pt" and state == {"iteration": 10}
    assert sorted(p.name for p in tmp_path.glob("*.damaged")) == [
        "distill_checkpoint_20.pt.damaged",
        "distill_checkpoint_30.pt.damaged",
    ]
    assert load_checkpoint(path) == {"iteration": 10}


def _store_cohort(folder: Path, patients: int) -> tuple[Path, Path]:
    """``folder/features``: a random tiny-vit store of two regions per patient p0.. (slide s<i>), labelled A, B, A, ...
    in ``folder/labels.csv``; (features, labels)."""
    features = folder / "features"
    features.mkdir()
    for index in range(patients):
        write_store(features, f"s{index}", f"p{index}", ["full", "sparse"], {"tiny-vit": 16})
    labels = folder / "labels.csv"
    rows = {"patient_id": [f"p{i}" for i in range(patients)], "label": ["AB"[i % 2] for i in range(patients)]}
    pd.DataFrame(rows).to_csv(labels, index=False)
    return features, labels


def test_a_rerun_of_an_interrupted_cross_validation_trains_only_the_unfinished_folds(tmp_path, monkeypatch):
    features, labels = _store_cohort(tmp_path, 9)
    settings = TrainSettings(max_epochs=3, min_epochs=1)

    def run(output: Path) -> pd.DataFrame:
        return MILRun(features, labels, "label", output, "tiny-vit", num_folds=3, settings=settings).run()

    reference = run(tmp_path / "whole")
    real, trained = mil_workflow.train_fold, []

    def killed_after_fold_1(*args, **kwargs):
        if len(trained) == 2:
            raise KeyboardInterrupt  # the run is killed while training fold 2
        trained.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(mil_workflow, "train_fold", killed_after_fold_1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "results.csv").exists()
    trained.clear()
    monkeypatch.setattr(mil_workflow, "train_fold", lambda *a, **k: (trained.append(a), real(*a, **k))[1])
    pd.testing.assert_frame_equal(run(tmp_path / "resumed"), reference)
    assert len(trained) == 1  # fold 2 alone
    for name in ("results.csv", "predictions.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "resumed" / name), pd.read_csv(tmp_path / "whole" / name))
    truncate(tmp_path / "resumed" / "fold_0" / "model.pt", tmp_path / "resumed" / "fold_0" / "model.pt")
    trained.clear()
    MILRun(features, labels, "label", tmp_path / "resumed", "tiny-vit", num_folds=3, settings=settings, seed=1).run()
    assert len(trained) == 3  # another seed: every fold's inputs changed; the damaged model was set aside
    assert (tmp_path / "resumed" / "fold_0" / "model.pt.damaged").is_file()


# K7: the CLI reaches what users need; metrics are honest


def test_survival_with_tied_times_names_the_flag_and_the_flag_fixes_it(tmp_path, pathme_log):
    features = tmp_path / "features"
    features.mkdir()
    for index in range(8):
        write_store(features, f"s{index}", f"p{index}", ["full"], {"tiny-vit": 16})
    labels = tmp_path / "labels.csv"
    times = [5, 5, 5, 5, 5, 5, 9, 9]
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(8)], "time": times, "event": 1}).to_csv(labels, index=False)
    assert _mil(features, labels, tmp_path / "four", *MIL, "--task", "survival", "--no-heatmaps") == 2
    assert "use fewer bins (num_bins; pathme mil --num-bins)" in pathme_log.text
    assert _mil(features, labels, tmp_path / "two", *MIL, "--task", "survival", "--num-bins", "2", "--no-heatmaps") == 0
    cox = ["--task", "survival", "--survival-loss", "cox", "--no-heatmaps"]
    assert _mil(features, labels, tmp_path / "cox1", *MIL, *cox) == 2
    assert "set bags_per_batch >= 2 (pathme mil --bags-per-batch" in pathme_log.text
    assert _mil(features, labels, tmp_path / "cox4", *MIL, *cox, "--bags-per-batch", "4") == 0
    assert "the validation split has 1 patient(s), 1 with an event: its Cox loss is 0" in pathme_log.text


def test_cox_survival_runs_from_the_command_line_on_the_demo_cohort(demo_cohort, demo_features, tmp_path):
    command = ["--task", "survival", "--survival-loss", "cox", "--bags-per-batch", "8", "--no-heatmaps"]
    assert _mil(demo_features, demo_cohort / "labels.csv", tmp_path, *MIL, *command) == 0
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("metric")
    assert 0 <= summary.loc["c_index", "mean"] <= 1 and summary.loc["c_index", "folds"] == 2


def test_a_fold_that_cannot_be_scored_is_reported_and_left_out_of_the_summary(tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    for index in range(9):
        write_store(features, f"s{index}", f"p{index}", ["full"], {"tiny-vit": 16})
    # fold 2's test patients both died at month 7: no pair of them can be ordered, so no c-index
    table = pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(9)],
            "time": [3, 8, 12, 4, 9, 15, 7, 7, 20],
            "event": [1, 1, 0, 1, 1, 0, 1, 1, 0],
            "fold": [0, 0, 0, 1, 1, 1, 2, 2, 2],
        }
    )
    table.loc[8, "fold"] = 1
    table.to_csv(tmp_path / "labels.csv", index=False)
    settings = TrainSettings(max_epochs=2, min_epochs=1)
    summary = MILRun(features, tmp_path / "labels.csv", "survival", tmp_path / "out", "tiny-vit", settings=settings,
                     num_bins=2).run().set_index("metric")  # fmt: skip
    results = pd.read_csv(tmp_path / "out" / "results.csv", keep_default_na=False).set_index("fold")
    assert results.loc[2, "c_index"] == "" and "c_index not computable" in results.loc[2, "not_computable"]
    assert "2 patients, 2 with an event: no comparable pair" in results.loc[2, "not_computable"]
    scored = [float(results.loc[fold, "c_index"]) for fold in (0, 1)]
    assert summary.loc["c_index", "folds"] == 2 and summary.loc["c_index", "folds_total"] == 3
    assert summary.loc["c_index", "mean"] == pytest.approx(np.mean(scored))
    assert summary.loc["c_index", "sd"] == pytest.approx(np.std(scored, ddof=1))


# K8: features other tools can open


def test_interop_files_carry_the_geometry_trident_readers_use(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    write_slide(folder / "s40x.tiff", tissue_image(4000, seed=1), mpp=0.25)
    manifest = write_manifest(folder, [{"slide_id": "s40x", "path": "s40x.tiff"}])
    assert _extract(manifest, tmp_path / "features", "--interop-h5") == 0
    with h5py.File(tmp_path / "features" / "h5_files" / "tiny-vit" / "s40x.h5", "r") as file:
        coords, features, attrs = file["coords"][:], file["features"][:], dict(file["coords"].attrs)
    assert attrs["patch_size_level0"] == 512 and attrs["patch_size"] == 256 and attrs["patch_level"] == 0
    assert attrs["level0_mpp"] == 0.25 and attrs["level0_magnification"] == 40.0
    assert attrs["target_mpp"] == 0.5 and attrs["target_magnification"] == 20.0
    assert attrs["name"] == "s40x" and attrs["expert"] == "tiny-vit"
    assert len(coords) == len(features) > 0 and not (coords % 512).any()  # tiles 512 level-0 px apart
    assert np.isfinite(features).all()


# issue 23: a full disk (a file-size limit stands in for it)

FULL_DISK = "[Errno 27] File too large (the disk is full or a file-size limit is reached); free space and run again"


def test_a_full_disk_fails_each_store_by_name_and_the_summary_and_the_rerun_complete(tmp_path):
    """Before: a segmentation fault in HDF5 at the second slide: no summary, the other slides never tried."""
    manifest, _ = tissue_cohort(tmp_path / "cohort", "plain", n_slides=3)
    extract = ["-m", "pathme.cli", "extract", "--manifest", str(manifest), "--output-dir", "features"]
    extract += ["--experts", "tiny-vit", "--device", "cpu", "--num-workers", "0"]
    run = with_file_size_limit(["python", *extract], 12 * 1024, tmp_path)  # a store takes about 17 KiB
    assert run.returncode == 1, run.stderr[-3000:]  # was -11 (SIGSEGV)
    summary = pd.read_csv(tmp_path / "features" / "run_summary.csv", keep_default_na=False)
    assert list(summary["slide_id"]) == ["s0", "s1", "s2"] and set(summary["status"]) == {"failed"}
    assert list(summary["error"]) == [f"cannot write features/s{index}.h5: {FULL_DISK}" for index in range(3)]
    assert "Traceback" not in run.stderr
    written = sorted(p.name for p in (tmp_path / "features").iterdir() if not p.name.endswith(".lock"))
    assert written == ["extract_throughput.csv", "pathme.log", "records", "run_summary.csv"]  # no store, no temp
    assert _extract(manifest, tmp_path / "features", "--num-workers", "0") == 0  # the rerun without the limit
    summary = pd.read_csv(tmp_path / "features" / "run_summary.csv", keep_default_na=False)
    assert set(summary["status"]) == {"done"}


def test_a_full_disk_fails_the_fold_model_by_name_and_the_rerun_completes(tmp_path):
    """Before: torch's traceback ("PytorchStreamWriter failed writing file data/0"), naming neither file nor cause."""
    features, labels = _store_cohort(tmp_path, 6)
    mil = ["-m", "pathme.cli", "mil", "--dataset-dir", "features", "--feature-source", "tiny-vit", "--labels"]
    mil += [str(labels), "--output-dir", "mil", "--num-folds", "2", "--max-epochs", "1", "--min-epochs", "1"]
    mil += ["--device", "cpu", "--no-heatmaps"]
    run = with_file_size_limit(["python", *mil], 100 * 1024, tmp_path)  # a fold model takes about 280 KiB
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1] == f"ERROR pathme: cannot write mil/fold_0/model.pt: {FULL_DISK}"
    assert "Traceback" not in run.stderr and not list((tmp_path / "mil").rglob("*.pt"))
    assert not list(tmp_path.rglob(f"*{SUFFIX}"))  # no temporary file left
    assert _mil(features, labels, tmp_path / "mil", "--num-folds", "2", "--max-epochs", "1", "--no-heatmaps") == 0
    assert sorted(p.parent.name for p in (tmp_path / "mil").glob("fold_*/model.pt")) == ["fold_0", "fold_1"]
