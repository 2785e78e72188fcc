"""Benchmark: how long Snakemake takes to build the DAG of a large survey (a dry run).

Builds the workflow's DAG for surveys of 1,000 and 10,000 exposures (demo source, 10
exposures per field, so nothing is read from disk) and times ``snakemake -n`` end to
end, parsing included. Writes ``benchmarks/results/dag.json`` and ``dag.md``.

    .venv/bin/python benchmarks/dag.py [--sizes 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def time_dry_run(n_exposures: int, per_field: int = 10) -> dict:
    """Seconds for ``snakemake -n`` on a demo survey of ``n_exposures`` exposures."""
    with tempfile.TemporaryDirectory() as tmp:
        config = {"survey": "bench", "simulate": {"n_fields": n_exposures // per_field,
                                                  "n_exposures": per_field}}
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", tmp,
               "--configfile", str(Path(tmp) / "config.yaml"), "-n", "--quiet", "all", "--cores", "2"]
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return {"exposures": n_exposures, "fields": n_exposures // per_field, "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000])
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        rows.append(time_dry_run(size))
        print(rows[-1], flush=True)
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dag.json").write_text(json.dumps(rows, indent=2))
    lines = ["| exposures | fields | dry run (s) |", "|---:|---:|---:|"]
    lines += [f"| {r['exposures']} | {r['fields']} | {r['seconds']} |" for r in rows]
    (out / "dag.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
