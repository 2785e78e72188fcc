"""Tests of astrodenoise.train: determinism, N2N checks, the flux probe and loss, learning."""

from __future__ import annotations

import copy
import csv
import dataclasses

import numpy as np
import pytest
import torch

from astrodenoise import io
from astrodenoise.selection import PhotometryProbe
from astrodenoise.sources import source_stamps
from astrodenoise.train import (
    TrainConfig,
    blind_line_axis,
    flux_loss,
    make_sampler,
    probe_stamps,
    survey_psf,
    train,
    train_model,
)
from astrodenoise.transform import stabilising
from conftest import moffat_field, training_exposure


@pytest.fixture
def n2v_exposures(make_image):
    return [training_exposure(f"e{i}", f"f{i}", make_image(64, seed=10 + i).data) for i in range(2)]


@pytest.fixture
def quick_config(tiny_unet):
    return TrainConfig(method="n2v", steps=3, batch_size=4, patch_size=32, val_every=100,
                       inject=False, flux_weight=0.0, seed=0, model=tiny_unet)


@pytest.fixture(scope="module")
def field_exposures(demo_survey):
    """The three exposures of the demo field, with sky level and sigma measured."""
    from astrodenoise.noise import estimate_noise

    exposures = []
    for name in demo_survey.fields["field00"]:
        data, _ = io.read_fits_image(demo_survey.root / "raw" / f"{name}.fits")
        measured = estimate_noise(data)
        exposures.append(training_exposure(name, "field00", data, measured["sky_level"], measured["sigma"]))
    return exposures


# --- config ----------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"method": "n2x"}, "method"),
    ({"loss": "huber"}, "loss"),
    ({"patch_size": 30}, "multiple"),
    ({"transform": "sqrt"}, "transform"),
    ({"select": "psnr"}, "select"),
    ({"blind_spot": "z"}, "blind_spot"),
    ({"n2n_target": "all"}, "n2n_target"),
])
def test_train_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_train_config_round_trip(tiny_unet):
    config = TrainConfig(method="n2n", steps=5, model=tiny_unet)

    assert TrainConfig.from_dict(config.to_dict()) == config


# --- input checks ----------------------------------------------------------------------


def test_n2n_without_field_of_two_exposures_raises(n2v_exposures, quick_config):
    config = dataclasses.replace(quick_config, method="n2n")

    with pytest.raises(ValueError, match="two or more exposures"):
        train_model(n2v_exposures, config)


def test_n2n_with_mismatched_shapes_in_a_field_raises(make_image, quick_config):
    exposures = [training_exposure("a", "f", make_image(64, seed=1).data),
                 training_exposure("b", "f", make_image((64, 96), seed=2).data)]
    config = dataclasses.replace(quick_config, method="n2n")

    with pytest.raises(ValueError, match="field f: exposures have different shapes"):
        train_model(exposures, config)


def test_exposure_smaller_than_patch_raises(make_image, quick_config):
    exposures = [training_exposure("tiny", "f", make_image((24, 64), seed=1).data)]

    with pytest.raises(ValueError, match="tiny"):
        train_model(exposures, quick_config)


# --- determinism -----------------------------------------------------------------------


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["n2v", "n2n"])
def test_same_seed_gives_identical_weights(field_exposures, quick_config, method):
    config = dataclasses.replace(quick_config, method=method)

    first = train_model(field_exposures, config)
    second = train_model(field_exposures, config)

    assert _same_weights(first["model"], second["model"])
    assert first["history"][0]["val_loss"] == second["history"][0]["val_loss"]


def test_different_seed_gives_different_weights(field_exposures, quick_config):
    first = train_model(field_exposures, quick_config)
    second = train_model(field_exposures, dataclasses.replace(quick_config, seed=1))

    assert not _same_weights(first["model"], second["model"])


def test_training_changes_the_initial_weights(field_exposures, quick_config, tiny_unet):
    from astrodenoise.model import UNet

    torch.manual_seed(quick_config.seed)
    initial = UNet(tiny_unet).state_dict()

    trained = train_model(field_exposures, quick_config)

    assert not _same_weights(initial, trained["model"])


