"""Report: one self-contained HTML page per survey (figures embedded, no external files).

The overview answers two questions at a glance: does each network beat the best
classical denoiser, and does any photometric bias exceed 1%? Below it: the key numbers
of every image kind (input, Gaussian, non-local means, BM3D, the networks), photometry
and completeness against magnitude, normalised residuals and noise power spectra,
per-field pages with cutouts, the noise model, training curves, and the provenance
(config, code version, model and input-file hashes). Rendering uses jinja2 with
autoescaping: FITS header values are user text and must never become markup.
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
from .evaluate import depth90, gallery_path, pool_detection_bins
from .inject import summarise_recovery
from .provenance import code_version

__all__ = ["summarise", "summarise_injection", "verdicts", "report", "BIAS_LIMIT"]

#: Photometric bias (fraction of the flux, bright or faint sources) beyond which a
#: result is flagged: a denoiser that shifts fluxes by more than 1% changes the science.
BIAS_LIMIT = 0.01


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_uri(fig: Figure) -> str:
    fig.tight_layout()
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return _png_data_uri(buffer.getvalue())


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _standard_error(values) -> float | None:
    """Standard error of the mean of ``values`` (None entries dropped; None below two)."""
    values = [v for v in values if v is not None]
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None


def _kinds(evaluations: list[dict]) -> list[str]:
    """Image kinds in reading order: the noisy input, the baselines, then the models."""
    first = evaluations[0]
    baselines = first.get("baselines", [k for k in first["scores"] if k == "gaussian"])
    models = [k for k in first["scores"] if k != "input" and k not in baselines]
    return ["input", *baselines, *models]


def _detection_summary(scores: list[dict]) -> dict:
    detections = [s["detection"] for s in scores if "detection" in s]
    with_bins = [d["bins"] for d in detections if "bins" in d]
    pooled = pool_detection_bins(with_bins) if with_bins else []
    return {"depth90": depth90(pooled) if pooled else None,
            "complete90": depth90(pooled, purity=False) if pooled else None,
            "n_detected": sum(d["n_detected"] for d in detections) if detections else None,
            "n_false": sum(d["n_false"] for d in detections if "n_false" in d) if with_bins else None,
            "detection_bins": pooled}


def summarise(evaluations: list[dict]) -> list[dict]:
    """One row per image kind: means over exposures of each score, pooled detection.

    PSNR, SSIM, RMS and flux biases are means of the per-exposure values (the biases
    with the standard error of that mean, ``bright_se``/``faint_se``);
    completeness and purity are pooled (counts summed over exposures) before the 90%
    depth is read off; ``n_false`` (detections matching no catalogue source) is summed.
    ``flag_bright``/``flag_faint`` mark |bias| > :data:`BIAS_LIMIT`.
    """
    rows = []
    for kind in _kinds(evaluations):
        scores = [e["scores"][kind] for e in evaluations if kind in e["scores"]]
        row = {"method": kind, "n_exposures": len(scores),
               "role": "input" if kind == "input" else
               ("baseline" if kind in evaluations[0].get("baselines", ["gaussian"]) else "model")}
        for key in ("rms_blank", "rms_ratio", "psnr", "psnr_gain", "psnr_clean", "psnr_clean_gain", "ssim"):
            row[key] = _mean(s.get(key) for s in scores)
        for cls in ("bright", "faint"):
            biases = [s.get("photometry", {}).get(cls, {}).get("bias") for s in scores]
            row[f"{cls}_bias"], row[f"{cls}_se"] = _mean(biases), _standard_error(biases)
            row[f"{cls}_n"] = sum(s.get("photometry", {}).get(cls, {}).get("n", 0) for s in scores)
            row[f"flag_{cls}"] = row[f"{cls}_bias"] is not None and abs(row[f"{cls}_bias"]) > BIAS_LIMIT
        row["flag"] = row["flag_bright"] or row["flag_faint"]
        row["residual_source"] = _mean(s.get("residual", {}).get("source_mean") for s in scores)
        row |= _detection_summary(scores)
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["depth_gain"] = (row["depth90"] - base["depth90"]
                             if row["depth90"] is not None and base["depth90"] is not None else None)
        row["complete_gain"] = (row["complete90"] - base["complete90"]
                                if row["complete90"] is not None and base["complete90"] is not None else None)
        row["extra_false"] = (row["n_false"] - base["n_false"]
                              if row["n_false"] is not None and base["n_false"] is not None else None)
    return rows


def summarise_injection(evaluations: list[dict], kinds: list[str]) -> list[dict]:
    """One row per image kind of the injection-recovery test, sources pooled over exposures.

    :func:`astrodenoise.inject.summarise_recovery` per kind: flux bias of bright and faint
    injected sources with bootstrap standard errors, 50% and 90% completeness magnitudes
    relative to each exposure's 5-sigma limit (``m50``, ``m90``) and, per magnitude bin,
    completeness and bias; plus the gain of ``m50``/``m90`` over the input and
    ``flag_bright``/``flag_faint`` for |bias| > :data:`BIAS_LIMIT`. Empty when no
    evaluation has injected sources.
    """
    blocks = [e.get("injection") for e in evaluations]
    rows = []
    for kind in kinds:
        pooled = summarise_recovery(blocks, kind)
        if pooled:
            rows.append({"method": kind} | pooled)
    base = next((r for r in rows if r["method"] == "input"), None)
    for row in rows:
        for key in ("m50", "m90"):
            row[f"{key}_gain"] = (row[key] - base[key] if base and row[key] is not None
                                  and base[key] is not None else None)
        for cls in ("bright", "faint"):
            row[f"flag_{cls}"] = row[f"{cls}_bias"] is not None and abs(row[f"{cls}_bias"]) > BIAS_LIMIT
    return rows


def verdicts(rows: list[dict], injection: list[dict] = ()) -> list[dict]:
    """For each model: the best classical baseline and whether the model beats it.

    The baseline is ranked by PSNR without cosmic-ray pixels where a reference exists
    (all-pixel PSNR would reward removing cosmic rays alone), else by blank-sky RMS
    ratio; a model "beats" it when its score is higher. A model is "biased" when a flux
    bias of :func:`summarise` (sources of the reference) or of
    :func:`summarise_injection` (injected sources) exceeds :data:`BIAS_LIMIT`.
    """
    injected = {r["method"]: r for r in injection}
    baselines = [r for r in rows if r["role"] == "baseline"]
    key = next((k for k in ("psnr_clean", "psnr") if all(r.get(k) is not None for r in rows)), "rms_ratio")
    best = max(baselines, key=lambda r: r[key], default=None)
    out = []
    for row in (r for r in rows if r["role"] == "model"):
        delta = row[key] - best[key] if best else None
        inj = injected.get(row["method"], {})
        out.append({"method": row["method"], "baseline": best["method"] if best else None,
                    "metric": key, "delta": delta, "beats": delta is not None and delta > 0,
                    "biased": row["flag"] or bool(inj.get("flag_bright") or inj.get("flag_faint")),
                    "bright_bias": row["bright_bias"], "faint_bias": row["faint_bias"],
                    "injected_bright_bias": inj.get("bright_bias"),
                    "injected_faint_bias": inj.get("faint_bias")})
    return out


def _reference_kind(evaluations: list[dict]) -> str:
    """What the scores were measured against: ``truth``, a leave-one-out ``stack`` or ``input``."""
    if all(e.get("has_truth") for e in evaluations):
        return "truth"
    if any(str(e.get("photometry_reference", "")).startswith("stack") for e in evaluations):
        return "stack"
    return "input"


def _photometry_png(evaluations: list[dict], kinds: list[str]) -> str | None:
    """Flux bias against magnitude, per image kind: mean over exposures, weighted by n."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    for kind in kinds:
        bins: dict[float, list] = {}
        for e in evaluations:
            for row in e["scores"].get(kind, {}).get("photometry_by_magnitude", []):
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
        right.plot(mags, [100 * b["bias"] for b in row["bins"]], marker="o", color=line.get_color())
    left.axhline(0.5, color="0.6", lw=0.8)
    left.axhline(0.9, color="0.6", lw=0.8)
    left.set_xlabel("injected magnitude - 5-sigma limit")
    left.set_ylabel("completeness")
    left.legend(fontsize=7, ncol=2)
    right.axhspan(-BIAS_LIMIT * 100, BIAS_LIMIT * 100, color="0.9")
    right.set_xlabel("injected magnitude - 5-sigma limit")
    right.set_ylabel("recovered flux bias (%)")
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
    rows = summarise(evals)
    kinds = [r["method"] for r in rows]
    field_plots = {}
    for field, items in fields.items():
        if (field, 0) in pictured:
            field_evals = [item["eval"] for item in items]
            field_plots[field] = {"photometry": _photometry_png(field_evals, kinds),
                                  "completeness": _completeness_png(summarise(field_evals))}
    injection = summarise_injection(evals, kinds)
    verdict = verdicts(rows, injection)
    env = Environment(loader=PackageLoader("astrodenoise", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    html = env.get_template("report.html.j2").render(
        survey=survey,
        summary=rows,
        verdicts=verdict,
        fields=fields,
        field_plots=field_plots,
        n_pictured=len(pictured),
        n_exposures=len(evals),
        reference_kind=_reference_kind(evals),
        plots={"photometry": _photometry_png(evals, kinds), "completeness": _completeness_png(rows),
               "residual": _residual_png(evals, kinds), "power": _power_png(evals, kinds),
               "injection": _injection_png(injection)},
        injection=injection,
        psfs=[(e["exposure"], e.get("psf"), (e.get("injection") or {}).get("m5")) for e in evals],
        noise=[io.read_json(p) for p in noise_files],
        survey_noise=io.read_json(noise_survey) if noise_survey else None,
        noise_plot=_png_data_uri(Path(noise_plot).read_bytes()) if noise_plot else None,
        curve=_curve_png(curves or {}),
        models={m: io.file_sha256(p)[:16] for m, p in (models or {}).items()},
        inputs=[(e["exposure"], e.get("source_file"), e.get("source_sha256")) for e in evals],
        config_yaml=yaml.safe_dump(config or {}, sort_keys=False),
        code_version=code_version(),
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        bias_limit=BIAS_LIMIT,
    )
    if out_summary:
        io.write_json(out_summary, {"survey": survey, "n_exposures": len(evals),
                                    "rows": [{k: v for k, v in r.items() if k != "detection_bins"}
                                             for r in rows],
                                    "injection": injection,
                                    "verdicts": verdict, "bias_limit": BIAS_LIMIT})
    with io.atomic_path(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return rows
