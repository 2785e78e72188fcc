"""Tests of astrodenoise.report: summary numbers and a safe, self-contained HTML page."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape

from astrodenoise import io
from astrodenoise.photometry import APERTURES
from astrodenoise.report import BIAS_LIMIT, LINEAR_COST, report, summarise, summarise_injection, verdicts
from astrodenoise.summary import network_domains

SCRIPT = "<script>alert(1)</script>"
PNG = base64.b64decode(  # a 1 x 1 transparent PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")


def _scores(rms, ratio, psnr=None, faint=None, bright=None, n=4):
    out = {"rms_blank": rms, "rms_ratio": ratio}
    if psnr is not None:
        out |= {"psnr": psnr, "psnr_gain": psnr - 20.0, "ssim": 0.5}
    out["photometry"] = {"bright": {"n": n, "bias": bright, "scatter": None},
                         "faint": {"n": n, "bias": faint, "scatter": None}}
    return out


def _evaluation(name, *, obj="field00", n2n_faint=-0.08, gauss_faint=-0.02):
    return {
        "exposure": name, "object": obj, "filter": "r", "has_truth": True,
        "photometry_reference": "truth", "n_sources": 12, "aperture_radius": 3.0,
        "scores": {
            "input": _scores(10.0, 1.0, 20.0, faint=0.01, bright=0.0),
            "gaussian": _scores(3.0, 10.0 / 3.0, 30.0, faint=gauss_faint, bright=-0.09),
            "n2n": _scores(2.0, 5.0, 34.0, faint=n2n_faint, bright=-0.01),
        },
    }


def test_summarise_means_counts_and_order():
    evaluations = [_evaluation("e0", n2n_faint=-0.08), _evaluation("e1", n2n_faint=-0.04)]
    evaluations[1]["scores"]["n2n"]["rms_blank"] = 4.0
    evaluations[1]["scores"]["n2n"]["rms_ratio"] = 2.5

    rows = {row["method"]: row for row in summarise(evaluations)}

    assert set(rows) == {"input", "gaussian", "n2n"}
    n2n = rows["n2n"]
    assert n2n["n_exposures"] == 2
    assert n2n["rms_blank"] == pytest.approx(3.0)
    assert n2n["rms_ratio"] == pytest.approx(3.75)
    assert n2n["psnr"] == pytest.approx(34.0)
    assert n2n["psnr_gain"] == pytest.approx(14.0)
    assert n2n["faint_bias"] == pytest.approx(-0.06)
    assert n2n["faint_n"] == 8 and n2n["bright_n"] == 8


def test_summarise_input_row_comes_first():
    assert summarise([_evaluation("e0")])[0]["method"] == "input"


@pytest.mark.parametrize("faint, flagged", [
    (-0.06, True), (0.011, True), (-0.009, False), (0.0, False), (None, False),
])
def test_summarise_flags_faint_bias_beyond_limit(faint, flagged):
    evaluation = _evaluation("e0", n2n_faint=faint)
    evaluation["scores"]["n2n"]["photometry"]["bright"]["bias"] = 0.001

    row = next(r for r in summarise([evaluation]) if r["method"] == "n2n")

    assert BIAS_LIMIT == 0.01
    assert row["flag_faint"] is flagged and row["flag"] is flagged
    assert row["faint_bias"] == (None if faint is None else pytest.approx(faint))


def test_summarise_ignores_missing_values():
    evaluations = [_evaluation("e0", n2n_faint=None), _evaluation("e1", n2n_faint=-0.02)]
    for e in evaluations:
        del e["scores"]["input"]["psnr"]

    rows = {row["method"]: row for row in summarise(evaluations)}

    assert rows["input"]["psnr"] is None
    assert rows["n2n"]["faint_bias"] == pytest.approx(-0.02)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture
def rendered(tmp_path):
    """The report of two exposures, one with a hostile OBJECT value."""
    evaluations, figures, noise_files = [], [], []
    for i, obj in enumerate([SCRIPT, "field01"]):
        path = tmp_path / f"e{i}.json"
        evaluation = _evaluation(f"exp{i}", obj=obj)
        evaluation["scores"]["n2n"]["repaired_pixels"] = 4321 + i
        evaluation["scores"]["n2n"]["repair_check"] = {
            "groups": 480 + i, "confirmed": 470, "pixels": 4321 + i, "unconfirmed_pixels": 90 + i,
            "near_sources": 30, "unconfirmed_near_sources": 7}
        io.write_json(path, evaluation)
        evaluations.append(str(path))
        figure = tmp_path / f"e{i}.png"
        figure.write_bytes(PNG)
        figures.append(str(figure))
        noise_file = tmp_path / f"n{i}.json"
        io.write_json(noise_file, {"exposure": f"exp{i}", "sky_level": 200.0, "sigma": 10.3,
                                   "sigma_from_header": None, "blank_fraction": 0.8,
                                   "nan_fraction": 0.0})
        noise_files.append(str(noise_file))
    curve = tmp_path / "curve.csv"
    curve.write_text("step,train_loss,val_loss,lr,seconds\n10,1.2,1.1,0.001,1.0\n"
                     "20,1.0,0.9,0.0005,2.0\n")
    model = tmp_path / "n2n.pt"
    model.write_bytes(b"weights")
    out = tmp_path / "report.html"

    report(evaluations, figures, out_html=str(out), survey="demo", noise_files=noise_files,
           curves={"n2n": str(curve)}, models={"n2n": str(model)},
           config={"survey": "demo", "note": SCRIPT})

    return out.read_text(encoding="utf-8"), io.file_sha256(model)[:16]


def test_report_parses_and_is_self_contained(rendered):
    html, _ = rendered
    parser = _Collector()

    parser.feed(html)
    parser.close()

    assert parser.tags[0] == "html"
    assert "table" in parser.tags and "details" in parser.tags
    # Every image is embedded: two exposure figures and the training curve.
    assert len(parser.images) == 3
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    figure = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert parser.images.count(figure) == 2


def test_report_escapes_header_values(rendered):
    html, _ = rendered
    parser = _Collector()

    parser.feed(html)

    assert "script" not in parser.tags
    assert SCRIPT not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert any(SCRIPT in text for text in parser.text)  # shown as text, not run


def test_report_shows_numbers_flags_and_provenance(rendered):
    html, model_hash = rendered

    assert "astrodenoise report: demo" in html
    assert "-8.0%" in html  # faint bias of n2n
    assert 'class="bad"' in html  # flagged beyond the 1% limit
    assert model_hash in html
    assert "exp0" in html and "exp1" in html
    assert "10.300" in html  # measured sigma from the noise files
    assert "<td>4321</td>" in html and "<td>4322</td>" in html  # pixels predict repaired
    # The repair pass checked against the truth, summed over the two exposures: filled
    # pixels, groups, confirmed (share), unconfirmed ones on sources flagged.
    repair = html[html.index('id="repair"'):html.index('id="diagnostics"')]
    assert "the truth" in repair
    assert "<td>8643</td><td>961</td>" in repair and "940 (98%)" in repair
    assert '<td class="bad">14</td>' in repair


def test_report_needs_an_evaluation(tmp_path):
    with pytest.raises(ValueError, match="at least one evaluation"):
        report([], [], out_html=str(tmp_path / "r.html"), survey="demo")

    assert not (tmp_path / "r.html").exists()


def test_verdicts_compare_each_model_with_the_best_baseline():
    evaluation = _evaluation("e0", n2n_faint=-0.005)
    evaluation["baselines"] = ["gaussian", "bm3d"]
    evaluation["scores"]["bm3d"] = _scores(2.5, 4.0, 35.0, faint=-0.09, bright=-0.01)
    evaluation["scores"]["n2n"]["photometry"]["bright"]["bias"] = 0.002

    rows = summarise([evaluation])
    (verdict,) = verdicts(rows)

    assert [r["method"] for r in rows] == ["input", "gaussian", "bm3d", "n2n"]
    assert [r["role"] for r in rows] == ["input", "baseline", "baseline", "model"]
    assert verdict["baseline"] == "bm3d" and verdict["metric"] == "psnr"
    assert verdict["delta"] == pytest.approx(-1.0) and verdict["beats"] is False
    assert verdict["biased"] is False


def test_summary_json_holds_the_numbers_of_the_page(tmp_path):
    path = tmp_path / "field00" / "e0.json"
    evaluation = _evaluation("e0")
    evaluation["scores"]["n2n"]["detection"] = {
        "n_detected": 12, "n_matched": 10, "n_false": 2, "depth90": 23.0,
        "bins": [{"lo": 22.0, "hi": 23.0, "n_truth": 10, "n_recovered": 10, "n_found": 10,
                  "n_true": 10, "completeness": 1.0, "purity": 1.0}]}
    io.write_json(path, evaluation)
    (tmp_path / "e0.png").write_bytes(PNG)

    rows = report([str(path)], [str(tmp_path / "e0.png")], out_html=str(tmp_path / "r.html"),
                  survey="demo", out_summary=str(tmp_path / "summary.json"))
    summary = io.read_json(tmp_path / "summary.json")
    html = (tmp_path / "r.html").read_text()

    n2n = next(r for r in summary["rows"] if r["method"] == "n2n")
    assert n2n["depth90"] == 23.0 and n2n["n_false"] == 2 and rows[-1]["n_false"] == 2
    assert f"{n2n['faint_bias'] * 100:+.1f}%" in html and f"{n2n['psnr']:.2f}" in html
    assert "field00" in html


def test_report_opens_in_a_browser_with_every_image_and_no_script(tmp_path):
    import browser

    if reason := browser.missing():
        pytest.skip(reason)
    evaluation = _evaluation("e0", obj=SCRIPT)
    evaluation["scores"]["n2n"] |= {
        "photometry_by_magnitude": [{"mag": 22.25, "n": 5, "bias": -0.02, "scatter": 0.01}],
        "residual": {"sky_mean": 0.0, "sky_std": 1.0, "histogram": [0.01] * 40, "source_mean": 0.1},
        "power": {"k": [0.1, 0.3], "ratio": [0.5, 0.1]}}
    path = tmp_path / "field00" / "e0.json"
    io.write_json(path, evaluation)
    (tmp_path / "e0.png").write_bytes(PNG)
    html = tmp_path / "report.html"
    report([str(path)], [str(tmp_path / "e0.png")], out_html=str(html), survey="demo")

    page = browser.open_page(html, tmp_path / "report.png")

    assert page.errors == []
    assert page.alert is None and page.scripts == 0  # OBJECT's <script> stayed text
    assert SCRIPT in page.text
    assert len(page.images) >= 4 and all(i["complete"] and i["width"] > 0 for i in page.images)
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")


def test_verdict_ranks_baselines_without_cosmic_ray_pixels():
    evaluation = _evaluation("e0")
    evaluation["baselines"] = ["gaussian", "bm3d"]
    evaluation["scores"]["bm3d"] = _scores(2.5, 4.0, 25.0, faint=-0.09, bright=-0.01)
    # BM3D keeps cosmic rays: worst on all pixels, best once they are left out.
    clean = {"input": 30.0, "gaussian": 40.0, "bm3d": 50.0, "n2n": 49.0}
    for name, value in clean.items():
        evaluation["scores"][name]["psnr_clean"] = value

    (verdict,) = verdicts(summarise([evaluation]))

    assert verdict["metric"] == "psnr_clean" and verdict["baseline"] == "bm3d"
    assert verdict["delta"] == pytest.approx(-1.0) and not verdict["beats"]


def _render(tmp_path, evaluations: list[dict]) -> str:
    """The report of ``evaluations`` (one field, one shared figure) as HTML; its summary
    JSON beside it."""
    paths = []
    for i, evaluation in enumerate(evaluations):
        paths.append(tmp_path / "field00" / f"e{i}.json")
        io.write_json(paths[-1], evaluation)
    (tmp_path / "e.png").write_bytes(PNG)
    report([str(p) for p in paths], [str(tmp_path / "e.png")] * len(paths), out_html=str(tmp_path / "r.html"),
           survey="demo", out_summary=str(tmp_path / "summary.json"))
    return (tmp_path / "r.html").read_text()


def _injection_block(m5, *, n2n_faint):
    """Injected sources of one exposure: 40 from m5 - 4 to m5 + 1.5; the input measures
    them unbiased and finds those brighter than m5; n2n keeps the cores (faint bias
    -0.2% at 1 x FWHM), loses ``n2n_faint`` of the faint ones' flux at 3 x FWHM, and finds
    them 0.5 mag deeper."""
    import numpy as np

    mag = np.linspace(m5 - 4, m5 + 1.5, 40)
    snr = 5 * 10 ** (-0.4 * (mag - m5))
    n2n = {key: [-0.002] * 40 for key in APERTURES}
    n2n["3fwhm"] = np.where(snr < 20, n2n_faint, -0.002).tolist()
    return {"m5": m5, "mag": mag.tolist(), "snr": snr.tolist(), "extended": [False, True] * 20,
            "methods": {"input": {"flux_ratio": {key: [0.0] * 40 for key in APERTURES},
                                  "found": (mag < m5).tolist()},
                        "n2n": {"flux_ratio": n2n, "found": (mag < m5 + 0.5).tolist()}}}


def test_injection_summary_pools_exposures_and_flags_a_dimming_model(tmp_path):
    evaluations = []
    for i, m5 in enumerate((24.0, 24.6)):
        evaluation = _evaluation(f"e{i}", n2n_faint=-0.005)
        evaluation["scores"]["n2n"]["photometry"]["bright"]["bias"] = 0.002
        evaluation["injection"] = _injection_block(m5, n2n_faint=-0.04)
        # as evaluate() writes it
        evaluation["psf"] = {"method": "Moffat (beta 3.10) fitted to 9 stars (median)", "fwhm": 3.1}
        evaluations.append(evaluation)

    rows = summarise_injection(evaluations, ["input", "gaussian", "n2n"])
    (verdict,) = verdicts(summarise(evaluations), rows)

    assert [r["method"] for r in rows] == ["input", "n2n"]  # gaussian had no injected sources
    n2n = rows[1]
    assert n2n["n"] == 80 and n2n["faint_bias"] == pytest.approx(-0.04) and n2n["flag_faint"]
    # Red because of the 3 x FWHM aperture alone: 1 x FWHM would have looked fine.
    assert n2n["faint_aperture"] == "3fwhm"
    assert n2n["apertures"]["1fwhm"]["faint_bias"] == pytest.approx(-0.002)
    assert n2n["over_limit"] == ["faint 3fwhm"]
    assert n2n["bright_bias"] == pytest.approx(-0.002) and not n2n["flag_bright"]
    assert n2n["m50_gain"] == pytest.approx(0.5, abs=0.1)
    # The catalogue biases are within the limit; the injected faint sources are not.
    assert verdict["injected_faint_bias"] == pytest.approx(-0.04) and verdict["biased"] is True
    assert verdict["injected_over_limit"] == ["injected faint 3fwhm"]

    html = _render(tmp_path, evaluations)
    summary = io.read_json(tmp_path / "summary.json")

    shown = next(r for r in summary["injection"] if r["method"] == "n2n")
    assert shown["faint_bias"] == pytest.approx(-0.04)
    assert 'id="injection-table"' in html and "-4.0%" in html
    assert 'id="aperture-table"' in html and "injected faint 3fwhm" in html
    assert f"{shown['m50_gain']:+.2f}" in html and "Moffat (beta 3.10) fitted to 9 stars (median)" in html


def test_a_large_survey_embeds_a_capped_number_of_figures_spread_over_fields(tmp_path):
    evaluations, figures = [], []
    for field in ("f0", "f1", "f2"):
        for i in range(2):
            path = tmp_path / field / f"{field}_e{i}.json"
            evaluation = _evaluation(f"{field}_e{i}")
            evaluation["scores"]["n2n"]["photometry_by_magnitude"] = [
                {"mag": 22.25, "n": 5, "bias": -0.02, "scatter": 0.01}]
            io.write_json(path, evaluation)
            png = tmp_path / field / f"{field}_e{i}.png"
            png.write_bytes(PNG)
            evaluations.append(str(path))
            figures.append(str(png))

    report(evaluations, figures, out_html=str(tmp_path / "r.html"), survey="big", max_figures=2)
    html = (tmp_path / "r.html").read_text()

    # One cutout for each of the first two fields (not both exposures of f0), named in the note.
    assert html.count('alt="before, after and residual cutouts of') == 2
    assert "cutouts of f0_e0" in html and "cutouts of f1_e0" in html and "cutouts of f0_e1" not in html
    assert "Cutouts and galleries of 2 of 6" in html
    assert html.count('alt="flux bias against magnitude, f') == 2  # per-field plots for those fields
    assert 'href="#field-f2"' in html and 'id="field-f2"' in html  # every field still has its section

    report(evaluations, figures, out_html=str(tmp_path / "all.html"), survey="big", max_figures=0)
    assert (tmp_path / "all.html").read_text().count("cutouts of") == 6


def _apertures(faint_kron: float) -> dict:
    cells = {key: {"bright": {"n": 4, "bias": 0.001, "scatter": 0.01},
                   "faint": {"n": 4, "bias": -0.004, "scatter": 0.05}} for key in APERTURES}
    cells["kron"]["faint"]["bias"] = faint_kron
    return cells


def test_a_bias_in_any_aperture_turns_the_verdict_red_and_the_report_shows_every_aperture(tmp_path):
    evaluations = []
    for i, kron in enumerate((-0.03, -0.05)):
        evaluation = _evaluation(f"e{i}", n2n_faint=-0.005)  # fine at 1 x FWHM
        evaluation["scores"]["n2n"]["photometry"]["bright"]["bias"] = 0.002
        for kind in evaluation["scores"]:
            evaluation["scores"][kind]["photometry_apertures"] = _apertures(kron if kind == "n2n" else 0.0)
        evaluations.append(evaluation)

    rows = {row["method"]: row for row in summarise(evaluations)}
    (verdict,) = verdicts(list(rows.values()))

    n2n = rows["n2n"]
    assert not n2n["flag_faint"] and not n2n["flag_bright"]  # the 1 x FWHM columns alone
    assert n2n["apertures"]["kron"]["faint_bias"] == pytest.approx(-0.04)
    assert n2n["apertures"]["kron"]["faint_se"] == pytest.approx(0.01)
    assert n2n["apertures"]["kron"]["faint_scatter"] == pytest.approx(0.05)
    assert n2n["over_limit"] == ["faint kron"] and n2n["flag"]
    assert verdict["biased"] and verdict["over_limit"] == ["faint kron"]
    assert not rows["gaussian"]["over_limit"] or "faint kron" not in rows["gaussian"]["over_limit"]

    html = _render(tmp_path, evaluations)
    table = html[html.index('id="aperture-table"'):]
    table = table[:table.index("</table>")]
    n2n_row = table[table.index('data-method="n2n"'):]
    n2n_row = n2n_row[:n2n_row.index("</tr>")]
    assert n2n_row.count('class="bad"') == 1 and "-4.0%" in n2n_row and "(5.0)" in n2n_row
    assert "beyond the limit: faint kron" in html


def _stack_evaluation(name, *, usable: bool, n2n_psnr):
    """An evaluation against a leave-one-out stack, whose self-tests passed or not."""
    evaluation = _evaluation(name) | {"has_truth": False, "reference_sigma": 3.0, "reference_rejected": 0.001,
                                      "photometry_reference": "stack of 2 other exposures"}
    for s in evaluation["scores"].values():
        s |= {"psnr_se": 0.3, "psnr_lower": s["psnr"] - 0.6}
    n2n = evaluation["scores"]["n2n"]
    n2n |= {"psnr": n2n_psnr, "psnr_se": None if n2n_psnr is None else 0.3, "psnr_lower": 41.0}
    why = [] if usable else ["the input's estimated PSNR is 18.00 ± 0.10 dB where its noise model "
                             "predicts 20.00 dB"]
    evaluation["reference_check"] = {"usable": usable, "why": why, "psnr_estimated": 18.0, "psnr_se": 0.1,
                                     "psnr_expected": 20.0, "input_bias": {}}
    return evaluation


def test_without_truth_a_psnr_bound_is_a_bound_and_an_unusable_reference_judges_nothing(tmp_path):
    good = [_stack_evaluation("e0", usable=True, n2n_psnr=None),
            _stack_evaluation("e1", usable=True, n2n_psnr=40.0)]
    rows = {row["method"]: row for row in summarise(good)}
    # One exposure's PSNR is only a bound: no mean over the other alone.
    assert rows["n2n"]["psnr"] is None and rows["n2n"]["psnr_lower"] == pytest.approx(41.0)
    assert rows["gaussian"]["psnr"] == pytest.approx(30.0)
    assert rows["gaussian"]["psnr_se"] == pytest.approx(0.3 / 2**0.5)
    (verdict,) = verdicts(list(rows.values()))
    assert verdict["beats"] is True and verdict["bound"] == "lower"
    assert verdict["delta"] == pytest.approx(41.0 - 30.0)
    html = _render(tmp_path / "good", good)
    assert "&ge; 41.0" in html and "Every exposure passed" in html and "not judged" not in html

    # One exposure's reference failed: it is left out of the survey's figures, not the rest.
    mixed = [_stack_evaluation("e0", usable=True, n2n_psnr=40.0),
             _stack_evaluation("e1", usable=False, n2n_psnr=40.0)]
    mixed[1]["scores"]["n2n"]["psnr"] = 10.0  # what a broken reference would read
    html = _render(tmp_path / "mixed", mixed)
    summary = io.read_json(tmp_path / "mixed" / "summary.json")
    assert "1 of 2 exposure(s)" in html and "where its noise model predicts 20.00 dB" in html
    assert "Every exposure passed" not in html and "left out of the figures above" in html
    assert summary["reference"]["failures"][0]["exposure"] == "e1" and summary["reference"]["n_judged"] == 1
    assert all(v["judged"] for v in summary["verdicts"])
    assert next(r for r in summary["rows"] if r["method"] == "n2n")["psnr"] == pytest.approx(40.0)

    # Every reference failed: nothing is judged.
    bad = [_stack_evaluation(f"e{i}", usable=False, n2n_psnr=40.0) for i in range(2)]
    html = _render(tmp_path / "bad", bad)
    assert "The reference is not usable" in html and "not judged" in html
    assert "photometric bias exceeds" not in html
    summary = io.read_json(tmp_path / "bad" / "summary.json")
    assert all(not v["judged"] for v in summary["verdicts"])


@pytest.mark.parametrize("model, baseline, bound, beats", [
    (None, 30.0, "lower", True),     # the model's PSNR is at least 41: above the baseline's 30
    (25.0, None, "upper", False),    # the baseline's is at least 29.4: above the model's 25
    (35.0, None, "upper", None),     # 35 against at least 29.4: not decided
    (None, None, "both", None),
])
def test_verdicts_say_what_a_psnr_bound_decides(model, baseline, bound, beats):
    rows = [{"method": "input", "role": "input", "psnr_clean": 20.0},
            {"method": "gaussian", "role": "baseline", "psnr_clean": baseline, "psnr_clean_lower": 29.4},
            {"method": "n2n", "role": "model", "psnr_clean": model, "psnr_clean_lower": 41.0 if model is None
             else model - 0.6}]
    for row in rows:
        row |= {"flag": False, "bright_bias": 0.0, "faint_bias": 0.0}

    (verdict,) = verdicts(rows)

    assert verdict["bound"] == bound and verdict["beats"] is beats


@pytest.mark.parametrize("kinds", [("gat", "gat"), ("gat", "linear")])
def test_the_report_names_each_networks_domain_and_what_linear_costs(tmp_path, kinds):
    paths, figures = [], []
    for i, kind in enumerate(kinds):
        evaluation = _evaluation(f"e{i}") | {"domains": {"n2n": kind}}
        paths.append(str(tmp_path / f"e{i}.json"))
        io.write_json(paths[-1], evaluation)
        figures.append(str(tmp_path / f"e{i}.png"))
        (tmp_path / f"e{i}.png").write_bytes(PNG)

    report(paths, figures, out_html=str(tmp_path / "r.html"), survey="demo")
    html = (tmp_path / "r.html").read_text()

    linear = "linear" in kinds
    assert network_domains([io.read_json(p) for p in paths]) == {"n2n": "linear" if linear else "gat"}
    assert ("linear domain (n2n)" in html) is linear and ("gat domain (n2n)" in html) is not linear
    assert (str(escape(LINEAR_COST)) in html) is linear  # autoescaped, as every text


def test_the_linear_domain_cost_the_report_quotes_is_what_the_benchmarks_measured():
    """LINEAR_COST quotes benchmarks/quality_linear.json against quality_results.json."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    gat = io.read_json(bench / "quality_results.json")["unseen"]["n2v"]
    linear = io.read_json(bench / "quality_linear.json")["unseen"]["n2v"]
    quoted = [f"{gat['psnr_clean'] - linear['psnr_clean']:.1f} dB",
              f"{linear['psnr_clean']:.1f} against {gat['psnr_clean']:.1f}",
              f"{100 * linear['apertures']['kron']['bright']['bias']:+.1f}%",
              f"{100 * gat['apertures']['kron']['bright']['bias']:+.1f}% in gat",
              f"{linear['unmatched']} invented", f"against {gat['unmatched']}"]
    for figure in quoted:
        assert figure in LINEAR_COST, figure
