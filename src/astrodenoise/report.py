"""Report: one self-contained HTML page per survey (figures embedded, no external files).

The overview answers two questions at a glance: does each network beat the best
classical denoiser, and does any photometric bias exceed 1%? Below it: the key numbers
of every image kind (input, Gaussian, non-local means, BM3D, the networks), photometry
and completeness against magnitude, normalised residuals and noise power spectra,
per-field pages with cutouts, the noise model, training curves, and the provenance
(config, code version, model and input-file hashes). The numbers come from
:mod:`astrodenoise.summary`; this module draws and renders them. Rendering uses jinja2
with autoescaping: FITS header values are user text and must never become markup.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io as _bytes_io
from pathlib import Path

import numpy as np
import yaml
from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib.figure import Figure

from . import io
from .cutouts import gallery_path
from .photometry import APERTURES
from .provenance import code_version
from .summary import (
    BIAS_LIMIT,
    judged,
    network_domains,
    reference_kind,
    reference_summary,
    summarise,
    summarise_injection,
    verdicts,
)

__all__ = ["report"]


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_uri(fig: Figure) -> str:
    fig.tight_layout()
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return _png_data_uri(buffer.getvalue())


#: What working in the linear domain (no gain known) cost on the demo survey, measured by
#: ``benchmarks/quality.py --train --set transform=linear`` against the gat default on the
#: same unseen fields (benchmarks/quality_linear.md beside benchmarks/quality_results.md).
LINEAR_COST = ("On the demo survey's unseen fields it cost Noise2Void 2.0 dB of PSNR (61.3 against "
               "63.3 in the gat domain), bright sources' flux -1.4% (Kron; +0.1% in gat) and 124 "
               "invented 5-sigma detections against 77 (benchmarks/quality_linear.md beside "
               "quality_results.md).")

#: The aperture of the plots against magnitude: 2 x FWHM with a local sky, as astronomers
#: measure (every aperture is in the tables).
PLOT_APERTURE = "2fwhm"


def _by_magnitude(scores: dict) -> list[dict]:
    """Bias per magnitude bin in :data:`PLOT_APERTURE` (the single aperture of older runs)."""
    rows = scores.get("photometry_by_magnitude_apertures", {}).get(PLOT_APERTURE)
    return rows if rows is not None else scores.get("photometry_by_magnitude", [])


def _photometry_png(evaluations: list[dict], kinds: list[str]) -> str | None:
    """Flux bias against magnitude, per image kind: mean over exposures, weighted by n."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    for kind in kinds:
        bins: dict[float, list] = {}
        for e in evaluations:
            for row in _by_magnitude(e["scores"].get(kind, {})):
                bins.setdefault(row["mag"], []).append((row["bias"], row["n"]))
        if bins:
            mags = sorted(bins)
            bias = [np.average([b for b, _ in bins[m]], weights=[n for _, n in bins[m]]) for m in mags]
            ax.plot(mags, np.array(bias) * 100, marker="o", label=kind)
    if not ax.lines:
        return None
    ax.axhspan(-BIAS_LIMIT * 100, BIAS_LIMIT * 100, color="0.9")
    ax.set_xlabel(f"magnitude ({evaluations[0].get('magnitudes', 'catalogue')})")
    ax.set_ylabel("aperture flux bias (%)")
    ax.legend(fontsize=7, ncol=2)
    return _figure_uri(fig)


def _completeness_png(rows: list[dict]) -> str | None:
    """Pooled completeness (solid) and purity (dashed) against magnitude."""
    if not any(r["detection_bins"] for r in rows):
        return None
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    for row in rows:
        bins = [b for b in row["detection_bins"] if b["n_truth"]]
        mags = [(b["lo"] + b["hi"]) / 2 for b in bins]
        line, = ax.plot(mags, [b["completeness"] for b in bins], marker="o", label=row["method"])
        ax.plot([(b["lo"] + b["hi"]) / 2 for b in bins if b["purity"] is not None],
                [b["purity"] for b in bins if b["purity"] is not None], ls="--", color=line.get_color())
    ax.axhline(0.9, color="0.6", lw=0.8)
    ax.set_xlabel("catalogue magnitude")
    ax.set_ylabel("completeness (—), purity (--)")
    ax.legend(fontsize=7, ncol=2)
    return _figure_uri(fig)


def _mean_curves(ax, evaluations: list[dict], kinds: list[str], key: str, x, y: str) -> None:
    """Plot, per image kind but the input, the mean over exposures of ``scores[kind][key][y]``
    against ``x`` (an array, or the name of a list beside ``y``)."""
    for kind in kinds[1:]:
        found = [e["scores"][kind][key] for e in evaluations if key in e["scores"].get(kind, {})]
        if found:
            xs = found[0][x] if isinstance(x, str) else x
            ax.plot(xs, np.mean([f[y] for f in found], axis=0), marker=".", label=kind)


