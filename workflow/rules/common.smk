# Helpers shared by all rules: config validation, the exposure table, input functions.

import json
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from astrodenoise.ingest import IngestConfig, discover_exposures
from astrodenoise.io import InputError
from astrodenoise.provenance import STEP_VERSIONS
from astrodenoise.simulate import SimulationConfig, exposure_names


validate(config, "../schemas/config.schema.yaml")

# Rules call the `astrodenoise` command of the Python that runs Snakemake, also when the
# user calls .venv/bin/snakemake without activating the virtual environment.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

SURVEY = config["survey"]
IS_DEMO = config["inputs"]["source"] == "demo"
SIM_DIR = f"results/simulate/{SURVEY}"


def _demo_exposures():
    fields = exposure_names(SimulationConfig.from_dict(config["simulate"]))
    return {
        name: {"path": f"{SIM_DIR}/raw/{name}.fits", "field": field}
        for field, names in fields.items()
        for name in names
    }


def _user_exposures():
    try:
        return discover_exposures(
            config["inputs"]["path"],
            sheet=config["inputs"]["exposure_sheet"],
            sidecars=IngestConfig.from_dict(config["ingest"]).sidecar_tokens(),
            grouping=config["inputs"]["grouping"],
            hdu=config["ingest"]["hdu"],
        )
    except InputError as err:
        raise WorkflowError(f"Bad input: {err}") from None


EXPOSURES = _demo_exposures() if IS_DEMO else _user_exposures()
FIELDS = sorted({e["field"] for e in EXPOSURES.values()})
METHODS = config["train"]["methods"]

FIELD_EXPOSURES = {}
for _name, _entry in sorted(EXPOSURES.items()):
    FIELD_EXPOSURES.setdefault(_entry["field"], []).append(_name)

if "n2n" in METHODS and all(len(names) < 2 for names in FIELD_EXPOSURES.values()):
    raise WorkflowError(
        "train.methods includes n2n (Noise2Noise), but no field has two or more exposures. "
        "Group exposures of one field with inputs.exposure_sheet, or set train.methods: [n2v]."
    )


wildcard_constraints:
    survey=r"[A-Za-z0-9_.-]+",
    # A character class, not an alternation of all exposure names: with 10,000 exposures
    # the alternation made every wildcard match slow and the DAG took minutes.
    exposure=r"[A-Za-z0-9_.-]+",
    field=r"[A-Za-z0-9_.-]+",
    method="|".join(METHODS),


def step_config(step, drop=()):
    """The config section of a step as compact JSON, for params: (so edits rerun the step)."""
    return json.dumps({k: v for k, v in config[step].items() if k not in drop}, sort_keys=True)


def field_exposures(field):
    """Exposures of one field, in a stable order (the first is the registration reference)."""
    return FIELD_EXPOSURES[field]


def get_field_images(wildcards):
    return [f"results/ingest/{wildcards.survey}/{e}.zarr" for e in field_exposures(wildcards.field)]


def registration_paths():
    return [f"results/register/{SURVEY}/{field}.json" for field in FIELDS]


def get_raw_fits(wildcards):
    return EXPOSURES[wildcards.exposure]["path"]


def exposure_paths(pattern, **extra):
    return [pattern.format(survey=SURVEY, exposure=e, **extra) for e in EXPOSURES]


def get_truth(wildcards):
    """Noise-free truth and catalogue of the exposure's field (demo survey only)."""
    if not IS_DEMO:
        return {}
    field = EXPOSURES[wildcards.exposure]["field"]
    return {
        "truth": f"{SIM_DIR}/truth/{field}.fits",
        "catalog": f"{SIM_DIR}/catalog/{field}.ecsv",
    }


def get_final_outputs():
    return [
        f"results/report/{SURVEY}/report.html",
        *[
            f"results/predict/{SURVEY}/{m}/{e}.fits"
            for m in METHODS
            for e in EXPOSURES
        ],
    ]
