"""A prediction killed midway leaves nothing that looks complete; a rerun gives the same bytes."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from astrodenoise import io

SKY = 100.0


def _predict_command(store: Path, noise: Path, model: Path, out: Path) -> list[str]:
    config, execution = '{"uncertainty": true}', '{"tile": 64, "device": "cpu"}'
    return [sys.executable, "-m", "astrodenoise", "predict", str(store), "--noise", str(noise),
            "--model", str(model), "--out-zarr", str(out / "d.zarr"), "--out-fits", str(out / "d.fits"),
            "--threads", "1", "--config", config, "--execution", execution]


def _kill_once_writing(command: list[str], out: Path, timeout: float = 60.0) -> None:
    """Start the prediction and SIGKILL it as soon as its first blocks reach the disk."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any(out.glob(".d.zarr.*.tmp/d.zarr/image/c/*")):
                break
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "prediction ended before it could be killed"


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_killed_prediction_then_rerun_gives_identical_bytes(tmp_path, make_image, tiny_checkpoint):
    image = make_image((512, 384), sky=SKY, sigma=3.0, seed=1).data
    store = tmp_path / "in.zarr"
    header = fits.Header({"BUNIT": "adu"})
    io.write_zarr_image(store, image, chunks=64, attrs={"fits_header": header.tostring()})
    noise = tmp_path / "noise.json"
    io.write_json(noise, {"sky_level": SKY, "sigma": 3.0})
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    killed.mkdir()
    subprocess.run(_predict_command(store, noise, tiny_checkpoint, clean), check=True,
                   capture_output=True)

    _kill_once_writing(_predict_command(store, noise, tiny_checkpoint, killed), killed)
    assert not (killed / "d.zarr").exists() and not (killed / "d.fits").exists()
    subprocess.run(_predict_command(store, noise, tiny_checkpoint, killed), check=True,
                   capture_output=True)

    assert _files(killed) == _files(clean)  # the killed run's temporaries are gone too
    for name in _files(clean):
        assert filecmp.cmp(clean / name, killed / name, shallow=False), name
    assert np.isfinite(fits.getdata(killed / "d.fits")).all()
    assert os.path.getsize(killed / "d.fits") % 2880 == 0