def _residual_png(evaluations: list[dict], kinds: list[str]) -> str | None:
    """Blank-sky histogram of (input - image) / sigma against N(0, 1)."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    centres = np.linspace(-5, 5, 41)[:-1] + 0.125
    _mean_curves(ax, evaluations, kinds, "residual", centres, "histogram")
    if not ax.lines:
        return None
    ax.plot(centres, np.exp(-centres**2 / 2) / np.sqrt(2 * np.pi), "k:", label="N(0, 1)")
    ax.set_xlabel("(input - denoised) / sigma, blank sky")
    ax.set_ylabel("density")
    ax.legend(fontsize=7, ncol=2)
    return _figure_uri(fig)


def _power_png(evaluations: list[dict], kinds: list[str]) -> str | None:
    """Blank-sky power spectrum of each image over the input's, against spatial frequency."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    _mean_curves(ax, evaluations, kinds, "power", "k", "ratio")
    if not ax.lines:
        return None
    ax.set_yscale("log")
    ax.set_xlabel("spatial frequency (cycles / pixel)")
    ax.set_ylabel("power / input power")
    ax.legend(fontsize=7, ncol=2)
    return _figure_uri(fig)


def _injection_png(rows: list[dict]) -> str | None:
    """Completeness and median flux bias of injected sources against magnitude - m5."""
    if not rows:
        return None
    fig = Figure(figsize=(9.6, 3.6))
    left, right = fig.subplots(1, 2)
    for row in rows:
        mags = [b["mag"] for b in row["bins"]]
        line, = left.plot(mags, [b["completeness"] for b in row["bins"]], marker="o", label=row["method"])
        bias = [b["bias"][PLOT_APERTURE] for b in row["bins"]]
        right.plot(mags, [100 * v if v is not None else np.nan for v in bias], marker="o",
                   color=line.get_color())
    left.axhline(0.5, color="0.6", lw=0.8)
    left.axhline(0.9, color="0.6", lw=0.8)
    left.set_xlabel("injected magnitude - 5-sigma limit")
    left.set_ylabel("completeness")
    left.legend(fontsize=7, ncol=2)
    right.axhspan(-BIAS_LIMIT * 100, BIAS_LIMIT * 100, color="0.9")
    right.set_xlabel("injected magnitude - 5-sigma limit")
    right.set_ylabel(f"recovered flux bias, {PLOT_APERTURE[0]} x FWHM (%)")
    return _figure_uri(fig)


def _aperture_png(rows: list[dict], injection: list[dict]) -> str | None:
    """Bright and faint flux bias against aperture, per image kind: against the reference
    (solid) and of the injected sources (dashed), error bars the standard errors."""
    if not any(r.get("apertures") for r in rows) and not injection:
        return None
    fig = Figure(figsize=(9.6, 3.6))
    axes = fig.subplots(1, 2, sharey=False)
    keys = list(APERTURES)
    x = np.arange(len(keys))
    for ax, cls in zip(axes, ("bright", "faint"), strict=True):
        colours = {}
        for style, table in (("-", rows), ("--", injection)):
            for row in table:
                cells = [row.get("apertures", {}).get(k, {}) for k in keys]
                if not any(cells):
                    continue
                bias = [100 * c[f"{cls}_bias"] if c.get(f"{cls}_bias") is not None else np.nan for c in cells]
                err = [100 * (c.get(f"{cls}_se") or 0) for c in cells]
                bar = ax.errorbar(x, bias, yerr=err, ls=style, marker="o", capsize=2,
                                  color=colours.get(row["method"]),
                                  label=None if row["method"] in colours else row["method"])
                colours.setdefault(row["method"], bar.lines[0].get_color())
        ax.axhspan(-BIAS_LIMIT * 100, BIAS_LIMIT * 100, color="0.9")
        ax.set_xticks(x, [k.replace("fwhm", " x FWHM") for k in keys])
        ax.set_title(f"{cls} sources", fontsize=9)
        ax.set_ylabel("flux bias (%)")
    axes[0].legend(fontsize=7, ncol=2)
    return _figure_uri(fig)


def _curve_png(curves: dict[str, str]) -> str | None:
    if not curves:
        return None
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    for method, path in curves.items():
        with open(path) as handle:
            rows = list(csv.DictReader(handle))
        steps = [int(r["step"]) for r in rows]
        ax.plot(steps, [float(r["val_loss"]) for r in rows], marker="o", label=f"{method} validation")
        ax.plot(steps, [float(r["train_loss"]) for r in rows], ls="--", label=f"{method} training")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (normalised units)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return _figure_uri(fig)


def _pictured(fields: dict[str, list], limit: int) -> set[tuple[str, int]]:
    """(field, index) of the exposures whose figures are embedded: the first exposure of
    every field, then the second, ..., until ``limit`` (every one when ``limit`` <= 0)."""
    order = [(field, i) for i in range(max(map(len, fields.values()), default=0))
             for field, items in fields.items() if i < len(items)]
    return set(order if limit <= 0 else order[:limit])


