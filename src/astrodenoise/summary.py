"""The survey's numbers: the evaluations of every exposure pooled into one row per image
kind, the injection-recovery pooled per kind, and the verdicts drawn from them.

:mod:`astrodenoise.report` renders these; ``summary.json`` holds them as they are.
"""

from __future__ import annotations

import numpy as np

from .detection import depth90, pool_detection_bins
from .inject import summarise_recovery
from .photometry import APERTURES

__all__ = ["BIAS_LIMIT", "kinds", "summarise", "summarise_injection", "verdicts", "reference_kind",
           "reference_summary", "judged", "network_domains"]

#: Photometric bias (fraction of the flux, bright or faint sources) beyond which a
#: result is flagged: a denoiser that shifts fluxes by more than 1% changes the science.
BIAS_LIMIT = 0.01


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _standard_error(values) -> float | None:
    """Standard error of the mean of ``values`` (None entries dropped; None below two)."""
    values = [v for v in values if v is not None]
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None


def kinds(evaluations: list[dict]) -> list[str]:
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


def _repair_summary(scores: list[dict]) -> dict | None:
    """The repair pass's checks (``repair_check`` of the evaluate step) summed over the
    exposures that have one; None for an image kind without a repair pass or reference."""
    checks = [s["repair_check"] for s in scores if s.get("repair_check")]
    if not checks:
        return None
    return {key: sum(c[key] for c in checks) for key in checks[0]} | {"n_exposures": len(checks)}


def _aperture_rows(scores: list[dict]) -> dict:
    """Per aperture of :data:`~astrodenoise.photometry.APERTURES`, the mean over exposures
    of the bright and faint flux bias (with its standard error), of the robust scatter,
    and the sources counted; empty when no exposure has them."""
    cells = [s["photometry_apertures"] for s in scores if "photometry_apertures" in s]
    out = {}
    for key in APERTURES if cells else ():
        row = out[key] = {}
        for cls in ("bright", "faint"):
            biases = [c[key][cls]["bias"] for c in cells]
            row[f"{cls}_bias"], row[f"{cls}_se"] = _mean(biases), _standard_error(biases)
            row[f"{cls}_scatter"] = _mean(c[key][cls]["scatter"] for c in cells)
            row[f"{cls}_n"] = sum(c[key][cls]["n"] for c in cells)
    return out


def _over_limit(apertures: dict, baseline: dict | None = None) -> list[str]:
    """``"<class> <aperture>"`` of every |bias| above :data:`BIAS_LIMIT`; with ``baseline``
    (the input's apertures, measured the same way), of every |bias - the input's bias|."""
    out = []
    for key, row in apertures.items():
        for cls in ("bright", "faint"):
            bias = row.get(f"{cls}_bias")
            base = 0.0 if baseline is None else baseline.get(key, {}).get(f"{cls}_bias")
            if bias is not None and base is not None and abs(bias - base) > BIAS_LIMIT:
                out.append(f"{cls} {key}")
    return out


def _psnr_means(scores: list[dict], key: str) -> dict:
    """``key`` (a PSNR), its gain over the input, its standard error and lower bound as
    means over exposures. Without a truth a PSNR is an estimate (``<key>_se``) or, where
    the error is below what the reference resolves, a bound only (``<key>_lower``): the
    mean is then None, since a mean over the resolved exposures alone would flatter."""
    values = [s.get(key) for s in scores]
    whole = all(v is not None for v in values)
    errors = [s.get(f"{key}_se") for s in scores]
    se = (float(np.sqrt(np.sum(np.square(errors))) / len(errors))
          if whole and errors and all(e is not None for e in errors) else None)
    gains = [s.get(f"{key}_gain") for s in scores]
    return {key: _mean(values) if whole else None, f"{key}_se": se,
            f"{key}_gain": _mean(gains) if all(g is not None for g in gains) else None,
            f"{key}_lower": _mean(s.get(f"{key}_lower") for s in scores)}


