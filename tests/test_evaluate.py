"""Tests of astrodenoise.evaluate: metrics and the evaluate step on a simulated exposure."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from astrodenoise import io
from astrodenoise.baselines import gaussian_smooth
from astrodenoise.cutouts import gallery_path
from astrodenoise.detection import depth90, detection_scores, pool_detection_bins
from astrodenoise.evaluate import EvaluateConfig, evaluate, score_image
from astrodenoise.ingest import ingest
from astrodenoise.metrics import blank_sky_rms, power_spectrum, psnr, residual_statistics
from astrodenoise.noise import noise
from astrodenoise.photometry import aperture_fluxes, flux_bias, photometry_by_magnitude


def _ramp(shape=(32, 40)):
    return np.linspace(0.0, 10.0, shape[0] * shape[1]).reshape(shape)


@pytest.mark.parametrize("offset", [0.1, 0.5, 2.0])
def test_psnr_of_constant_offset_is_analytic(offset):
    truth = _ramp()  # data range exactly 10

    value = psnr(truth + offset, truth)

    assert value == pytest.approx(10 * np.log10(10.0**2 / offset**2), rel=1e-9)


def test_psnr_of_gaussian_noise_is_close_to_analytic():
    truth = _ramp((200, 200))
    noisy = truth + np.random.default_rng(0).normal(0.0, 0.5, truth.shape)

    assert psnr(noisy, truth) == pytest.approx(20 * np.log10(10.0 / 0.5), abs=0.05)


def test_psnr_ignores_nan_pixels():
    truth = _ramp()
    image = truth + 0.5
    image[0, :] = np.nan
    image[5, 5] = np.nan

    assert psnr(image, truth) == pytest.approx(10 * np.log10(100 / 0.25), rel=1e-9)


@pytest.mark.parametrize("sigma", [0.2, 4.0])
def test_blank_sky_rms_recovers_sigma_of_pure_noise(sigma):
    rng = np.random.default_rng(1)
    image = 50.0 + rng.normal(0.0, sigma, (128, 128))
    background = np.full(image.shape, 50.0)
    mask = np.zeros(image.shape, bool)

    assert blank_sky_rms(image, background=background, mask=mask) == pytest.approx(sigma, rel=0.03)


def test_blank_sky_rms_ignores_masked_pixels_and_nan():
    rng = np.random.default_rng(2)
    image = rng.normal(0.0, 1.0, (128, 128))
    image[:20, :] += 500.0  # a bright source...
    mask = np.zeros(image.shape, bool)
    mask[:20, :] = True  # ...masked
    image[100, 100] = np.nan

    value = blank_sky_rms(image, background=np.zeros(image.shape), mask=mask)

    assert value == pytest.approx(1.0, rel=0.03)


def test_gaussian_baseline_lowers_rms_and_keeps_nan():
    rng = np.random.default_rng(3)
    image = 10.0 + rng.normal(0.0, 1.0, (128, 128))
    image[40, 40] = np.nan

    smooth = gaussian_smooth(image, sigma=1.0)

    assert smooth.dtype == np.float32
    assert np.isnan(smooth[40, 40])
    assert np.isfinite(smooth).sum() == image.size - 1  # neighbours of the NaN stay finite
    # White noise smoothed by a unit Gaussian: std falls by 2 * sqrt(pi) = 3.54.
    assert np.nanstd(smooth) == pytest.approx(1.0 / (2 * np.sqrt(np.pi)), rel=0.1)
    assert np.nanmean(smooth) == pytest.approx(10.0, abs=0.05)


def test_gaussian_baseline_next_to_nan_is_a_weighted_mean_of_valid_pixels():
    image = np.full((16, 16), 3.0)
    image[:, :8] = np.nan

    smooth = gaussian_smooth(image, sigma=2.0)

    np.testing.assert_allclose(smooth[:, 8:], 3.0, rtol=1e-6)
    assert np.isnan(smooth[:, :8]).all()


def test_flux_bias_per_class_counts_and_bias():
    reference = np.array([100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0])
    snr = np.array([10.0, 12.0, 15.0, 30.0, 60.0, 80.0, 100.0, 3.0])
    flux = reference.copy()
    faint = (snr > 5) & (snr < 20)
    bright = snr > 50
    flux[faint] *= 0.9
    flux[bright] *= 1.05
    flux[~faint & ~bright] *= 2.0  # outside both classes: must not count

    result = flux_bias(flux, reference, snr)

    assert result["faint"]["n"] == 3
    assert result["faint"]["bias"] == pytest.approx(-0.1)
    assert result["faint"]["scatter"] == pytest.approx(0.0, abs=1e-12)
    assert result["bright"]["n"] == 3
    assert result["bright"]["bias"] == pytest.approx(0.05)


def test_flux_bias_skips_non_positive_reference_and_empty_classes():
    reference = np.array([-5.0, 0.0, 100.0])
    snr = np.array([10.0, 10.0, 10.0])
    flux = np.array([1.0, 1.0, 80.0])

    result = flux_bias(flux, reference, snr)

    assert result["faint"] == {"n": 1, "bias": pytest.approx(-0.2), "scatter": None}
    assert result["bright"] == {"n": 0, "bias": None, "scatter": None}


def test_aperture_fluxes_sum_a_point_source():
    image = np.zeros((40, 40))
    image[20, 10] = 7.0
    image[5, 30] = 3.0

    fluxes = aperture_fluxes(image, np.array([[10.0, 20.0], [30.0, 5.0]]), radius=3.0)

    np.testing.assert_allclose(fluxes, [7.0, 3.0])


def test_score_image_of_truth_is_perfect():
    truth = _ramp((64, 64))
    background = np.zeros(truth.shape)
    mask = np.zeros(truth.shape, bool)
    noisy = truth + np.random.default_rng(4).normal(0.0, 0.3, truth.shape)

    perfect = score_image(truth, background=background, mask=mask, truth=truth + 0.01)
    rough = score_image(noisy, background=background, mask=mask, truth=truth)

    assert perfect["rmse"] == pytest.approx(0.01)
    assert perfect["ssim"] > rough["ssim"]
    assert perfect["psnr"] > rough["psnr"]
    assert rough["rmse"] == pytest.approx(0.3, rel=0.05)


@pytest.fixture(scope="module")
def evaluated(demo_survey, tmp_path_factory):
    """evaluate() on the first demo exposure with a "denoised" image equal to the truth."""
    root = demo_survey.root
    work = tmp_path_factory.mktemp("evaluate")
    store = work / "field00_e00.zarr"
    ingest(root / "raw" / "field00_e00.fits", store)
    noise_json = work / "field00_e00.json"
    noise(store, noise_json)
    truth_fits = root / "truth" / "field00.fits"
    perfect = work / "perfect.zarr"
    io.write_zarr_image(perfect, io.read_fits_image(truth_fits)[0], chunks=64, attrs={})
    out_json, out_png = work / "eval.json", work / "eval.png"
    with pytest.warns(RuntimeWarning, match="divide by zero"):  # PSNR of a perfect image
        result = evaluate(str(store), str(noise_json), {"perfect": str(perfect)},
                          out_json=str(out_json), out_png=str(out_png),
                          truth_fits=str(truth_fits),
                          catalog=str(root / "catalog" / "field00.ecsv"),
                          config=EvaluateConfig(cutout=64))
    return result, out_json, out_png, root


def test_evaluate_scores_input_baseline_and_denoised(evaluated):
    result, out_json, out_png, root = evaluated

    assert set(result["scores"]) == {"input", "gaussian", "nlm", "bm3d", "perfect"}
    assert result["baselines"] == ["gaussian", "nlm", "bm3d"] and result["methods"] == ["perfect"]
    assert result["has_truth"] is True
    assert result["photometry_reference"] == "truth"
    assert result["n_sources"] == len(Table.read(root / "catalog" / "field00.ecsv"))
    assert result["object"] == "field00"
    assert io.read_json(out_json)["scores"]["input"]["rms_blank"] == result["scores"]["input"][
        "rms_blank"]
    assert out_png.read_bytes().startswith(b"\x89PNG")
    assert gallery_path(out_png).read_bytes().startswith(b"\x89PNG")  # faint-source stamps


def test_evaluate_perfect_denoiser_beats_input_and_keeps_flux(evaluated):
    scores = evaluated[0]["scores"]
    perfect, noisy = scores["perfect"], scores["input"]

    assert perfect["psnr"] > noisy["psnr"]
    assert perfect["psnr_gain"] > 0
    assert perfect["rmse"] == 0.0
    assert perfect["rms_ratio"] > 5
    for cls in ("bright", "faint"):
        assert perfect["photometry"][cls]["n"] > 0
        assert perfect["photometry"][cls]["n"] == noisy["photometry"][cls]["n"]
        assert perfect["photometry"][cls]["bias"] == pytest.approx(0.0, abs=1e-6)


def test_injection_recovery_with_the_exposures_own_psf_and_a_model(tmp_path, tiny_checkpoint):
    """A sparse 256-pixel exposure: injected sources are found and measured unbiased on the
    input, dimmed by Gaussian smoothing, and also pushed through a model's checkpoint."""
    from astrodenoise.predict import predict
    from astrodenoise.simulate import SimulationConfig, write_demo_survey
    from astrodenoise.tiling import Execution, PredictConfig

    config = SimulationConfig(n_fields=1, n_exposures=1, size=256, seed=3, cosmic_rays_per_mpix=50.0,
                              star_density=60.0, galaxy_density=30.0, mag_range=(16.0, 25.0))
    write_demo_survey(tmp_path, config)
    store, noise_json = tmp_path / "e.zarr", tmp_path / "e.json"
    ingest(tmp_path / "raw" / "field00_e00.fits", store)
    noise(store, noise_json)
    denoised = tmp_path / "tiny.zarr"
    predict(str(store), str(noise_json), str(tiny_checkpoint), out_zarr=str(denoised),
            out_fits=str(tmp_path / "tiny.fits"), config=PredictConfig(), execution=Execution(tile=128))
    catalog = tmp_path / "catalog" / "field00.ecsv"

    def run():
        return evaluate(str(store), str(noise_json), {"tiny": str(denoised)},
                        out_json=str(tmp_path / "v.json"),
                        out_png=str(tmp_path / "v.png"), truth_fits=str(tmp_path / "truth" / "field00.fits"),
                        catalog=str(catalog), models={"tiny": str(tiny_checkpoint)},
                        config=EvaluateConfig(baselines=("gaussian",), cutout=64))

    result = run()
    block = result["injection"]
    # The pixels predict repaired (cosmic rays; a random network's output misses every
    # source too) are counted for the model only.
    repaired = int(np.nansum(io.open_zarr_array(denoised, "repaired")[...]))
    assert result["scores"]["tiny"]["repaired_pixels"] == repaired > 0
    assert "repaired_pixels" not in result["scores"]["input"]

    assert set(block["methods"]) == {"input", "gaussian", "tiny"}
    assert block["n"] >= 30 and len(block["mag"]) == block["n"]
    # The PSF came from the exposure's own stars, and matches the simulated seeing.
    assert block["psf"]["n_stars"] >= 4
    assert block["psf"]["fwhm"] == pytest.approx(Table.read(catalog).meta["fwhm_pix"], rel=0.15)
    snr = np.array(block["snr"])
    ratio = {k: np.array(v["flux_ratio"]) for k, v in block["methods"].items()}
    bright = snr > 50
    assert bright.sum() >= 5
    assert np.median(ratio["input"][bright]) == pytest.approx(0.0, abs=0.02)
    assert all(np.array(block["methods"]["input"]["found"])[bright])  # S/N > 50 is always found
    assert not any(np.array(block["methods"]["input"]["found"])[snr < 2])
    # Gaussian smoothing spreads flux out of the aperture: dimmer on recovery.
    assert np.median(ratio["gaussian"][bright]) < -0.02
    assert np.isfinite(ratio["tiny"]).all()
    # Same seed, same sources and the same recovered fluxes.
    assert run()["injection"] == io.read_json(tmp_path / "v.json")["injection"] == block


