"""The clean reference of data without a truth: each exposure's field, stacked without
their cosmic rays, on that exposure's grid, with its noise.

Where no noise-free truth exists, an exposure is measured against the other exposures of
its field: they see the same sky through independent noise. A plain mean of them is not
a truth: every cosmic ray of every other exposure becomes a reference "source" that no
single exposure has. Here the exposures of a field are put on the target exposure's grid
(:func:`astrodenoise.alignment.onto_grid`, to a fraction of a pixel: a reference of
sources must not be offset from them), matched to its sky level, and each pixel of
each of them is tested against the others through the noise model
(:func:`reject_outliers`): what lies more than ``k`` per-pixel sigmas above the rest (a
cosmic ray, a hot pixel) is left out, grown by one pixel for the charge it spills. The
test needs no third exposure: of two that disagree, the brighter is rejected (a cosmic
ray only adds light).

:func:`leave_one_out_stack` returns, for one target exposure,

- ``image``: the mean of the other exposures' kept pixels, weighted by their sky noise
  (inverse variance: linear in the data, so source fluxes stay unbiased);
- ``variance``: its per-pixel noise variance from the noise model (sky noise plus the
  photon noise of the signal), propagated through the weights;
- ``layers``: the other exposures on the grid, NaN where rejected: the independent
  noisy copies the unbiased estimates of :mod:`astrodenoise.metrics` need
  (:func:`~astrodenoise.metrics.reference_mse`);
- ``deep``: the same mean over all exposures of the field, the target included (the
  deepest image of the field: the S/N that sorts sources into bright and faint, shared
  by the target and the reference, so that the selection biases neither);
- ``target_rejected``: the target's own pixels that the test rejected (its cosmic rays).

The deep stack also gives the PSF of an exposure with too few stars of its own
(:func:`exposure_psf`).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from . import io
from .alignment import onto_grid
from .metrics import estimated_psnr, reference_mse
from .noise_model import TAIL_SIGMA, NoiseModel, read_noise_model
from .photometry import bias_se
from .psf import PSF, measure_psf
from .sky import estimate_background

__all__ = ["REJECT_SIGMA", "SHAPE_TOLERANCE", "field_exposures", "layer_variance", "reject_outliers",
           "weighted_stack", "stack_sigma", "leave_one_out_stack", "PSNR_CHECK_DB", "cosmic_ray_pixels",
           "stack_scores", "expected_input_psnr", "reference_check", "exposure_psf"]

#: A pixel of one exposure is rejected this many per-pixel noise sigmas from the others:
#: where the noise model's tails end (:data:`astrodenoise.noise_model.TAIL_SIGMA`).
REJECT_SIGMA = TAIL_SIGMA

#: Fraction of the signal added to the per-pixel noise of the rejection test: exposures of
#: one field differ in seeing and sub-pixel position, so a bright star's core differs by
#: more than its photon noise; a cosmic ray on a bright core is the price.
SHAPE_TOLERANCE = 0.1


def field_exposures(images: list[str], noise_files: list[str]) -> list[dict]:
    """Each exposure of a field read once: ``name``, ``data`` (flagged pixels NaN),
    ``header`` and ``noise`` (:class:`~astrodenoise.noise_model.NoiseModel`)."""
    out = []
    for path, noise_json in zip(images, noise_files, strict=True):
        array, mask = io.open_zarr_image(path), io.open_zarr_array(path, "mask")
        data = array[...]
        if mask is not None:
            data = np.where(mask[...] != 0, np.nan, data)
        out.append({"name": Path(path).stem, "data": data, "header": io.header_from_attrs(array.attrs),
                    "noise": read_noise_model(noise_json)})
    return out


def layer_variance(signal: np.ndarray, noise: NoiseModel) -> np.ndarray:
    """Per-pixel noise variance (data units squared) of an exposure whose expected value
    is ``signal`` (sky included). With a gain: sky noise plus photon noise
    (:meth:`~astrodenoise.noise_model.NoiseModel.pixel_sigma`). Without one, the photon
    noise is bounded from above by taking all the sky noise as photon noise of the sky
    (``sigma^2 / sky`` per unit of signal; none when the sky is not above its noise, as
    in sky-subtracted data): the test then rejects less, never more."""
    if noise.gain:
        return noise.pixel_sigma(signal) ** 2
    above = np.clip(np.nan_to_num(signal - noise.sky), 0, None)
    per_unit = noise.sigma**2 / noise.sky if noise.sky > noise.sigma else 0.0
    return noise.sigma**2 + above * per_unit


def reject_outliers(layers: np.ndarray, noises: list[NoiseModel], *, k: float = REJECT_SIGMA,
                    grow: int = 1) -> np.ndarray:
    """Pixels of ``layers`` (n, ny, nx; the exposures of a field on one grid and sky, NaN
    where there is no data) that lie ``k`` per-pixel sigmas away from the others.

    With three or more layers, a value is tested against the median of the pixel (both
    sides: cosmic rays, hot and dead pixels); with two, the brighter of a pair that
    differs by more than ``k`` sigmas of the difference is rejected (a cosmic ray only
    adds light, and the median of two is their mean). The per-pixel sigma is the noise
    model's at the pixel's median signal (:func:`layer_variance`) plus
    :data:`SHAPE_TOLERANCE` of the signal above the sky. Rejections grow by ``grow``
    pixels; a pixel never loses all its layers (the faintest one stays).
    Returns (n, ny, nx) bool, True = rejected.
    """
    n = len(layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        centre = np.nanmedian(layers, axis=0) if n >= 3 else np.nanmin(layers, axis=0)
    variance = np.stack([layer_variance(centre, noise) + (SHAPE_TOLERANCE * np.clip(
        np.nan_to_num(centre - noise.sky), 0, None)) ** 2 for noise in noises])
    if n >= 3:
        # The median carries noise of its own: about pi/2 times a mean's.
        rejected = np.abs(layers - centre) > k * np.sqrt(variance * (1 + np.pi / (2 * n)))
    elif n == 2:
        difference = layers[0] - layers[1]
        limit = k * np.sqrt(variance[0] + variance[1])
        rejected = np.stack([difference > limit, -difference > limit])
    else:
        rejected = np.zeros(layers.shape, bool)
    if grow:
        rejected = np.stack([ndimage.binary_dilation(r, iterations=grow) for r in rejected])
    finite = np.isfinite(layers)
    rejected &= finite
    # Where only two layers have data, their median is their mean and a cosmic ray in one
    # pushes both out: the faintest stays, as with two layers.
    everything = (rejected | ~finite).all(axis=0) & finite.any(axis=0)
    if everything.any():
        faintest = np.nanargmin(np.where(everything, layers, np.inf), axis=0)
        rows = np.nonzero(everything)
        rejected[faintest[rows], rows[0], rows[1]] = False
    return rejected


def weighted_stack(layers: np.ndarray, noises: list[NoiseModel]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``layers`` (n, ny, nx; NaN = left out) weighted by each exposure's sky
    noise (1 / sigma^2), and its per-pixel variance from the noise model
    (sum w^2 var / (sum w)^2, var of each layer at the stack's value,
    :func:`layer_variance`). NaN where no layer has data."""
    weights = np.array([1.0 / noise.sigma**2 for noise in noises])[:, None, None]
    present = np.isfinite(layers)
    w = np.where(present, weights, 0.0)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        image = (np.where(present, layers, 0.0) * w).sum(axis=0) / total
        variance = sum(w[j] ** 2 * layer_variance(image, noise) for j, noise in enumerate(noises)) / total**2
    image[total == 0] = np.nan
    variance[total == 0] = np.nan
    return image.astype(np.float32), variance.astype(np.float32)


