"""What the ``pathme`` command prints: a line per stage, warnings and errors, results; the rest in pathme.log."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, block_pattern
from real_inputs import with_file_size_limit

from pathme import bundles
from pathme.cli import main
from pathme.console import LOG_FILE, OutputFolderLog, announce, console_logging, unannounced
from pathme.demo.walkthrough import _stage
from pathme.gpu_libraries import NO_DRIVER_LINES, dropping_no_driver_lines
from pathme.synthetic.slides import write_pyramid

#: a bundle with an Ignite engine: what pathme's bundles log, in a second instead of minutes
TINY_BUNDLE = {
    "imports": ["$import ignite.engine"],
    "engine": {"_target_": "ignite.engine.Engine", "process_function": "$lambda engine, batch: None"},
    "run": ["$@engine.run([1, 2], max_epochs=2)"],
}


def _pathme(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``pathme ARGS`` in a fresh process (not a terminal: no progress bars)."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pathme.cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


def _tiny_bundle(folder: Path) -> Path:
    configs = folder / "configs"
    configs.mkdir(parents=True)
    (configs / "inference.json").write_text(json.dumps(TINY_BUNDLE))
    (configs / "metadata.json").write_text("{}")
    shutil.copy(bundles.bundle_dir("pathme_mil") / "configs" / "logging.conf", configs / "logging.conf")
    return folder


def test_a_stage_is_one_line_on_the_console_and_in_the_log(tmp_path, capsys):
    with console_logging(tmp_path):
        _stage(3, "feature extraction")
        logging.getLogger("pathme.engines.extraction").info("slide demo_000: 12 regions")  # a detail: the log only
    printed = capsys.readouterr()
    assert printed.err.splitlines() == ["[3/7] feature extraction"] and printed.out == ""
    log = (tmp_path / LOG_FILE).read_text()
    assert "[3/7] feature extraction" in log and "slide demo_000: 12 regions" in log


def test_a_walkthrough_keeps_what_its_stages_announce_to_the_log(tmp_path, capsys):
    """The demo's eight MIL runs each state their cohort; inside ``unannounced`` that line is the log's only."""
    mil = logging.getLogger("pathme.engines.mil_workflow")
    with console_logging(tmp_path):
        with unannounced(mil.name):
            announce(mil, "cohort of labels.csv: 32 patients")
            mil.warning("fold 0: auroc not computable")
        announce(mil, "cohort of other.csv: 8 patients")
    printed = capsys.readouterr().err.splitlines()
    assert printed == [
        "WARNING pathme.engines.mil_workflow: fold 0: auroc not computable",
        "cohort of other.csv: 8 patients",
    ]
    assert "cohort of labels.csv: 32 patients" in (tmp_path / LOG_FILE).read_text()


def test_warnings_and_errors_reach_the_console_with_their_source(tmp_path, capsys):
    with console_logging(tmp_path):
        logging.getLogger("pathme.wsi.slide").warning("slide A: read with openslide")
    assert capsys.readouterr().err == "WARNING pathme.wsi.slide: slide A: read with openslide\n"


def test_ignite_and_monai_info_lines_are_in_the_log_file_and_on_the_console_only_with_verbose(
    tmp_path, capfd, monkeypatch
):
    tiny = _tiny_bundle(tmp_path / "bundle")
    monkeypatch.setattr(bundles, "bundle_dir", lambda name: tiny)
    for verbose in (False, True):
        out = tmp_path / f"verbose_{verbose}"
        out.mkdir()
        with console_logging(out, verbose):
            bundles.run_bundle("tiny", "inference.json")
        printed = capfd.readouterr()
        log = (out / LOG_FILE).read_text()
        for line in ("ignite.engine.engine.Engine: Engine run starting", "input summary of monai.bundle.scripts.run"):
            assert line in log
            assert (line.split(": ")[-1] in printed.err) == verbose, (verbose, printed)
        assert "Epoch[2] Complete" in log and "WARNING" not in log  # MONAI's "logging file skipped" is said at INFO
        assert printed.out == "" and ("INFO" in printed.err) == verbose
        assert "UserWarning" not in printed.err  # MONAI's warning about configs from elsewhere: these are pathme's


def test_without_the_command_a_bundle_run_keeps_its_own_logging_conf(tmp_path, capfd, monkeypatch):
    """A library caller (a script, ``monai bundle run``) gets what the bundle's logging.conf says: warnings and
    errors on the console, every INFO line in pathme.log where it runs."""
    tiny = _tiny_bundle(tmp_path / "bundle")
    monkeypatch.setattr(bundles, "bundle_dir", lambda name: tiny)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        bundles.run_bundle("tiny", "inference.json")
    finally:  # fileConfig replaced the root handlers: put pytest's back
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    printed = capfd.readouterr()
    for line in ("Engine run starting", "--- input summary of monai.bundle.scripts.run ---"):
        assert line not in printed.out + printed.err and line in (tmp_path / LOG_FILE).read_text()


def test_the_log_waits_for_the_run_to_create_its_folder(tmp_path):
    folder = tmp_path / "out"
    handler = OutputFolderLog(folder)
    log = logging.getLogger("pathme.test_console")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("before the folder")
        assert not folder.exists()
        folder.mkdir()
        log.info("after")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert (folder / LOG_FILE).read_text().splitlines() == ["before the folder", "after"]


@pytest.mark.parametrize(
    ("experts", "error"),
    [
        (["uni"], "expert 'uni' needs weights"),
        (["tiny-vit", "--weights", "tiny-vit=other.pt"], "other.pt"),  # timm logs "Loaded ..." before the refusal
    ],
)
def test_a_refused_extraction_is_one_line_and_leaves_no_output_folder(tmp_path, capsys, monkeypatch, experts, error):
    monkeypatch.chdir(tmp_path)
    torch.save({"other.weight": torch.zeros(2)}, "other.pt")
    Path("manifest.csv").write_text("slide_id,path\nA,a.svs\n")
    assert main(["extract", "--manifest", "manifest.csv", "--output-dir", "features", "--experts", *experts]) == 2
    assert not Path("features").exists()
    printed = capsys.readouterr()
    assert printed.err.startswith("ERROR pathme: ") and error in printed.err and len(printed.err.splitlines()) == 1
    assert printed.out == ""


def test_only_the_no_driver_lines_are_dropped(capfd):
    with dropping_no_driver_lines():
        os.write(1, b"dlopen error libcuda.so.1: cannot open shared object file: No such file or directory\n")
        os.write(1, b" cuFile initialization failed\nresults\n")
        os.write(2, b"Failed to load nvtiff library! Please install nvTIFF (see https://docs.nvidia.com).\n")
        os.write(2, b"Failed to load the slide\n")
    printed = capfd.readouterr()
    assert (printed.out, printed.err) == ("results\n", "Failed to load the slide\n")


def _no_gpu_noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if "[ERROR]" in line or NO_DRIVER_LINES.fullmatch(line)]


def test_help_prints_no_error_line():
    done = _pathme("--help")
    assert done.returncode == 0 and _no_gpu_noise(done.stdout + done.stderr) == []


def test_a_preview_prints_its_table_and_where_its_outputs_are_and_nothing_else(tmp_path):
    """No "[ERROR]" or "Failed to load ... library" from the GPU codec plug-ins, no cuFile lines, no INFO lines: the
    table, then one line per output written."""
    slide = tmp_path / "slide.tiff"
    write_pyramid(slide, block_pattern(1024, 1536, 64), 0.5, compression="jpeg")
    (tmp_path / "manifest.csv").write_text(f"slide_id,path\nA,{slide}\n")
    done = _pathme("preview", "--manifest", "manifest.csv", "--output-dir", "previews", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _no_gpu_noise(done.stdout + done.stderr) == [] and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["slide_id", "backend"] and lines[1].split()[0] == "A"
    previews = (tmp_path / "previews").resolve()
    assert lines[2:] == [
        f"previews: {previews}",
        f"summary: {previews / 'preview_summary.csv'}",
        f"log: {previews / LOG_FILE}",
    ]
    assert "slide A: opened with cucim" in (tmp_path / "previews" / LOG_FILE).read_text()


LOGGING_PAST_A_LIMIT = """
import logging
from pathlib import Path
from pathme.console import console_logging
with console_logging(Path("run")):
    Path("run").mkdir()
    for line in range(300):
        logging.getLogger("pathme.test").info("line %d of a long run's log", line)
    logging.getLogger("pathme.test").error("the run's own error, still on the console")
