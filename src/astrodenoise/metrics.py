"""Image-quality metrics of a denoised image, each on the same pixels for every method.

Blank-sky RMS, PSNR against a reference, the cosmic-ray pixels left out of it, the
blank-sky noise power spectrum, and the normalised residual ``(data - image) / sigma``.
The definitions are those of the evaluate step (:mod:`astrodenoise.evaluate`).
"""

from __future__ import annotations

import numpy as np
from astropy.stats import mad_std
from scipy import ndimage

from .noise_model import pixel_sigma
from .photometry import aperture_fluxes

__all__ = ["blank_sky_rms", "psnr", "reference_range", "reference_mse", "estimated_psnr", "outlier_pixels",
           "power_spectrum", "residual_statistics", "repair_check"]

#: A repaired group is confirmed as an outlier of this exposure when one of its pixels lies
#: this many noise sigmas above the reference (sigma of the difference: the exposure's and
#: the reference's noise; the repair pass fills pixels 5 of the exposure's own sigmas above
#: its prediction, which against a leave-one-out stack of two or more exposures, sigma at
#: most 1 / sqrt(2) of the exposure's, is still 4.1 sigmas; a star's pixel, which the
#: reference has too, exceeds 3 in about one group of a hundred) ...
REPAIR_CONFIRM_SIGMA = 3.0
#: ... and above this share of the reference's own signal there (a bright star's core,
#: misregistered by a fraction of a pixel, differs from the stack by several sigmas but by
#: a fraction of itself; a cosmic ray on the sky by all of itself).
REPAIR_CONFIRM_CONTRAST = 0.5