def stack_sigma(noises: list[NoiseModel]) -> float:
    """Blank-sky noise sigma of :func:`weighted_stack` over exposures of these noises:
    ``1 / sqrt(sum 1 / sigma_j^2)``."""
    return float(1.0 / np.sqrt(sum(1.0 / noise.sigma**2 for noise in noises)))


def _on_target_grid(exposures: list[dict], registration: dict, target: int) -> list[tuple[int, np.ndarray]]:
    """(index, data) of every exposure of the field that can be put on the target's grid,
    the target first, each moved onto it and shifted to the target's sky level."""
    entries = {e["exposure"]: e for e in registration["exposures"]}
    goal = exposures[target]
    out = [(target, goal["data"].astype(np.float32))]
    for j, other in enumerate(exposures):
        if j == target or other["name"] not in entries:
            continue
        moved = onto_grid(other["data"], other["header"], entries[other["name"]], goal["header"],
                          entries[goal["name"]], goal["data"].shape, subpixel=True)
        if moved is not None:
            out.append((j, moved + np.float32(goal["noise"].sky - other["noise"].sky)))
    return out


def leave_one_out_stack(images: list[str], noise_files: list[str], registration: dict, *, target: int,
                        exposures: list[dict] | None = None, k: float = REJECT_SIGMA) -> dict | None:
    """The clean reference of exposure ``target``: the other exposures of its field on its
    grid, outliers rejected (:func:`reject_outliers`, all exposures tested together), and
    their weighted mean (:func:`weighted_stack`).

    ``images``/``noise_files`` are the field's stores and noise JSONs; ``registration``
    the register step's JSON for the field; ``exposures``, when given, the same already
    read (:func:`field_exposures`; :func:`astrodenoise.evaluate.evaluate_field` reads a
    field once for all its targets). Returns ``{"image", "variance", "sigma", "layers",
    "deep", "target_rejected", "target_flagged", "n", "rejected_fraction"}`` (module
    docstring; ``target_flagged``: the target's pixels without data or flagged; ``sigma``:
    the stack's noise in blank sky, ``1 / sqrt(sum 1 / sigma_j^2)``;
    ``rejected_fraction``: of the other exposures' pixels with data), or None when the
    target is unregistered or fewer than two others reach its grid.
    """
    exposures = exposures or field_exposures(images, noise_files)
    if exposures[target]["name"] not in {e["exposure"] for e in registration["exposures"]}:
        return None
    placed = _on_target_grid(exposures, registration, target)
    if len(placed) < 3:
        return None
    noises = [exposures[j]["noise"] for j, _ in placed]
    layers = np.stack([data for _, data in placed])
    rejected = reject_outliers(layers, noises, k=k)
    kept = np.where(rejected, np.nan, layers)
    image, variance = weighted_stack(kept[1:], noises[1:])
    deep, _ = weighted_stack(kept, noises)
    with_data = np.isfinite(layers[1:])
    return {"image": image, "variance": variance,
            "sigma": stack_sigma(noises[1:]),
            "layers": kept[1:].astype(np.float32), "deep": deep, "target_rejected": rejected[0],
            "target_flagged": ~np.isfinite(layers[0]),
            "n": len(placed) - 1,
            "rejected_fraction": float(rejected[1:].sum() / max(with_data.sum(), 1))}