def test_evaluate_input_photometry_is_unbiased_and_baseline_smooths(evaluated):
    scores = evaluated[0]["scores"]

    assert scores["input"]["rms_ratio"] == 1.0
    assert scores["input"]["psnr_gain"] == 0.0
    # Noise only: bright sources (S/N > 50) measure their true flux to a few percent.
    assert scores["input"]["photometry"]["bright"]["bias"] == pytest.approx(0.0, abs=0.05)
    # The Gaussian baseline lowers blank-sky noise about 3.5 times for white noise.
    assert scores["gaussian"]["rms_ratio"] == pytest.approx(3.5, rel=0.15)
    assert scores["gaussian"]["psnr_gain"] > 0


def test_evaluate_without_truth_or_catalog_detects_sources(demo_survey, tmp_path):
    store = tmp_path / "e01.zarr"
    ingest(demo_survey.root / "raw" / "field00_e01.fits", store)
    noise_json = tmp_path / "e01.json"
    noise(store, noise_json)

    result = evaluate(str(store), str(noise_json), {}, out_json=str(tmp_path / "e.json"),
                      out_png=str(tmp_path / "e.png"),
                      config=EvaluateConfig(cutout=64, baselines=("gaussian",)))

    assert result["has_truth"] is False
    assert result["photometry_reference"] == "input"
    assert result["n_sources"] > 5
    assert set(result["scores"]) == {"input", "gaussian"}
    assert "psnr" not in result["scores"]["input"]
    assert result["scores"]["input"]["photometry"]["bright"]["bias"] == 0.0
    assert result["magnitudes"] == "instrumental"
    assert result["scores"]["gaussian"]["detection"]["n_detected"] > 0  # no catalogue: a count only


