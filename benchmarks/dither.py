"""Benchmark: Noise2Noise on dithered exposures, its target on the input's sky or a fraction
of a pixel off it.

Real sequences are dithered or drift: the exposures of a field are offset by fractions of
a pixel (M13, frames 1-4: 0.05 to 0.5 px). The register step aligns them by whole pixels,
so that their noise stays independent; a Noise2Noise target left a fraction of a pixel off
its input teaches the network to move the light by that fraction, and over pairs of
different fractions to blur it. The simulated surveys have no dithers, so no other
benchmark sees this. Here the demo generator (config/config.yaml's simulate block, its
own seed) renders each field's truth once; exposure 0 of a field sees it as it is, the
others through an offset uniform in [-3, 3] pixels per axis (the truth moved by a cubic
spline, then Poisson and read noise and cosmic rays as the demo draws them). Noise2Noise
is trained with config/config.yaml's train settings three times on the same exposures:

- ``undithered``: the same fields without offsets (every exposure sees the truth as it is):
  what the network reaches when nothing is misaligned;
- ``whole pixels``: dithered, the targets aligned by whole pixels (before sub-pixel
  targets);
- ``sub-pixel``: dithered, each target moved onto its input's sky
  (:func:`astrodenoise.sampling.target_window`: the default).

Each network denoises exposure 0 of every field (whose truth is the rendered one), with
config/config.yaml's predict settings, scored as ``benchmarks/quality.py`` scores: PSNR,
flux bias of bright and faint sources at 1, 2, 3 x FWHM and Kron, unmatched detections.

    .venv/bin/python benchmarks/dither.py          # -> benchmarks/dither.{json,md}
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import quality
import yaml
from scipy import ndimage
from tables import write_tables

from astrodenoise import io
from astrodenoise.alignment import shift_integer
from astrodenoise.noise import estimate_noise
from astrodenoise.noise_model import NoiseModel
from astrodenoise.photometry import APERTURES
from astrodenoise.provenance import code_version
from astrodenoise.sampling import Exposure
from astrodenoise.simulate import SimulationConfig, _base_header, simulate_exposure, simulate_field
from astrodenoise.tiling import PredictConfig
from astrodenoise.train import TrainConfig, method_settings, train_model

REPO = Path(__file__).resolve().parents[1]
#: Largest dither per axis, pixels.
DITHER = 3.0
VARIANTS = ("undithered", "whole pixels", "sub-pixel")


def write_fields(out: Path, config: SimulationConfig) -> list[dict]:
    """Per field: its truth and catalogue (written as the demo writes them) and each
    exposure's data, noise model and offset (dy, dx) to the field's exposure 0 (the
    register step's convention: exposure pixel (y - dy, x - dx) sees reference pixel
    (y, x)), dithered and not."""
    fields = []
    seeds = np.random.SeedSequence(config.seed).spawn(config.n_fields)
    for f in range(config.n_fields):
        field_seq, offset_seq, *exposure_seqs = seeds[f].spawn(2 + config.n_exposures)
        truth, catalogue, wcs, _ = simulate_field(config, f, np.random.default_rng(field_seq))
        name = f"field{f:02d}"
        header = _base_header(config, wcs, name)
        io.write_fits_image(out / "truth" / f"{name}.fits", truth, header)
        with io.atomic_path(out / "catalog" / f"{name}.ecsv") as tmp:
            catalogue.write(tmp, format="ascii.ecsv")
        offsets = np.random.default_rng(offset_seq).uniform(-DITHER, DITHER, size=(config.n_exposures, 2))
        offsets[0] = 0.0
        exposures = []
        for e, (offset, seq) in enumerate(zip(offsets, exposure_seqs, strict=True)):
            moved = ndimage.shift(truth, -offset, order=3, mode="nearest")  # exposure(z) = truth(z + d)
            dithered = simulate_exposure(moved, config, np.random.default_rng(seq))
            plain = simulate_exposure(truth, config, np.random.default_rng(seq))
            noise = estimate_noise(dithered, header=header) | {"exposure": f"{name}_e{e:02d}"}
            exposures.append({"name": f"{name}_e{e:02d}", "offset": offset, "dithered": dithered,
                              "plain": plain, "noise": noise})
        io.write_fits_image(out / "raw" / f"{name}_e00.fits", exposures[0]["plain"], header)
        io.write_json(out / "noise" / f"{name}_e00.json", exposures[0]["noise"])
        fields.append({"name": name, "exposures": exposures})
    return fields


def training_exposures(fields: list[dict], variant: str) -> list[Exposure]:
    """The exposures as :func:`astrodenoise.alignment.load_aligned` gives them to training:
    on exposure 0's grid by whole pixels, with the fraction left (zero for ``whole
    pixels``, as before sub-pixel targets)."""
    out = []
    for field in fields:
        for exp in field["exposures"]:
            offset, noise = exp["offset"], NoiseModel.from_json(exp["noise"])
            if variant == "undithered":
                data, fraction = exp["plain"], (0.0, 0.0)
            else:
                data = shift_integer(exp["dithered"], offset, exp["dithered"].shape)
                fraction = (0.0, 0.0)
                if variant == "sub-pixel":
                    fraction = tuple(float(v - round(v)) for v in offset)
            out.append(Exposure(name=exp["name"], field=field["name"], data=data.astype(np.float32),
                                noise=noise, fraction=fraction))
    return out


def run(config: SimulationConfig, train_settings: dict, predict: PredictConfig, work: Path) -> dict:
    fields = write_fields(work, config)
    train_config = TrainConfig.from_dict(method_settings(train_settings, "n2n"))
    checkpoints, seconds = {}, {}
    for variant in VARIANTS:
        start = time.perf_counter()
        checkpoints[variant] = train_model(training_exposures(fields, variant), train_config)
        seconds[variant] = round(time.perf_counter() - start, 1)
        print(f"trained n2n ({variant}) in {seconds[variant]:.0f} s", flush=True)
    contexts, per_exposure = [], []
    for field in fields:
        raw = work / "raw" / f"{field['name']}_e00.fits"
        ctx = quality.exposure_context(raw, work / "noise" / f"{field['name']}_e00.json",
                                       work / "truth" / f"{field['name']}.fits",
                                       work / "catalog" / f"{field['name']}.ecsv")
        row = {"input": quality.score(ctx["data"], ctx) | {"seconds": 0.0}}
        for variant, checkpoint in checkpoints.items():
            image = quality.denoise_with_checkpoint(ctx["data"], ctx["noise"], checkpoint, config=predict)
            row[variant] = quality.score(image, ctx) | {"seconds": 0.0}
        contexts.append(ctx)
        per_exposure.append(row)
    summary = quality.summarise(per_exposure, contexts, ["input", *VARIANTS])
    offsets = [list(map(float, e["offset"])) for f in fields for e in f["exposures"]]
    return {"summary": summary, "train_seconds": seconds, "offsets": offsets}


def _pct(cell: dict) -> str:
    return "n/a" if cell.get("bias") is None else f"{100 * cell['bias']:+.1f}"


def markdown(result: dict, meta: dict) -> str:
    lines = [
        f"# Noise2Noise on dithered exposures ({meta['n_fields']} demo fields of seed {meta['seed']}, "
        f"{meta['n_exposures']} exposures each, offsets up to {DITHER:g} px)",
        "",
        f"Definitions: module docstring of benchmarks/dither.py. Code {meta['code_version']}; scored on "
        "exposure 0 of each field against its truth.",
        "",
        "| image | PSNR dB | bright 1/2/3 × FWHM / Kron (%) | faint 1/2/3 × FWHM / Kron (%) "
        "| unmatched detections | training s |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["summary"].items():
        cells = {cls: " / ".join(_pct(row["apertures"][k][cls]) for k in APERTURES)
                 for cls in ("bright", "faint")}
        seconds = result["train_seconds"].get(name, "")
        lines.append(f"| {name} | {row['psnr']:.2f} | {cells['bright']} | {cells['faint']} "
                     f"| {row['unmatched']} | {seconds} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=3)
    parser.add_argument("--seed", type=int, default=242)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "dither")
    args = parser.parse_args(argv)
    settings = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = dataclasses.replace(SimulationConfig.from_dict(settings["simulate"]), seed=args.seed,
                                 n_fields=args.fields)
    train_settings = {k: v for k, v in settings["train"].items() if k != "methods"}
    predict = PredictConfig.from_dict(settings["predict"])
    with tempfile.TemporaryDirectory() as work:
        result = run(config, train_settings, predict, Path(work))
    meta = {"n_fields": args.fields, "seed": args.seed, "n_exposures": config.n_exposures,
            "code_version": code_version(), "train": train_settings, "predict": dataclasses.asdict(predict)}
    write_tables(args.out, {"meta": meta} | result, markdown(result, meta))


if __name__ == "__main__":
    main()