# --- checkpoint content and learning ---------------------------------------------------


def test_checkpoint_layout(field_exposures, quick_config):
    checkpoint = train_model(field_exposures, quick_config)

    assert checkpoint["model_config"] == quick_config.model.to_dict()
    assert checkpoint["train_config"] == quick_config.to_dict()
    expected_scale = float(np.median([e.noise.sigma for e in field_exposures]))
    assert checkpoint["normalisation"]["scale"] == pytest.approx(expected_scale)
    assert checkpoint["step"] == quick_config.steps
    assert [row["step"] for row in checkpoint["history"]] == [quick_config.steps]
    assert checkpoint["best_step"] == quick_config.steps


def test_short_n2n_training_lowers_validation_loss(field_exposures, tiny_unet):
    config = TrainConfig(method="n2n", steps=60, batch_size=8, patch_size=32, learning_rate=3e-3,
                         val_every=10, patience=100, inject=False, flux_weight=0.0, seed=0,
                         model=tiny_unet)

    checkpoint = train_model(field_exposures, config)

    history = checkpoint["history"]
    losses = [row["val_loss"] for row in history]
    assert [row["step"] for row in history] == [10, 20, 30, 40, 50, 60]
    assert min(losses) < losses[0]
    assert checkpoint["best_step"] == history[int(np.argmin(losses))]["step"]
    assert checkpoint["best_step"] > history[0]["step"]
    assert all(np.isfinite(losses))


def test_patience_stops_training_early(field_exposures, tiny_unet):
    # Learning rate 0: the validation loss never improves after the first evaluation.
    config = TrainConfig(method="n2v", steps=50, batch_size=2, patch_size=32, learning_rate=0.0,
                         val_every=5, patience=2, inject=False, flux_weight=0.0, seed=0,
                         model=tiny_unet)

    checkpoint = train_model(field_exposures, config)

    assert checkpoint["step"] == 15
    assert checkpoint["best_step"] == 5
    assert len(checkpoint["history"]) == 3


def test_train_step_writes_loadable_checkpoint_and_curve(tmp_path, field_exposures,
                                                         quick_config):
    images, noise_files = [], []
    for exp in field_exposures:
        store = tmp_path / f"{exp.name}.zarr"
        io.write_zarr_image(store, exp.data, chunks=64, attrs={"source_sha256": exp.name * 2})
        noise_file = tmp_path / f"{exp.name}.json"
        io.write_json(noise_file, {"sky_level": exp.noise.sky, "sigma": exp.noise.sigma})
        images.append(str(store))
        noise_files.append(str(noise_file))
    out, curve = tmp_path / "model.pt", tmp_path / "curve.csv"

    train(images, noise_files, ["field00"] * 3, out_checkpoint=str(out), out_curve=str(curve),
          config=quick_config)

    loaded = io.load_checkpoint(out)
    assert not (tmp_path / "model.pt.partial").exists()  # the resume point is gone once done
    assert loaded["inputs"][0] == {"image": images[0], "sha256": field_exposures[0].name * 2,
                                   "field": "field00"}
    assert loaded["code_version"]
    with open(curve) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [row["step"] for row in loaded["history"]]


def test_train_step_needs_parallel_lists(quick_config, tmp_path):
    with pytest.raises(ValueError, match="one noise file and one field"):
        train(["a.zarr", "b.zarr"], ["a.json"], ["f", "f"], out_checkpoint=str(tmp_path / "m"),
              out_curve=str(tmp_path / "c"), config=quick_config)


# --- structured blind spot, flux probe and flux loss ------------------------------------


@pytest.mark.parametrize("correlation, setting, expected", [
    ((0.0, 0.0), "auto", None), ((0.4, 0.05), "auto", "x"), ((0.05, -0.3), "auto", "y"),
    ((0.4, 0.0), "point", None), ((0.0, 0.0), "y", "y"),
])
def test_blind_line_axis_follows_the_noise_correlation(make_image, correlation, setting, expected):
    correlated = max(map(abs, correlation)) > 0.1  # the noise step's flag at its default limit
    exposures = [training_exposure("e", "f", make_image(64).data, correlation=correlation,
                                   correlated=correlated)]
    config = TrainConfig(method="n2v", blind_spot=setting)

    assert blind_line_axis(exposures, config) == expected


