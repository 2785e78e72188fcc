"""astrodenoise: self-supervised denoising of astronomical survey images.

One module per pipeline step: :mod:`~astrodenoise.simulate`, :mod:`~astrodenoise.ingest`,
:mod:`~astrodenoise.noise`, :mod:`~astrodenoise.train`, :mod:`~astrodenoise.predict`,
:mod:`~astrodenoise.evaluate`, :mod:`~astrodenoise.report`; file formats live in
:mod:`~astrodenoise.io` and the network in :mod:`~astrodenoise.model`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("astrodenoise")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
