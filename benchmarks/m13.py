"""Benchmark: the real M13 frames as the default workflow evaluates them (issue "Real frames").

Reads the evaluate step's JSONs of ``config/m13.yaml`` (M13 frames 1-4 of the shared
real-data folder, each scored against the leave-one-out stack of the other three and by
injection-recovery) and writes, per image kind, the figures the issue's done-when names:

- blank-sky noise ratio (input / image), mean over frames;
- flux bias against the leave-one-out stack, faint (5 < S/N < 20) and bright (S/N > 50),
  at 1, 2, 3 x FWHM and Kron, mean over frames, ± its standard error (each frame's from
  the scatter of its sources, :func:`astrodenoise.photometry.bias_se`);
- injection-recovery: median flux bias of the injected bright and faint sources, pooled
  over frames (:func:`astrodenoise.inject.summarise_recovery`), per aperture, ± its
  bootstrap standard error;
- detections that match no source of the reference catalogue, summed over frames;
- the repair pass against the other exposures (networks; :func:`astrodenoise.metrics.repair_check`);

and per frame its PSF (measured or the fallback, and how) and the reference's self-test.

    .venv/bin/snakemake --cores 2 --configfile config/m13.yaml
    .venv/bin/python benchmarks/m13.py          # -> benchmarks/m13.{json,md}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tables import write_tables

from astrodenoise import io
from astrodenoise.inject import summarise_recovery
from astrodenoise.photometry import APERTURES, bias_se

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("bright", "faint")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def collect(evaluations: list[dict]) -> dict:
    """Per image kind and per frame, the figures of the module docstring."""
    kinds = list(evaluations[0]["scores"])
    injections = [e["injection"] for e in evaluations if e.get("injection")]
    rows = {}
    for kind in kinds:
        scores = [e["scores"][kind] for e in evaluations if kind in e["scores"]]
        row = {"rms_ratio": _mean(s.get("rms_ratio") for s in scores),
               "unmatched": sum(s.get("detection", {}).get("n_false") or 0 for s in scores)}
        for cls in CLASSES:
            cells = [s.get("photometry_apertures", {}) for s in scores]
            row[f"stack_{cls}"] = {k: _mean(c.get(k, {}).get(cls, {}).get("bias") for c in cells)
                                   for k in APERTURES}
            row[f"stack_{cls}_se"] = {k: _pooled_se([c.get(k, {}).get(cls, {}) for c in cells])
                                      for k in APERTURES}
        injected = summarise_recovery(injections, kind) if injections else None
        for cls in CLASSES:
            for key, part in ((f"injected_{cls}", "bias"), (f"injected_{cls}_se", "se")):
                row[key] = {k: injected["apertures"][k].get(f"{cls}_{part}") if injected else None
                            for k in APERTURES}
        checks = [s["repair_check"] for s in scores if s.get("repair_check")]
        row["repair"] = {key: sum(c[key] for c in checks) for key in checks[0]} if checks else None
        rows[kind] = row
    frames = [{"exposure": e["exposure"], "psf": e["psf"]["method"], "fwhm": e["fwhm"],
               "reference_usable": (e.get("reference_check") or {}).get("usable"),
               "why": (e.get("reference_check") or {}).get("why", [])} for e in evaluations]
    return {"kinds": rows, "frames": frames, "code_version": evaluations[0].get("code_version")}


def _pooled_se(cells: list[dict]) -> float | None:
    """Standard error of the mean over frames of their median biases (each
    :func:`astrodenoise.photometry.bias_se`)."""
    kept = [c for c in cells if c.get("bias") is not None and np.isfinite(c["bias"])]  # as _mean
    errors = [bias_se(c) for c in kept]
    if not kept or any(e is None for e in errors):
        return None
    return float(np.sqrt(np.sum(np.square(errors))) / len(kept))


def _pcts(cells: dict, errors: dict | None = None) -> str:
    def one(k):
        if cells[k] is None:
            return "n/a"
        se = (errors or {}).get(k)
        return f"{100 * cells[k]:+.1f}" + ("" if se is None else f" ± {100 * se:.1f}")
    return " / ".join(one(k) for k in APERTURES)


def markdown(result: dict) -> str:
    lines = [
        "# M13 frames 1-4: the default workflow's figures (config/m13.yaml)",
        "",
        f"Definitions: module docstring of benchmarks/m13.py. Code {result['code_version']}. Apertures "
        "1 / 2 / 3 x FWHM / Kron; % flux bias.",
        "",
        "| image | noise ratio | faint vs stack | bright vs stack | injected faint | injected bright "
        "| detections not in the reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in result["kinds"].items():
        ratio = "n/a" if row["rms_ratio"] is None else f"{row['rms_ratio']:.1f}"
        lines.append(f"| {kind} | {ratio} | {_pcts(row['stack_faint'], row['stack_faint_se'])} "
                     f"| {_pcts(row['stack_bright'], row['stack_bright_se'])} "
                     f"| {_pcts(row['injected_faint'], row['injected_faint_se'])} "
                     f"| {_pcts(row['injected_bright'], row['injected_bright_se'])} "
                     f"| {row['unmatched']} |")
    lines += ["", "## The repair pass against the other exposures", "",
              "| network | filled pixels | groups | confirmed | unconfirmed pixels "
              "| unconfirmed within 2 x FWHM of a source |", "|---|---|---|---|---|---|"]
    for kind, row in result["kinds"].items():
        r = row["repair"]
        if r:
            lines.append(f"| {kind} | {r['pixels']} | {r['groups']} | {r['confirmed']} | "
                         f"{r['unconfirmed_pixels']} | {r['unconfirmed_near_sources']} |")
    lines += ["", "## Frames", "", "| frame | PSF | FWHM px | reference usable |", "|---|---|---|---|"]
    for f in result["frames"]:
        usable = "yes" if f["reference_usable"] else f"no: {'; '.join(f['why'])}"
        lines.append(f"| {f['exposure']} | {f['psf']} | {f['fwhm']:.2f} | {usable} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "m13")
    args = parser.parse_args(argv)
    files = sorted((args.results / "evaluate" / "m13").glob("*/*.json"))
    if not files:
        sys.exit("no evaluations under results/evaluate/m13: run the workflow with config/m13.yaml first "
                 "(it needs the M13 frames in ../shared/data/real)")
    result = collect([io.read_json(f) for f in files])
    write_tables(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