def cosmic_ray_pixels(stack: dict) -> np.ndarray:
    """The target exposure's pixels that PSNR "without cosmic rays" leaves out: those the
    rejection took (grown by one pixel) grown by one more, two in all, as
    :func:`astrodenoise.metrics.outlier_pixels` grows its hits against a truth: a
    denoiser spreads a cosmic ray it does not remove over its neighbours; and its pixels
    flagged in its mask (hot, saturated, no data: ``target_flagged``), which the test never
    saw and a truth would show as outliers too."""
    return ndimage.binary_dilation(stack["target_rejected"]) | stack["target_flagged"]


def stack_scores(image: np.ndarray, stack: dict, *, data_range: float) -> dict:
    """PSNR of ``image`` against the truth estimated from the leave-one-out ``stack``
    (:func:`astrodenoise.reference.leave_one_out_stack`) without bias: the mean product of
    its differences from two independent exposures
    (:func:`astrodenoise.metrics.reference_mse`), with its standard error (``psnr_se``,
    dB) and the PSNR of the MSE plus two errors (``psnr_lower``); ``psnr_clean`` the same
    without the exposure's own cosmic rays (:func:`cosmic_ray_pixels`, the same pixels
    for every image); ``ssim`` against the stack itself (its noise lowers it)."""
    out = {}
    for key, exclude in (("psnr", None), ("psnr_clean", cosmic_ray_pixels(stack))):
        mse, se = reference_mse(image, stack["layers"], exclude=exclude)
        est = estimated_psnr(mse, se, data_range)
        out |= {key: est["psnr"], f"{key}_se": est["psnr_se"], f"{key}_lower": est["psnr_lower"]}
        if key == "psnr":
            out["rmse"] = float(np.sqrt(max(mse, 0.0)))
    reference = stack["image"]
    both = np.isfinite(image) & np.isfinite(reference)
    out["ssim"] = float(structural_similarity(np.where(both, image, 0.0), np.where(both, reference, 0.0),
                                              data_range=data_range))
    return out


