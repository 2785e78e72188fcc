"""Benchmark: the evaluation without a truth against the evaluation with one, same run.

On real data the report has no truth: each exposure is measured against the other
exposures of its field (:mod:`astrodenoise.reference`). This benchmark runs the evaluate
step twice on every field of a simulated survey whose truth is known, from the workflow's
own outputs (ingested exposures, noise, registration, denoised images) and with the
config's evaluate settings (baselines included; injection-recovery off, it is the
subject of benchmarks/quality.py): once against the truth and its catalogue, once as if
there were none. It writes, per survey, ``benchmarks/no_truth_<survey>.json`` and
``.md``:

- per method, the PSNR against the truth and the no-truth estimate (mean over
  exposures, ± its standard error, or a lower bound where the error is below what the
  other exposures resolve), all pixels and without cosmic-ray pixels, and whether the
  methods rank the same;
- per method, aperture and class, the flux bias against the truth and without it (mean
  over exposures of the per-exposure median, ± standard error), and their difference;
- the reference's self-tests: the input's clean bias against the stack, its estimated
  clean PSNR against its noise model's prediction, the share of pixels rejected;
- the number of faint sources (5 < S/N < 20 at 2 x FWHM) the reference finds beside the
  truth catalogue's;
- the evaluate step's wall time per exposure, with and without truth.

    .venv/bin/snakemake --cores 2                                   # the demo workflow
    .venv/bin/python benchmarks/no_truth.py                         # -> no_truth_demo.*
    .venv/bin/python benchmarks/check_survey.py && \\
        .venv/bin/snakemake --cores 2 --configfile config/check.yaml
    .venv/bin/python benchmarks/no_truth.py --survey check          # -> no_truth_check.*
    .venv/bin/snakemake --cores 2 --configfile config/demo-wide.yaml --until predict
    .venv/bin/python benchmarks/no_truth.py --survey demo-wide      # 24 demo exposures

The demo's 6 exposures leave standard errors of 1.5-2.5 points on the faint cells;
``config/demo-wide.yaml`` (the demo generator, 8 fields of another seed) brings them near 1.

``--pool`` combines the tables already written, evaluating nothing: per method, aperture
and class, the mean of the surveys' no-truth-minus-truth differences weighted by their
inverse variance, and its standard error. A systematic error of the no-truth evaluation
is the same on every survey and survives the pooling; what the small surveys' noise makes
of a cell does not. Pool independent fields only (``check-nocr`` is ``check`` without its
cosmic rays: the same fields).

    .venv/bin/python benchmarks/no_truth.py --pool demo check demo-wide check-wide
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import yaml
from tables import write_tables

from astrodenoise import io
from astrodenoise.evaluate import EvaluateConfig, evaluate_field
from astrodenoise.photometry import APERTURES, bias_se
from astrodenoise.provenance import code_version

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("bright", "faint")


def field_inputs(results: Path, survey: str, field: str) -> dict:
    """The workflow's outputs for one field: stores, noise JSONs, registration, truth."""
    registration = results / "register" / survey / f"{field}.json"
    names = [e["exposure"] for e in io.read_json(registration)["exposures"]]
    # A survey read as a user's files names a field after its reference exposure; the
    # simulators name the truth after the field, the exposure's name less "_eNN".
    sky = names[0].rsplit("_", 1)[0]
    stores = [str(results / "ingest" / survey / n / f"{n}.zarr") for n in names]
    noise = [str(results / "noise" / survey / n / f"{n}.json") for n in names]
    methods = sorted(p.name for p in (results / "predict" / survey).iterdir() if p.is_dir())
    return {
        "names": names,
        "stores": stores,
        "noise": noise,
        "registration": str(registration),
        "denoised": {m: str(results / "predict" / survey / m) for m in methods},
        "truth": str(results / "simulate" / survey / "truth" / f"{sky}.fits"),
        "catalog": str(results / "simulate" / survey / "catalog" / f"{sky}.ecsv"),
    }


def run_field(inputs: dict, config: EvaluateConfig, out: Path) -> tuple[list[dict], list[dict], dict]:
    """(truth-based results, no-truth results, seconds of each) of one field."""
    ways = {
        "truth": {"truth_fits": inputs["truth"], "catalog": inputs["catalog"]},
        "no_truth": {"registration": inputs["registration"]},
    }
    results, seconds = {}, {}
    for way, reference in ways.items():
        start = time.perf_counter()
        results[way] = evaluate_field(inputs["stores"], inputs["noise"], inputs["denoised"],
                                      out_dir=str(out / way), config=config, **reference)
        seconds[way] = time.perf_counter() - start
    return results["truth"], results["no_truth"], seconds


