"""Aperture photometry as the evaluation, injection-recovery and training probe measure it.

Circular apertures of 1, 2 and 3 x FWHM with a local sky, and Kron apertures
(:func:`aperture_suite`); one place for the aperture sums, their S/N, the aperture radius rule, the bright and
faint S/N classes, the flux bias statistics and the magnitude bins.
"""

from __future__ import annotations

import numpy as np
from astropy.stats import mad_std, sigma_clip
from photutils.aperture import ApertureMask, CircularAnnulus, CircularAperture, aperture_photometry
from photutils.segmentation import SourceCatalog, SourceFinder

__all__ = ["BRIGHT_SNR", "FAINT_SNR", "aperture_radius", "aperture_fluxes", "aperture_fraction",
           "aperture_weights", "aperture_snr", "APERTURE_FACTORS", "SKY_ANNULUS", "sky_pixels", "sky_mean",
           "local_sky", "circular_fluxes", "multi_aperture_fluxes", "kron_fluxes", "kron_areas", "APERTURES",
           "aperture_suite", "bias_by_aperture",
           "OWN_LIGHT_SHARE", "own_light",
           "snr_classes", "flux_bias", "bias_se", "magnitude_bins", "catalog_zeropoint", "header_zeropoint",
           "photometry_by_magnitude",
           "median_se"]

#: S/N classes of sources, by the S/N of the reference (or the true S/N of an injected
#: source): bright above ``BRIGHT_SNR``, faint between the two ``FAINT_SNR`` bounds.
BRIGHT_SNR, FAINT_SNR = 50.0, (5.0, 20.0)

#: The least share of the light in a source's largest circular aperture that must be its
#: own for its aperture photometry to be scored (see :func:`own_light`).
OWN_LIGHT_SHARE = 0.5


def aperture_radius(fwhm: float, *, factor: float = 1.0) -> float:
    """Aperture radius in pixels: ``factor`` times the PSF ``fwhm``, at least 1.5 pixels."""
    return max(1.5, factor * fwhm)


def aperture_fluxes(image: np.ndarray, positions: np.ndarray, *, radius: float) -> np.ndarray:
    """Sum of ``image`` in circular apertures; ``positions`` (n, 2) as (x, y), 0-based."""
    table = aperture_photometry(np.nan_to_num(image), CircularAperture(positions, r=radius))
    return np.asarray(table["aperture_sum"], dtype=float)


def aperture_weights(half: int, radius: float) -> np.ndarray:
    """(2 half + 1)^2 float weights of a circular aperture of ``radius`` at the stamp's
    centre (the exact overlap of each pixel, as photutils' aperture sums weigh them)."""
    size = 2 * half + 1
    return CircularAperture((half, half), r=radius).to_mask(method="exact").to_image((size, size))


#: Aperture radii, in units of the PSF FWHM, at which flux biases are quoted (the core a
#: denoiser keeps, and the wings it may flatten), and the local-sky annulus (inner and outer
#: radius in FWHM) outside the largest of them.
APERTURE_FACTORS = (1.0, 2.0, 3.0)
SKY_ANNULUS = (4.0, 6.0)


def sky_pixels(select: np.ndarray, positions: np.ndarray, *, inner: float, outer: float,
               mask: np.ndarray | None = None) -> list[tuple[ApertureMask, np.ndarray]]:
    """Per source, the pixels of its circular sky annulus (``inner`` to ``outer`` pixels)
    that its local sky is the mean of, chosen once on the image ``select``: without the
    pixels of ``mask`` (True: other sources, as an astronomer masks neighbours) where at
    least a fifth of the annulus is left, else all of it; without NaN pixels; and without
    what a 3-sigma clip about the median of ``select`` rejects there (cosmic rays, what
    the mask missed). Returns ``[(annulus mask, kept), ...]``: ``kept`` is a bool array
    over the annulus pixels in the order :meth:`~photutils.aperture.ApertureMask.get_values`
    gives them (pixels outside the image do not count), laid the same way on any image of
    ``select``'s shape (:func:`sky_mean`). ``positions`` (n, 2) as (x, y)."""
    annuli = CircularAnnulus(positions, r_in=inner, r_out=outer).to_mask(method="center")
    blocked = np.zeros(select.shape) if mask is None else mask.astype(float)
    out = []
    for annulus in annuli:
        values = annulus.get_values(select)
        finite = np.isfinite(values)
        kept = finite & (annulus.get_values(blocked) < 0.5)
        if kept.sum() < 0.2 * len(values):
            kept = finite
        if kept.any():
            kept[kept] = ~np.ma.getmaskarray(sigma_clip(values[kept], sigma=3.0, maxiters=5))
        out.append((annulus, kept))
    return out


