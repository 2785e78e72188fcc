"""Benchmark: where injection-recovery and the truth agree, source by source, and where
their populations make them differ.

The evaluate step's injection-recovery (its defaults: point sources and Sersic galaxies,
half of them log-uniform in S/N over the faint class) and the truth-based photometry of
``benchmarks/quality.py`` both quote a median flux bias of "faint sources" (5 < S/N <
20). A median over a class is an average over its population: the truth's faint class
has the survey's own mix of S/N (steeply rising to the faint end), stars and galaxies
(sizes, profiles), the injection its own. This benchmark splits both into the same
cells - four logarithmic S/N bins of the faint class, point sources and galaxies apart
(the catalogue's ``type``; the injection's ``extended``) - on unseen fields of a survey
(``quality.write_unseen``: the generator with the next seed, no network has seen them),
for the input and each network, and sets them side by side:

- per cell: truth median (n) | injected median (n) | injected - truth (points);
- per class: the pooled median (what ``quality.py`` quotes, population-dependent), and
  the mean over the cells of equal weight (S/N bins; S/N bins x type): a standardised
  faint bias, the same population on both sides.

Agreement cell by cell with a difference in the pooled median says the injected
population, not the measurement, is what differs; a cell that disagrees says the
measurement does.

    .venv/bin/python benchmarks/injection_population.py --survey demo --fields 24
    .venv/bin/python benchmarks/injection_population.py --survey check --fields 6

Needs the survey's workflow run (its trained models under ``results/train/<survey>``).
Writes ``benchmarks/injection_population_<survey>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import quality
import yaml
from astropy.table import Table

from astrodenoise import io
from astrodenoise.photometry import APERTURES, FAINT_SNR
from astrodenoise.tiling import PredictConfig

#: Logarithmic S/N bins over the faint class.
BINS = 4


def measure(results: Path, survey: str, methods: list[str], config: PredictConfig) -> dict:
    """Per source, pooled over the unseen exposures: truth S/N, extended, flux ratio - 1 per
    method and aperture against the truth; and the same for the injected sources."""
    checkpoints = {m: io.load_checkpoint(results / "train" / survey / m / "model.pt") for m in methods}
    unseen = f"{survey}-unseen"
    sim = results / "simulate" / unseen
    truth, injected = (
        {"snr": [], "extended": [], "ratio": {m: {k: [] for k in APERTURES} for m in ["input", *methods]}}
        for _ in range(2))
    raws = sorted((sim / "raw").glob("*.fits"))
    for i, raw in enumerate(raws):
        start = time.perf_counter()
        field = raw.stem.rsplit("_", 1)[0]
        catalog = sim / "catalog" / f"{field}.ecsv"
        ctx = quality.exposure_context(raw, quality.noise_json(results, unseen, raw.stem),
                                       sim / "truth" / f"{field}.fits", catalog)
        denoisers = {"input": lambda d, c: d} | {
            m: (lambda d, c, ck=ck: quality.denoise_with_checkpoint(d, c["noise"], ck, config=config))
            for m, ck in checkpoints.items()}
        images = {name: fn(ctx["data"], ctx) for name, fn in denoisers.items()}
        truth["snr"].append(ctx["snr"])
        truth["extended"].append(np.asarray(Table.read(catalog, format="ascii.ecsv")["type"]) != "star")
        for name, image in images.items():
            measured = quality._apertures(image, ctx)
            for key in APERTURES:
                truth["ratio"][name][key].append(measured[key] / ctx["apertures"][key] - 1)
        block = quality.injection_recovery_of(raw, ctx, denoisers, images)
        injected["snr"].append(np.asarray(block["snr"], float))
        injected["extended"].append(np.asarray(block["extended"], bool))
        for name in images:
            for key in APERTURES:
                injected["ratio"][name][key].append(
                    np.asarray(block["methods"][name]["flux_ratio"][key], float))
        print(f"[{i + 1}/{len(raws)}] {raw.stem} {time.perf_counter() - start:.1f} s", flush=True)
    return {side: _pooled(values) for side, values in (("truth", truth), ("injected", injected))}


def _pooled(values: dict) -> dict:
    ratio = {m: {k: np.concatenate(v) for k, v in per.items()} for m, per in values["ratio"].items()}
    return {"snr": np.concatenate(values["snr"]), "extended": np.concatenate(values["extended"]),
            "ratio": ratio}


def _median(values: np.ndarray) -> tuple[float | None, int]:
    values = values[np.isfinite(values)]
    return (float(np.median(values)), int(len(values))) if len(values) else (None, 0)


def cells(side: dict, method: str, key: str) -> dict:
    """Median ratio - 1 (and n) per S/N bin x type of the faint class, the pooled median,
    and the standardised means (over S/N bins; over S/N bins x type)."""
    edges = np.geomspace(*FAINT_SNR, BINS + 1)
    snr, extended, ratio = side["snr"], side["extended"], side["ratio"][method][key]
    faint = (snr > FAINT_SNR[0]) & (snr < FAINT_SNR[1])
    index = np.digitize(snr, edges) - 1
    out = {"cells": [], "pooled": _median(ratio[faint])}
    per_bin = []
    for b in range(BINS):
        in_bin = faint & (index == b)
        per_bin.append(_median(ratio[in_bin])[0])
        for kind, pick in (("point", ~extended), ("extended", extended)):
            value, n = _median(ratio[in_bin & pick])
            out["cells"].append({"snr": [round(float(edges[b]), 2), round(float(edges[b + 1]), 2)],
                                 "type": kind, "bias": value, "n": n})
    typed = [c["bias"] for c in out["cells"]]
    out["standard_snr"] = float(np.mean(per_bin)) if None not in per_bin else None
    out["standard_snr_type"] = float(np.mean(typed)) if None not in typed else None
    return out


def compare(data: dict, methods: list[str]) -> dict:
    """{method: {aperture: {"truth": cells, "injected": cells}}}."""
    return {m: {key: {side: cells(data[side], m, key) for side in ("truth", "injected")} for key in APERTURES}
            for m in ["input", *methods]}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def _difference(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{100 * (b - a):+.1f}"


def markdown(comparison: dict, meta: dict) -> str:
    lines = [f"# Injection-recovery against the truth, cell by cell: {meta['survey']} "
             f"({meta['n_exposures']} unseen exposures)", "",
             "Definitions: module docstring of benchmarks/injection_population.py. "
             "Faint class 5 < S/N < 20; % flux bias: truth median (n) | injected median (n) | "
             "injected - truth (points).", ""]
    for method, per in comparison.items():
        lines += [f"## {method}", "", "| cell | " + " | ".join(APERTURES) + " |",
                  "|---|" + "---|" * len(APERTURES)]
        first = per[APERTURES[0]]["truth"]["cells"]
        for i, cell in enumerate(first):
            row = [f"S/N {cell['snr'][0]:g}-{cell['snr'][1]:g} {cell['type']}"]
            for key in APERTURES:
                t, j = per[key]["truth"]["cells"][i], per[key]["injected"]["cells"][i]
                row.append(f"{_pct(t['bias'])} ({t['n']}) \\| {_pct(j['bias'])} ({j['n']}) \\| "
                           f"{_difference(t['bias'], j['bias'])}")
            lines.append("| " + " | ".join(row) + " |")
        for label, stat in (("pooled median", "pooled"), ("standardised: S/N bins", "standard_snr"),
                            ("standardised: S/N bins x type", "standard_snr_type")):
            row = [f"**{label}**"]
            for key in APERTURES:
                t, j = per[key]["truth"][stat], per[key]["injected"][stat]
                t, j = (t[0], j[0]) if stat == "pooled" else (t, j)
                row.append(f"{_pct(t)} \\| {_pct(j)} \\| {_difference(t, j)}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=quality.REPO / "results")
    parser.add_argument("--survey", default="demo", choices=["demo", "check"])
    parser.add_argument("--fields", type=int, default=24, help="unseen fields to write and score")
    parser.add_argument("--methods", nargs="*", default=["n2n", "n2v"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or quality.REPO / "benchmarks" / f"injection_population_{args.survey}"
    predict = yaml.safe_load((quality.REPO / "config" / "config.yaml").read_text())["predict"]
    config = PredictConfig.from_dict(predict | {"precision": "float32"})
    quality.write_unseen(args.results, args.survey, n_fields=args.fields)
    data = measure(args.results, args.survey, args.methods, config)
    comparison = compare(data, args.methods)
    meta = {"survey": args.survey, "n_exposures": int(len(list(
        (args.results / "simulate" / f"{args.survey}-unseen" / "raw").glob("*.fits")))),
        "fields": args.fields, "methods": args.methods, "predict_config": config.__dict__}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "comparison": comparison}, indent=1) + "\n")
    table = markdown(comparison, meta)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
