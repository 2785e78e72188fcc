"""Tests of astrodenoise.tiling: tiled denoising equals whole-image denoising, no seams."""

from __future__ import annotations

import numpy as np
import pytest

from astrodenoise.denoise import denoise_array, denoise_with_uncertainty, load_model
from astrodenoise.model import UNet, UNetConfig
from astrodenoise.tiling import (
    Execution,
    PredictConfig,
    compute_threads,
    denoise_planes,
    predict_planes,
    predict_tiles,
    tile_overlap,
)
from astrodenoise.transform import Normalisation
from conftest import SIGMA, SKY, checkpoint_norm, gat_checkpoint, linear_norm

pytestmark = pytest.mark.usefixtures("_fresh_model_cache")  # load_model caches on the path


def _assert_matches_whole_image(image, checkpoint, tile):
    model, scale = load_model(str(checkpoint), "cpu"), checkpoint_norm(checkpoint).scale
    whole = denoise_array(image, model, norm=linear_norm(scale))

    tiled = predict_tiles(image, str(checkpoint), norm=checkpoint_norm(checkpoint, SKY),
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

    result = predict_tiles(image, str(tiny_checkpoint), norm=checkpoint_norm(tiny_checkpoint, SKY),
                           config=PredictConfig(), execution=Execution(tile=64, device="cpu")).compute()

    np.testing.assert_array_equal(np.isnan(result), np.isnan(image))
    assert np.isfinite(result[69, 60:64]).all() and np.isfinite(result[73, 60:64]).all()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_tile_overlap_is_pool_multiple_at_least_receptive_field(depth):
    model = UNet(UNetConfig(depth=depth, channels=4))

    overlap = tile_overlap(model)

    assert overlap % 2**depth == 0
    assert overlap >= model.receptive_field
    assert overlap < model.receptive_field + 2**depth


def test_tile_not_multiple_of_pool_raises(tiny_checkpoint):
    with pytest.raises(ValueError, match="multiple of 2"):
        predict_tiles(np.zeros((64, 64), np.float32), str(tiny_checkpoint),
                      norm=checkpoint_norm(tiny_checkpoint, 0.0),
                      config=PredictConfig(), execution=Execution(tile=66, device="cpu"))


@pytest.mark.parametrize("threads, workers, expected", [(8, 2, 4), (3, 2, 1), (1, 4, 1)])
def test_compute_threads_splits_cores_between_workers(threads, workers, expected):
    assert compute_threads(Execution(threads=threads, workers=workers)) == expected


def test_tiled_uncertainty_equals_whole_image(make_image, tiny_checkpoint):
    image = make_image((150, 203), sky=SKY, sigma=SIGMA, seed=11).data.copy()
    image[30, 40] = np.nan
    model, scale = load_model(str(tiny_checkpoint), "cpu"), checkpoint_norm(tiny_checkpoint).scale
    mean, err = denoise_with_uncertainty(image, model, norm=linear_norm(scale))

    planes = predict_planes(image, str(tiny_checkpoint), norm=checkpoint_norm(tiny_checkpoint, SKY),
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
    model, scale = load_model(str(tiny_checkpoint), "cpu"), checkpoint_norm(tiny_checkpoint).scale
    mean, _ = denoise_with_uncertainty(image, model, norm=linear_norm(scale))

    planes = predict_planes(image, str(tiny_checkpoint), norm=checkpoint_norm(tiny_checkpoint, SKY),
                            config=PredictConfig(restore_flux=False, repair_outliers=False),
                            execution=Execution(tile=64, device="cpu"))

    assert planes.shape == (1, *shape)
    np.testing.assert_allclose(planes[0].compute(scheduler="sync"), mean, rtol=1e-5, atol=1e-4 * SIGMA)


def test_tiled_equals_whole_image_with_average_restoration_and_repair(make_image, tiny_checkpoint):
    image = make_image((150, 203), sky=SKY, sigma=SIGMA, seed=14, n_stars=40).data.copy()
    image[30, 40] = np.nan
    for y, x in ((63, 64), (64, 127), (100, 128)):  # cosmic rays on tile edges (64 px tiles)
        image[y, x] += 300 * SIGMA
    model, scale = load_model(str(tiny_checkpoint), "cpu"), checkpoint_norm(tiny_checkpoint).scale
    norm = linear_norm(scale)
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


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        PredictConfig(precision="int8")


def _model_loads() -> int:
    from astrodenoise.denoise import load_model as worker_load_model

    return worker_load_model.cache_info().misses


def test_distributed_workers_load_the_model_once_each(make_image, tiny_checkpoint):
    from distributed import Client, LocalCluster

    image = make_image((256, 256), sky=SKY, sigma=SIGMA, seed=17).data
    config = PredictConfig(repair_outliers=False)
    execution = Execution(tile=64, device="cpu")
    tiled = predict_tiles(image, str(tiny_checkpoint), norm=checkpoint_norm(tiny_checkpoint, SKY),
                          config=config,
                          execution=execution)
    assert tiled.npartitions == 16

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        tiled.compute()
        loads = client.run(_model_loads)

    assert sorted(loads.values()) in ([1, 1], [0, 1])  # one load per worker that ran blocks


def test_gat_model_tiled_equals_whole_and_inverts_in_data_units(tmp_path, tiny_checkpoint, make_image):
    path = gat_checkpoint(tmp_path, tiny_checkpoint)
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


@pytest.mark.parametrize("values, message", [
    ({"tile": 512}, "execution.predict"),  # how it runs is not what it computes
    ({"averge": True}, "averge"),
])
def test_predict_config_names_an_unknown_or_moved_setting(values, message):
    with pytest.raises(ValueError, match=message):
        PredictConfig.from_dict(values)


def test_execution_names_an_unknown_setting():
    with pytest.raises(ValueError, match=r"\['average'\] unknown"):
        Execution.from_dict({"tile": 512, "average": False})
    assert Execution.from_dict({"tile": 512, "workers": 2}) == Execution(tile=512, workers=2)
