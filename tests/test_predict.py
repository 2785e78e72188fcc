"""Tests of astrodenoise.predict: tiled inference equals whole-image inference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from astrodenoise import io
from astrodenoise.denoise import (
    denoise_array,
    denoise_with_uncertainty,
    load_model,
    load_normalisation,
    torch_device,
)
from astrodenoise.model import UNet, UNetConfig
from astrodenoise.noise_model import NoiseModel
from astrodenoise.predict import predict
from astrodenoise.restore import outlier_mask, repair_outliers, restore_flux
from astrodenoise.tiling import (
    Execution,
    PredictConfig,
    compute_threads,
    denoise_planes,
    predict_planes,
    predict_tiles,
    tile_overlap,
)
from astrodenoise.transform import Normalisation, exposure_normalisation

SKY, SIGMA = 100.0, 3.0


def _lin(scale: float, offset: float = SKY) -> Normalisation:
    return Normalisation("linear", offset=offset, scale=scale)


def _norm(checkpoint, offset=SKY) -> Normalisation:
    """The linear map of a (linear) checkpoint at sky level ``offset``."""
    return Normalisation("linear", offset=offset, scale=float(load_normalisation(str(checkpoint))["scale"]))


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    """load_model caches on the path; start and end every test with an empty cache."""
    load_model.cache_clear()
    yield
    load_model.cache_clear()


def _assert_matches_whole_image(image, checkpoint, tile):
    model, scale = load_model(str(checkpoint), "cpu"), _norm(checkpoint).scale
    whole = denoise_array(image, model, norm=_lin(scale))

    tiled = predict_tiles(image, str(checkpoint), norm=_norm(checkpoint, SKY),
                          config=PredictConfig(average=False, restore_flux=False, repair_outliers=False),
                          execution=Execution(tile=tile, device="cpu"))
    result = tiled.compute(scheduler="sync")

    assert result.dtype == np.float32 and result.shape == image.shape
    # The network really changes the image, so the comparison is not trivial.
    assert np.nanmax(np.abs(whole - image)) > 1.0
    np.testing.assert_allclose(result, whole, rtol=1e-5, atol=1e-4 * SIGMA)


def test_tiled_equals_whole_image_on_odd_shape(make_image, tiny_checkpoint):
    image = make_image((150, 203), sky=SKY, sigma=SIGMA, seed=3).data
    model = load_model(str(tiny_checkpoint), "cpu")
    assert tile_overlap(model) < 64 < tile_overlap(model) * 2  # several tiles, wide halos

    _assert_matches_whole_image(image, tiny_checkpoint, tile=64)


@pytest.mark.parametrize("shape, tile", [((131, 97), 32), ((200, 150), 96)])
def test_tiled_equals_whole_image_other_shapes(make_image, tiny_checkpoint, shape, tile):
    image = make_image(shape, sky=SKY, sigma=SIGMA, seed=4).data

    _assert_matches_whole_image(image, tiny_checkpoint, tile)


def test_tiled_equals_whole_image_when_last_tile_is_thinner_than_overlap(make_image,
                                                                         tiny_checkpoint):
    image = make_image((150, 150), sky=SKY, sigma=SIGMA, seed=5).data

    _assert_matches_whole_image(image, tiny_checkpoint, tile=128)


def test_single_tile_image_equals_whole_image(make_image, tiny_checkpoint):
    image = make_image((60, 70), sky=SKY, sigma=SIGMA, seed=6).data

    _assert_matches_whole_image(image, tiny_checkpoint, tile=128)


def test_nan_pixels_stay_nan_and_do_not_spread(make_image, tiny_checkpoint):
    image = make_image((150, 203), sky=SKY, sigma=SIGMA, seed=7).data.copy()
    image[70:73, 60:64] = np.nan  # a bad column segment
    image[0, 0] = np.nan
    image[149, 130] = np.nan  # on a tile edge row

    result = predict_tiles(image, str(tiny_checkpoint), norm=_norm(tiny_checkpoint, SKY),
                           config=PredictConfig(), execution=Execution(tile=64, device="cpu")).compute()

    np.testing.assert_array_equal(np.isnan(result), np.isnan(image))
    assert np.isfinite(result[69, 60:64]).all() and np.isfinite(result[73, 60:64]).all()


def test_denoise_array_keeps_nan_and_units(make_image, tiny_checkpoint):
    image = make_image((40, 44), sky=SKY, sigma=SIGMA, seed=8).data.copy()
    image[10, 10] = np.nan
    model, scale = load_model(str(tiny_checkpoint), "cpu"), _norm(tiny_checkpoint).scale

    out = denoise_array(image, model, norm=_lin(scale))
    shifted = denoise_array(image + 50.0, model, norm=_lin(scale, SKY + 50.0))

    assert out.shape == image.shape and out.dtype == np.float32
    assert np.isnan(out[10, 10]) and np.isfinite(out).sum() == out.size - 1
    # Normalisation is global: shifting data and offset together shifts the output.
    np.testing.assert_allclose(shifted, out + 50.0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_tile_overlap_is_pool_multiple_at_least_receptive_field(depth):
    model = UNet(UNetConfig(depth=depth, channels=4))

    overlap = tile_overlap(model)

    assert overlap % 2**depth == 0
    assert overlap >= model.receptive_field
    assert overlap < model.receptive_field + 2**depth


def test_tile_not_multiple_of_pool_raises(tiny_checkpoint):
    with pytest.raises(ValueError, match="multiple of 2"):
        predict_tiles(np.zeros((64, 64), np.float32), str(tiny_checkpoint), norm=_norm(tiny_checkpoint, 0.0),
                      config=PredictConfig(), execution=Execution(tile=66, device="cpu"))


def test_load_model_restores_weights_and_scale(tmp_path, make_checkpoint, tiny_unet):
    path = make_checkpoint(tmp_path / "m.pt", scale=4.5, seed=3)
    saved = io.load_checkpoint(path)["model"]

    model, scale = load_model(str(path), "cpu"), _norm(path).scale

    assert scale == 4.5
    assert not model.training
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[key])


@pytest.mark.parametrize("threads, workers, expected", [(8, 2, 4), (3, 2, 1), (1, 4, 1)])
def test_compute_threads_splits_cores_between_workers(threads, workers, expected):
    assert compute_threads(Execution(threads=threads, workers=workers)) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_raises():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        torch_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_prediction_matches_cpu(make_image, tiny_checkpoint):
    image = make_image((96, 96), sky=SKY, sigma=SIGMA, seed=9).data
    cpu_model, scale = load_model(str(tiny_checkpoint), "cpu"), _norm(tiny_checkpoint).scale
    gpu_model = load_model(str(tiny_checkpoint), "cuda")

    on_cpu = denoise_array(image, cpu_model, norm=_lin(scale))
    on_gpu = denoise_array(image, gpu_model, norm=_lin(scale))

    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-3 * SIGMA)


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

    model, scale = load_model(str(tiny_checkpoint), "cpu"), _norm(tiny_checkpoint).scale
    expected = denoise_array(image, model, norm=_lin(scale))
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


def test_tiled_uncertainty_equals_whole_image(make_image, tiny_checkpoint):
    image = make_image((150, 203), sky=SKY, sigma=SIGMA, seed=11).data.copy()
    image[30, 40] = np.nan
    model, scale = load_model(str(tiny_checkpoint), "cpu"), _norm(tiny_checkpoint).scale
    mean, err = denoise_with_uncertainty(image, model, norm=_lin(scale))

    planes = predict_planes(image, str(tiny_checkpoint), norm=_norm(tiny_checkpoint, SKY),
                            config=PredictConfig(uncertainty=True, restore_flux=False, repair_outliers=False),
                            execution=Execution(tile=64, device="cpu"))
    tiled_mean, tiled_err = planes.compute(scheduler="sync")

    np.testing.assert_allclose(tiled_mean, mean, rtol=1e-5, atol=1e-4 * SIGMA)
    np.testing.assert_allclose(tiled_err, err, rtol=1e-4, atol=1e-4 * SIGMA)
    assert np.isnan(tiled_err[30, 40]) and np.isnan(tiled_mean[30, 40])
    assert np.nanmin(err) >= 0 and np.nanmean(err) > 0


@pytest.mark.parametrize("shape", [(150, 203), (64, 64)])
def test_tiled_average_is_the_whole_image_mean_of_the_dihedral_transforms(make_image, tiny_checkpoint,
                                                                          shape):
    image = make_image(shape, sky=SKY, sigma=SIGMA, seed=13).data.copy()
    image[30, 40] = np.nan
    model, scale = load_model(str(tiny_checkpoint), "cpu"), _norm(tiny_checkpoint).scale
    mean, _ = denoise_with_uncertainty(image, model, norm=_lin(scale))

    planes = predict_planes(image, str(tiny_checkpoint), norm=_norm(tiny_checkpoint, SKY),
                            config=PredictConfig(restore_flux=False, repair_outliers=False),
                            execution=Execution(tile=64, device="cpu"))

    assert planes.shape == (1, *shape)
    np.testing.assert_allclose(planes[0].compute(scheduler="sync"), mean, rtol=1e-5, atol=1e-4 * SIGMA)


NORMS = [Normalisation("linear", offset=SKY, scale=SIGMA),
         Normalisation("gat", offset=SKY, scale=SIGMA, gain=2.0)]


def _source(shape, amplitude, centre=(32, 32), width=1.5):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return amplitude * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * width**2))


@pytest.mark.parametrize("norm", NORMS, ids=["linear", "gat"])
def test_restore_flux_leaves_blank_sky_as_denoised(norm):
    rng = np.random.default_rng(0)
    data = (SKY + rng.normal(0, SIGMA, (64, 64))).astype(np.float32)
    denoised = np.full_like(data, SKY)

    restored = restore_flux(data, denoised, norm=norm)

    np.testing.assert_array_equal(restored, denoised)


@pytest.mark.parametrize("norm", NORMS, ids=["linear", "gat"])
def test_restore_flux_gives_a_shrunk_source_the_flux_of_the_data(norm):
    source = _source((64, 64), 4 * SIGMA)
    data = (SKY + source).astype(np.float32)  # noise-free: the flux to give back is known
    denoised = (SKY + 0.7 * source).astype(np.float32)  # a denoiser that dims it by 30%
    aperture = _source(source.shape, 1.0) > np.exp(-4.5)  # radius 3 widths

    restored = restore_flux(data, denoised, norm=norm)

    flux = {name: (image - SKY)[aperture].sum() for name, image in
            (("data", data), ("denoised", denoised), ("restored", restored))}
    assert abs(flux["restored"] / flux["data"] - 1) < 0.05 < abs(flux["denoised"] / flux["data"] - 1)
    far = ~ndimage.binary_dilation(aperture, iterations=8)
    np.testing.assert_array_equal(restored[far], denoised[far])


def test_restore_flux_keeps_a_bright_source_s_aperture_flux_when_sharpened():
    norm = NORMS[1]  # photon noise: the 8% error stays within the 4-sigma clip
    source = _source((64, 64), 100 * SIGMA, width=1.7)  # FWHM 4 px
    data = (SKY + source).astype(np.float32)
    denoised = (SKY + 1.08 * source).astype(np.float32)  # a network 8% too bright
    aperture = _source(source.shape, 1.0) > np.exp(-0.5 * (4 / 1.5) ** 2)  # radius 4 px = FWHM

    def error(sharpen):
        restored = restore_flux(data, denoised, norm=norm, sharpen=sharpen)
        return (restored - SKY)[aperture].sum() / source[aperture].sum() - 1

    # The Gaussian alone spreads part of the correction out of the aperture.
    assert abs(error(0.0)) > 0.004
    assert abs(error(20.0)) < 0.001


def test_restore_flux_does_not_put_back_a_cosmic_ray():
    norm = NORMS[0]
    source = _source((64, 64), 4 * SIGMA)
    data = (SKY + source).astype(np.float32)
    data[33, 33] += 500 * SIGMA
    denoised = (SKY + 0.7 * source).astype(np.float32)

    restored = restore_flux(data, denoised, norm=norm)

    assert np.max(restored - denoised) < 4 * SIGMA


def test_restore_flux_keeps_nan():
    data = (SKY + _source((64, 64), 4 * SIGMA)).astype(np.float32)
    data[10, 12] = np.nan
    denoised = data.copy()

    assert np.isnan(restore_flux(data, denoised, norm=NORMS[1])[10, 12])


class _LeakyBlur(torch.nn.Module):
    """A stand-in denoiser: keeps a fifth of each pixel and replaces the rest by the
    mean of its 5x5 box. It passes a fifth of a cosmic ray and loses most of a sharp
    star's peak, the two cases the outlier mask must tell apart."""

    n_pool = 0

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False, padding_mode="reflect")
        weight = torch.full((5, 5), 0.8 / 25)
        weight[2, 2] += 0.2
        self.conv.weight.data[0, 0] = weight

    def forward(self, x):
        return self.conv(x)


