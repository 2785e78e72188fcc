"""Shared fixtures: small synthetic images with known noise, FITS files, tiny models.

Everything here is small (at most a few hundred pixels a side, U-Nets with 4 channels)
so that the unit suite runs in well under two minutes on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from astrodenoise import io
from astrodenoise.denoise import load_model, load_normalisation
from astrodenoise.model import UNet, UNetConfig
from astrodenoise.noise_model import NoiseModel
from astrodenoise.sampling import Exposure
from astrodenoise.simulate import SimulationConfig, write_demo_survey
from astrodenoise.transform import Normalisation

#: The real FITS images (outside the repository, never committed): ../shared/data/real.
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"

#: A tiny U-Net: fast on two CPU cores, still two poolings deep.
TINY_UNET = UNetConfig(depth=2, channels=4)

#: A small demo survey: one field, three exposures, no cosmic rays, enough bright stars
#: that evaluate() finds sources in both S/N classes.
DEMO_CONFIG = SimulationConfig(
    n_fields=1, n_exposures=3, size=128, seed=7, cosmic_rays_per_mpix=0.0,
    star_density=200.0, galaxy_density=60.0, mag_range=(15.0, 25.0),
)

#: Sky level and blank-sky noise sigma (ADU) of the synthetic images of the predict, tiling,
#: denoise, restore, inject and psf tests.
SKY, SIGMA = 100.0, 3.0

#: The side of the exposures the alignment and register tests cut from one sky (shared_sky, sky_cutout).
SIZE = 200


@dataclass(frozen=True)
class SyntheticImage:
    """A noisy image and what made it: every number a test may compare against."""

    data: np.ndarray  # (ny, nx) float32, noisy, data units (ADU)
    truth: np.ndarray  # (ny, nx) float64, noise-free, sky included
    sky: float  # sky level in ADU
    sigma: float  # Gaussian noise sigma of blank sky in ADU
    gain: float | None  # e-/ADU where the noise is Poisson + read noise, else None
    read_noise: float | None  # e-


def make_star_field(size: int | tuple[int, int] = 128, *, sky: float = 100.0, sigma: float = 3.0,
                    gain: float | None = None, read_noise: float = 5.0, n_stars: int = 15,
                    seed: int = 0) -> SyntheticImage:
    """Gaussian "stars" on a flat sky plus noise of known level.

    Without ``gain`` the noise is Gaussian with standard deviation ``sigma``. With
    ``gain`` it is Poisson noise on the signal in electrons plus Gaussian read noise,
    divided by the gain; blank-sky sigma is then sqrt(sky * gain + rn**2) / gain.
    """
    ny, nx = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx]
    truth = np.full((ny, nx), sky, dtype=float)
    for _ in range(n_stars):
        x0, y0 = rng.uniform(5, nx - 5), rng.uniform(5, ny - 5)
        width = rng.uniform(1.0, 2.5)
        amplitude = rng.uniform(5.0, 200.0) * sigma
        truth += amplitude * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * width**2))
    if gain is None:
        data = truth + rng.normal(0.0, sigma, truth.shape)
        noise_sigma, rn = sigma, None
    else:
        electrons = rng.poisson(truth * gain) + rng.normal(0.0, read_noise, truth.shape)
        data = electrons / gain
        noise_sigma, rn = float(np.sqrt(sky * gain + read_noise**2) / gain), read_noise
    return SyntheticImage(data.astype(np.float32), truth, sky, noise_sigma, gain, rn)


def moffat_field(fwhm: float, *, n_stars: int = 30, flux_range: tuple[float, float] = (3.5, 4.5),
                 cosmic_rays: int = 0, size: int = 256, exposures: int = 1, seed: int = 0):
    """Moffat (beta 3.5) stars of FWHM ``fwhm`` and flux 10**``flux_range`` on a flat sky
    ``SKY``, plus one-pixel-wide cosmic-ray hits brighter than most stars; one image, or a
    list of ``exposures`` noise draws (Gaussian, ``SIGMA``) of the same stars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    beta = 3.5
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    image = np.full((size, size), SKY)
    for _ in range(n_stars):
        x0, y0 = rng.uniform(15, size - 15, 2)
        flux = 10 ** rng.uniform(*flux_range)
        profile = (1 + ((xx - x0) ** 2 + (yy - y0) ** 2) / alpha**2) ** -beta
        image += flux * profile / profile.sum()
    for _ in range(cosmic_rays):
        x0, y0 = rng.integers(15, size - 15, 2)
        image[y0, x0:x0 + rng.integers(1, 4)] += rng.uniform(300, 2000)
    draws = [(image + rng.normal(0, SIGMA, image.shape)).astype(np.float32) for _ in range(exposures)]
    return draws[0] if exposures == 1 else draws


