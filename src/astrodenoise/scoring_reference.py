"""What an exposure's scores are measured against, and with which sources and apertures.

The evaluate step scores every image of an exposure against a reference:

- with a truth (a simulated survey), the noise-free image and its catalogue;
- without one (real data), the clean leave-one-out stack of the field's other exposures
  (:mod:`astrodenoise.reference`), with the sources found on the field's deep stack
  (:func:`_stack_sources`) as the catalogue;
- else the input itself, with the sources detected on it.

:func:`measurement_reference` returns that reference (``truth``, ``stack``), the
``sources`` to measure and their photometry set-up ``phot`` (:func:`_photometry_setup`:
reference fluxes, S/N classes, the image the Kron apertures are defined on and its
threshold, and the sky mask of the local-sky annuli, :func:`_sky_mask`, with the image
whose clip chooses their pixels, ``sky_select``). ``config`` is
the evaluate step's :class:`~astrodenoise.evaluate.EvaluateConfig` (its
``default_fwhm``, ``detect_threshold`` and ``aperture_fwhm``).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from . import io
from .detection import detect, refine_centroids
from .photometry import (
    aperture_fluxes,
    aperture_radius,
    aperture_snr,
    catalog_zeropoint,
    header_zeropoint,
    own_light,
)
from .sky import estimate_background, source_mask

__all__ = ["measurement_reference"]


def _fwhm(header, psf, config) -> float:
    """PSF FWHM in pixels: measured from the exposure's stars when it has enough, else the
    header's ``FWHM`` keyword, else ``config.default_fwhm``."""
    if psf is not None and psf.n_stars:
        return psf.fwhm
    return float(header.get("FWHM", config.default_fwhm))


def _sources(catalog: str | None, data, background, mask, header, config, psf=None) -> dict:
    """Positions (x, y), magnitudes and PSF FWHM of the sources to measure.

    From the catalogue when there is one (demo truth), else detected on the input, with
    magnitudes from their segment fluxes (:func:`_detected`). The FWHM is the
    catalogue's, else :func:`_fwhm`.
    """
    fwhm = _fwhm(header, psf, config)
    if catalog:
        table = Table.read(catalog, format="ascii.ecsv")
        flux, mag = np.asarray(table["flux"], float), np.asarray(table["mag"], float)
        zeropoint = catalog_zeropoint(mag, flux)
        return {"positions": np.column_stack([table["x"], table["y"]]), "mag": mag, "flux": flux,
                "zeropoint": zeropoint, "fwhm": float(table.meta.get("fwhm_pix", fwhm)), "catalog": True,
                "system": "catalogue"}
    return _detected(data, background, mask, header, fwhm, config) | {"catalog": False}


def _detected(image, background, mask, header, fwhm: float, config) -> dict:
    """The sources :func:`astrodenoise.detection.detect` finds on ``image`` (positive
    segment flux), with ``mag``, ``zeropoint`` and the magnitude ``system``: the survey's,
    from the header's zero point (:func:`astrodenoise.photometry.header_zeropoint`), else
    instrumental (zero point 0)."""
    positions, flux = detect(image, background=background, mask=mask, threshold=config.detect_threshold,
                             fwhm=fwhm)
    keep = flux > 0
    found = header_zeropoint(header)
    zeropoint, system = (found[0], f"header {found[1]}") if found else (0.0, "instrumental")
    return {"positions": positions[keep], "fwhm": fwhm, "mag": zeropoint - 2.5 * np.log10(flux[keep]),
            "flux": flux[keep], "zeropoint": zeropoint, "system": system}


def _stack_sources(stack: dict, background: np.ndarray, header, config, psf=None) -> dict:
    """Sources detected on the field's deep stack (every exposure, the target included,
    cosmic rays rejected), their centroids fitted on it
    (:func:`astrodenoise.detection.refine_centroids`): the reference catalogue.

    The deep stack, weighted by inverse variance, is as correlated with the target's
    noise as with the leave-one-out reference's (both covariances are 1 / sum of the
    weights), so a source found on it is neither brighter nor fainter in the target than
    in the reference: the selection does not bias the flux differences, and it reaches
    deeper than the reference alone (sqrt(n / (n - 1)) in S/N)."""
    image = stack["deep"]
    stack_bkg, stack_rms = estimate_background(image)
    fwhm = _fwhm(header, psf, config)
    mask = source_mask(image, stack_bkg, stack_rms)
    sources = _detected(image, stack_bkg, mask, header, fwhm, config)
    sources["positions"] = refine_centroids(image - stack_bkg, sources["positions"], fwhm=fwhm)
    return sources | {"catalog": True, "mask": mask}