def _sky_star_and_cosmic_ray(seed=0):
    rng = np.random.default_rng(seed)
    data = SKY + rng.normal(0, SIGMA, (64, 64)) + _source((64, 64), 200 * SIGMA, width=1.0)
    data[10, 50] += 100 * SIGMA  # a two-pixel cosmic ray
    data[10, 51] += 40 * SIGMA
    return data.astype(np.float32)


@pytest.mark.parametrize("norm", NORMS, ids=["linear", "gat"])
def test_outlier_mask_finds_a_cosmic_ray_but_not_a_sharp_star_core(norm):
    data = _sky_star_and_cosmic_ray()
    first = denoise_array(data, _LeakyBlur().eval(), norm=norm)
    star = np.s_[27:38, 27:38]
    assert (data - first)[star].max() > 50 * SIGMA  # the star's core is far above the blur

    mask = outlier_mask(data, first, norm=norm)

    assert mask[10, 50] and mask[10, 51]
    assert not mask[star].any()
    assert mask.sum() <= 12  # the two pixels grown by one, nothing in the noise


def test_repair_outliers_fills_from_neighbours_and_keeps_nan():
    yy, xx = np.mgrid[0:64, 0:64]
    data = (SKY + 0.5 * xx + 0.2 * yy).astype(np.float32)  # a smooth sky gradient
    data[20, 20] = np.nan
    mask = np.zeros(data.shape, bool)
    mask[30:33, 30:33] = True  # small: filled from the neighbours
    mask[0:30, 40:64] = True  # too wide for the fill: the fallback
    fallback = np.full(data.shape, -1.0, np.float32)
    truth = data.copy()
    data[mask] = 1e4

    repaired = repair_outliers(data, mask, fallback)

    np.testing.assert_allclose(repaired[30:33, 30:33], truth[30:33, 30:33], atol=0.5)
    assert (repaired[5:20, 50:60] == -1.0).all()
    assert np.isnan(repaired[20, 20])
    np.testing.assert_array_equal(repaired[~mask], data[~mask])


