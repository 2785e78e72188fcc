"""Report: one self-contained HTML page per survey (figures embedded, no external files).

The page shows the key numbers of every denoiser against the noisy input and the
classical baseline, flags faint-source flux bias, and records the provenance (config,
code version, model hashes). Rendering uses jinja2 with autoescaping: FITS header values
are user text and must never become markup.
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
from .provenance import code_version

__all__ = ["summarise", "report"]

#: Faint-source flux bias beyond which a method is flagged (fraction of the flux).
FAINT_BIAS_LIMIT = 0.05


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(evaluations: list[dict]) -> list[dict]:
    """Average each image kind's scores over exposures: one row per kind.

    Rows come in reading order: the noisy input, the classical baseline, then the models.
    """
    kinds = sorted(evaluations[0]["scores"], key=lambda k: (k != "input", k != "gaussian", k))
    rows = []
    for kind in kinds:
        scores = [e["scores"][kind] for e in evaluations if kind in e["scores"]]
        row = {"method": kind, "n_exposures": len(scores)}
        for key in ("rms_blank", "rms_ratio", "psnr", "psnr_gain", "ssim"):
            row[key] = _mean(s.get(key) for s in scores)
        for cls in ("bright", "faint"):
            row[f"{cls}_bias"] = _mean(s.get("photometry", {}).get(cls, {}).get("bias") for s in scores)
            row[f"{cls}_n"] = sum(s.get("photometry", {}).get(cls, {}).get("n", 0) for s in scores)
        faint = row["faint_bias"]
        row["flag"] = faint is not None and abs(faint) > FAINT_BIAS_LIMIT
        rows.append(row)
    return rows


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
    fig.tight_layout()
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return _png_data_uri(buffer.getvalue())


def report(evaluations: list[str], figures: list[str], *, out_html: str, survey: str,
           noise_files: list[str] = (), curves: dict[str, str] | None = None,
           models: dict[str, str] | None = None, config: dict | None = None,
           noise_survey: str | None = None, noise_plot: str | None = None) -> None:
    """Render the survey report to ``out_html`` (atomic).

    ``evaluations`` and ``figures`` are parallel lists of the evaluate step's JSON and
    PNG per exposure; ``curves`` maps a method to its training-curve CSV, ``models`` a
    method to its checkpoint (hashed for provenance); ``config`` is the workflow config;
    ``noise_survey`` and ``noise_plot`` the survey noise JSON and mean-variance PNG.
    """
    evals = [io.read_json(p) for p in evaluations]
    if not evals:
        raise ValueError("report needs at least one evaluation")
    exposures = [
        {"eval": e, "figure": _png_data_uri(Path(png).read_bytes())}
        for e, png in zip(evals, figures, strict=True)
    ]
    env = Environment(loader=PackageLoader("astrodenoise", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    html = env.get_template("report.html.j2").render(
        survey=survey,
        summary=summarise(evals),
        exposures=exposures,
        noise=[io.read_json(p) for p in noise_files],
        survey_noise=io.read_json(noise_survey) if noise_survey else None,
        noise_plot=_png_data_uri(Path(noise_plot).read_bytes()) if noise_plot else None,
        curve=_curve_png(curves or {}),
        models={m: io.file_sha256(p)[:16] for m, p in (models or {}).items()},
        config_yaml=yaml.safe_dump(config or {}, sort_keys=False),
        code_version=code_version(),
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        faint_limit=FAINT_BIAS_LIMIT,
    )
    with io.atomic_path(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")
