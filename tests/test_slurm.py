"""The workflow on a real (single-node) SLURM cluster gives the same outputs as a local run.

Needs a running SLURM (``bash scripts/slurm/start.sh``) and the ``cluster`` extra
(``pip install -e ".[cluster]"``); skipped otherwise. ``.ci/run`` provides both.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess

import numpy as np
import pytest
from astropy.io import fits

from test_workflow import REPO, TINY, run_snakemake


def _slurm_ready() -> str | None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[cluster]')"
    if shutil.which("sinfo") is None:
        return "no SLURM client on this machine (bash scripts/slurm/start.sh)"
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    if state.returncode or not {"idle", "mix", "alloc"} & set(state.stdout.split()):
        return "no idle SLURM node (bash scripts/slurm/start.sh)"
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.slow]
CONFIG = TINY | {"train": TINY["train"] | {"methods": ["n2n"]}}


def test_slurm_run_equals_local_run(tmp_path):
    reason = _slurm_ready()
    if reason:
        pytest.skip(reason)
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    cluster.mkdir()

    local_run = run_snakemake(local, CONFIG)
    slurm_run = run_snakemake(cluster, CONFIG, "--workflow-profile",
                              str(REPO / "config" / "profiles" / "slurm-ci"))

    assert local_run.returncode == 0, local_run.stderr[-3000:]
    assert slurm_run.returncode == 0, slurm_run.stderr[-5000:]
    assert "submitted with SLURM jobid" in slurm_run.stdout + slurm_run.stderr  # really via SLURM
    for exposure in ("field00_e00", "field00_e01"):
        out = f"results/predict/tiny/n2n/{exposure}.fits"
        np.testing.assert_allclose(fits.getdata(cluster / out), fits.getdata(local / out),
                                   rtol=1e-6, atol=1e-6)
        metrics = f"results/evaluate/tiny/field00/{exposure}.json"
        local_scores = json.loads((local / metrics).read_text())["scores"]
        slurm_scores = json.loads((cluster / metrics).read_text())["scores"]
        assert slurm_scores["n2n"]["psnr"] == pytest.approx(local_scores["n2n"]["psnr"], abs=1e-6)


def test_predict_on_a_dask_jobqueue_slurm_cluster(tmp_path):
    reason = _slurm_ready()
    if reason:
        pytest.skip(reason)
    import dask

    from astrodenoise import io
    from astrodenoise.predict import predict
    from astrodenoise.tiling import Execution, PredictConfig
    from conftest import make_star_field, random_checkpoint

    image = make_star_field((150, 203), sky=100.0, sigma=3.0, seed=5).data
    io.write_zarr_image(tmp_path / "in.zarr", image, chunks=64,
                        attrs={"fits_header": fits.Header().tostring()})
    io.write_json(tmp_path / "noise.json", {"sky_level": 100.0, "sigma": 3.0})
    checkpoint = random_checkpoint(tmp_path / "model.pt")
    outputs = {}
    # Site settings of dask-jobqueue, as a cluster's ~/.config/dask/jobqueue.yaml would give.
    site = {"jobqueue.slurm.cores": 1, "jobqueue.slurm.memory": "1GB",
            "jobqueue.slurm.queue": "debug", "jobqueue.slurm.walltime": "00:10:00",
            "jobqueue.slurm.scheduler-options": {"host": "127.0.0.1"},
            "jobqueue.slurm.log-directory": str(tmp_path / "logs")}
    with dask.config.set(site):
        for scheduler in ("threads", "slurm"):
            config = PredictConfig()
            execution = Execution(tile=64, device="cpu", workers=2, scheduler=scheduler)
            predict(str(tmp_path / "in.zarr"), str(tmp_path / "noise.json"), str(checkpoint),
                    out_zarr=tmp_path / f"{scheduler}.zarr", out_fits=tmp_path / f"{scheduler}.fits",
                    config=config, execution=execution)
            outputs[scheduler] = fits.getdata(tmp_path / f"{scheduler}.fits")

    np.testing.assert_allclose(outputs["slurm"], outputs["threads"], rtol=1e-5, atol=1e-4)
    assert list((tmp_path / "logs").glob("*"))  # the workers ran as SLURM jobs
