# Helpers shared by all rules: config validation, the exposure table, input functions.

import json
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from astrodenoise.ingest import IngestConfig, batch_exposures, batch_size, discover_exposures
from astrodenoise.io import InputError
from astrodenoise.provenance import STEP_VERSIONS
from astrodenoise.simulate import SimulationConfig, exposure_names


def _check_moved_settings():
    """Name the settings that moved, before the schema's bare 'additional property' error."""
    moved = {("predict", key): f"execution.predict.{key}" for key in ("tile", "workers", "device", "scheduler")}
    moved[("train", "correlation_limit")] = "noise.correlation_limit"
    found = [f"{section}.{key} is now {new}" for (section, key), new in moved.items()
             if key in (config.get(section) or {})]
    if found:
        raise WorkflowError("Config settings have moved: " + "; ".join(found) + ". Move them in your "
                            "config file (config/config.yaml shows the layout).")


_check_moved_settings()
validate(config, "../schemas/config.schema.yaml")

# Rules run `python -m astrodenoise`: without --use-conda the Python that runs Snakemake
# (first on PATH, also when the user calls .venv/bin/snakemake without activating the
# virtual environment); with --use-conda the step's environment from envs/, which holds
# the step's dependencies but not this package: its source comes from PYTHONPATH.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [os.path.join(workflow.basedir, "src"), os.environ.get("PYTHONPATH")])
)

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


# Ingest and noise run one batch of exposures a job (see inputs.batch_size).
BATCHES = batch_exposures(list(EXPOSURES), batch_size(len(EXPOSURES), config["inputs"]["batch_size"]))
BATCH_OF = {name: batch for batch, names in BATCHES.items() for name in names}
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
    # Not "_survey": results/noise/{survey}/_survey holds the survey fit.
    batch=r"(?!_survey/)[A-Za-z0-9_.-]+",
    field=r"[A-Za-z0-9_.-]+",
    method="|".join(METHODS),
    name="exposures|evaluations",


def step_config(step, drop=()):
    """The config section of a step as compact JSON, for params: (so edits rerun the step)."""
    return json.dumps({k: v for k, v in config[step].items() if k not in drop}, sort_keys=True)


# How steps run (tile size, workers, device, scheduler) as JSON, used in shell commands as
# {EXECUTION[predict]}: not a params entry, so changing it reruns nothing (Snakemake
# compares a rule's shell command before formatting, and its params).
EXECUTION = {step: json.dumps(values, sort_keys=True) for step, values in config["execution"].items()}


def field_exposures(field):
    """Exposures of one field, in a stable order (the first is the registration reference)."""
    return FIELD_EXPOSURES[field]


def ingest_path(exposure):
    """The zarr store of an exposure, inside its ingest batch directory."""
    return f"results/ingest/{SURVEY}/{BATCH_OF[exposure]}/{exposure}.zarr"


def noise_path(exposure):
    """The noise JSON of an exposure, inside its noise batch directory."""
    return f"results/noise/{SURVEY}/{BATCH_OF[exposure]}/{exposure}.json"


def batch_dirs(step, exposures):
    """The batch directories of ``step`` (ingest or noise) that hold these exposures."""
    return sorted({f"results/{step}/{SURVEY}/{BATCH_OF[e]}" for e in exposures})


def get_batch_raw(wildcards):
    return [EXPOSURES[e]["path"] for e in BATCHES[wildcards.batch]]


def get_batch_stores(wildcards):
    return [ingest_path(e) for e in BATCHES[wildcards.batch]]


def get_field_batches(wildcards):
    return batch_dirs("ingest", field_exposures(wildcards.field))


def get_field_images(wildcards):
    return [ingest_path(e) for e in field_exposures(wildcards.field)]


def get_exposure_batches(wildcards):
    """Ingest and noise batch directories of one exposure (inputs of predict, evaluate)."""
    batch = BATCH_OF[wildcards.exposure]
    return {"image": f"results/ingest/{SURVEY}/{batch}", "noise": f"results/noise/{SURVEY}/{batch}"}


def registration_paths():
    return [f"results/register/{SURVEY}/{field}.json" for field in FIELDS]


def get_raw_fits(wildcards):
    return EXPOSURES[wildcards.exposure]["path"]


def _argument_lists():
    """Long per-exposure argument lists of the survey-wide steps, by list name.

    They reach the `astrodenoise` command as an "@FILE" argument file (rule
    argument_list): 10,000 exposures make a command line of about 1 MB, and one shell
    word may not exceed 128 KiB. The survey-wide rules name these files as input instead
    of every exposure's output, so that the DAG stays linear in the number of exposures.
    """
    noise = [noise_path(e) for e in EXPOSURES]
    return {
        "exposures": [
            "--images", *[ingest_path(e) for e in EXPOSURES],
            "--noise", *noise,
            "--fields", *[e["field"] for e in EXPOSURES.values()],
            "--registrations", *registration_paths(),
        ],
        "evaluations": [
            "--evaluations", *[evaluation_path(e) for e in EXPOSURES],
            "--figures", *[evaluation_path(e, ".png") for e in EXPOSURES],
            "--noise", *noise,
        ],
    }



def write_argument_file(path, arguments):
    """Write one argument a line, atomically (the format of argparse's "@FILE")."""
    from astrodenoise.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{a}\n" for a in arguments))


def evaluation_path(exposure, suffix=".json"):
    """The metrics JSON (or figure) of an exposure, in its field's evaluate directory."""
    return f"results/evaluate/{SURVEY}/{EXPOSURES[exposure]['field']}/{exposure}{suffix}"


def get_field_denoised(wildcards):
    return [
        f"results/predict/{wildcards.survey}/{m}/{e}.zarr"
        for e in field_exposures(wildcards.field)
        for m in METHODS
    ]


def get_truth(wildcards):
    """Noise-free truth and catalogue of the field (demo survey only)."""
    if not IS_DEMO:
        return {}
    field = wildcards.field
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


ARGUMENT_LISTS = _argument_lists()
