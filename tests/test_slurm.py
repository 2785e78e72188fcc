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
        metrics = f"results/evaluate/tiny/{exposure}.json"
        local_scores = json.loads((local / metrics).read_text())["scores"]
        slurm_scores = json.loads((cluster / metrics).read_text())["scores"]
        assert slurm_scores["n2n"]["psnr"] == pytest.approx(local_scores["n2n"]["psnr"], abs=1e-6)