def _gat_exposures(make_image, n=2, size=96):
    stars = 25 * size**2 // 96**2  # as crowded at every size
    images = [make_image(size, sky=200.0, gain=2.0, read_noise=5.0, n_stars=stars, seed=20 + i)
              for i in range(n)]
    return [training_exposure(f"e{i}", "f", im.data, im.sky, im.sigma, gain=im.gain)
            for i, im in enumerate(images)]


class _Scaled(torch.nn.Module):
    """A stand-in model: the input times ``factor`` (1: identity, 0.5: dims everything)."""

    n_pool = 2

    def __init__(self, factor):
        super().__init__()
        self.factor = factor
        self.unused = torch.nn.Parameter(torch.zeros(1))  # a device for the forward pass

    def forward(self, x):
        return x * self.factor


def test_flux_probe_reads_zero_for_identity_and_negative_for_dimming(make_image):
    exposures = _gat_exposures(make_image)
    norms = [stabilising(e.noise) for e in exposures]
    rng = np.random.default_rng(0)
    psf = survey_psf(exposures)
    stamps = probe_stamps(psf, rng, patch_size=32)
    probe = PhotometryProbe(exposures, norms, rng, stamps=stamps, fwhm=psf.fwhm, val_fraction=0.3, step=4,
                            patch_size=32)

    identity, dimmed = probe.measure(_Scaled(1.0)), probe.measure(_Scaled(0.5))

    for factor in (1, 2, 3):
        for cls in ("bright", "faint"):
            assert abs(identity[f"bias_{cls}_{factor}fwhm"]) < 0.05
            assert dimmed[f"bias_{cls}_{factor}fwhm"] < -0.2
    # The headline is the aperture of the largest bias, whichever it is.
    assert identity["bias_faint"] == max((identity[f"bias_faint_{f}fwhm"] for f in (1, 2, 3)), key=abs)


def test_flux_loss_small_for_identity_large_for_dimming(make_image):
    exposures = _gat_exposures(make_image)
    config = TrainConfig(method="n2v", patch_size=32, batch_size=8)
    norms = [stabilising(e.noise) for e in exposures]
    rng = np.random.default_rng(1)
    psf = np.zeros((15, 15))
    psf[6:9, 6:9] = 1 / 9
    stamps = source_stamps(psf, rng, fwhm=2.0, galaxies=4)
    sampler = make_sampler(exposures, norms, config, rng, stamps=stamps, radius=2.0)

    batch = sampler.batch()
    inputs, flux = torch.from_numpy(batch["inputs"]), batch["flux"]

    assert batch["inputs"].shape == (16, 32, 32) and flux["known"].shape == (8,)
    assert float(flux_loss(inputs, flux)) < 3.0  # the injected source's own noise
    assert float(flux_loss(0.5 * inputs, flux)) > 10 * float(flux_loss(inputs, flux))


def test_short_n2v_training_lowers_validation_loss_with_gat(make_image, tiny_unet):
    config = TrainConfig(method="n2v", steps=30, batch_size=4, patch_size=32, learning_rate=3e-3,
                         val_every=10, val_fraction=0.3, patience=100, select="loss", seed=0,
                         model=tiny_unet)

    checkpoint = train_model(_gat_exposures(make_image, size=192), config)

    losses = [row["val_loss"] for row in checkpoint["history"]]
    assert checkpoint["normalisation"]["kind"] == "gat"
    assert min(losses[1:]) < losses[0]
    assert all(row["bias_faint"] is not None for row in checkpoint["history"])