def tan_header(shape: tuple[int, int], *, crval=(150.0, 2.2), scale_arcsec: float = 0.26,
               **cards) -> fits.Header:
    """A FITS header with a celestial TAN WCS centred on the image, plus ``cards``."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = [(shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0]
    wcs.wcs.cd = [[-scale_arcsec / 3600.0, 0.0], [0.0, scale_arcsec / 3600.0]]
    header = wcs.to_header()
    for key, value in cards.items():
        header[key] = value
    return header


@pytest.fixture
def star_field() -> SyntheticImage:
    """128 x 128 Gaussian stars on sky 100 ADU with Gaussian noise sigma 3 ADU."""
    return make_star_field(128, sky=100.0, sigma=3.0, seed=0)


@pytest.fixture
def poisson_field() -> SyntheticImage:
    """128 x 128 stars, sky 200 ADU, Poisson + read noise with gain 2 e-/ADU, rn 5 e-."""
    return make_star_field(128, sky=200.0, gain=2.0, read_noise=5.0, seed=1)


@pytest.fixture
def fits_with_wcs(tmp_path, poisson_field) -> Path:
    """A FITS exposure with a TAN WCS and GAIN/RDNOISE/OBJECT keywords."""
    header = tan_header(poisson_field.data.shape, GAIN=poisson_field.gain,
                        RDNOISE=poisson_field.read_noise, OBJECT="testfield", BUNIT="adu")
    path = tmp_path / "exposure.fits"
    fits.PrimaryHDU(poisson_field.data, header=header).writeto(path)
    return path


def random_checkpoint(path: Path, *, config: UNetConfig = TINY_UNET, scale: float = 3.0,
                      seed: int = 0) -> Path:
    """Save a checkpoint of a randomly initialised U-Net, laid out like train_model's."""
    torch.manual_seed(seed)
    model = UNet(config)
    checkpoint = {
        "model": model.state_dict(),
        "model_config": config.to_dict(),
        "normalisation": {"scale": scale, "offset": "sky_level of each exposure (noise step)"},
    }
    io.save_checkpoint(path, checkpoint)
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """A random tiny U-Net (depth 2, 4 channels) with survey scale 3.0, saved to disk."""
    return random_checkpoint(tmp_path / "model.pt")


@pytest.fixture(scope="session")
def demo_survey(tmp_path_factory) -> SimpleNamespace:
    """The demo survey of DEMO_CONFIG written once per session (read-only for tests)."""
    root = tmp_path_factory.mktemp("demo")
    fields = write_demo_survey(root, DEMO_CONFIG)
    return SimpleNamespace(root=root, config=DEMO_CONFIG, fields=fields)


@pytest.fixture
def real_data_dir() -> Path:
    """The folder of real FITS images; the test is skipped when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real FITS images not found at {REAL_DATA} (../shared/data/real "
                    "from the repository root)")
    return REAL_DATA


@pytest.fixture
def make_image():
    """The factory of synthetic images, for tests that need their own size or noise."""
    return make_star_field


@pytest.fixture
def make_header():
    """The factory of FITS headers with a celestial TAN WCS."""
    return tan_header


@pytest.fixture
def make_checkpoint():
    """The factory of random-weight checkpoints: ``make_checkpoint(path, config=..., seed=...)``."""
    return random_checkpoint


@pytest.fixture
def tiny_unet() -> UNetConfig:
    """UNetConfig(depth=2, channels=4)."""
    return TINY_UNET


# Helpers shared by the tests of two or more modules. Each keeps the name it had in the one test
# file it came from, so that the tests that call it read as they did there.


def ramp(shape=(32, 40)):
    """A linear ramp from 0 to 10 over ``shape`` (data range exactly 10): metrics, evaluate."""
    return np.linspace(0.0, 10.0, shape[0] * shape[1]).reshape(shape)


def training_exposure(name, field, data, sky=100.0, sigma=3.0, **noise):
    """A training exposure with the noise ``sky``, ``sigma`` and ``noise``: sampling, train."""
    return Exposure(name=name, field=field, data=data, noise=NoiseModel(sky=sky, sigma=sigma, **noise))


def linear_norm(scale: float, offset: float = SKY) -> Normalisation:
    """The linear map of ``scale`` at sky level ``offset``: denoise, tiling, predict."""
    return Normalisation("linear", offset=offset, scale=scale)


def checkpoint_norm(checkpoint, offset=SKY) -> Normalisation:
    """The linear map of a (linear) checkpoint at sky level ``offset``."""
    return Normalisation("linear", offset=offset, scale=float(load_normalisation(str(checkpoint))["scale"]))


def gat_checkpoint(tmp_path, tiny_checkpoint):
    """``tiny_checkpoint`` saved as a GAT model of survey gain 2 e-/ADU: transform, tiling, predict."""
    checkpoint = io.load_checkpoint(tiny_checkpoint)
    checkpoint["normalisation"] |= {"kind": "gat", "gain": 2.0}
    io.save_checkpoint(tmp_path / "gat.pt", checkpoint)
    return tmp_path / "gat.pt"


def shared_sky(seed: int = 0, size: int = SIZE + 60) -> np.ndarray:
    """A noise-free star field larger than the exposures cut from it."""
    rng = np.random.default_rng(seed)
    sky = np.zeros((size, size))
    ys, xs = rng.integers(3, size - 3, (2, 120))
    sky[ys, xs] = rng.uniform(200, 3000, 120)
    return ndimage.gaussian_filter(sky, 1.5) + 100.0


def sky_cutout(sky: np.ndarray, y: int, x: int, *, seed: int, banding: float = 0.0) -> np.ndarray:
    """The SIZE x SIZE exposure of ``sky`` at (y, x), with noise and row banding: alignment, register."""
    rng = np.random.default_rng(seed)
    image = sky[y:y + SIZE, x:x + SIZE] + rng.normal(0, 3.0, (SIZE, SIZE))
    image += rng.normal(0, banding, (SIZE, 1))  # row banding, different in every frame
    return image.astype(np.float32)


@pytest.fixture
def _fresh_model_cache():
    """load_model caches on the path; start and end every test with an empty cache.

    Used by every test of the files that load models (denoise, tiling, predict) through their
    ``pytestmark``.
    """
    load_model.cache_clear()
    yield
    load_model.cache_clear()