def test_denoise_planes_repairs_the_cosmic_ray_and_keeps_the_star():
    data = _sky_star_and_cosmic_ray()
    data[5, 5] = np.nan
    model, norm = _LeakyBlur().eval(), NORMS[0]
    plain = PredictConfig(average=False, restore_flux=False, repair_outliers=False)
    config = dataclasses.replace(plain, repair_outliers=True)

    before = denoise_planes(data, model, norm=norm, config=plain)
    image, repaired = denoise_planes(data, model, norm=norm, config=config)

    assert config.planes == ("image", "repaired") and before.shape == (1, 64, 64)
    assert before[0][10, 50] - SKY > 15 * SIGMA  # the network alone passes the cosmic ray
    assert abs(image[10, 50] - SKY) < 3 * SIGMA
    assert repaired[10, 50] == 1 and repaired[32, 32] == 0 and np.isnan(repaired[5, 5])
    assert np.isnan(image[5, 5])
    star = _source((64, 64), 1.0, width=1.0) > np.exp(-4.5)
    np.testing.assert_allclose((image - SKY)[star].sum(), (before[0] - SKY)[star].sum(), rtol=1e-6)


def test_tiled_equals_whole_image_with_average_restoration_and_repair(make_image, tiny_checkpoint):
    image = make_image((150, 203), sky=SKY, sigma=SIGMA, seed=14, n_stars=40).data.copy()
    image[30, 40] = np.nan
    for y, x in ((63, 64), (64, 127), (100, 128)):  # cosmic rays on tile edges (64 px tiles)
        image[y, x] += 300 * SIGMA
    model, scale = load_model(str(tiny_checkpoint), "cpu"), _norm(tiny_checkpoint).scale
    norm = _lin(scale)
    # A random network's output is nearly flat, 0.5 sigma above the sky: a low threshold
    # makes the whole image footprint, so the residual's smoothing crosses every tile edge.
    config = PredictConfig(restore_threshold=0.1)
    execution = Execution(tile=64, device="cpu")
    whole = denoise_planes(image, model, norm=norm, config=config)
    plain = denoise_planes(image, model, norm=norm, config=PredictConfig(restore_flux=False))

    tiled = predict_planes(image, str(tiny_checkpoint), norm=norm, config=config,
                           execution=execution).compute(scheduler="sync")

    assert np.nanmax(np.abs(whole[0] - plain[0])) > 0.1 * SIGMA  # the restoration did something
    assert whole[1][63, 64] == whole[1][64, 127] == whole[1][100, 128] == 1  # and the repair
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-4 * SIGMA)