def test_power_spectrum_of_white_noise_is_flat_and_smoothing_cuts_high_frequencies():
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 2.0, (128, 128))
    zeros, blank = np.zeros(noise.shape), np.zeros(noise.shape, bool)

    k, white = power_spectrum(noise, background=zeros, mask=blank)
    _, smooth = power_spectrum(gaussian_smooth(noise, sigma=1.5), background=zeros, mask=blank)

    assert k[0] < k[-1] <= 0.5
    # sigma^2 at every k (the lowest ring holds few Fourier modes, so it scatters most)
    assert white[1:] == pytest.approx(np.full(len(k) - 1, 4.0), rel=0.15)
    assert white[0] == pytest.approx(4.0, rel=0.4)
    assert smooth[-1] / white[-1] < 0.05 and smooth[0] / white[0] > 0.3


def test_residual_of_a_perfect_denoiser_is_unit_noise_and_zero_at_sources():
    rng = np.random.default_rng(6)
    truth = np.zeros((96, 96))
    truth[40:44, 40:44] = 50.0
    data = truth + rng.normal(0.0, 1.0, truth.shape)
    mask = truth > 0

    stats = residual_statistics(data, truth, sigma=1.0, mask=mask, positions=np.array([[41.5, 41.5]]),
                                radius=2.0)
    dimmed = residual_statistics(data, truth * 0.5, sigma=1.0, mask=mask,
                                 positions=np.array([[41.5, 41.5]]), radius=2.0)

    assert stats["sky_mean"] == pytest.approx(0.0, abs=0.05)
    assert stats["sky_std"] == pytest.approx(1.0, rel=0.05)
    assert abs(stats["source_mean"]) < 1.0 and dimmed["source_mean"] > 10  # removed signal shows
    assert sum(stats["histogram"]) * 0.25 == pytest.approx(1.0, rel=0.02)