def summarise(evaluations: list[dict]) -> list[dict]:
    """One row per image kind: means over exposures of each score, pooled detection.

    PSNR, SSIM, RMS and flux biases are means of the per-exposure values (the biases
    with the standard error of that mean, ``bright_se``/``faint_se``);
    completeness and purity are pooled (counts summed over exposures) before the 90%
    depth is read off; ``n_false`` (detections matching no catalogue source) is summed.
    ``flag_bright``/``flag_faint`` mark |bias| > :data:`BIAS_LIMIT` in the aperture of
    radius ``aperture_fwhm``; ``apertures`` holds the biases in every aperture an
    astronomer uses (1, 2, 3 x FWHM with a local sky, Kron), ``over_limit`` those that
    differ from the input's (measured the same way) by more than the limit, and ``flag``
    is set when any is.
    """
    rows = []
    for kind in kinds(evaluations):
        scores = [e["scores"][kind] for e in evaluations if kind in e["scores"]]
        row = {"method": kind, "n_exposures": len(scores),
               "role": "input" if kind == "input" else
               ("baseline" if kind in evaluations[0].get("baselines", ["gaussian"]) else "model")}
        for key in ("rms_blank", "rms_ratio", "ssim"):
            row[key] = _mean(s.get(key) for s in scores)
        for key in ("psnr", "psnr_clean"):
            row |= _psnr_means(scores, key)
        for cls in ("bright", "faint"):
            biases = [s.get("photometry", {}).get(cls, {}).get("bias") for s in scores]
            row[f"{cls}_bias"], row[f"{cls}_se"] = _mean(biases), _standard_error(biases)
            row[f"{cls}_n"] = sum(s.get("photometry", {}).get(cls, {}).get("n", 0) for s in scores)
            row[f"flag_{cls}"] = row[f"{cls}_bias"] is not None and abs(row[f"{cls}_bias"]) > BIAS_LIMIT
        row["apertures"] = _aperture_rows(scores)
        row["residual_source"] = _mean(s.get("residual", {}).get("source_mean") for s in scores)
        row |= _detection_summary(scores)
        row["repair"] = _repair_summary(scores)
        rows.append(row)
    base = rows[0]
    for row in rows:
        # Against a reference, the measurement itself reads a bias even for the input (its
        # local sky, from a noisy annulus among neighbours, is not the reference's): what
        # an image kind is judged on is the bias it adds to the input's.
        row["over_limit"] = _over_limit(row["apertures"], base["apertures"]) if row is not base else []
        row["flag"] = row["flag_bright"] or row["flag_faint"] or bool(row["over_limit"])
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
    injected sources with bootstrap standard errors in every aperture (the headline
    ``bright_bias``/``faint_bias`` at the aperture where it is largest in size), 50% and
    90% completeness magnitudes relative to each exposure's 5-sigma limit (``m50``,
    ``m90``) and, per magnitude bin, completeness and bias; plus the gain of
    ``m50``/``m90`` over the input, ``over_limit`` (class and aperture of every |bias| >
    :data:`BIAS_LIMIT`) and ``flag_bright``/``flag_faint`` when any is. Empty when no
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
        row["over_limit"] = _over_limit(row["apertures"])
        for cls in ("bright", "faint"):
            row[f"flag_{cls}"] = any(item.startswith(cls) for item in row["over_limit"])
    return rows


def _score(row: dict, key: str) -> float | None:
    """A row's score ``key``; for a PSNR known only as a bound, the bound."""
    value = row.get(key)
    return row.get(f"{key}_lower") if value is None and key.startswith("psnr") else value


def _bound(row: dict, best: dict | None, key: str, delta: float | None) -> tuple[str | None, bool | None]:
    """What ``delta`` (model - baseline) is where a PSNR is only a lower bound, and
    whether the model beats the baseline: ``"lower"`` (the model's is a bound: the true
    difference is at least delta), ``"upper"`` (the baseline's is: at most delta) or
    ``"both"``; ``beats`` None where the bounds cannot decide."""
    if delta is None:
        return None, None
    model_bound = row.get(key) is None and key.startswith("psnr")
    base_bound = best.get(key) is None and key.startswith("psnr")
    if model_bound and base_bound:
        return "both", None
    if model_bound:
        return "lower", True if delta > 0 else None
    if base_bound:
        return "upper", False if delta <= 0 else None
    return None, delta > 0