def blank_sky_rms(image: np.ndarray, *, background: np.ndarray, mask: np.ndarray) -> float:
    """Robust RMS of ``image - background`` over blank sky (``mask`` True = not blank)."""
    return float(mad_std((image - background)[~mask], ignore_nan=True))


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB with ``data_range = max(truth) - min(truth)``."""
    valid = np.isfinite(image) & np.isfinite(truth)
    mse = np.mean((image[valid] - truth[valid]) ** 2)
    data_range = np.nanmax(truth) - np.nanmin(truth)
    return float(10 * np.log10(data_range**2 / mse))


def reference_range(reference: np.ndarray) -> float:
    """The data range of PSNR on a noisy reference: its maximum (a bright star's peak, at
    high S/N) less the minimum of its 5 x 5 median (the faintest sky, without the
    reference's own downward noise peaks, which a truth does not have)."""
    smooth = ndimage.median_filter(np.nan_to_num(reference, nan=float(np.nanmedian(reference))), size=5)
    return float(np.nanmax(reference) - smooth.min())


def reference_mse(image: np.ndarray, layers: np.ndarray, *, exclude: np.ndarray | None = None,
                  block: int = 32) -> tuple[float, float]:
    """Mean squared error of ``image`` against the unknown truth, estimated without bias
    from independent noisy copies of it, and its standard error.

    ``layers`` (m >= 2, ny, nx): the other exposures of the field on ``image``'s grid
    (:func:`astrodenoise.reference.leave_one_out_stack`), NaN where rejected. For
    ``x_j = truth + n_j`` with noise independent between copies and of ``image``,
    ``E[(image - x_j)(image - x_k)] = (image - truth)^2`` for ``j != k``: the mean of
    the products over the pairs estimates the squared error of every pixel without bias,
    and with no noise model (the Noise2Noise argument; the reference's noise variance is
    not subtracted, it cancels). Pixels where a layer or ``image`` has no data, or where
    ``exclude`` is True, are left out. The standard error is that of a ratio estimator
    over ``block`` x ``block`` squares (a denoiser's errors are correlated over a few
    pixels). Data units squared; NaN when no pixel is left.
    """
    m = len(layers)
    if m < 2:
        raise ValueError("reference_mse needs two independent copies of the truth or more")
    products, valid = _pair_products(image, layers, exclude)
    if not valid.any():
        return float("nan"), float("nan")
    mse = float(products[valid].mean())
    sums, counts = _block_sums(np.where(valid, products, 0.0), block), _block_sums(valid.astype(float), block)
    if len(counts) < 4:
        return mse, float(products[valid].std() / np.sqrt(valid.sum()))
    se = np.sqrt(np.sum((sums - mse * counts) ** 2) * len(counts) / (len(counts) - 1)) / counts.sum()
    return mse, float(se)


def _pair_products(image: np.ndarray, layers: np.ndarray, exclude: np.ndarray | None,
                   rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the mean over pairs j != k of ``(image - x_j)(image - x_k)`` (float64),
    and where it is defined (every layer and ``image`` finite, not ``exclude``), computed
    ``rows`` image rows at a time: a float64 copy of all the layers of a large CCD would
    take gigabytes."""
    m = len(layers)
    products = np.zeros(image.shape, np.float64)
    valid = np.zeros(image.shape, bool)
    for start in range(0, image.shape[0], rows):
        band = slice(start, start + rows)
        d = image[None, band].astype(np.float64) - layers[:, band]
        ok = np.isfinite(d).all(axis=0) & (True if exclude is None else ~exclude[band])
        d = np.where(ok, d, 0.0)
        total = d.sum(axis=0)
        products[band] = (total**2 - (d**2).sum(axis=0)) / (m * (m - 1))
        valid[band] = ok
    return products, valid


def _block_sums(values: np.ndarray, block: int) -> np.ndarray:
    """Sums of ``values`` over the whole ``block`` x ``block`` squares of the image, flat."""
    by, bx = (n // block for n in values.shape)
    return values[:by * block, :bx * block].reshape(by, block, bx, block).sum(axis=(1, 3)).ravel()


def estimated_psnr(mse: float, se: float, data_range: float) -> dict:
    """PSNR (dB) of an estimated MSE and its standard error (:func:`reference_mse`):
    ``psnr`` and ``psnr_se`` (None when the MSE is not above twice its error, where the
    estimate is no more than a bound), and ``psnr_lower``, the PSNR of MSE + 2 SE; all None
    when the MSE could not be estimated (NaN: no pixel that every copy shares)."""
    if not (np.isfinite(mse) and np.isfinite(se)):  # no pixel every copy shares
        return {"psnr": None, "psnr_se": None, "psnr_lower": None}
    lower = float(10 * np.log10(data_range**2 / (mse + 2 * se))) if mse + 2 * se > 0 else None
    if mse <= 2 * se:
        return {"psnr": None, "psnr_se": None, "psnr_lower": lower}
    return {"psnr": float(10 * np.log10(data_range**2 / mse)),
            "psnr_se": float(10 / np.log(10) * se / mse), "psnr_lower": lower}


def outlier_pixels(data: np.ndarray, reference: np.ndarray, *, sky: float, sigma: float,
                   gain: float | None) -> np.ndarray:
    """Bool (ny, nx), True where the input lies more than 8 noise sigma above the reference
    (cosmic rays, hot pixels), grown by 2 pixels. The noise is ``sqrt(sigma^2 +
    (reference - sky) / gain)``, in data units."""
    with np.errstate(invalid="ignore"):
        hit = np.nan_to_num((data - reference) / pixel_sigma(reference, sky=sky, sigma=sigma, gain=gain)) > 8
    return ndimage.binary_dilation(hit, iterations=2)


def power_spectrum(image: np.ndarray, *, background: np.ndarray, mask: np.ndarray,
                   n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of blank sky.

    ``image - background`` with sources (``mask`` True) and NaN set to 0, Fourier
    transformed; power averaged in ``n_bins`` rings of spatial frequency from 0 to 0.5
    cycles per pixel and divided by the number of blank pixels. Returns (k, power).
    """
    blank = ~mask & np.isfinite(image)
    residual = np.where(blank, image - background, 0.0)
    power = np.abs(np.fft.fft2(residual)) ** 2 / max(1, blank.sum())
    ky, kx = np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]), indexing="ij")
    k = np.hypot(ky, kx)
    edges = np.linspace(0.0, 0.5, n_bins + 1)
    ring = np.digitize(k, edges) - 1
    valid = (ring >= 0) & (ring < n_bins) & (k > 0)
    sums = np.bincount(ring[valid], power[valid], minlength=n_bins)
    counts = np.bincount(ring[valid], minlength=n_bins)
    return 0.5 * (edges[1:] + edges[:-1]), sums / np.maximum(counts, 1)


