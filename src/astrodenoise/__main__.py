"""``python -m astrodenoise``: the same as the ``astrodenoise`` command."""

import sys

from .cli import main

sys.exit(main())
