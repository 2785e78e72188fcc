"""astrodenoise: self-supervised denoising of astronomical survey images.

One module per pipeline step (:mod:`~astrodenoise.simulate`, :mod:`~astrodenoise.ingest`,
:mod:`~astrodenoise.noise`, :mod:`~astrodenoise.register`, :mod:`~astrodenoise.train`,
:mod:`~astrodenoise.predict`, :mod:`~astrodenoise.evaluate`, :mod:`~astrodenoise.report`) on
shared modules by concept below them (file formats in :mod:`~astrodenoise.io`, the network
in :mod:`~astrodenoise.model`, photometry, PSF, detection, ...); docs/ARCHITECTURE.md has
the layers.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("astrodenoise")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