def _field_items(evals: list[dict], evaluations: list[str], figures: list[str],
                 max_figures: int) -> tuple[dict[str, list[dict]], set]:
    """Exposures by field (the folder holding each JSON), with the cutouts and gallery of
    the pictured ones (:func:`_pictured`) embedded; and the set of pictured ones."""
    fields: dict[str, list[dict]] = {}
    for e, path, png in zip(evals, evaluations, figures, strict=True):
        fields.setdefault(Path(path).parent.name, []).append({"eval": e, "png": png})
    pictured = _pictured(fields, max_figures)
    for field, items in fields.items():
        for i, item in enumerate(items):
            gallery = gallery_path(item["png"])
            show = (field, i) in pictured
            item["figure"] = _png_data_uri(Path(item["png"]).read_bytes()) if show else None
            item["gallery"] = _png_data_uri(gallery.read_bytes()) if show and gallery.is_file() else None
    return fields, pictured


def _field_plots(fields: dict[str, list[dict]], pictured: set, kinds: list[str]) -> dict:
    """Photometry and completeness plots of each pictured field."""
    plots = {}
    for field, items in fields.items():
        if (field, 0) in pictured:
            field_evals = [item["eval"] for item in items]
            plots[field] = {"photometry": _photometry_png(field_evals, kinds),
                            "completeness": _completeness_png(summarise(field_evals))}
    return plots


def _summary_json(survey: str, evals: list[dict], rows, injection, verdict, reference) -> dict:
    return {"survey": survey, "n_exposures": len(evals),
            "rows": [{k: v for k, v in r.items() if k != "detection_bins"} for r in rows],
            "injection": injection, "verdicts": verdict, "reference": reference, "bias_limit": BIAS_LIMIT}


def report(evaluations: list[str], figures: list[str], *, out_html: str, survey: str,
           noise_files: list[str] = (), curves: dict[str, str] | None = None,
           models: dict[str, str] | None = None, config: dict | None = None,
           noise_survey: str | None = None, noise_plot: str | None = None,
           out_summary: str | None = None, max_figures: int = 24) -> list[dict]:
    """Render the survey report to ``out_html`` (atomic); return the overview rows.

    ``evaluations`` and ``figures`` are parallel lists of the evaluate step's JSON and
    PNG per exposure (the name of the folder holding a JSON is its field); ``curves``
    maps a method to its training-curve CSV, ``models`` a method to its checkpoint
    (hashed for provenance); ``config`` is the workflow config; ``noise_survey`` and
    ``noise_plot`` the survey noise JSON and mean-variance PNG. ``out_summary``, when
    given, receives the overview rows and verdicts as JSON: the numbers of the page.
    ``max_figures`` caps the exposures whose cutouts and galleries are embedded (spread
    over fields, see :func:`_pictured`; 0: all), and the fields with their own
    photometry and completeness plots: a survey of thousands of exposures keeps a report
    a browser opens, and the page names where the other figures are.
    """
    evals = [io.read_json(p) for p in evaluations]
    if not evals:
        raise ValueError("report needs at least one evaluation")
    fields, pictured = _field_items(evals, evaluations, figures, max_figures)
    rows = summarise(judged(evals))
    kinds = [r["method"] for r in rows]
    injection = summarise_injection(evals, kinds)
    reference = reference_summary(evals)
    verdict = verdicts(rows, injection, reference)
    env = Environment(loader=PackageLoader("astrodenoise", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    html = env.get_template("report.html.j2").render(
        survey=survey, summary=rows, verdicts=verdict, fields=fields,
        field_plots=_field_plots(fields, pictured, kinds), n_pictured=len(pictured),
        n_exposures=len(evals), reference_kind=reference_kind(evals), reference=reference,
        magnitudes=evals[0].get("magnitudes", "catalogue"),
        plots={"photometry": _photometry_png(evals, kinds), "completeness": _completeness_png(rows),
               "residual": _residual_png(evals, kinds), "power": _power_png(evals, kinds),
               "injection": _injection_png(injection), "apertures": _aperture_png(rows, injection)},
        injection=injection,
        psfs=[(e["exposure"], e.get("psf"), (e.get("injection") or {}).get("m5")) for e in evals],
        noise=[io.read_json(p) for p in noise_files],
        survey_noise=io.read_json(noise_survey) if noise_survey else None,
        domains=network_domains(evals), linear_cost=LINEAR_COST,
        noise_plot=_png_data_uri(Path(noise_plot).read_bytes()) if noise_plot else None,
        curve=_curve_png(curves or {}),
        models={m: io.file_sha256(p)[:16] for m, p in (models or {}).items()},
        inputs=[(e["exposure"], e.get("source_file"), e.get("source_sha256")) for e in evals],
        config_yaml=yaml.safe_dump(config or {}, sort_keys=False),
        code_version=code_version(),
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        bias_limit=BIAS_LIMIT, apertures=APERTURES,
        aperture_fwhm=float(evals[0].get("config", {}).get("aperture_fwhm", 1.0)),
    )
    if out_summary:
        io.write_json(out_summary, _summary_json(survey, evals, rows, injection, verdict, reference))
    with io.atomic_path(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return rows