def test_uncertainty_mean_is_close_to_plain_prediction(make_image, tiny_checkpoint):
    image = make_image((64, 64), sky=SKY, sigma=SIGMA, seed=12).data
    model, scale = load_model(str(tiny_checkpoint), "cpu"), _norm(tiny_checkpoint).scale
    plain = denoise_array(image, model, norm=_lin(scale))

    mean, err = denoise_with_uncertainty(image, model, norm=_lin(scale))

    # A random network is not equivariant, but each copy lies within a few spreads.
    assert np.abs(plain - mean).max() <= 3 * np.sqrt(8) * err.max()


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_stays_close_to_float32(make_image, tiny_checkpoint, precision):
    image = make_image((64, 96), sky=SKY, sigma=SIGMA, seed=13).data
    model, scale = load_model(str(tiny_checkpoint), "cpu"), _norm(tiny_checkpoint).scale
    exact = denoise_array(image, model, norm=_lin(scale))

    reduced = denoise_array(image, model, norm=_lin(scale), precision=precision)

    assert reduced.dtype == np.float32
    np.testing.assert_allclose(reduced, exact, rtol=2e-2, atol=0.05 * SIGMA)


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        PredictConfig(precision="int8")


def test_predict_writes_err_extension_and_zarr_array(tmp_path, make_image, make_header,
                                                     tiny_checkpoint):
    image = make_image((96, 112), sky=SKY, sigma=SIGMA, seed=14).data
    header = make_header(image.shape, BUNIT="adu")
    store, noise_json = _write_input(tmp_path, image, header)
    config = PredictConfig(uncertainty=True, repair_outliers=False)
    execution = Execution(tile=64, device="cpu")

    predict(store, noise_json, str(tiny_checkpoint), out_zarr=str(tmp_path / "d.zarr"),
            out_fits=str(tmp_path / "d.fits"), config=config, execution=execution)

    model, scale = load_model(str(tiny_checkpoint), "cpu"), _norm(tiny_checkpoint).scale
    mean, err = denoise_with_uncertainty(image, model, norm=_lin(scale))
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