def verdicts(rows: list[dict], injection: list[dict] = (), reference: dict | None = None) -> list[dict]:
    """For each model: the best classical baseline and whether the model beats it.

    The baseline is ranked by PSNR without cosmic-ray pixels where a reference exists
    (all-pixel PSNR would reward removing cosmic rays alone), else by blank-sky RMS
    ratio; a model "beats" it when its score is higher. A model is "biased" when a flux
    bias of :func:`summarise` (sources of the reference) or of
    :func:`summarise_injection` (injected sources) exceeds :data:`BIAS_LIMIT` in any
    aperture (listed in ``over_limit`` and ``injected_over_limit``). A PSNR known only as
    a lower bound (no truth, an error below the reference's reach) counts as that bound,
    and ``bound``/``beats`` say what that leaves decided (:func:`_bound`).
    ``judged`` is False when the ``reference`` (:func:`reference_summary`) failed its
    self-tests: its figures then say nothing about the methods.
    """
    injected = {r["method"]: r for r in injection}
    baselines = [r for r in rows if r["role"] == "baseline"]
    scored = (k for k in ("psnr_clean", "psnr") if all(_score(r, k) is not None for r in rows))
    key = next(scored, "rms_ratio")
    best = max(baselines, key=lambda r: _score(r, key), default=None)
    judged = reference is None or reference["usable"]
    out = []
    for row in (r for r in rows if r["role"] == "model"):
        delta = _score(row, key) - _score(best, key) if best else None
        bound, beats = _bound(row, best, key, delta)
        inj = injected.get(row["method"], {})
        out.append({"method": row["method"], "baseline": best["method"] if best else None, "judged": judged,
                    "bound": bound, "metric": key, "delta": delta, "beats": beats,
                    "biased": row["flag"] or bool(inj.get("flag_bright") or inj.get("flag_faint")),
                    "bright_bias": row["bright_bias"], "faint_bias": row["faint_bias"],
                    "injected_bright_bias": inj.get("bright_bias"),
                    "injected_faint_bias": inj.get("faint_bias"),
                    "over_limit": row.get("over_limit", []),
                    "injected_over_limit": [f"injected {item}" for item in inj.get("over_limit", [])]})
    return out


def reference_kind(evaluations: list[dict]) -> str:
    """What the scores were measured against: ``truth``, a leave-one-out ``stack`` or ``input``."""
    if all(e.get("has_truth") for e in evaluations):
        return "truth"
    if any(str(e.get("photometry_reference", "")).startswith("stack") for e in evaluations):
        return "stack"
    return "input"


def reference_summary(evaluations: list[dict]) -> dict | None:
    """The self-tests of the leave-one-out references (:func:`astrodenoise.reference.reference_check`)
    over the survey, None where the scores are not against a stack: ``failures``
    ([{exposure, why}]) of the exposures whose reference failed them (left out of the
    survey's figures, :func:`judged`), ``n_judged`` those left, ``usable`` when any is,
    the mean share of pixels rejected as cosmic rays, and the input's estimated clean
    PSNR beside what its noise model predicts (means over exposures)."""
    checks = [(e["exposure"], e["reference_check"]) for e in evaluations if e.get("reference_check")]
    if not checks:
        return None
    failures = [{"exposure": name, "why": check["why"]} for name, check in checks if not check["usable"]]
    return {"usable": len(failures) < len(checks), "failures": failures, "n_exposures": len(checks),
            "n_judged": len(checks) - len(failures),
            "rejected": _mean(e.get("reference_rejected") for e in evaluations),
            "input_psnr_clean": _mean(check["psnr_estimated"] for _, check in checks),
            "input_psnr_expected": _mean(check["psnr_expected"] for _, check in checks)}


def judged(evaluations: list[dict]) -> list[dict]:
    """The evaluations the survey's figures and verdicts are drawn from: all but those
    whose leave-one-out reference failed its self-tests (their figures would carry the
    reference's error, not the methods'); all of them where every one failed, for
    diagnosis (the verdicts then judge nothing: :func:`reference_summary`)."""
    passed = [e for e in evaluations if (e.get("reference_check") or {}).get("usable", True)]
    return passed or evaluations


def network_domains(evaluations: list[dict]) -> dict[str, str]:
    """Each network's domain as the evaluate step recorded it from its checkpoint: "gat"
    (the generalised Anscombe transform of each exposure's gain and sigma) or "linear"
    (sky subtracted, divided by one sigma: no gain was known). "linear" wherever any
    exposure's record says so."""
    out: dict[str, str] = {}
    for evaluation in evaluations:
        for method, kind in (evaluation.get("domains") or {}).items():
            out[method] = "linear" if "linear" in (kind, out.get(method)) else kind
    return out