def test_photometry_by_magnitude_finds_the_bin_that_loses_flux():
    mag = np.repeat([20.0, 22.0, 24.0], 10)
    reference = 10 ** (-0.4 * (mag - 30))
    flux = reference * np.where(mag > 23, 0.8, 1.0)  # the faintest bin loses 20%

    rows = photometry_by_magnitude(flux, reference, mag, bin_width=1.0)

    assert [r["n"] for r in rows] == [10, 10, 10]
    assert [round(r["bias"], 3) for r in rows] == [0.0, 0.0, -0.2]


def test_detection_scores_count_missed_and_invented_sources():
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0], [130.0, 130.0]])
    truth_mag = np.array([20.0, 20.2, 23.0, 23.2])
    # Both bright sources found, one faint missed, one detection where there is nothing.
    found = np.array([[10.5, 10.0], [50.0, 49.2], [90.0, 90.4], [200.0, 20.0]])
    found_flux = np.array([1e4, 1e4, 100.0, 100.0])

    scores = detection_scores(found, found_flux, truth, truth_mag, radius=2.0, zeropoint=28.0,
                              bin_width=1.0)

    assert scores["n_detected"] == 4 and scores["n_matched"] == 3 and scores["n_false"] == 1
    bright, faint = scores["bins"][0], scores["bins"][-1]
    assert bright["completeness"] == 1.0 and bright["purity"] == 1.0
    assert faint["completeness"] == 0.5  # 23.0 found, 23.2 missed
    assert faint["purity"] == 0.5  # the invented source has magnitude 28 - 5 = 23
    assert depth90(scores["bins"], min_sources=1) == pytest.approx(21.0)
    assert scores["depth90"] is None  # every bin has fewer than 5 sources: nothing to tell


def test_depth90_pools_exposures_and_skips_sparse_bins():
    bins = [{"lo": 20.0, "hi": 21.0, "n_truth": 10, "n_recovered": 10, "n_found": 10, "n_true": 10},
            {"lo": 21.0, "hi": 22.0, "n_truth": 2, "n_recovered": 0, "n_found": 0, "n_true": 0},
            {"lo": 22.0, "hi": 23.0, "n_truth": 10, "n_recovered": 9, "n_found": 10, "n_true": 10},
            {"lo": 23.0, "hi": 24.0, "n_truth": 10, "n_recovered": 5, "n_found": 5, "n_true": 5}]

    pooled = pool_detection_bins([bins, bins])

    assert [b["n_truth"] for b in pooled] == [20, 4, 20, 20]
    assert pooled[2]["completeness"] == 0.9
    assert depth90(pooled) == 23.0