def sky_mean(image: np.ndarray, pixels: list[tuple[ApertureMask, np.ndarray]]) -> np.ndarray:
    """Per source, the mean of ``image`` (data units per pixel) over the sky pixels of
    :func:`sky_pixels` (NaN pixels of ``image`` left out; NaN where none is left)."""
    sky = np.full(len(pixels), np.nan)
    for i, (annulus, kept) in enumerate(pixels):
        values = annulus.get_values(image)[kept]
        values = values[np.isfinite(values)]
        if len(values):
            sky[i] = values.mean()
    return sky


def local_sky(image: np.ndarray, positions: np.ndarray, *, inner: float, outer: float,
              mask: np.ndarray | None = None, select: np.ndarray | None = None) -> np.ndarray:
    """Per source, the local sky of ``image`` (data units per pixel): the mean of the
    annulus pixels :func:`sky_pixels` keeps, chosen on ``select`` (default ``image``).

    A mean over pixels chosen once, not a median of each image, so that the photometry
    is linear: an image and its noise-free truth, chosen on the same noisy ``select``,
    read the same sky but for the noise (the input reads its truth without bias), and
    the flux of a difference image is the difference of the fluxes."""
    pixels = sky_pixels(image if select is None else select, positions, inner=inner, outer=outer, mask=mask)
    return sky_mean(image, pixels)


