"""The Snakemake workflow end to end, on a tiny demo survey in a temporary directory.

These tests run Snakemake in a subprocess exactly as a user would (``snakemake -s
Snakefile --directory DIR``) and check the products, not the internals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

TINY = {
    "survey": "tiny",
    "simulate": {"n_fields": 1, "n_exposures": 2, "size": 128, "seed": 7},
    "train": {"methods": ["n2n", "n2v"], "steps": 60, "val_every": 20, "patch_size": 32,
              "batch_size": 8, "model": {"depth": 2, "channels": 8}},
    "execution": {"predict": {"tile": 64}},
    "evaluate": {"cutout": 96},
}


def run_snakemake(workdir: Path, config: dict, *extra: str) -> subprocess.CompletedProcess:
    config_file = workdir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config_file), "--cores", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env=os.environ | {"PYTHONHASHSEED": "0"})


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    result = run_snakemake(workdir, TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return workdir, result


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


@pytest.mark.slow
def test_dry_run_shows_the_whole_chain(tmp_path):
    result = run_snakemake(tmp_path, TINY, "-n")

    assert result.returncode == 0, result.stderr[-3000:]
    for rule in ("simulate", "ingest", "noise", "train", "predict", "evaluate", "report"):
        assert rule in result.stdout


def test_a_setting_of_the_old_layout_names_where_it_moved(tmp_path):
    config = TINY | {"predict": {"tile": 64}, "train": TINY["train"] | {"correlation_limit": 0.2}}

    result = run_snakemake(tmp_path, config, "-n")

    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "predict.tile is now execution.predict.tile" in text
    assert "train.correlation_limit is now noise.correlation_limit" in text


@pytest.mark.slow
def test_report_is_html_with_embedded_figures(demo_run):
    workdir, result = demo_run
    report = workdir / "results" / "report" / "tiny" / "report.html"

    parser = _Collector()
    parser.feed(report.read_text())

    assert "html" in parser.tags and "table" in parser.tags
    assert parser.images and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert str(report.resolve()) in result.stdout  # the run says where the report is


@pytest.mark.slow
def test_report_numbers_equal_the_metrics_files_and_it_opens_in_a_browser(demo_run, tmp_path):
    import browser

    workdir, _ = demo_run
    results = workdir / "results"
    html = (results / "report/tiny/report.html").read_text()
    summary = json.loads((results / "report/tiny/summary.json").read_text())
    scores = json.loads((results / "evaluate/tiny/field00/field00_e00.json").read_text())["scores"]

    # Every image kind is in the overview: the input, the three baselines and both models.
    assert [r["method"] for r in summary["rows"]] == ["input", "gaussian", "nlm", "bm3d", "n2n", "n2v"]
    for row in summary["rows"]:
        assert f'data-method="{row["method"]}"' in html
        assert f"{row['rms_ratio']:.2f}" in html and f"{row['psnr']:.2f}" in html
    for s in scores.values():  # the per-exposure table shows the metrics file's numbers
        assert f"{s['rms_ratio']:.2f}" in html and f"{s['ssim']:.3f}" in html
    assert {v["method"] for v in summary["verdicts"]} == {"n2n", "n2v"}
    # Injection-recovery: every image kind, and the page's numbers are the metrics files' pooled.
    from astrodenoise.report import summarise_injection

    evaluations = [json.loads(p.read_text()) for p in sorted((results / "evaluate/tiny").rglob("*.json"))]
    pooled = summarise_injection(evaluations, [r["method"] for r in summary["rows"]])
    assert [r["method"] for r in summary["injection"]] == ["input", "gaussian", "nlm", "bm3d", "n2n", "n2v"]
    assert json.loads(json.dumps(pooled)) == summary["injection"]
    for row in summary["injection"]:
        assert row["faint_bias"] is None or f'{row["faint_bias"] * 100:+.1f}%' in html

    if reason := browser.missing():
        pytest.skip(reason)
    page = browser.open_page(results / "report/tiny/report.html", tmp_path / "report.png")
    assert page.errors == [] and page.scripts == 0
    assert len(page.images) >= 6 and all(i["complete"] and i["width"] > 0 for i in page.images)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["n2n", "n2v"])
def test_denoised_fits_keeps_wcs_and_lowers_blank_sky_noise(demo_run, method):
    workdir, _ = demo_run
    raw = workdir / "results" / "simulate" / "tiny" / "raw" / "field00_e00.fits"
    out = workdir / "results" / "predict" / "tiny" / method / "field00_e00.fits"
    scores = json.loads((workdir / "results/evaluate/tiny/field00/field00_e00.json").read_text())

    with fits.open(out) as hdul:
        header, data = hdul[0].header, hdul[0].data
    wcs_in, wcs_out = WCS(fits.getheader(raw)), WCS(header)

    assert data.shape == (128, 128) and np.isfinite(data).all()
    assert wcs_out.has_celestial
    np.testing.assert_allclose(wcs_out.pixel_to_world_values(10, 20), wcs_in.pixel_to_world_values(10, 20))
    assert any("predict" in str(card) for card in header["HISTORY"])
    assert scores["scores"][method]["rms_blank"] < scores["scores"]["input"]["rms_blank"]
    assert scores["scores"][method]["psnr"] > scores["scores"]["input"]["psnr"]
    assert "bias" in scores["scores"][method]["photometry"]["faint"]


@pytest.mark.slow
def test_rerun_has_nothing_to_do(demo_run):
    workdir, _ = demo_run

    result = run_snakemake(workdir, TINY, "-n")

    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def _fits_config(path: str) -> dict:
    return TINY | {"inputs": {"source": "fits", "path": path}, "train": TINY["train"] | {"methods": ["n2v"]}}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no FITS file"),
        (lambda d: (d / "in").mkdir() or (d / "in" / "notes.fits").write_text("hello") and d / "in",
         "is not a FITS file"),
    ],
    ids=["missing-dir", "empty-dir", "non-fits-file"],
)
def test_bad_inputs_stop_before_any_job(tmp_path, make_input, message):
    path = make_input(tmp_path)

    result = run_snakemake(tmp_path, _fits_config(str(path)))

    assert result.returncode != 0
    assert message in result.stderr and str(path) in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_truncated_fits_fails_ingest_and_leaves_no_store(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": 128, "NAXIS2": 128})
    (inputs / "cut.fits").write_bytes(header.tostring().encode() + b"\0" * 1000)

    result = run_snakemake(tmp_path, _fits_config(str(inputs)))
    log = (tmp_path / "logs" / "ingest" / "tiny" / "cut.log").read_text()

    assert result.returncode != 0
    assert "cut.fits" in log and "error" in log
    # The failed job's batch directory is gone, with nothing half-written in it.
    assert not (tmp_path / "results" / "ingest" / "tiny" / "cut").exists()
    assert not list((tmp_path / "results" / "ingest").rglob("*.zarr"))
    assert not list((tmp_path / "results" / "ingest").rglob("*.tmp"))


@pytest.mark.slow
def test_own_fits_directory_is_grouped_registered_and_denoised(tmp_path):
    from astrodenoise.simulate import SimulationConfig, write_demo_survey

    write_demo_survey(tmp_path / "sky", SimulationConfig(**TINY["simulate"]))
    config = TINY | {
        "survey": "mine",
        "inputs": {"source": "fits", "path": str(tmp_path / "sky" / "raw"), "grouping": "auto"},
        "train": TINY["train"] | {"methods": ["n2n"]},
    }

    result = run_snakemake(tmp_path, config)

    assert result.returncode == 0, result.stderr[-4000:]
    registration = json.loads((tmp_path / "results/register/mine/field00_e00.json").read_text())
    assert [e["method"] for e in registration["exposures"]] == ["reference", "wcs"]
    scores = json.loads((tmp_path / "results/evaluate/mine/field00_e00/field00_e01.json").read_text())
    assert scores["photometry_reference"] == "input" and not scores["has_truth"]
    assert scores["scores"]["n2n"]["rms_blank"] < scores["scores"]["input"]["rms_blank"]

    # One more exposure of the same field: only it is ingested and measured; its field is
    # registered again and everything that pools the field (fit, model, outputs) follows.
    raw = tmp_path / "sky" / "raw"
    (raw / "field00_e02.fits").write_bytes((raw / "field00_e01.fits").read_bytes())
    assert _planned_jobs(tmp_path, config) == {
        "ingest": 1, "noise": 1, "register": 1, "argument_list": 2, "noise_survey": 1, "train": 1,
        "predict": 3, "evaluate": 1, "report": 1, "all": 1,
    }


def _planned_jobs(workdir: Path, config: dict) -> dict[str, int]:
    """Job counts per rule of a dry run (Snakemake's 'Job stats' table)."""
    result = run_snakemake(workdir, config, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1].split("total")[0]
    counts = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"evaluate": {"gaussian_sigma": 1.5}}, {"evaluate": 1, "report": 1, "all": 1}),
        ({"noise": {"dilate": 3}},
         {"noise": 2, "noise_survey": 1, "train": 2, "predict": 2, "evaluate": 1, "report": 1, "all": 1}),
        ({"predict": {"average": False}}, {"predict": 2, "evaluate": 1, "report": 1, "all": 1}),
        # A method's own train block retrains that method only.
        ({"train": {"n2v": {"steps": 7}}}, {"train": 1, "predict": 2, "evaluate": 1, "report": 1, "all": 1}),
        # How predict runs is not what it computes: nothing reruns.
        ({"execution": {"predict": {"tile": 32, "workers": 2, "device": "cpu"}}}, {}),
    ],
    ids=["evaluate-settings", "noise-settings", "predict-settings", "one-method-train-settings",
         "execution-settings"],
)
def test_config_edit_reruns_only_what_it_affects(demo_run, change, expected):
    workdir, _ = demo_run
    config = json.loads(json.dumps(TINY))
    for section, values in change.items():
        config[section] = config.get(section, {}) | values

    assert _planned_jobs(workdir, config) == expected