def _photometry_setup(reference, background, sources, *, sigma, gain, reference_sigma, config, deep=None):
    """Aperture radius, reference fluxes and their S/N at the ``sources``, and what
    the apertures of :func:`astrodenoise.photometry.aperture_suite` need: the reference
    image, the image its Kron apertures are defined on and the segmentation threshold.
    With a noisy reference, ``deep`` (the field's stack with the exposure itself) gives
    the fluxes that sort sources into S/N classes and divide the differences
    (:func:`astrodenoise.photometry.flux_bias`) and the Kron apertures, segmented at 1 sigma
    of the input's noise as on a truth (the reference at 3 of its sigma made them smaller:
    n2v's faint Kron loss read 5.6 points short on the demo); the deep stack's noise is as
    much the target's as the reference's, so they bias neither. Else the input at 3 sigma.
    Sources whose apertures hold mostly their neighbours' light
    (:func:`astrodenoise.photometry.own_light`) have ``snr`` and ``mag`` NaN."""
    positions, fwhm = sources["positions"], sources["fwhm"]
    radius = aperture_radius(fwhm, factor=config.aperture_fwhm)
    ref_flux = aperture_fluxes(reference - background, positions, radius=radius)
    sorting = ref_flux if deep is None else aperture_fluxes(deep - background, positions, radius=radius)
    own = own_light(sources["flux"], (reference if deep is None else deep) - background, positions, fwhm=fwhm)
    snr = aperture_snr(sorting, radius=radius, sigma=sigma, gain=gain)
    out = {"positions": positions, "radius": radius, "reference": ref_flux, "fwhm": fwhm,
           "snr": np.where(own, snr, np.nan), "mag": np.where(own, sources["mag"], np.nan),
           "image": reference, "kron_reference": (reference if deep is None else deep) - background,
           "threshold": 3 * reference_sigma if reference_sigma and deep is None else sigma}
    return out | ({"deep": sorting, "deep_image": deep} if deep is not None else {})


def measurement_reference(exposure: dict, *, sky: dict, psf, truth_fits, catalog, stack, config) -> dict:
    """What the scores are measured against: ``truth`` (the noise-free image, a deep
    stack or None), the ``sources`` to measure and their photometry set-up ``phot``."""
    data, header = exposure["data"], exposure["header"]
    truth = io.read_fits_image(truth_fits)[0] if truth_fits else None
    if truth is None and stack is not None:
        truth = stack["image"]
        sources = _stack_sources(stack, sky["background"], header, config, psf)
    else:
        stack = None
        sources = _sources(catalog, data, sky["background"], sky["mask"], header, config, psf)
    phot = None
    if len(sources["positions"]):
        reference_sigma = stack["sigma"] if stack else 0.0 if truth is not None else sky["noise"].sigma
        phot = _photometry_setup(truth if truth is not None else data, sky["background"],
                                 sources, sigma=sky["noise"].sigma,
                                 gain=sky["noise"].gain, reference_sigma=reference_sigma, config=config,
                                 deep=stack["deep"] if stack else None)
        phot["sky_mask"] = _sky_mask(truth, stack, sources, sky)
        # The image whose 3-sigma clip chooses the sky pixels: chosen on the input, its clip
        # keeps its own noise tails out of its sky but not out of its apertures (M13's camera
        # drops 0.85% of its pixels by 5-8 sigma: its input read -22 / -44 / -72% against the
        # stack at 1 / 2 / 3 x FWHM, -2 / -3 / 0% with the deep stack's clip).
        phot["sky_select"] = data if stack is None else stack["deep"]
        if stack:  # the input without its own cosmic rays: what the self-test measures
            own = stack["target_rejected"] | stack["target_flagged"]
            phot["clean_input"] = np.where(own, stack["image"], data)
    return {"truth": truth, "stack": stack, "sources": sources, "phot": phot}


def _sky_mask(truth, stack, sources: dict, sky: dict) -> np.ndarray:
    """The sources left out of the local-sky annuli, found on an image whose noise does not
    bias the sky of the images measured: the truth (none), the deep stack (as correlated
    with the target's noise as with the reference's), else the input itself. A mask found
    on the input leaves out the pixels its noise lifted above the threshold, so its sky
    reads low and its faint-source flux high: +4.5% at 3 x FWHM on the check survey,
    +0.8% with the truth's mask."""
    if stack is not None:
        return sources["mask"]
    if truth is not None:
        return source_mask(truth, sky["background"], sky["rms"])
    return sky["mask"]