def _mean_se(values: list[float], errors: list[float | None]) -> tuple[float | None, float | None]:
    if any(v is None for v in values):
        return None, None
    se = np.sqrt(np.sum(np.square(errors))) / len(errors) if all(e is not None for e in errors) else None
    return float(np.mean(values)), None if se is None else float(se)


def psnr_rows(pairs: list[tuple[dict, dict]], methods: list[str]) -> dict:
    """Per method and PSNR kind: true mean, estimated mean ± SE or the mean lower bound."""
    out = {}
    for method in methods:
        row = out[method] = {}
        for key in ("psnr", "psnr_clean"):
            true = [t["scores"][method][key] for t, _ in pairs]
            est = [n["scores"][method] for _, n in pairs]
            mean, se = _mean_se([s[key] for s in est], [s.get(f"{key}_se") for s in est])
            lower = [s.get(f"{key}_lower") for s in est]
            row[key] = {
                "true": float(np.mean(true)),
                "estimated": mean,
                "se": se,
                "lower": float(np.mean(lower)) if all(v is not None for v in lower) else None,
            }
    return out


def _pooled(cells: list[dict]) -> tuple[float | None, float | None, int]:
    """Mean over exposures of the median bias, its standard error, the sources counted."""
    cells = [c for c in cells if c["bias"] is not None]
    if not cells:
        return None, None, 0
    se = [np.nan if bias_se(c) is None else bias_se(c) for c in cells]
    return (
        float(np.mean([c["bias"] for c in cells])),
        float(np.sqrt(np.nansum(np.square(se))) / len(cells)),
        int(sum(c["n"] for c in cells)),
    )


def bias_rows(pairs: list[tuple[dict, dict]], methods: list[str]) -> dict:
    """Per method, aperture and class: truth-based and no-truth bias (pooled), difference."""
    out = {}
    for method in methods:
        out[method] = {}
        for aperture in APERTURES:
            for cls in CLASSES:
                true, true_se, true_n = _pooled(
                    [t["scores"][method]["photometry_apertures"][aperture][cls] for t, _ in pairs]
                )
                est, est_se, est_n = _pooled(
                    [n["scores"][method]["photometry_apertures"][aperture][cls] for _, n in pairs]
                )
                out[method][f"{cls} {aperture}"] = {
                    "true": true,
                    "true_se": true_se,
                    "true_n": true_n,
                    "estimated": est,
                    "se": est_se,
                    "n": est_n,
                    "difference": None if true is None or est is None else est - true,
                }
    return out


#: What the issue asks of every method: its no-truth flux bias within this of the truth's.
AGREEMENT = 0.015


def agreement(bias: dict) -> dict:
    """How the no-truth biases agree with the truth's over every method, aperture and class:
    the cells within :data:`AGREEMENT`, and those beyond it by more than two standard errors
    of the no-truth figure (which carries the reference's noise and the target's, so bounds
    the error of the difference): the disagreements the statistics resolve."""
    cells = [(m, k, c) for m, row in bias.items() for k, c in row.items() if c["difference"] is not None]
    within = [f"{m} {k}" for m, k, c in cells if abs(c["difference"]) <= AGREEMENT]
    beyond = [f"{m} {k} ({100 * c['difference']:+.1f} ± {100 * c['se']:.1f})" for m, k, c in cells
              if c["se"] is not None and abs(c["difference"]) - 2 * c["se"] > AGREEMENT]
    return {"cells": len(cells), "within": len(within), "resolved_beyond": beyond}


def pool(summaries: dict[str, dict]) -> dict:
    """The surveys' differences (no truth - truth) per method and cell, their mean
    weighted by inverse variance (``se`` of each survey's no-truth figure) and its
    standard error, and :func:`agreement` of the pooled cells."""
    first = next(iter(summaries.values()))["bias"]
    bias = {}
    for method, row in first.items():
        bias[method] = {}
        for key in row:
            each = {n: s["bias"][method][key] for n, s in summaries.items()}
            cells = [c for c in each.values() if c["difference"] is not None and c["se"]]
            weights = np.array([1 / c["se"] ** 2 for c in cells])
            differences = np.array([c["difference"] for c in cells])
            bias[method][key] = {
                "difference": float(np.sum(weights * differences) / weights.sum()) if cells else None,
                "se": float(weights.sum() ** -0.5) if cells else None,
                "surveys": {n: c["difference"] for n, c in each.items()}}
    return {"surveys": {n: s["meta"]["n_exposures"] for n, s in summaries.items()}, "bias": bias,
            "agreement": agreement(bias)}