def _model_loads() -> int:
    from astrodenoise.denoise import load_model as worker_load_model

    return worker_load_model.cache_info().misses


def test_distributed_workers_load_the_model_once_each(make_image, tiny_checkpoint):
    from distributed import Client, LocalCluster

    image = make_image((256, 256), sky=SKY, sigma=SIGMA, seed=17).data
    config = PredictConfig(repair_outliers=False)
    execution = Execution(tile=64, device="cpu")
    tiled = predict_tiles(image, str(tiny_checkpoint), norm=_norm(tiny_checkpoint, SKY), config=config,
                          execution=execution)
    assert tiled.npartitions == 16

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        tiled.compute()
        loads = client.run(_model_loads)

    assert sorted(loads.values()) in ([1, 1], [0, 1])  # one load per worker that ran blocks


def _gat_checkpoint(tmp_path, tiny_checkpoint):
    checkpoint = io.load_checkpoint(tiny_checkpoint)
    checkpoint["normalisation"] |= {"kind": "gat", "gain": 2.0}
    io.save_checkpoint(tmp_path / "gat.pt", checkpoint)
    return tmp_path / "gat.pt"


def test_gat_model_maps_each_exposure_with_its_own_noise(tmp_path, tiny_checkpoint):
    stats = load_normalisation(str(_gat_checkpoint(tmp_path, tiny_checkpoint)))

    own = exposure_normalisation(stats, NoiseModel(sky=SKY, sigma=4.0, gain=1.5))
    without_gain = exposure_normalisation(stats, NoiseModel(sky=SKY, sigma=4.0))

    # The exposure's sky, sigma and gain; the survey's gain only where the exposure has none.
    assert own == Normalisation("gat", offset=SKY, scale=4.0, gain=1.5)
    assert without_gain == Normalisation("gat", offset=SKY, scale=4.0, gain=2.0)


def test_gat_model_tiled_equals_whole_and_inverts_in_data_units(tmp_path, tiny_checkpoint, make_image):
    path = _gat_checkpoint(tmp_path, tiny_checkpoint)
    image = make_image((150, 203), sky=SKY).data
    norm = Normalisation("gat", offset=SKY, scale=3.0, gain=2.0)
    model = load_model(str(path), "cpu")

    whole = denoise_array(image, model, norm=norm)
    plain = PredictConfig(average=False, restore_flux=False, repair_outliers=False)
    plain_execution = Execution(tile=64)
    tiled = predict_tiles(image, str(path), norm=norm, config=plain, execution=plain_execution).compute()
    mean, err = denoise_with_uncertainty(image, model, norm=norm)

    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-4)
    # Back in ADU around the sky, not in the network's units around 0.
    assert abs(np.nanmedian(whole) - SKY) < 20 * 3.0
    assert mean.shape == image.shape and np.all(err[np.isfinite(err)] >= 0)


def test_predict_applies_the_checkpoint_domain_with_the_exposure_noise(tmp_path, tiny_checkpoint):
    path = _gat_checkpoint(tmp_path, tiny_checkpoint)
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
