"""Benchmark: how long Snakemake takes to plan a large survey (a dry run).

Times ``snakemake -n`` end to end (start-up, parsing and DAG included) for surveys of
1,000 and 10,000 exposures, 10 exposures a field, in two set-ups:

- ``fits``: the user's own FITS files listed in an exposure sheet, the way a survey team
  runs it (tiny placeholder FITS files; only the sheet is read while planning);
- ``demo``: the built-in demo survey, whose single ``simulate`` job writes every exposure.

Writes ``benchmarks/results/dag.json`` and ``dag.md`` with the job counts per rule.

    .venv/bin/python benchmarks/dag.py [--sizes 1000 10000] [--sources fits demo]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PER_FIELD = 10


def _fits_survey(workdir: Path, n_exposures: int) -> dict:
    raw = workdir / "raw"
    raw.mkdir()
    rows = ["path,field"]
    for i in range(n_exposures):
        name = f"raw/exp{i:05d}.fits"
        fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(workdir / name)
        rows.append(f"{name},field{i // PER_FIELD:04d}")
    (workdir / "sheet.csv").write_text("\n".join(rows) + "\n")
    return {"inputs": {"source": "fits", "exposure_sheet": "sheet.csv"}}


def _demo_survey(n_exposures: int) -> dict:
    return {"simulate": {"n_fields": n_exposures // PER_FIELD, "n_exposures": PER_FIELD}}


def _job_counts(text: str) -> dict[str, int]:
    table = text.split("Job stats:")[1].split("total")[0]
    counts = {p[0]: int(p[1]) for p in map(str.split, table.splitlines()) if len(p) == 2 and p[1].isdigit()}
    return counts | {"total": sum(counts.values())}


def time_dry_run(n_exposures: int, source: str) -> dict:
    """Seconds (wall and CPU) of ``snakemake -n`` for a survey of ``n_exposures``."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = {"survey": "bench"} | (_fits_survey(workdir, n_exposures) if source == "fits"
                                        else _demo_survey(n_exposures))
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "-n", "--quiet", "rules", "--cores", "2"]
        before = os.times()
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        after = os.times()
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"source": source, "exposures": n_exposures, "fields": n_exposures // PER_FIELD,
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "jobs": _job_counts(result.stdout + result.stderr), "load_average": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--sources", nargs="+", default=["fits", "demo"], choices=["fits", "demo"])
    args = parser.parse_args()
    rows = []
    for source in args.sources:
        for size in args.sizes:
            rows.append(time_dry_run(size, source))
            print(rows[-1], flush=True)
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dag.json").write_text(json.dumps(rows, indent=2))
    lines = ["| source | exposures | fields | jobs | dry run wall (s) | CPU (s) | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['source']} | {r['exposures']} | {r['fields']} | {r['jobs']['total']} | {r['seconds']}"
              f" | {r['cpu_seconds']} | {r['load_average']:.1f} |" for r in rows]
    (out / "dag.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