def test_evaluate_reports_structure_detection_and_magnitude_photometry(evaluated):
    scores = evaluated[0]["scores"]

    for name in ("input", "bm3d", "perfect"):
        assert len(scores[name]["power"]["ratio"]) == len(scores[name]["power"]["k"])
        assert scores[name]["detection"]["bins"]
        assert scores[name]["photometry_by_magnitude"]
    assert scores["input"]["power"]["ratio"] == pytest.approx([1.0] * len(scores["input"]["power"]["k"]))
    # The truth image reveals more catalogue sources than the noisy input, and invents none.
    assert scores["perfect"]["detection"]["n_matched"] > scores["input"]["detection"]["n_matched"]
    faint = {n: sum(b["n_recovered"] for b in scores[n]["detection"]["bins"] if b["lo"] >= 23)
             for n in ("input", "perfect")}
    assert faint["perfect"] > faint["input"] + 5
    assert scores["perfect"]["residual"]["sky_std"] == pytest.approx(1.0, rel=0.15)


def test_without_truth_each_exposure_is_scored_against_the_others(demo_survey, tmp_path):
    from astrodenoise.evaluate import evaluate_field
    from astrodenoise.register import register

    names = demo_survey.fields["field00"]
    assert len(names) >= 3
    stores, noise_files = [], []
    for name in names:
        stores.append(str(tmp_path / "in" / f"{name}.zarr"))
        ingest(demo_survey.root / "raw" / f"{name}.fits", stores[-1])
        noise_files.append(str(tmp_path / "noise" / f"{name}.json"))
        noise(stores[-1], noise_files[-1])
    register(stores, out_json=tmp_path / "field00.json")
    truth = io.read_fits_image(demo_survey.root / "truth" / "field00.fits")[0]
    for name in names:  # a "denoiser" that returns the truth
        io.write_zarr_image(tmp_path / "perfect" / f"{name}.zarr", truth, chunks=64, attrs={})

    results = evaluate_field(stores, noise_files, {"perfect": str(tmp_path / "perfect")},
                             out_dir=str(tmp_path / "out"), registration=str(tmp_path / "field00.json"),
                             config=EvaluateConfig(cutout=64, baselines=("gaussian",)))

    first = results[0]
    sigma = io.read_json(noise_files[0])["sigma"]
    assert first["has_truth"] is False
    assert first["photometry_reference"] == f"stack of {len(names) - 1} other exposures"
    assert first["reference_sigma"] == pytest.approx(sigma / np.sqrt(len(names) - 1), rel=0.1)
    scores = first["scores"]
    # The truth is closer to the stack of the others than the noisy exposure is.
    assert scores["perfect"]["psnr"] > scores["input"]["psnr"]
    assert scores["perfect"]["detection"]["bins"]  # against sources found on the stack
    assert (tmp_path / "out" / f"{names[-1]}.json").is_file()


def test_outlier_pixels_find_a_cosmic_ray_but_not_a_star():
    from astrodenoise.metrics import outlier_pixels

    rng = np.random.default_rng(8)
    truth = np.full((64, 64), 100.0)
    truth[20:23, 20:23] += 5000.0  # a bright star: its Poisson noise is large, not an outlier
    data = truth + rng.normal(0.0, np.sqrt(25.0 + (truth - 100.0) / 2.0))
    data[40, 40] += 3000.0  # a cosmic ray

    hits = outlier_pixels(data, truth, sky=100.0, sigma=5.0, gain=2.0)

    assert hits[40, 40] and hits[38, 40] and hits[41, 41]  # grown by 2 pixels
    assert not hits[20:23, 20:23].any()
    assert hits.sum() == 13  # the 2-pixel diamond around the hit


def test_evaluate_scores_psnr_without_cosmic_rays(evaluated):
    scores = evaluated[0]["scores"]

    # The demo has cosmic rays (50 per Mpix, a few grown pixels each): a small share.
    assert 0.0 < scores["input"]["outlier_fraction"] < 0.01
    # Leaving them out raises the input's PSNR, never a method's ranking above the truth.
    assert scores["input"]["psnr_clean"] > scores["input"]["psnr"]
    assert scores["perfect"]["psnr_clean"] > scores["input"]["psnr_clean"]
    assert scores["input"]["psnr_clean_gain"] == 0.0