@pytest.mark.slow
def test_other_cores_rerun_nothing(demo_run):
    workdir, _ = demo_run

    result = run_snakemake(workdir, TINY, "-n", "--cores", "1")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_batched_ingest_and_noise_write_every_exposure(tmp_path):
    config = TINY | {"inputs": {"batch_size": 2}}

    assert _planned_jobs(tmp_path, config)["ingest"] == 1  # both exposures in one job
    result = run_snakemake(tmp_path, config, "results/noise/tiny/batch00000")

    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("field00_e00", "field00_e01"):
        assert (tmp_path / f"results/ingest/tiny/batch00000/{name}.zarr/zarr.json").is_file()
        noise = json.loads((tmp_path / f"results/noise/tiny/batch00000/{name}.json").read_text())
        assert noise["sigma"] > 0


def test_dry_run_of_a_large_survey_batches_ingest_and_noise(tmp_path):
    config = TINY | {"simulate": TINY["simulate"] | {"n_fields": 30, "n_exposures": 4},
                     "inputs": {"batch_size": 8}}

    counts = _planned_jobs(tmp_path, config)

    # 120 exposures in batches of about 8: 16 hash buckets, each with some exposures.
    assert 10 <= counts["ingest"] == counts["noise"] <= 16
    assert counts["predict"] == 120
    assert counts["register"] == counts["evaluate"] == 30


@pytest.mark.slow
def test_killed_run_leaves_nothing_complete_and_a_rerun_finishes(tmp_path):
    import signal
    import time

    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(TINY | {"train": TINY["train"] | {"steps": 400}}))
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(config_file), "--cores", "2"]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    train_log = tmp_path / "logs" / "train" / "tiny"
    deadline = time.monotonic() + 300
    while not (train_log.is_dir() and any(train_log.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # well inside training
    os.killpg(run.pid, signal.SIGKILL)  # as a node failure or a scheduler kill would
    run.wait()

    models = list((tmp_path / "results" / "train" / "tiny").glob("*/model.pt"))
    assert not models, f"a killed training left {models}"

    # A killed Snakemake leaves its lock: the documented recovery is --unlock, then rerun.
    subprocess.run(cmd + ["--unlock"], capture_output=True, text=True, timeout=120, check=True)
    rerun = subprocess.run(cmd + ["--rerun-incomplete"], capture_output=True, text=True, timeout=900)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tmp_path / "results" / "report" / "tiny" / "report.html").is_file()
