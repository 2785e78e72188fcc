"""Tests of astrodenoise.provenance: code version and config hash."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import astrodenoise
from astrodenoise.provenance import STEP_VERSIONS, code_version, config_hash


def test_config_hash_ignores_key_order():
    first = {"train": {"steps": 10, "seed": 0}, "survey": "demo", "methods": ["n2n", "n2v"]}
    second = {"methods": ["n2n", "n2v"], "survey": "demo", "train": {"seed": 0, "steps": 10}}

    assert config_hash(first) == config_hash(second)


@pytest.mark.parametrize("change", [
    {"survey": "other"},
    {"train": {"steps": 11, "seed": 0}},
    {"methods": ["n2v", "n2n"]},  # list order matters
])
def test_config_hash_changes_with_values(change):
    base = {"train": {"steps": 10, "seed": 0}, "survey": "demo", "methods": ["n2n", "n2v"]}

    assert config_hash(base | change) != config_hash(base)


def test_config_hash_is_short_hex():
    assert re.fullmatch(r"[0-9a-f]{16}", config_hash({"a": 1}))


def test_code_version_starts_with_package_version():
    version = code_version()

    assert version.startswith(astrodenoise.__version__)
    assert re.fullmatch(re.escape(astrodenoise.__version__) + r"(\+g[0-9a-f]+(\.dirty)?)?", version)


def test_every_step_has_a_version_and_every_version_reaches_a_rule():
    rules = Path(__file__).resolve().parents[1] / "workflow" / "rules"
    used = set()
    for smk in rules.glob("*.smk"):
        used |= set(re.findall(r'STEP_VERSIONS\["(\w+)"\]', smk.read_text()))

    assert used == set(STEP_VERSIONS)
    assert {"simulate", "ingest", "noise", "register", "train", "predict", "evaluate",
            "report"} <= set(STEP_VERSIONS)
    assert all(isinstance(v, int) and v >= 1 for v in STEP_VERSIONS.values())
