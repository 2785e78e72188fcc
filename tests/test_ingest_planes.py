"""Ingestion of real-survey layouts: cubes, named extensions, weights, masks, saturation."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from astrodenoise import io
from astrodenoise.denoise import denoise_array, load_model, load_normalisation
from astrodenoise.ingest import (
    BAD,
    NO_WEIGHT,
    NODATA,
    SATURATED,
    IngestConfig,
    discover_exposures,
    ingest,
    inverse_variance,
)
from astrodenoise.noise import estimate_noise
from astrodenoise.noise_model import NoiseModel
from astrodenoise.sampling import Exposure
from astrodenoise.train import TrainConfig, make_sampler
from astrodenoise.transform import Normalisation
from conftest import REAL_DATA, make_star_field, random_checkpoint

SHAPE = (80, 96)


def _image(seed=0):
    return make_star_field(SHAPE, sky=100.0, sigma=3.0, seed=seed).data


def test_cube_needs_a_plane(tmp_path):
    cube = np.stack([_image(0), _image(1) + 1000.0])
    path = tmp_path / "cube.fits"
    fits.writeto(path, cube)

    with pytest.raises(io.InputError, match="3-D cube.*ingest.plane") as err:
        io.read_fits_image(path)
    plane, _ = io.read_fits_image(path, plane=1)

    assert str(path) in str(err.value)
    assert np.nanmedian(plane) > 1000
    with pytest.raises(io.InputError, match="outside"):
        io.read_fits_image(path, plane=5)


def test_sci_extension_is_preferred_and_primary_cards_are_merged(tmp_path):
    primary = fits.PrimaryHDU(header=fits.Header({"FILTER": "r", "EXPTIME": 30.0}))
    other = fits.ImageHDU(np.zeros(SHAPE, np.float32), name="VAR")
    science = fits.ImageHDU(_image(), name="SCI")
    path = tmp_path / "mef.fits"
    fits.HDUList([primary, other, science]).writeto(path)

    data, header = io.read_fits_image(path)

    assert np.nanmedian(data) > 50  # the SCI image, not the all-zero VAR plane
    assert header["FILTER"] == "r" and header["EXPTIME"] == 30.0
    assert header["EXTNAME"] == "SCI"


def test_saturation_mask_and_weight_planes_reach_the_store(tmp_path):
    image = _image()
    image[10, 10] = 70000.0
    ivar = np.full(SHAPE, 1 / 9.0, np.float32)
    ivar[20:22, 30:32] = 0.0
    bad = np.zeros(SHAPE, np.int16)
    bad[40, 50] = 4
    image[5, 5] = np.nan
    header = fits.Header({"SATURATE": 60000.0})
    path = tmp_path / "exp.fits"
    fits.HDUList([fits.PrimaryHDU(image, header), fits.ImageHDU(ivar, name="WHT"),
                  fits.ImageHDU(bad, name="BPM")]).writeto(path)
    config = IngestConfig(weight_hdu="WHT", mask_hdu="BPM", min_size=32)

    attrs = ingest(path, tmp_path / "exp.zarr", config=config)
    mask = io.open_zarr_array(tmp_path / "exp.zarr", "mask")[...]
    stored_ivar = io.open_zarr_array(tmp_path / "exp.zarr", "ivar")[...]

    assert mask[10, 10] & SATURATED and mask[40, 50] & BAD and mask[5, 5] & NODATA
    assert mask[20, 30] & NO_WEIGHT and mask[0, 0] == 0
    assert attrs["saturated_pixels"] == 1 and attrs["has_weight"]
    np.testing.assert_allclose(stored_ivar[0, 0], 1 / 9.0)


def test_sidecar_weight_of_other_shape_is_an_error(tmp_path):
    fits.writeto(tmp_path / "a_ooi.fits", _image())
    fits.writeto(tmp_path / "a_oow.fits", np.ones((10, 10), np.float32))

    with pytest.raises(io.InputError, match="shape") as err:
        ingest(tmp_path / "a_ooi.fits", tmp_path / "a.zarr",
               config=IngestConfig(weight_sidecar="ooi:oow", min_size=32))

    assert "a_oow.fits" in str(err.value)
    assert not (tmp_path / "a.zarr").exists()


@pytest.mark.parametrize(("kind", "plane"), [("ivar", 0.25), ("var", 4.0), ("rms", 2.0)])
def test_weight_kinds_become_inverse_variance(kind, plane):
    weight = np.full((4, 4), plane)
    weight[0, 0] = 0.0

    ivar = inverse_variance(weight, kind)

    np.testing.assert_allclose(ivar[1:, 1:], 0.25)
    assert ivar[0, 0] == 0.0


def test_discovery_skips_sidecar_files(tmp_path):
    for part in ("ooi", "oow", "ood"):
        fits.writeto(tmp_path / f"c4d_1_{part}_g.fits", _image())

    found = discover_exposures(str(tmp_path), sidecars=["oow", "ood"])

    assert list(found) == ["c4d_1_ooi_g"]


@pytest.mark.parametrize(("factor", "expected"), [(1.0, 1.0), (4.0, 2.0)])
def test_weight_agreement_tells_a_right_map_from_a_wrong_one(factor, expected):
    field = make_star_field(160, sky=100.0, sigma=3.0, seed=2)
    ivar = np.full(field.data.shape, factor / 9.0)

    result = estimate_noise(field.data, ivar=ivar)

    assert result["weight_agreement"] == pytest.approx(expected, rel=0.05)


def test_bad_pixels_are_excluded_from_the_training_loss():
    data = _image()
    bad = np.zeros(SHAPE, bool)
    bad[:, :48] = True
    exposure = Exposure("e", "f", data, NoiseModel(sky=100.0, sigma=3.0), bad=bad)
    sampler = make_sampler([exposure], [Normalisation("linear", offset=100.0, scale=3.0)],
                           TrainConfig(patch_size=32, batch_size=4), np.random.default_rng(0))

    assert sampler.nodata[0][:, :48].all() and not sampler.nodata[0][:, 48:].any()
    assert np.isfinite(sampler.images[0]).all()  # flagged pixels stay in the input


@pytest.mark.real_data
class TestRealLayouts:
    @pytest.fixture(autouse=True)
    def _need_data(self):
        if not REAL_DATA.is_dir():
            pytest.skip(f"real data folder {REAL_DATA} is absent")

    def test_decam_inverse_variance_agrees_with_measured_noise(self, tmp_path):
        config = IngestConfig(min_size=32, weight_sidecar="ooi:oow", mask_sidecar="ooi:ood")
        found = discover_exposures(str(REAL_DATA / "decam_multiepoch" / "testcase3"),
                                   sidecars=config.sidecar_tokens())
        ratios = []
        for name, entry in found.items():
            ingest(entry["path"], tmp_path / f"{name}.zarr", config=config)
            data, header = io.read_fits_image(entry["path"])
            ivar = io.open_zarr_array(tmp_path / f"{name}.zarr", "ivar")[...]
            ratios.append(estimate_noise(data, header=header, ivar=ivar)["weight_agreement"])
            assert "DECam" in header["FILTER"]  # from the primary header

        assert len(found) == 8
        # 51 x 41 cutouts: a few hundred blank pixels each, so single frames scatter.
        assert np.median(ratios) == pytest.approx(1.0, abs=0.05)
        assert all(abs(r - 1) < 0.15 for r in ratios)

    def test_spitzer_nan_pixels_stay_nan_through_ingest_and_prediction(self, tmp_path):
        path = REAL_DATA / "spitzer_example_image.fits"
        checkpoint = random_checkpoint(tmp_path / "m.pt", scale=1.0)
        ingest(path, tmp_path / "s.zarr")
        data = io.open_zarr_image(tmp_path / "s.zarr")[...]
        model, scale = load_model(str(checkpoint), "cpu"), load_normalisation(str(checkpoint))["scale"]
        norm = Normalisation("linear", offset=float(np.nanmedian(data)), scale=scale)

        out = denoise_array(data, model, norm=norm)

        assert np.isnan(data).any()
        np.testing.assert_array_equal(np.isnan(out), np.isnan(data))
