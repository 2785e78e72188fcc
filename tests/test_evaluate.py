"""Tests of astrodenoise.evaluate: the evaluate step on a simulated exposure."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from astrodenoise import io
from astrodenoise.cutouts import gallery_path
from astrodenoise.evaluate import EvaluateConfig, evaluate, score_image
from astrodenoise.ingest import ingest
from astrodenoise.noise import noise
from conftest import ramp


def test_score_image_of_truth_is_perfect():
    truth = ramp((64, 64))
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
    # The record says in which domain the model worked and with which noise model.
    kind = io.load_checkpoint(tiny_checkpoint)["normalisation"].get("kind", "linear")
    assert result["domains"] == {"tiny": kind}
    assert result["noise"]["gain"] == pytest.approx(config.gain) and result["noise"]["sigma"] > 0
    # The pixels predict repaired (cosmic rays; a random network's output misses every
    # source too) are counted for the model only.
    repaired = int(np.nansum(io.open_zarr_array(denoised, "repaired")[...]))
    assert result["scores"]["tiny"]["repaired_pixels"] == repaired > 0
    assert "repaired_pixels" not in result["scores"]["input"]
    # Checked against the truth: the random network's missed star cores are filled groups
    # the truth has too (unconfirmed, on sources); the simulated cosmic rays are confirmed.
    check = result["scores"]["tiny"]["repair_check"]
    assert check["pixels"] == repaired and check["groups"] >= check["confirmed"] > 0
    assert check["unconfirmed_near_sources"] > 0

    assert set(block["methods"]) == {"input", "gaussian", "tiny"}
    assert block["n"] >= 30 and len(block["mag"]) == block["n"]
    # The PSF came from the exposure's own stars, and matches the simulated seeing.
    assert block["psf"]["n_stars"] >= 4
    assert block["psf"]["fwhm"] == pytest.approx(Table.read(catalog).meta["fwhm_pix"], rel=0.15)
    snr = np.array(block["snr"])
    ratio = {kind: {a: np.array(r, float) for a, r in method["flux_ratio"].items()}
             for kind, method in block["methods"].items()}
    bright = snr > 30  # half the sources are faint: fewer bright ones fit in 256 pixels
    assert bright.sum() >= 3 and 0 < sum(block["extended"]) < block["n"]  # stars and galaxies
    for aperture in ("1fwhm", "2fwhm", "3fwhm"):
        assert np.median(ratio["input"][aperture][bright]) == pytest.approx(0.0, abs=0.02)
    assert all(np.array(block["methods"]["input"]["found"])[bright])  # S/N > 30 is always found
    assert not any(np.array(block["methods"]["input"]["found"])[snr < 2])
    # Gaussian smoothing spreads flux out of the core: dimmer in 1 x FWHM, kept in 3 x.
    gaussian = {a: np.median(r[bright]) for a, r in ratio["gaussian"].items()}
    assert gaussian["1fwhm"] < -0.02 and gaussian["3fwhm"] > gaussian["1fwhm"] + 0.02
    assert np.isfinite(ratio["tiny"]["2fwhm"]).all()
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
    # Magnitudes in the survey's system: the header's zero point.
    header = io.read_fits_image(demo_survey.root / "raw" / "field00_e01.fits")[1]
    assert result["magnitudes"] == "header MAGZERO"
    assert result["zeropoint"] == pytest.approx(header["MAGZERO"])
    assert result["scores"]["gaussian"]["detection"]["n_detected"] > 0  # no catalogue: a count only


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
    # The truth's error is below what the stack resolves: a lower bound, above the input.
    assert scores["perfect"]["psnr"] is None
    assert scores["perfect"]["psnr_lower"] > scores["input"]["psnr"] + 10
    assert scores["perfect"]["detection"]["bins"]  # against sources found on the stack
    assert (tmp_path / "out" / f"{names[-1]}.json").is_file()


def test_evaluate_scores_psnr_without_cosmic_rays(evaluated):
    scores = evaluated[0]["scores"]

    # The test survey has no cosmic rays (conftest DEMO_CONFIG): no star may be taken for
    # one, so nothing is left out and the clean PSNR is the PSNR.
    assert scores["input"]["outlier_fraction"] == 0.0
    assert scores["input"]["psnr_clean"] == pytest.approx(scores["input"]["psnr"])
    assert scores["perfect"]["psnr_clean"] > scores["input"]["psnr_clean"]
    assert scores["input"]["psnr_clean_gain"] == 0.0