def test_resumed_training_ends_with_the_same_weights(field_exposures, tiny_unet):
    # Injection and the flux loss on: their random draws must resume exactly too.
    config = TrainConfig(method="n2n", steps=12, batch_size=2, patch_size=32, val_every=4,
                         patience=100, seed=0, model=tiny_unet)
    saved = []

    full = train_model(field_exposures, config, on_validation=lambda s: saved.append(copy.deepcopy(s)))
    resumed = train_model(field_exposures, config, resume=saved[1])

    assert saved[1]["step"] == 8
    assert _same_weights(full["model"], resumed["model"])
    assert [r["val_loss"] for r in full["history"]] == [r["val_loss"] for r in resumed["history"]]


def test_a_resume_point_of_other_noise_measurements_is_not_resumed(field_exposures, tiny_unet):
    config = TrainConfig(method="n2v", steps=8, batch_size=2, patch_size=32, val_every=4, patience=100,
                         inject=False, seed=0, model=tiny_unet)
    saved = []
    full = train_model(field_exposures, config, on_validation=lambda s: saved.append(copy.deepcopy(s)))
    stale = saved[0] | {"blind_line": "x"}  # as if the noise step had flagged correlated noise

    again = train_model(field_exposures, config, resume=stale)

    # Started afresh (all validations, the same weights as a run without a resume point).
    assert [r["step"] for r in again["history"]] == [4, 8]
    assert _same_weights(full["model"], again["model"])


def test_plot_curve_writes_png(tmp_path):
    from astrodenoise.train import plot_curve

    history = [{"step": s, "train_loss": 1.0 / s, "val_loss": 1.2 / s, "bias_bright": 0.01,
                "bias_faint": None} for s in (10, 20)]

    plot_curve(tmp_path / "curve.png", history, best_step=20)

    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_a_method_block_overrides_the_shared_train_settings():
    block = {"steps": 1600, "learning_rate": 1e-3, "n2n": {"steps": 2400}, "n2v": {"mask_fraction": 0.1}}

    n2n = TrainConfig.from_dict(block | {"method": "n2n"})
    n2v = TrainConfig.from_dict(block | {"method": "n2v"})

    assert (n2n.steps, n2n.mask_fraction, n2n.learning_rate) == (2400, TrainConfig.mask_fraction, 1e-3)
    assert (n2v.steps, n2v.mask_fraction, n2v.learning_rate) == (1600, 0.1, 1e-3)
    assert "n2n" not in n2n.to_dict() and TrainConfig.from_dict(n2n.to_dict()) == n2n
    with pytest.raises(ValueError, match="train.n2n must be a block"):
        TrainConfig.from_dict({"method": "n2n", "n2n": 2400})
    with pytest.raises(ValueError, match=r"train settings \['stepz'\] unknown \(for n2n\)"):
        TrainConfig.from_dict({"method": "n2n", "n2n": {"stepz": 2400}})


def test_survey_psf_of_short_exposures_comes_from_the_mean_of_their_field():
    """Stars too faint for a fit in any one exposure (S/N under 10: M13's 5 s frames) reach
    it in the mean of their field's four: training injects sources of the stars' shape,
    not the guessed Gaussian; a field of one exposure has no mean to fall back on."""
    draws = moffat_field(4.5, flux_range=(2.1, 2.35), exposures=4, seed=0)
    field = [training_exposure(f"e{i}", "f", data) for i, data in enumerate(draws)]
    singles = [training_exposure(f"s{i}", f"f{i}", data) for i, data in enumerate(draws)]

    psf, alone = survey_psf(field), survey_psf(singles)

    assert psf.n_stars >= 3 and "on the mean of field f's 4 exposures" in psf.method
    assert psf.fwhm == pytest.approx(4.5, rel=0.05)
    assert alone.n_stars == 0 and "too few stars" in alone.method


def test_survey_psf_does_not_average_a_field_that_is_not_on_one_grid():
    """Exposures of one field name that no registration put on one grid (another size)
    have no mean: the guessed Gaussian, said so, not a crash."""
    draws = moffat_field(4.5, flux_range=(2.1, 2.35), exposures=2, seed=0)
    field = [training_exposure("a", "f", draws[0]), training_exposure("b", "f", draws[1][:200, :220])]

    psf = survey_psf(field)

    assert psf.n_stars == 0 and "too few stars" in psf.method
