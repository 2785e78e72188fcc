"""Provenance: which code, config and inputs made an output.

Every output of the pipeline records these so that a result can be traced back and
reproduced (FITS HISTORY cards, zarr attributes, checkpoint fields, report footer).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["STEP_VERSIONS", "code_version", "config_hash"]

#: Version of each step's results. Bump a step's number in any change that alters what
#: it computes: the workflow passes it through ``params:``, so Snakemake reruns that step
#: (and everything downstream) on the next run. Snakemake does not track edits to src/.
STEP_VERSIONS = {
    "simulate": 1,
    "ingest": 1,
    "noise": 3,
    # The survey-level photon-transfer fit (noise_survey rule): its own number, so that a
    # change to it reruns neither the per-exposure noise nor the training after it.
    "noise_survey": 4,
    "register": 1,
    "train": 6,
    "predict": 5,
    "evaluate": 13,
    "report": 12,
}


def code_version() -> str:
    """Return the package version plus the git commit of the source tree when known.

    Examples: ``"0.1.0+g1a2b3c4"`` from a git checkout, ``"0.1.0+g1a2b3c4.dirty"`` with
    uncommitted edits, plain ``"0.1.0"`` from an installed wheel.
    """
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=source, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=source, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def config_hash(config: dict[str, Any]) -> str:
    """Return a short, stable hash of a JSON-serialisable config (key order ignored)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