def multi_aperture_fluxes(image: np.ndarray, positions: np.ndarray, *, fwhm: float,
                          factors: tuple[float, ...] = APERTURE_FACTORS,
                          annulus: tuple[float, float] = SKY_ANNULUS,
                          mask: np.ndarray | None = None,
                          select: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Circular-aperture fluxes at radii ``factor * fwhm`` (:func:`aperture_radius`), each
    minus the local sky of :func:`local_sky` in the ``annulus`` (in FWHM, sources of
    ``mask`` left out, pixels chosen on ``select``, default ``image``) times its area, as
    an astronomer measures them. Returns ``{"1fwhm": (n,), "2fwhm": ..., ...}``, data units."""
    pixels = sky_pixels(image if select is None else select, positions, inner=annulus[0] * fwhm,
                        outer=annulus[1] * fwhm, mask=mask)
    return circular_fluxes(image, positions, fwhm=fwhm, factors=factors, sky=sky_mean(image, pixels))


def circular_fluxes(image: np.ndarray, positions: np.ndarray, *, fwhm: float, sky: np.ndarray,
                    factors: tuple[float, ...] = APERTURE_FACTORS) -> dict[str, np.ndarray]:
    """:func:`multi_aperture_fluxes` with each source's local ``sky`` (per pixel) given."""
    out = {}
    for factor in factors:
        radius = aperture_radius(fwhm, factor=factor)
        out[f"{factor:g}fwhm"] = aperture_fluxes(image, positions, radius=radius) - sky * np.pi * radius**2
    return out


def kron_fluxes(images: dict[str, np.ndarray], reference: np.ndarray, positions: np.ndarray, *,
                threshold: float, fwhm: float, annulus: tuple[float, float] = SKY_ANNULUS,
                mask: np.ndarray | None = None, select: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Kron fluxes (SExtractor's MAG_AUTO: 2.5 Kron radii, at least 1.4) of the sources at
    ``positions`` in every image, through apertures defined once, on ``reference``.

    As SExtractor in dual-image mode: ``reference`` (a background-subtracted deep or
    noise-free image, data units) is segmented above ``threshold`` (data units per pixel,
    at least 5 connected pixels, deblended), each segment's elliptical Kron aperture is
    measured there, and the same apertures are laid on every image of ``images`` (each
    background-subtracted, same grid). Each flux is less the local sky of that image
    (:func:`local_sky`: the sources of ``mask`` left out, the pixels chosen on ``select``,
    by default on each image itself) times the aperture's area, from the circular
    ``annulus`` (in FWHM) of the circular apertures, or, for a Kron aperture whose
    semi-major axis reaches beyond its inner edge, from an annulus of the same width
    starting there: the sky is never taken from the source's own light. A position
    outside every segment, or whose Kron radius cannot be measured, reads NaN. Returns
    ``{name: (n,) fluxes}`` (data units).
    """
    segments, detection, rows = _kron_detection(reference, positions, threshold)
    if segments is None:
        return {name: np.full(len(positions), np.nan) for name in images}
    area, inner = _kron_geometry(detection, rows, inner=annulus[0] * fwhm)
    width = (annulus[1] - annulus[0]) * fwhm
    skies = _sky_in_annuli(images, positions, inner, width, mask, select)
    out = {}
    for name, image in images.items():
        catalog = SourceCatalog(np.nan_to_num(image), segments, detection_catalog=detection,
                                local_bkg_width=0)
        flux = np.asarray(catalog.kron_flux, dtype=float)
        out[name] = np.where(rows >= 0, flux[np.maximum(rows, 0)] - skies[name] * area, np.nan)
    return out


def kron_areas(reference: np.ndarray, positions: np.ndarray, *, threshold: float) -> np.ndarray:
    """The area (pixels) of the Kron aperture of each position that :func:`kron_fluxes`
    measures on ``reference`` segmented above ``threshold``; NaN without one."""
    segments, detection, rows = _kron_detection(reference, positions, threshold)
    if segments is None:
        return np.full(len(positions), np.nan)
    return _kron_geometry(detection, rows, inner=0.0)[0]


def _kron_detection(reference: np.ndarray, positions: np.ndarray, threshold: float):
    """The segmentation of ``reference`` above ``threshold``, its catalogue, and the row of
    the catalogue each position falls in (-1: none); (None, None, None) without any."""
    segments = SourceFinder(n_pixels=5, deblend=True, progress_bar=False)(np.nan_to_num(reference), threshold)
    if segments is None:
        return None, None, None
    ny, nx = reference.shape
    x = np.clip(np.round(positions[:, 0]).astype(int), 0, nx - 1)
    y = np.clip(np.round(positions[:, 1]).astype(int), 0, ny - 1)
    labels = segments.data[y, x]
    detection = SourceCatalog(np.nan_to_num(reference), segments, local_bkg_width=0)
    index = {label: i for i, label in enumerate(detection.labels)}
    return segments, detection, np.array([index.get(label, -1) for label in labels])


def _kron_geometry(detection: SourceCatalog, rows: np.ndarray, *,
                   inner: float) -> tuple[np.ndarray, np.ndarray]:
    """Per position (``rows`` into ``detection``, -1: none), the area of its Kron aperture
    (NaN without one) and the inner radius of its sky annulus: ``inner``, or the
    aperture's semi-major axis where that is larger (rounded up to half a pixel, so that
    sources of about one size share an annulus and are measured together)."""
    area = np.full(len(rows), np.nan)
    radius = np.full(len(rows), inner)
    apertures = detection.kron_aperture
    for i, row in enumerate(rows):
        aperture = apertures[row] if row >= 0 else None
        if aperture is not None:
            area[i] = aperture.area
            radius[i] = max(inner, np.ceil(2 * float(aperture.a)) / 2)
    return area, radius


def _sky_in_annuli(images: dict[str, np.ndarray], positions: np.ndarray, inner: np.ndarray, width: float,
                   mask: np.ndarray | None, select: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per image, :func:`local_sky` of each position in an annulus from its ``inner``
    radius to ``inner + width`` (pixels chosen on ``select``, or on each image);
    positions that share an inner radius are measured together."""
    skies = {name: np.full(len(positions), np.nan) for name in images}
    for radius in np.unique(inner):
        pick = inner == radius
        shared = None if select is None else sky_pixels(select, positions[pick], inner=radius,
                                                        outer=radius + width, mask=mask)
        for name, image in images.items():
            pixels = shared if shared is not None else sky_pixels(image, positions[pick], inner=radius,
                                                                  outer=radius + width, mask=mask)
            skies[name][pick] = sky_mean(image, pixels)
    return skies


#: The apertures every flux bias is quoted in: circular ones of :data:`APERTURE_FACTORS`
#: FWHM with a local sky, and Kron's (SExtractor's MAG_AUTO).
APERTURES = (*(f"{factor:g}fwhm" for factor in APERTURE_FACTORS), "kron")


def aperture_suite(images: dict[str, np.ndarray], positions: np.ndarray, *, fwhm: float,
                   kron_reference: np.ndarray, threshold: float, select: np.ndarray,
                   background: np.ndarray | float = 0.0,
                   mask: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Fluxes in every aperture of :data:`APERTURES`, as an astronomer measures them, of
    the sources at ``positions`` in each image: ``{name: {aperture: (n,)}}``.

    Every aperture is less its local sky (:func:`local_sky`): the mean of the same sky
    pixels in every image, those of each annulus that are not on the sources of ``mask``
    and that a 3-sigma clip of ``select`` keeps (cosmic rays and unmasked neighbours are
    clipped: the noisy input, or the deep stack of its field, whose clip does not depend
    on the noise of one image measured; same grid as the images). The photometry is then
    linear and the same for every image: a denoised image and the truth differ in flux
    only where their pixels differ. Circular apertures are of :data:`APERTURE_FACTORS`
    FWHM; Kron apertures are defined once on ``kron_reference`` (background-subtracted,
    segmented above ``threshold`` per pixel) and laid on every ``image - background``
    (:func:`kron_fluxes`). Data units; NaN where a Kron aperture could not be defined.
    """
    kron = kron_fluxes({name: image - background for name, image in images.items()}, kron_reference,
                       positions, threshold=threshold, fwhm=fwhm, mask=mask, select=select - background)
    inner, outer = SKY_ANNULUS
    pixels = sky_pixels(select, positions, inner=inner * fwhm, outer=outer * fwhm, mask=mask)
    return {name: circular_fluxes(image, positions, fwhm=fwhm, factors=APERTURE_FACTORS,
                                   sky=sky_mean(image, pixels)) | {"kron": kron[name]}
            for name, image in images.items()}


def bias_by_aperture(fluxes: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                     snr: np.ndarray, *, denominator: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
    """:func:`flux_bias` in every aperture of ``fluxes`` against the same aperture of
    ``reference`` (over the same aperture of ``denominator`` when given):
    ``{aperture: {"bright": {n, bias, scatter}, "faint": ...}}``."""
    return {key: flux_bias(fluxes[key], reference[key], snr,
                           denominator=None if denominator is None else denominator[key])
            for key in fluxes}


def aperture_fraction(stamp: np.ndarray, radius: float) -> float:
    """Share of a centred (odd-sided) stamp's flux inside a circular aperture of ``radius``."""
    half = stamp.shape[0] // 2
    return float(aperture_fluxes(stamp, np.array([[half, half]]), radius=radius)[0])


def aperture_snr(flux: np.ndarray, *, radius: float, sigma: float, gain: float | None) -> np.ndarray:
    """S/N of aperture sums ``flux``: the variance is the sky noise over the aperture plus
    the source's photon noise (``flux / gain``, data units; none without a gain)."""
    variance = np.pi * radius**2 * sigma**2 + np.clip(flux, 0, None) / (gain or np.inf)
    return flux / np.sqrt(variance)


def own_light(own_flux: np.ndarray, reference: np.ndarray, positions: np.ndarray, *,
              fwhm: float) -> np.ndarray:
    """Bool per source: at least :data:`OWN_LIGHT_SHARE` of the light of ``reference``
    (sky subtracted) in its largest circular aperture (``max(APERTURE_FACTORS)`` x FWHM)
    is its ``own_flux`` (a catalogue's true flux, or a deblended detection's segment flux).

    Any other source's aperture measures its neighbours: on the GalSim check survey a
    quarter of the catalogue sources of faint reference S/N have under 12% of their 3 x
    FWHM aperture's light, galaxies below the detection limit beside brighter ones. No
    detection finds them as sources, so they are scored neither against a truth nor
    against a stack; the S/N classes and per-magnitude biases are of the rest.
    """
    light = aperture_fluxes(reference, positions, radius=aperture_radius(fwhm, factor=max(APERTURE_FACTORS)))
    return np.asarray(own_flux, float) >= OWN_LIGHT_SHARE * light


def snr_classes(snr: np.ndarray) -> dict[str, np.ndarray]:
    """``{"bright": bool mask, "faint": bool mask}`` of the S/N classes (:data:`BRIGHT_SNR`,
    :data:`FAINT_SNR`)."""
    snr = np.asarray(snr, dtype=float)
    return {"bright": snr > BRIGHT_SNR, "faint": (snr > FAINT_SNR[0]) & (snr < FAINT_SNR[1])}


def flux_bias(flux: np.ndarray, reference: np.ndarray, snr: np.ndarray, *,
              denominator: np.ndarray | None = None) -> dict:
    """Median fractional flux bias ``(F - F_ref) / F_den`` and its robust scatter for
    bright and faint sources (classes of ``snr``; those of positive ``F_den`` and a finite
    measurement). ``denominator`` is the reference flux itself unless given: against a
    noisy reference, the flux of the field's deep stack, whose S/N also sorts the classes,
    so that neither the selection nor the division correlates with the difference."""
    denominator = reference if denominator is None else denominator
    out = {}
    for name, pick in snr_classes(snr).items():
        pick = pick & (denominator > 0) & np.isfinite(flux) & np.isfinite(reference)
        ratio = (flux[pick] - reference[pick]) / denominator[pick]
        out[name] = {
            "n": int(pick.sum()),
            "bias": float(np.median(ratio)) if pick.any() else None,
            "scatter": float(mad_std(ratio)) if pick.sum() > 2 else None,
        }
    return out


def bias_se(cell: dict) -> float | None:
    """Standard error of the median bias of a :func:`flux_bias` cell: the asymptotic
    1.2533 x robust scatter / sqrt(n); None without a scatter."""
    if cell.get("scatter") is None or not cell.get("n"):
        return None
    return float(1.2533 * cell["scatter"] / np.sqrt(cell["n"]))


def catalog_zeropoint(mag: np.ndarray, flux: np.ndarray) -> float:
    """The zero point of a catalogue's magnitudes for its fluxes (data units): the median of
    ``mag + 2.5 log10(flux)``; 0 for an empty catalogue."""
    mag, flux = np.asarray(mag, dtype=float), np.asarray(flux, dtype=float)
    return float(np.median(mag + 2.5 * np.log10(flux))) if len(mag) else 0.0


#: Header keywords of a zero point, magnitude of one data unit of the image as stored
#: (DECam/NOAO and astrodenoise's own MAGZERO, ESO science products' PHOTZP, ...), in
#: the order they are looked for.
ZEROPOINT_KEYS = ("MAGZERO", "PHOTZP", "MAGZP", "ZEROPT", "ZP")
#: Keywords of a zero point of one data unit per second (CASU's MAGZPT): plus 2.5 log10 EXPTIME.
ZEROPOINT_PER_SECOND_KEYS = ("MAGZPT",)


def header_zeropoint(header) -> tuple[float, str] | None:
    """The survey's zero point from a FITS header, as ``(zero point, "KEYWORD")``: the
    magnitude of one data unit of the image (:data:`ZEROPOINT_KEYS`, or
    :data:`ZEROPOINT_PER_SECOND_KEYS` with the exposure time); None when the header has
    none (magnitudes are then instrumental, zero point 0)."""
    for key in ZEROPOINT_KEYS:
        value = _finite(header.get(key))
        if value is not None:
            return value, key
    exptime = _finite(header.get("EXPTIME"))
    for key in ZEROPOINT_PER_SECOND_KEYS:
        value = _finite(header.get(key))
        if value is not None and exptime and exptime > 0:
            return value + 2.5 * float(np.log10(exptime)), f"{key} + 2.5 log10 EXPTIME"
    return None


def _finite(value) -> float | None:
    """``value`` as a finite float, else None (a header value is user text)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def magnitude_bins(mags: np.ndarray, width: float) -> np.ndarray:
    """Lower edges of bins of ``width`` magnitudes, on multiples of ``width``, from the
    brightest to the faintest of ``mags`` (every value falls in one ``[lo, lo + width)``)."""
    mags = np.asarray(mags, dtype=float)
    mags = mags[np.isfinite(mags)]
    if not len(mags):
        return np.empty(0)
    start = np.floor(mags.min() / width) * width
    count = int(np.floor((mags.max() - start) / width)) + 1
    return start + width * np.arange(count)


def photometry_by_magnitude(flux: np.ndarray, reference: np.ndarray, mag: np.ndarray, *,
                            bin_width: float, denominator: np.ndarray | None = None) -> list[dict]:
    """Median fractional flux bias ``(F - F_ref) / F_den`` and robust scatter per magnitude
    bin (brightest first); ``denominator`` as in :func:`flux_bias`."""
    denominator = reference if denominator is None else denominator
    good = (denominator > 0) & np.isfinite(mag) & np.isfinite(flux) & np.isfinite(reference)
    ratio = (flux - reference) / np.where(denominator > 0, denominator, 1.0)
    rows = []
    for lo in magnitude_bins(mag[good], bin_width):
        pick = good & (mag >= lo) & (mag < lo + bin_width)
        if pick.sum() >= 3:
            rows.append({"mag": round(float(lo + bin_width / 2), 3), "n": int(pick.sum()),
                         "bias": float(np.median(ratio[pick])), "scatter": float(mad_std(ratio[pick]))})
    return rows


def median_se(values: np.ndarray, rng: np.random.Generator,
              n_boot: int = 400) -> tuple[float | None, float | None]:
    """Median and its bootstrap standard error (None below three values)."""
    if not len(values):
        return None, None
    if len(values) < 3:
        return float(np.median(values)), None
    boot = np.median(rng.choice(values, size=(n_boot, len(values))), axis=1)
    return float(np.median(values)), float(np.std(boot))
