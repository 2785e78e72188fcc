"""Benchmark: how injection-recovery measures an injected source, against the truth.

The evaluate step's injection-recovery (:mod:`astrodenoise.inject`) measures each
injected source on ``denoised(injected) - denoised(original)``, plus what the denoiser
adds to an empty aperture of blank sky (:func:`astrodenoise.inject.sky_offsets`). This benchmark injects
the same sources the same way into the exposures of a simulated survey (truth known) and
measures every source in every aperture of :data:`astrodenoise.photometry.APERTURES` in
several ways, so that a disagreement between the check without truth and the truth can
be traced to its cause:

- ``evaluate``: the evaluate step's way (:func:`astrodenoise.inject.recover` with the
  denoiser's empty-sky offsets);
- ``difference``: the difference image alone (the evaluate step's way until the offsets);
- ``own_sky``: ``F(denoised(injected)) - F(denoised(original))``, each image measured with
  its own local sky, over the model's flux;
- ``blank``: ``F(denoised(original)) - F(input)`` at the same positions, over the model's
  flux: what the denoiser changes in an aperture without the source (sub-threshold
  light it erases, a different skew of the local-sky annulus), which a difference
  image cancels and the truth does not;
- ``own_sky_blank``: ``own_sky + blank`` = ``F(denoised(injected)) - F(input)``, a
  no-truth estimate that includes it;
- ``truth``: ``F(denoised(injected))`` against ``F(truth + model)``: what the truth says
  of the same sources.

F is the aperture flux less the local sky, as :func:`astrodenoise.photometry.aperture_suite`
measures it (the input's source mask, Kron apertures defined on truth + model). Medians
in percent for bright (S/N > 50) and faint (5 < S/N < 20) injected sources, all, point
and extended. Models are the workflow's checkpoints; exposures are a survey's, e.g. the
unseen fields that ``benchmarks/quality.py`` writes:

    .venv/bin/python benchmarks/injection_methods.py --survey check-unseen --models check --limit 6

writes ``benchmarks/injection_methods_<survey>.{json,md}``. Findings so far are in the
docstring of ``benchmarks/quality.py`` and the closing notes of issue 15.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import quality
import yaml

from astrodenoise import io
from astrodenoise.baselines import DENOISERS
from astrodenoise.evaluate import EvaluateConfig
from astrodenoise.inject import (
    exposure_seed,
    inject,
    injection_sites,
    injection_stamps,
    plan_injection,
    recover,
    sky_offsets,
)
from astrodenoise.photometry import APERTURES, aperture_fluxes, aperture_snr, aperture_suite, snr_classes
from astrodenoise.psf import measure_psf
from astrodenoise.tiling import PredictConfig

REPO = Path(__file__).resolve().parents[1]
WAYS = ("evaluate", "difference", "own_sky", "blank", "own_sky_blank", "truth")


def exposure_rows(raw: Path, results: Path, survey: str,
                  methods: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per method and way, per aperture, the ratio - 1 of each injected source of one
    exposure; with the sources' true S/N and extended flags."""
    sim = raw.parents[1]
    field = raw.stem.rsplit("_", 1)[0]
    ctx = quality.exposure_context(raw, quality.noise_json(results, survey, raw.stem),
                                   sim / "truth" / f"{field}.fits", sim / "catalog" / f"{field}.ecsv")
    data, noise, background, mask = ctx["data"], ctx["noise"], ctx["background"], ctx["mask"]
    fwhm = ctx["fwhm"]
    bad = ~np.isfinite(data)
    psf = measure_psf(data, background, sigma=noise.sigma, bad=bad, fwhm_guess=fwhm)
    rng = np.random.default_rng(exposure_seed(raw.stem, EvaluateConfig().inject_seed))
    stamps = injection_stamps(psf, rng)
    plan = plan_injection(data.shape, mask, stamps, sigma=noise.sigma, zeropoint=0.0, radius=ctx["radius"],
                          count=EvaluateConfig().inject_count, rng=rng, nodata=bad)
    injected, model = inject(data, stamps, plan, gain=noise.gain, rng=rng)
    snr = aperture_snr(aperture_fluxes(model, plan["positions"], radius=ctx["radius"]), radius=ctx["radius"],
                       sigma=noise.sigma, gain=noise.gain)
    original = {m: fn(data, noise) for m, fn in methods.items()}
    with_sources = {m: fn(injected, noise) for m, fn in methods.items()}
    differences = {m: with_sources[m] - original[m] for m in methods}
    where = injection_sites(mask | bad, stamps.shape[1] // 2)
    offsets = sky_offsets({m: original[m] - data for m in methods}, where, fwhm=fwhm, select=data, mask=mask)
    shipped = recover(differences, model, plan, fwhm=fwhm, threshold=noise.sigma, select=injected, mask=mask,
                      offsets=offsets)
    difference = recover(differences, model, plan, fwhm=fwhm, threshold=noise.sigma, select=injected,
                         mask=mask)
    truth = ctx["truth"]
    kwargs = {"fwhm": fwhm, "kron_reference": truth + model - background, "threshold": noise.sigma,
              "select": injected, "background": background, "mask": mask}
    after = aperture_suite(with_sources | {"__truth": truth + model}, plan["positions"], **kwargs)
    before = aperture_suite(original | {"__truth": truth, "__input": data}, plan["positions"], **kwargs)
    rows = {m: {w: {} for w in WAYS} for m in methods}
    for m in methods:
        for a in APERTURES:
            flux = after["__truth"][a] - before["__truth"][a]  # the model's, measured as the rest
            own = (after[m][a] - before[m][a]) / flux - 1
            blank = (before[m][a] - before["__input"][a]) / flux
            rows[m]["evaluate"][a] = np.array([np.nan if v is None else v for v in shipped[m][a]])
            rows[m]["difference"][a] = np.array([np.nan if v is None else v for v in difference[m][a]])
            rows[m]["own_sky"][a], rows[m]["blank"][a], rows[m]["own_sky_blank"][a] = own, blank, own + blank
            rows[m]["truth"][a] = after[m][a] / after["__truth"][a] - 1
    return rows, snr, plan["stamp"] > 0


def summarise(per_exposure: list[tuple[dict, np.ndarray, np.ndarray]]) -> dict:
    """{method: {way: {class: {part: {aperture: median %}}}}} pooled over exposures."""
    snr = np.concatenate([e[1] for e in per_exposure])
    extended = np.concatenate([e[2] for e in per_exposure])
    out = {}
    for m in per_exposure[0][0]:
        out[m] = {}
        for way in WAYS:
            out[m][way] = {}
            for cls, pick in snr_classes(snr).items():
                out[m][way][cls] = {}
                for part, sel in (("all", pick), ("point", pick & ~extended), ("extended", pick & extended)):
                    values = {a: np.concatenate([e[0][m][way][a] for e in per_exposure])[sel]
                              for a in APERTURES}
                    out[m][way][cls][part] = {
                        a: None if not np.isfinite(v).any() else round(100 * float(np.nanmedian(v)), 2)
                        for a, v in values.items()} | {"n": int(sel.sum())}
    return out


def markdown(summary: dict, meta: dict) -> str:
    keys = list(APERTURES)
    lines = [f"# Injected sources measured six ways, against the truth: {meta['survey']} "
             f"({meta['n_exposures']} exposures, models of {meta['models']})", "",
             "Definitions: module docstring of benchmarks/injection_methods.py. "
             "Median % (1 / 2 / 3 × FWHM / Kron).", "",
             "| method | class | part | n | " + " | ".join(WAYS) + " |",
             "|---|---|---|---|" + "---|" * len(WAYS)]
    for m, ways in summary.items():
        for cls in ("bright", "faint"):
            for part in ("all", "point", "extended"):
                cells = [" / ".join("n/a" if (v := ways[w][cls][part][k]) is None else f"{v:+.1f}"
                                    for k in keys) for w in WAYS]
                n = ways[WAYS[0]][cls][part]["n"]
                lines.append(f"| {m} | {cls} | {part} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--survey", default="demo-unseen", help="a simulated survey under results/simulate")
    parser.add_argument("--models", default="demo", help="the survey whose results/train/<models>/ to use")
    parser.add_argument("--methods", nargs="*", default=["input", "bm3d", "n2n", "n2v"])
    parser.add_argument("--limit", type=int, default=0, help="the first N exposures only (0: all)")
    args = parser.parse_args(argv)
    predict = PredictConfig.from_dict(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["predict"]
                                      | {"precision": "float32"})
    methods = {"input": lambda d, n: d} | {b: (lambda d, n, b=b: DENOISERS[b](d, n)) for b in DENOISERS}
    for m in ("n2n", "n2v"):
        path = args.results / "train" / args.models / m / "model.pt"
        if path.exists():
            checkpoint = io.load_checkpoint(path)
            methods[m] = lambda d, n, ck=checkpoint: quality.denoise_with_checkpoint(d, n, ck, config=predict)
    methods = {m: fn for m, fn in methods.items() if m in args.methods}
    raws = sorted((args.results / "simulate" / args.survey / "raw").glob("*.fits"))[:args.limit or None]
    per_exposure = []
    for raw in raws:
        per_exposure.append(exposure_rows(raw, args.results, args.survey, methods))
        print(f"{raw.stem} done", flush=True)
    summary = summarise(per_exposure)
    meta = {"survey": args.survey, "models": args.models, "n_exposures": len(raws)}
    out = REPO / "benchmarks" / f"injection_methods_{args.survey}"
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))


if __name__ == "__main__":
    main()
