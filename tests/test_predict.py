"""Tests of astrodenoise.predict: the predict step writes what tiled inference computes."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrodenoise import io
from astrodenoise.denoise import denoise_array, denoise_with_uncertainty, load_model
from astrodenoise.predict import predict
from astrodenoise.tiling import Execution, PredictConfig, denoise_planes
from astrodenoise.transform import Normalisation
from conftest import SIGMA, SKY, checkpoint_norm, gat_checkpoint, linear_norm

pytestmark = pytest.mark.usefixtures("_fresh_model_cache")  # load_model caches on the path


def test_predict_writes_fits_with_wcs_and_history_and_zarr(tmp_path, make_image, make_header,
                                                           tiny_checkpoint):
    image = make_image((96, 112), sky=SKY, sigma=SIGMA, seed=10).data
    header = make_header(image.shape, OBJECT="ngc 253")
    store = tmp_path / "exp.zarr"
    io.write_zarr_image(store, image, chunks=64, attrs={"fits_header": header.tostring(),
                                                        "has_wcs": True})
    noise_json = tmp_path / "exp.json"
    io.write_json(noise_json, {"sky_level": SKY, "sigma": SIGMA})
    out_zarr, out_fits = tmp_path / "den.zarr", tmp_path / "den.fits"
    config = PredictConfig(average=False, restore_flux=False, repair_outliers=False)
    execution = Execution(tile=64, device="cpu", threads=1)

    predict(str(store), str(noise_json), str(tiny_checkpoint), out_zarr=str(out_zarr),
            out_fits=str(out_fits), config=config, execution=execution)

    model, scale = load_model(str(tiny_checkpoint), "cpu"), checkpoint_norm(tiny_checkpoint).scale
    expected = denoise_array(image, model, norm=linear_norm(scale))
    data, back = io.read_fits_image(out_fits)
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-4 * SIGMA)
    xs, ys = np.meshgrid([0, 50, 111], [0, 40, 95])
    separation = WCS(header).pixel_to_world(xs, ys).separation(WCS(back).pixel_to_world(xs, ys))
    assert np.all(separation.arcsec < 1e-6)
    assert back["OBJECT"] == "ngc 253"
    history = "".join(back["HISTORY"])  # astropy wraps long HISTORY text over cards
    assert "predict" in history and tiny_checkpoint.name in history
    assert io.file_sha256(tiny_checkpoint)[:16] in history
    stored = io.open_zarr_image(out_zarr)
    np.testing.assert_array_equal(stored[...], data)
    assert stored.attrs["has_wcs"] is True
    provenance = stored.attrs["provenance_predict"]
    assert provenance["model_sha256"] == io.file_sha256(tiny_checkpoint)[:16]
    assert provenance["input"] == str(store)


def test_local_dask_cluster_gives_the_threaded_result(tmp_path, make_image, tiny_checkpoint):
    image = make_image((150, 203), sky=SKY, sigma=SIGMA, seed=5).data
    header = fits.Header({"BUNIT": "adu"})
    io.write_zarr_image(tmp_path / "in.zarr", image, chunks=64, attrs={"fits_header": header.tostring()})
    io.write_json(tmp_path / "noise.json", {"sky_level": SKY, "sigma": SIGMA})
    outputs = {}
    for scheduler in ("threads", "local"):
        config = PredictConfig()
        execution = Execution(tile=64, device="cpu", workers=2, scheduler=scheduler)
        predict(str(tmp_path / "in.zarr"), str(tmp_path / "noise.json"), str(tiny_checkpoint),
                out_zarr=tmp_path / f"{scheduler}.zarr", out_fits=tmp_path / f"{scheduler}.fits",
                config=config, execution=execution)
        outputs[scheduler] = fits.getdata(tmp_path / f"{scheduler}.fits")

    np.testing.assert_allclose(outputs["local"], outputs["threads"], rtol=1e-5, atol=1e-4 * SIGMA)


def _write_input(tmp_path, image, header=None):
    header = header if header is not None else fits.Header({"BUNIT": "adu"})
    store = tmp_path / "in.zarr"
    io.write_zarr_image(store, image, chunks=64, attrs={"fits_header": header.tostring()})
    io.write_json(tmp_path / "noise.json", {"sky_level": SKY, "sigma": SIGMA})
    return str(store), str(tmp_path / "noise.json")


def test_predict_writes_err_extension_and_zarr_array(tmp_path, make_image, make_header,
                                                     tiny_checkpoint):
    image = make_image((96, 112), sky=SKY, sigma=SIGMA, seed=14).data
    header = make_header(image.shape, BUNIT="adu")
    store, noise_json = _write_input(tmp_path, image, header)
    config = PredictConfig(uncertainty=True, repair_outliers=False)
    execution = Execution(tile=64, device="cpu")

    predict(store, noise_json, str(tiny_checkpoint), out_zarr=str(tmp_path / "d.zarr"),
            out_fits=str(tmp_path / "d.fits"), config=config, execution=execution)

    model, scale = load_model(str(tiny_checkpoint), "cpu"), checkpoint_norm(tiny_checkpoint).scale
    mean, err = denoise_with_uncertainty(image, model, norm=linear_norm(scale))
    with fits.open(tmp_path / "d.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "ERR"]
        np.testing.assert_allclose(hdul[0].data, mean, rtol=1e-5, atol=1e-4 * SIGMA)
        np.testing.assert_allclose(hdul["ERR"].data, err, rtol=1e-4, atol=1e-4 * SIGMA)
        assert hdul["ERR"].header["BUNIT"] == "adu"
        assert WCS(hdul["ERR"].header).has_celestial
    stored = io.open_zarr_array(tmp_path / "d.zarr", "err")
    np.testing.assert_array_equal(stored[...], fits.getdata(tmp_path / "d.fits", "ERR"))


def test_predict_writes_the_repaired_pixels(tmp_path, make_image, make_header, tiny_checkpoint):
    image = make_image((96, 112), sky=SKY, sigma=SIGMA, seed=14).data.copy()
    image[40, 70] += 300 * SIGMA
    store, noise_json = _write_input(tmp_path, image, make_header(image.shape, BUNIT="adu"))

    predict(store, noise_json, str(tiny_checkpoint), out_zarr=str(tmp_path / "d.zarr"),
            out_fits=str(tmp_path / "d.fits"), config=PredictConfig(),
                                               execution=Execution(tile=64, device="cpu"))

    with fits.open(tmp_path / "d.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "REPAIRED"]
        repaired = hdul["REPAIRED"].data
        assert repaired[40, 70] == 1 and set(np.unique(repaired)) <= {0.0, 1.0}
        assert WCS(hdul["REPAIRED"].header).has_celestial
    np.testing.assert_array_equal(io.open_zarr_array(tmp_path / "d.zarr", "repaired")[...], repaired)


def test_predict_zarr_shards_are_the_tiles(tmp_path, make_image, tiny_checkpoint):
    image = make_image((150, 203), sky=SKY, sigma=SIGMA, seed=15).data
    store, noise_json = _write_input(tmp_path, image)

    predict(store, noise_json, str(tiny_checkpoint), out_zarr=str(tmp_path / "d.zarr"),
            out_fits=str(tmp_path / "d.fits"), config=PredictConfig(),
                                               execution=Execution(tile=64, device="cpu", workers=2))

    stored = io.open_zarr_image(tmp_path / "d.zarr")
    assert stored.shards == (64, 64)
    # Every pixel arrived (a write smaller than a shard could silently lose some).
    np.testing.assert_array_equal(stored[...], fits.getdata(tmp_path / "d.fits"))
    assert np.isfinite(stored[...]).all()


def test_predict_removes_temporaries_of_a_killed_run(tmp_path, make_image, tiny_checkpoint):
    image = make_image((64, 64), sky=SKY, sigma=SIGMA, seed=16).data
    store, noise_json = _write_input(tmp_path, image)
    stale = tmp_path / ".d.fits.abc123.tmp"
    stale.mkdir()
    (stale / "d.fits").write_bytes(b"half")

    predict(store, noise_json, str(tiny_checkpoint), out_zarr=str(tmp_path / "d.zarr"),
            out_fits=str(tmp_path / "d.fits"), config=PredictConfig(),
                                               execution=Execution(tile=64, device="cpu"))

    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_predict_applies_the_checkpoint_domain_with_the_exposure_noise(tmp_path, tiny_checkpoint):
    path = gat_checkpoint(tmp_path, tiny_checkpoint)
    rng = np.random.default_rng(3)
    data = (SKY + rng.normal(0.0, 3.0, (96, 96))).astype(np.float32)
    store = tmp_path / "in.zarr"
    io.write_zarr_image(store, data, chunks=64, attrs={"fits_header": ""})
    io.write_json(tmp_path / "noise.json", {"sky_level": SKY, "sigma": 3.0, "header_gain": 2.0})

    predict(str(store), str(tmp_path / "noise.json"), str(path), out_zarr=str(tmp_path / "o.zarr"),
            out_fits=str(tmp_path / "o.fits"), config=PredictConfig(), execution=Execution(tile=64))

    model = load_model(str(path), "cpu")
    norm = Normalisation("gat", offset=SKY, scale=3.0, gain=2.0)
    expected = denoise_planes(data, model, norm=norm, config=PredictConfig())[0]
    np.testing.assert_allclose(io.open_zarr_image(tmp_path / "o.zarr")[...], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows, per_row, workers", [((64, 64, 86), 3, 1), ((64,) * 5, 2, 3), ((100,), 1, 1)])
def test_bands_cover_the_rows_once_at_block_edges(rows, per_row, workers):
    from astrodenoise.predict import row_bands

    bands = row_bands(rows, blocks_per_row=per_row, workers=workers)

    edges = set(np.cumsum((0,) + rows).tolist())
    assert bands[0].start == 0 and bands[-1].stop == sum(rows)
    assert all(a.stop == b.start for a, b in zip(bands[:-1], bands[1:], strict=True))
    assert {b.start for b in bands} | {b.stop for b in bands} <= edges
    blocks = [sum(1 for e in edges if b.start <= e < b.stop) for b in bands]
    assert all(n * per_row >= min(2 * workers, len(rows) * per_row) for n in blocks[:-1])