def pooled_markdown(pooled: dict) -> str:
    names = list(pooled["surveys"])
    keys = [f"{cls} {a}" for cls in CLASSES for a in APERTURES]
    lines = [
        "# The evaluation without a truth against the truth, pooled over surveys",
        "",
        "Definitions: module docstring of benchmarks/no_truth.py (`--pool`). Surveys (exposures): "
        + ", ".join(f"{n} ({k})" for n, k in pooled["surveys"].items()) + ".",
        "",
        "## No-truth minus truth, points: " + " / ".join(names) + " | pooled ± SE",
        "",
        "| method | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for method, row in pooled["bias"].items():
        cells = []
        for k in keys:
            c = row[k]
            each = " / ".join("n/a" if v is None else f"{100 * v:+.1f}" for v in c["surveys"].values())
            cells.append(f"{each} \\| {_pct(c['difference'], c['se'])}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    agreed = pooled["agreement"]
    lines += [
        "",
        f"Pooled, within {100 * AGREEMENT:g} points of the truth: {agreed['within']} of {agreed['cells']} "
        "cells. Beyond it by more than two standard errors: "
        f"{'; '.join(agreed['resolved_beyond']) or 'none'}.",
        "",
    ]
    return "\n".join(lines)


def reference_rows(pairs: list[tuple[dict, dict]]) -> dict:
    """The self-tests of the references, pooled over exposures."""
    checks = [n["reference_check"] for _, n in pairs]
    clean = {}
    for aperture in APERTURES:
        for cls in CLASSES:
            cells = [n["scores"]["input"]["photometry_apertures_clean"][aperture][cls] for _, n in pairs]
            clean[f"{cls} {aperture}"] = dict(zip(("bias", "se", "n"), _pooled(cells), strict=True))
    faint = {"true": 0, "reference": 0}
    for t, n in pairs:
        faint["true"] += t["scores"]["input"]["photometry_apertures"]["2fwhm"]["faint"]["n"]
        faint["reference"] += n["scores"]["input"]["photometry_apertures"]["2fwhm"]["faint"]["n"]
    return {
        "usable": sum(c["usable"] for c in checks),
        "n_exposures": len(checks),
        "why": [w for c in checks for w in c["why"]],
        "input_psnr_clean": float(np.mean([c["psnr_estimated"] for c in checks])),
        "input_psnr_expected": float(np.mean([c["psnr_expected"] for c in checks])),
        "rejected": float(np.mean([n["reference_rejected"] for _, n in pairs])),
        "input_clean_bias": clean,
        "faint_sources": faint,
    }


def _pct(value, se=None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:+.2f}" + (f" ± {100 * se:.2f}" if se is not None else "")


def _psnr_cell(cell: dict) -> str:
    if cell["estimated"] is not None:
        est = (
            f"{cell['estimated']:.2f} ± {cell['se']:.2f}"
            if cell["se"] is not None
            else f"{cell['estimated']:.2f}"
        )
        return f"{cell['true']:.2f} | {est} | {cell['estimated'] - cell['true']:+.2f}"
    lower = f"≥ {cell['lower']:.2f}" if cell["lower"] is not None else "n/a"
    holds = (
        "bound holds" if cell["lower"] is not None and cell["lower"] <= cell["true"] + 0.5 else "bound FAILS"
    )
    return f"{cell['true']:.2f} | {lower} | {holds}"


def markdown(summary: dict) -> str:
    ref, meta = summary["reference"], summary["meta"]
    lines = [
        f"# The evaluation without a truth against the truth: {meta['survey']} survey "
        f"({meta['n_exposures']} exposures, {meta['n_fields']} fields)",
        "",
        "Definitions: module docstring of benchmarks/no_truth.py. Config: the evaluate block of "
        f"{meta['config_file']} (injection off); code {meta['code_version']}.",
        "",
        "## PSNR (dB): against the truth, estimated without it, and their difference",
        "",
        "A lower bound (≥) where the method's error is below what the other exposures resolve.",
        "",
        "| method | PSNR true | estimated | difference | w/o cosmic rays: true | estimated | difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, row in summary["psnr"].items():
        lines.append(f"| {method} | {_psnr_cell(row['psnr'])} | {_psnr_cell(row['psnr_clean'])} |")
    lines += [
        "",
        "Ranking of the methods by PSNR without cosmic rays (those with an estimate) the same with and "
        f"without truth: {summary['same_ranking']}.",
        "",
        "## Flux bias %: against the truth | without it ± SE | difference (points)",
        "",
    ]
    keys = [f"{cls} {a}" for cls in CLASSES for a in APERTURES]
    lines += ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for method, row in summary["bias"].items():
        cells = [
            f"{_pct(row[k]['true'])} \\| {_pct(row[k]['estimated'], row[k]['se'])} \\| "
            f"{_pct(row[k]['difference'])}"
            for k in keys
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    agreed = summary["agreement"]
    lines += [
        "",
        f"Within {100 * AGREEMENT:g} points of the truth: {agreed['within']} of {agreed['cells']} cells. "
        f"Beyond it by more than two standard errors: {'; '.join(agreed['resolved_beyond']) or 'none'}.",
        "",
        "## The reference's self-tests",
        "",
        f"- usable in {ref['usable']} of {ref['n_exposures']} exposures"
        + (f"; failures: {'; '.join(ref['why'])}" if ref["why"] else ""),
        f"- input's clean PSNR estimated {ref['input_psnr_clean']:.2f} dB, its noise model predicts "
        f"{ref['input_psnr_expected']:.2f} dB",
        f"- pixels rejected as cosmic rays or hot pixels: {100 * ref['rejected']:.3f}%",
        f"- faint sources (5 < S/N < 20, 2×FWHM): {ref['faint_sources']['reference']} found on the "
        f"references, {ref['faint_sources']['true']} in the truth catalogue",
        "- input's bias against the reference, its own cosmic rays filled (%): "
        + ", ".join(f"{k} {_pct(v['bias'], v['se'])}" for k, v in ref["input_clean_bias"].items()),
        "",
        f"Evaluate wall time per exposure: {summary['seconds']['truth']:.1f} s with truth, "
        f"{summary['seconds']['no_truth']:.1f} s without (leave-one-out stack included; "
        f"1-min load {meta['load_1min']:.1f} on this machine at the end).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--survey", default="demo")
    parser.add_argument(
        "--out", type=Path, default=None, help="output stem (default benchmarks/no_truth_<survey>)"
    )
    parser.add_argument("--from-json", action="store_true",
                        help="rewrite the .md and agreement from the .json, evaluating nothing")
    parser.add_argument("--pool", nargs="+", metavar="SURVEY", default=None,
                        help="pool the written no_truth_<survey>.json of independent surveys into "
                             "no_truth_pooled.*, evaluating nothing")
    args = parser.parse_args(argv)
    if args.pool:
        pooled = pool({n: io.read_json(REPO / "benchmarks" / f"no_truth_{n}.json") for n in args.pool})
        stem = args.out or REPO / "benchmarks" / "no_truth_pooled"
        write_tables(stem, pooled, pooled_markdown(pooled))
        return
    stem = args.out or REPO / "benchmarks" / f"no_truth_{args.survey}"
    if args.from_json:
        summary = io.read_json(f"{stem}.json")
        _write(summary | {"agreement": agreement(summary["bias"])}, stem)
        return
    config_file = REPO / "config" / "config.yaml"
    settings = yaml.safe_load(config_file.read_text())["evaluate"]
    config = dataclasses.replace(EvaluateConfig.from_dict(settings), inject_count=0)
    fields = sorted(p.stem for p in (args.results / "register" / args.survey).glob("*.json"))
    pairs, seconds, work = (
        [],
        {"truth": 0.0, "no_truth": 0.0},
        args.results / "benchmark_no_truth" / args.survey,
    )
    for field in fields:
        inputs = field_inputs(args.results, args.survey, field)
        with_truth, without, took = run_field(inputs, config, work / field)
        pairs += list(zip(with_truth, without, strict=True))
        seconds = {k: seconds[k] + took[k] for k in seconds}
        print(
            f"{field}: {len(with_truth)} exposures, {took['truth']:.0f} s with truth, "
            f"{took['no_truth']:.0f} s without",
            flush=True,
        )
    methods = list(pairs[0][0]["scores"])
    psnr = psnr_rows(pairs, methods)
    estimated = [m for m in methods if psnr[m]["psnr_clean"]["estimated"] is not None]
    true_order = sorted(estimated, key=lambda m: psnr[m]["psnr_clean"]["true"])
    est_order = sorted(estimated, key=lambda m: psnr[m]["psnr_clean"]["estimated"])
    summary = {
        "meta": {
            "survey": args.survey,
            "n_exposures": len(pairs),
            "n_fields": len(fields),
            "config_file": str(config_file.relative_to(REPO)),
            "config": dataclasses.asdict(config),
            "code_version": code_version(),
            "load_1min": os.getloadavg()[0],
        },
        "psnr": psnr,
        "same_ranking": true_order == est_order,
        "bias": bias_rows(pairs, methods),
        "reference": reference_rows(pairs),
        "seconds": {k: v / len(pairs) for k, v in seconds.items()},
    }
    summary["agreement"] = agreement(summary["bias"])
    _write(summary, stem)


def _write(summary: dict, stem: Path) -> None:
    write_tables(stem, summary, markdown(summary))


if __name__ == "__main__":
    main()