def expected_input_psnr(stack: dict, noise: NoiseModel, data_range: float) -> dict:
    """The input's clean PSNR that its noise model predicts (``psnr_expected``: the mean
    per-pixel noise variance at the deep stack's signal, the noise's tails within 5 sigma
    included (:attr:`~astrodenoise.noise_model.NoiseModel.tail_variance`), on the pixels
    :func:`stack_scores` measures ``psnr_clean`` on) and the share of its pixels taken for
    cosmic rays (``outlier_fraction``)."""
    hits = cosmic_ray_pixels(stack)
    valid = np.isfinite(stack["layers"]).all(axis=0) & ~hits & np.isfinite(stack["deep"])
    # Heavy tails (noise_model.tail_variance) add to the mean square the robust sigma gives.
    tails = noise.sigma**2 * max(noise.tail_variance - 1.0, 0.0)
    variance = float(np.mean(layer_variance(stack["deep"][valid], noise))) + tails
    return {"psnr_expected": float(10 * np.log10(data_range**2 / variance)),
            "outlier_fraction": float(hits.mean())}


#: Sources a class needs for its bias to be tested: the scatter of fewer (from their
#: median absolute deviation) is too uncertain for a 3-standard-error test.
MIN_TEST_SOURCES = 10

#: Flux agreement the self-test allows beyond its 3 standard errors: half the 1% flux bias
#: the report flags, so that a reference off by less cannot turn a verdict.
BIAS_CHECK = 0.005

#: The reference is usable when the input's estimated clean PSNR is within this many dB
#: (beyond three standard errors) of what its noise model predicts: a 3% error of sigma.
PSNR_CHECK_DB = 0.25


def reference_check(scores: dict) -> dict:
    """The self-tests of a leave-one-out reference on the noisy input, whose truth-based
    figures are known: its estimated clean PSNR must match its noise model
    (``psnr_expected``, within :data:`PSNR_CHECK_DB` plus 3 standard errors), and its flux
    bias against the reference, its own cosmic rays filled from the reference
    (``photometry_apertures_clean``: they are the input's, not the reference's), must be
    zero within :data:`BIAS_CHECK` plus 3 standard errors (1.25 x scatter / sqrt(n) of the
    median) in every
    aperture and class of :data:`MIN_TEST_SOURCES` sources or more. ``usable`` is False, with the
    reasons in ``why``, when either fails: a misregistered stack, other seeing, surviving
    cosmic rays or a wrong noise model, and every method's figures would carry it."""
    inp = scores["input"]
    why = []
    est, se, expected = inp.get("psnr_clean"), inp.get("psnr_clean_se"), inp["psnr_expected"]
    if not np.isfinite(expected):
        why.append("the input's noise model predicts no PSNR here (no pixel the other exposures share)")
    elif est is None:
        why.append("the input's PSNR could not be estimated")
    elif abs(est - expected) > PSNR_CHECK_DB + 3 * (se or 0.0):
        why.append(f"the input's estimated PSNR is {est:.2f} ± {se:.2f} dB where its noise model "
                   f"predicts {expected:.2f} dB")
    biases = {}
    for aperture, classes in inp.get("photometry_apertures_clean", {}).items():
        for cls, cell in classes.items():
            if cell["bias"] is None or cell["scatter"] is None or cell["n"] < MIN_TEST_SOURCES:
                continue
            cell_se = bias_se(cell)
            biases[f"{cls} {aperture}"] = {"bias": cell["bias"], "se": cell_se}
            if abs(cell["bias"]) > BIAS_CHECK + 3 * cell_se:
                why.append(f"the input's {cls}-source flux bias in {aperture} apertures is "
                           f"{100 * cell['bias']:+.1f} ± {100 * cell_se:.1f}%")
    return {"psnr_estimated": est, "psnr_se": se, "psnr_expected": expected, "input_bias": biases,
            "usable": not why, "why": why}


def exposure_psf(data, background, *, sigma: float, bad, stack: dict | None, fwhm_guess: float) -> PSF:
    """The exposure's PSF from its own stars (:func:`astrodenoise.psf.measure_psf`); where
    it has too few and its field has a deep stack (no truth), from the stars of that stack,
    which reach the S/N a Moffat fit needs where one exposure's do not (the stack's PSF is
    the field's mean seeing); else the Gaussian of ``fwhm_guess`` that says so."""
    psf = measure_psf(data, background, sigma=sigma, bad=bad, fwhm_guess=fwhm_guess)
    if psf.n_stars or stack is None:
        return psf
    deep = stack["deep"]
    deep_background, deep_rms = estimate_background(deep)
    on_stack = measure_psf(deep, deep_background, sigma=float(np.nanmedian(deep_rms)), bad=bad,
                           fwhm_guess=fwhm_guess)
    if not on_stack.n_stars:
        return psf
    return dataclasses.replace(on_stack, method=f"{on_stack.method} on the deep stack of the field's "
                                    f"{stack['n'] + 1} exposures (too few in this one)")