def residual_statistics(data: np.ndarray, image: np.ndarray, *, sigma: float, mask: np.ndarray,
                        positions: np.ndarray, radius: float) -> dict:
    """``(data - image) / sigma`` over blank sky (mean, std, histogram) and at sources.

    ``mask`` True = not blank sky; ``positions`` (n, 2) as (x, y). The histogram has
    40 bins from -5 to 5 (counts normalised to a density, comparable with N(0, 1)).
    """
    residual = (data - image) / sigma
    sky = residual[~mask & np.isfinite(residual)]
    density, _ = np.histogram(sky, bins=40, range=(-5, 5), density=True)
    out = {"sky_mean": float(np.mean(sky)), "sky_std": float(np.std(sky)),
           "histogram": [round(float(v), 5) for v in density], "source_mean": None}
    if len(positions):
        area = np.pi * radius**2
        out["source_mean"] = float(np.median(aperture_fluxes(residual, positions, radius=radius) / area))
    return out


def repair_check(repaired: np.ndarray, data: np.ndarray, reference: np.ndarray, *, background: np.ndarray,
                 sigma: np.ndarray, positions: np.ndarray, radius: float) -> dict:
    """Whether the pixels a repair pass filled were outliers of this exposure alone.

    A cosmic ray or hot pixel is in one exposure; a star is in the truth and in every
    exposure of its field. Each connected group of ``repaired`` pixels (8-connected) is
    *confirmed* when one of its pixels of ``data`` lies :data:`REPAIR_CONFIRM_SIGMA`
    noise sigmas (``sigma``: per pixel, of ``data - reference``) and
    :data:`REPAIR_CONFIRM_CONTRAST` times the reference's signal above ``background``
    above ``reference`` (the truth, or the leave-one-out stack of the other exposures);
    a group that is not was light the reference has too: a source (or its noise) that
    the repair pass took for a cosmic ray. ``positions`` (n, 2) (x, y): the reference's
    sources; ``radius`` (pixels): how near one counts as on it (2 x FWHM).

    Returns ``{"groups", "confirmed", "pixels", "unconfirmed_pixels", "near_sources",
    "unconfirmed_near_sources", "unchecked"}`` (pixel counts; ``near_sources``: repaired
    pixels within ``radius`` of a source, confirmed or not; ``unchecked``: groups where the
    reference has no data, e.g. an edge no other exposure covers, left out of the rest).
    """
    repaired = np.nan_to_num(np.asarray(repaired, dtype=float)) > 0.5
    labels, n = ndimage.label(repaired, structure=np.ones((3, 3)))
    checked = _groups_touching(labels, n, np.isfinite(reference) & np.isfinite(sigma))
    unchecked = int(n - checked.sum())
    repaired &= checked[labels]
    excess = np.nan_to_num(data - reference)
    signal = np.clip(np.nan_to_num(reference - background), 0, None)
    outlier = (excess > REPAIR_CONFIRM_SIGMA * sigma) & (excess > REPAIR_CONFIRM_CONTRAST * signal)
    confirmed_group = _groups_touching(labels, n, outlier & repaired)
    unconfirmed = repaired & ~confirmed_group[labels]
    near = np.zeros(repaired.shape, bool)
    if len(positions) and repaired.any():
        ny, nx = repaired.shape
        x = np.clip(np.round(positions[:, 0]).astype(int), 0, nx - 1)
        y = np.clip(np.round(positions[:, 1]).astype(int), 0, ny - 1)
        near[y, x] = True
        near = ndimage.distance_transform_edt(~near) <= radius
    return {"groups": int(checked.sum()), "confirmed": int(confirmed_group.sum()),
            "pixels": int(repaired.sum()), "unconfirmed_pixels": int(unconfirmed.sum()),
            "near_sources": int((repaired & near).sum()),
            "unconfirmed_near_sources": int((unconfirmed & near).sum()), "unchecked": unchecked}


def _groups_touching(labels: np.ndarray, n: int, where: np.ndarray) -> np.ndarray:
    """Bool per label 0..``n`` of ``labels``: the group has a pixel in ``where`` (0, the
    background, never)."""
    out = np.zeros(n + 1, bool)
    out[np.unique(labels[where & (labels > 0)])] = True
    out[0] = False
    return out

