"""The ``pathme`` command and the project set-up the README promises."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO

from pathme.cli import main
from pathme.demo.walkthrough import SIGNALS, TASKS
from pathme.deploy.pipeline import AppModels

README_COMMANDS = ["make demo", "make test"]


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1].splitlines()[1:]  # after the language tag
    assert [line.split("#")[0].strip() for line in first_block if line.strip()] == README_COMMANDS
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci.splitlines()[-1]
    makefile = (REPO / "Makefile").read_text()
    assert "$(BIN)/pathme demo" in makefile
    assert "-m venv $(VENV)" in makefile and "-c constraints.txt" in makefile


def test_help_works_for_every_subcommand():
    for command in (
        [],
        ["sample-data"],
        ["demo-cohort"],
        ["preview"],
        ["extract"],
        ["distill"],
        ["embed"],
        ["mil"],
        ["status"],
        ["demo"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "pathme.cli", *command, "--help"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "usage: pathme" in result.stdout


def test_preview_reports_bad_slides_and_finishes_the_others(tmp_path, cmu_slide, make_slide):
    import numpy as np

    no_mpp = make_slide(np.full((600, 600, 3), 240, dtype=np.uint8), None, "svs", name="no_mpp")
    broken = tmp_path / "broken.svs"
    broken.write_text("not a slide")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        f"slide_id,path\ncmu,{cmu_slide}\nno_mpp,{no_mpp.name}\nbroken,broken.svs\nmissing,absent.svs\n"
    )
    out = tmp_path / "previews"
    assert main(["preview", "--manifest", str(manifest), "--output-dir", str(out)]) == 1
    summary = pd.read_csv(out / "preview_summary.csv", keep_default_na=False).set_index("slide_id")
    assert summary.loc["cmu", "error"] == "" and summary.loc["cmu", "regions"] == "1"
    assert (out / "cmu_preview.png").is_file()
    assert "manifest's 'mpp' column" in summary.loc["no_mpp", "error"]
    assert "cannot be opened as a slide" in summary.loc["broken", "error"]
    assert "file not found" in summary.loc["missing", "error"]
    assert not (out / "no_mpp_preview.png").exists()


def test_the_manifest_mpp_column_makes_a_slide_without_mpp_usable(tmp_path, make_slide):
    import numpy as np

    image = np.full((1200, 1200, 3), 240, dtype=np.uint8)
    image[300:900, 300:900] = (190, 110, 170)
    no_mpp = make_slide(image, None, "svs", name="no_mpp")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path,mpp\nno_mpp,{no_mpp.name},0.5\n")
    out = tmp_path / "previews"
    assert main(["preview", "--manifest", str(manifest), "--output-dir", str(out)]) == 0
    summary = pd.read_csv(out / "preview_summary.csv", keep_default_na=False)
    assert summary.loc[0, "mpp_source"] == "manifest" and summary.loc[0, "regions"] == 1


def test_the_old_flag_spellings_still_work_with_a_deprecation_warning(tmp_path, make_slide, caplog):
    import numpy as np

    from pathme.cli import build_parser

    image = np.full((1200, 1200, 3), 240, dtype=np.uint8)
    image[300:900, 300:900] = (190, 110, 170)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path\ns1,{make_slide(image, 0.5).name}\n")
    out = tmp_path / "previews"
    assert main(["preview", "--manifest", str(manifest), "--out", str(out), "--backend", "openslide"]) == 0
    summary = pd.read_csv(out / "preview_summary.csv")
    assert (out / "s1_preview.png").is_file() and summary.loc[0, "backend"] == "openslide"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "pathme preview: --out is deprecated: use --output-dir (the old spelling goes in pathme 0.3)" in warnings
    assert any("--backend is deprecated: use --reader-backend" in w for w in warnings)
    parser = build_parser()
    old = parser.parse_args(["mil", "--dataset-dir", "d", "--output-dir", "o", "--thumbnail-mpp", "8"])
    assert old.heatmap_mpp == "8" and old.old_spellings == ["--thumbnail-mpp is deprecated: use --heatmap-mpp"]
    assert parser.parse_args(["demo", "--out", "x"]).output_dir.name == "x"
    with pytest.raises(SystemExit):  # the old and new spelling of one flag together: argparse refuses
        parser.parse_args(["preview", "--manifest", "m.csv", "--out", "a", "--output-dir", "b"])


def test_a_bad_manifest_is_one_clear_line(tmp_path, capsys, caplog):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,path\nA,a.svs\nA,b.svs\n")
    assert main(["preview", "--manifest", str(manifest), "--output-dir", str(tmp_path)]) == 2
    assert "duplicate slide_id" in caplog.text


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_target_runs_the_demo_command():
    result = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True)
    assert ".venv/bin/pathme demo --output-dir demo_output" in result.stdout


@pytest.mark.slow
def test_the_demo_runs_the_whole_pipeline_and_prints_the_metrics_table(tmp_path, cmu_slide):
    out = tmp_path / "demo"
    (out / "data").mkdir(parents=True)
    shutil.copy(cmu_slide, out / "data" / cmu_slide.name)  # the demo reuses a verified copy instead of pip
    command = ["demo", "--output-dir", str(out), "--slides", "8", "--folds", "2", "--distill-iterations", "10"]
    command += ["--distill-slides", "4"]
    done = subprocess.run([sys.executable, "-m", "pathme.cli", *command], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    for text in ("auroc", "c_index", "pathme", "tiny-vit", "heatmaps", "tensorboard --logdir", "pathme.deploy.app"):
        assert text in printed, text
    # the console: a line per stage (on stderr), the results (stdout); the rest is in the log
    stages = [f"[{number}/7]" for number in range(1, 8)]
    assert [line.split(" ")[0] for line in done.stderr.splitlines()] == stages, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) < 30 and printed.splitlines()[-1] == f"full log: {out.resolve()}/pathme.log"
    log = (out / "pathme.log").read_text()
    assert all(log.count(stage) == 1 for stage in stages) and "Engine run starting" in log
    previews = pd.read_csv(out / "previews" / "preview_summary.csv", keep_default_na=False)
    assert len(previews) == 8 and (previews["error"] == "").all()
    for folder in ("features", "distill_features"):
        assert (pd.read_csv(out / folder / "run_summary.csv")["status"] == "done").all()
    assert len(list((out / "tokens").glob("*.h5"))) == 8
    metrics = pd.read_csv(out / "mil" / "metrics.csv")
    assert set(metrics["task"]) == {"label", "survival"} and set(metrics["features"]) == {"pathme", "tiny-vit"}
    assert set(metrics["signal"]) == set(SIGNALS)
    for run in ("planted_label_pathme", "context_survival_tiny-vit"):
        assert list((out / "mil" / run / "heatmaps").glob("*.png"))
    app_models = AppModels.load(out / "app_models")  # the Deploy app's model folder, ready to use
    runs = {f"{signal}_{task}_{source}" for signal in SIGNALS for task in TASKS for source in ("pathme", "tiny-vit")}
    assert set(app_models.mil_runs) == runs


#: which pathme command runs each bundle config
BUNDLE_COMMANDS = {
    ("pathme_feature_extraction", "inference.json"): "extract",
    ("pathme_distillation", "train.json"): "distill",
    ("pathme_distillation", "inference.json"): "embed",
    ("pathme_mil", "train.json"): "mil",
    ("pathme_mil", "inference.json"): "mil",
}
#: ids a user does not set: the config's machinery, and the network MONAI's tools take
NOT_USER_IDS = {"imports", "bundle_root", "initialize", "run", "finalize", "network_def"}


def _user_value(value) -> bool:
    """A literal, or a ``$`` expression of a path or device: not a component (``_target_``) or a reference."""
    if isinstance(value, dict):
        return "_target_" not in value and all(_user_value(v) and not isinstance(v, dict) for v in value.values())
    if isinstance(value, list):
        return all(not (isinstance(v, str) and v[:1] in "@$") and not isinstance(v, dict | list) for v in value)
    return not (isinstance(value, str) and value.startswith("@"))


def test_every_user_id_of_every_bundle_has_a_pathme_flag_showing_its_default():
    """Listed mechanically from the config files: each id a user sets (top level, and the fields of parameter
    records such as ``tissue``) is a flag of the command that runs the config, and a literal default is in its
    help exactly as the config has it."""
    import json

    from pathme.cli import build_parser
    from pathme.cli.flags import _flatten, default_text, flag_name

    parser = build_parser()
    commands = {name: sub for action in parser._subparsers._group_actions for name, sub in action.choices.items()}
    checked = 0
    for (bundle, config), command in BUNDLE_COMMANDS.items():
        values = _flatten(json.loads((REPO / "bundles" / bundle / "configs" / config).read_text()))
        skip = NOT_USER_IDS
        flags = {option: action for action in commands[command]._actions for option in action.option_strings}
        for config_id, value in values.items():
            nested = "#" in config_id  # a field of a component: set when literal, computed when an expression
            if config_id.split("#")[0] in skip or not _user_value(value) or config_id.endswith("_target_"):
                continue
            if nested and str(value).startswith("$"):
                continue
            name = flag_name(config_id)
            assert name in flags, f"{bundle}/{config}: id {config_id!r} has no flag {name} on pathme {command}"
            literal = not (isinstance(value, str) and value.startswith("$"))
            if literal and not flags[name].required:
                assert f"(default {default_text(value)})" in flags[name].help, (config_id, flags[name].help)
            checked += 1
    assert checked > 60


def test_demo_expert_choices_are_the_demo_expert_sets():
    from pathme.cli import build_parser
    from pathme.demo.walkthrough import DEMO_EXPERTS, DemoSettings

    demo = next(a for a in build_parser()._subparsers._group_actions[0].choices["demo"]._actions if a.dest == "experts")
    assert tuple(demo.choices) == tuple(DEMO_EXPERTS)
    pretrained = DemoSettings(experts="pretrained")
    assert pretrained.weights == dict.fromkeys(pretrained.expert_names, "hub")  # real networks, published weights
    with pytest.raises(ValueError, match="demo experts must be one of tiny, pretrained"):
        DemoSettings(experts="huge")


def test_a_heatmap_resolution_that_is_not_positive_is_one_line_and_writes_nothing(tmp_path, caplog):
    command = ["mil", "--dataset-dir", str(tmp_path), "--labels", str(tmp_path / "labels.csv"), "--task", "label"]
    assert main([*command, "--output-dir", str(tmp_path / "out"), "--heatmap-mpp", "-2"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["heatmap_mpp must be a positive µm/px or null (about 1,600 px on the long side), got -2"]
    assert not (tmp_path / "out").exists()
    from pathme.engines.mil_predict import MILPredict

    with pytest.raises(ValueError, match="heatmap_mpp must be a positive"):  # predict refuses it before any work
        MILPredict(tmp_path, tmp_path, tmp_path / "predicted", heatmap_mpp=0)
    assert not (tmp_path / "predicted").exists()