"""


def test_a_log_file_on_a_full_disk_is_one_warning_and_the_run_goes_on(tmp_path):
    """Before: logging's default, a "--- Logging error ---" traceback on the console for every line logged."""
    run = with_file_size_limit(["python", "-c", LOGGING_PAST_A_LIMIT], 4096, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.splitlines() == [
        f"WARNING pathme.console: cannot write {tmp_path / 'run' / LOG_FILE}: [Errno 27] File too large (the disk is "
        "full or a file-size limit is reached); free space and run again; this run goes on without its log file",
        "ERROR pathme.test: the run's own error, still on the console",
    ]
    assert (tmp_path / "run" / LOG_FILE).stat().st_size <= 4096


LOG_FILE_TROUBLE = {
    "records held until the folder exists, then a full disk": """
for line in range(300):
    logging.getLogger("pathme.test").info("line %d, held until the folder exists", line)
Path("run").mkdir()
""",
    "a log file that cannot be opened": """
Path("run", "pathme.log").mkdir(parents=True)
logging.getLogger("pathme.test").info("a line of the run's log")
""",
}


@pytest.mark.parametrize("trouble", sorted(LOG_FILE_TROUBLE))
def test_a_log_file_that_fails_with_records_held_or_at_its_opening_is_one_warning(tmp_path, trouble):
    """Before: a warning for each held record once the first failed, and a traceback out of the run's own
    logging call when the file could not be opened."""
    script = "\n".join(
        [
            "import logging",
            "from pathlib import Path",
            "from pathme.console import console_logging",
            'with console_logging(Path("run")):',
            *(f"    {line}" for line in LOG_FILE_TROUBLE[trouble].strip().splitlines()),
            '    logging.getLogger("pathme.test").error("the run\'s own error, still on the console")',
        ]
    )
    run = with_file_size_limit(["python", "-c", script], 4096, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    warning, error = run.stderr.splitlines()
    assert warning.startswith(f"WARNING pathme.console: cannot write {tmp_path / 'run' / LOG_FILE}: ")
    assert warning.endswith("; this run goes on without its log file")
    assert error == "ERROR pathme.test: the run's own error, still on the console"


def test_a_failed_slide_is_one_console_line_and_its_traceback_only_in_the_log(tmp_path, capfd, monkeypatch):
    """A slide that fails in a region-reading worker (an unexpected error: a traceback worth keeping) is one line on
    the console, naming the slide and the reason; the results end with one line naming the failed slides; the
    traceback is in pathme.log, never on the console, and run_summary.csv holds the one-line reason."""
    import pandas as pd
    from real_inputs import tissue_image, write_manifest, write_slide

    import pathme.engines.region_loader as loader

    def broken(slide, region):
        raise MemoryError("no room for this region")

    for slide_id in ("good", "bad"):
        write_slide(tmp_path / f"{slide_id}.tiff", tissue_image(1200, seed=len(slide_id)), compression="jpeg")
    real = loader.read_region_tiles
    monkeypatch.setattr(loader, "read_region_tiles", lambda s, r: (broken if "bad" in str(s.path) else real)(s, r))
    manifest = write_manifest(tmp_path, [{"slide_id": s, "path": f"{s}.tiff"} for s in ("good", "bad")])
    out = tmp_path / "features"
    command = ["extract", "--manifest", str(manifest), "--output-dir", str(out), "--experts", "tiny-vit"]
    assert main([*command, "--num-workers", "1"]) == 1
    printed = capfd.readouterr()
    console = printed.err + printed.out
    about_bad = [line for line in console.splitlines() if "bad" in line]
    assert about_bad == [
        "ERROR pathme.engines.extraction: slide bad failed: MemoryError: no room for this region",
        "FAILED 1 slide(s): bad (the reason of each: its error line above, and the summary)",
    ]
    for noise in ("Traceback", "Caught", "DataLoader worker", "AssertionError"):
        assert noise not in console
    log = (out / LOG_FILE).read_text()
    assert "Traceback (most recent call last)" in log and "MemoryError: no room for this region" in log
    summary = pd.read_csv(out / "run_summary.csv").set_index("slide_id")
    assert summary.loc["bad", "error"] == "MemoryError: no room for this region"
    assert summary.loc["good", "status"] == "done"


def test_the_deploy_app_help_lists_its_options_without_codec_lines():
    done = subprocess.run([sys.executable, "-m", "pathme.deploy.app", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "python -m pathme.deploy.app -i <slide or folder of slides> -o <output folder> -m <model" in done.stdout
    for option in ("--input INPUT, -i INPUT", "--output OUTPUT, -o OUTPUT", "--model MODEL, -m MODEL", "--workdir"):
        assert option in done.stdout
    assert not [line for line in done.stderr.splitlines() if NO_DRIVER_LINES.fullmatch(line) or "[ERROR]" in line]
