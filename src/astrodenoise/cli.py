"""Command-line interface: one sub-command per pipeline step.

Each sub-command is a thin wrapper over the public function of its module, so every
step of the Snakemake workflow also runs by hand::

    astrodenoise simulate --out demo/
    astrodenoise ingest demo/raw/field00_e00.fits --out field00_e00.zarr
    astrodenoise noise field00_e00.zarr --out field00_e00.json
    astrodenoise ingest demo/raw/*.fits --out-dir stores/     # one job, many exposures
    astrodenoise register --images a.zarr b.zarr --out field.json
    astrodenoise noise-survey --images a.zarr b.zarr --noise a.json b.json --fields f f \\
        --out survey.json --plot survey.png
    astrodenoise train --images a.zarr b.zarr --noise a.json b.json --fields f f \\
        --method n2n --out model.pt --curve curve.csv
    astrodenoise predict a.zarr --noise a.json --model model.pt --out-zarr d.zarr --out-fits d.fits
    astrodenoise evaluate a.zarr --noise a.json --denoised n2n=d.zarr --out-json e.json --out-png e.png
    astrodenoise report --evaluations e.json --figures e.png --survey demo --out report.html

Settings of a step are given as JSON with ``--config`` (keys as in config/config.yaml).
The CLI is the top of the package: each sub-command imports its step when it runs (the
one place where the package imports inside functions), so that an ingest or noise job
starts in about 1 s instead of the 8 s that importing every step (torch, bm3d,
matplotlib) takes; on a survey of 10,000 exposures that is hours of cluster time.
``@FILE`` stands for the arguments listed in FILE, one per line (for long lists of exposures).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .io import InputError

__all__ = ["main", "build_parser"]


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"expected NAME=PATH, got {item!r}")
        out[name] = path
    return out


def _simulate(args) -> None:
    from .simulate import SimulationConfig, write_demo_survey, write_mosaic

    if args.mosaic:
        catalogue = write_mosaic(args.out, SimulationConfig.from_dict(args.config), name=args.mosaic,
                                 chunk=args.chunk, fits_too=args.fits)
        print(f"wrote mosaic {args.mosaic} ({len(catalogue)} sources, sky "
              f"{catalogue.meta['sky_adu']:.3f} ADU) to {args.out}")
        return
    fields = write_demo_survey(args.out, SimulationConfig.from_dict(args.config))
    print(f"wrote {sum(map(len, fields.values()))} exposures of {len(fields)} fields to {args.out}")


def _outputs(inputs: list[str], out: str | None, out_dir: str | None, name: Callable, suffix: str):
    """Output path per input: ``--out`` for a single input, else ``--out-dir/<name><suffix>``."""
    if out_dir is None:
        if out is None or len(inputs) != 1:
            raise ValueError("give --out with one input, or --out-dir with one or more inputs")
        return [out]
    if out is not None:
        raise ValueError("give --out or --out-dir, not both")
    return [f"{out_dir}/{name(path)}{suffix}" for path in inputs]


def _ingest(args) -> None:
    from .ingest import IngestConfig, exposure_name, ingest

    config = IngestConfig.from_dict(args.config)
    outputs = _outputs(args.input, args.out, args.out_dir, exposure_name, ".zarr")
    for number, (path, out) in enumerate(zip(args.input, outputs, strict=True), 1):
        ingest(path, out, config=config)
        print(f"[{number}/{len(outputs)}] {path} -> {out}", flush=True)


def _noise(args) -> None:
    from .noise import NoiseConfig, noise

    config = NoiseConfig.from_dict(args.config)
    outputs = _outputs(args.input, args.out, args.out_dir, lambda p: Path(p).stem, ".json")
    for number, (path, out) in enumerate(zip(args.input, outputs, strict=True), 1):
        result = noise(path, out, config=config)
        print(f"[{number}/{len(outputs)}] {path}: sky {result['sky_level']:.3f}, "
              f"sigma {result['sigma']:.4f}", flush=True)


def _register(args) -> None:
    from .register import register

    for entry in register(args.images, out_json=args.out):
        offset = entry["offset"]
        where = f"offset dy={offset[0]:+.2f} dx={offset[1]:+.2f} px" if offset else "no offset"
        print(f"{entry['exposure']}: {entry['method']}, {where}")


def _noise_survey(args) -> None:
    from .noise import noise_survey

    result = noise_survey(args.images, args.noise, args.fields, out_json=args.out, out_png=args.plot,
                          registrations=args.registrations or [])
    fit = result["fit"]
    if fit.get("gain"):
        rn = f"{fit['read_noise']:.2f}" if fit.get("read_noise") is not None else "n/a"
        print(f"survey noise: gain {fit['gain']:.3f} +/- {fit['gain_err']:.3f} e-/ADU, read noise {rn} e-")
    else:
        print(f"survey noise: no Poisson-Gaussian fit ({fit.get('note', 'degenerate')})")


def _train(args) -> None:
    from .train import TrainConfig, train

    config = TrainConfig.from_dict(args.config | {"method": args.method})
    checkpoint = train(args.images, args.noise, args.fields, out_checkpoint=args.out,
                       out_curve=args.curve, config=config, registrations=args.registrations or [],
                       out_plot=args.plot, threads=args.threads)
    print(f"{args.method}: kept step {checkpoint['best_step']} of {checkpoint['step']} "
          f"({checkpoint['normalisation']['kind']} domain)")


def _predict(args) -> None:
    from .predict import predict
    from .tiling import Execution, PredictConfig

    predict(args.input, args.noise, args.model, out_zarr=args.out_zarr, out_fits=args.out_fits,
            config=PredictConfig.from_dict(args.config),
            execution=Execution.from_dict(args.execution | {"threads": args.threads}))


def _evaluate(args) -> None:
    from .evaluate import EvaluateConfig, evaluate, evaluate_field

    config = EvaluateConfig.from_dict(args.config)
    if len(args.noise) != len(args.input):
        raise ValueError(f"{len(args.input)} images but {len(args.noise)} --noise files")
    if args.out_dir is not None:
        # METHOD=DIR: the directory of each method's <image name>.zarr stores.
        evaluate_field(args.input, args.noise, _pairs(args.denoised), out_dir=args.out_dir,
                       truth_fits=args.truth, catalog=args.catalog, registration=args.registration,
                       models=_pairs(args.models), config=config)
        print(f"{len(args.input)} exposure(s) evaluated into {args.out_dir}")
        return
    if args.out_json is None or args.out_png is None or len(args.input) != 1:
        raise ValueError("give --out-json and --out-png with one image, or --out-dir")
    evaluate(args.input[0], args.noise[0], _pairs(args.denoised), out_json=args.out_json,
             out_png=args.out_png, truth_fits=args.truth, catalog=args.catalog,
             models=_pairs(args.models), config=config)


def _report(args) -> None:
    from .report import report

    report(args.evaluations, args.figures, out_html=args.out, survey=args.survey,
           noise_files=args.noise or [], curves=_pairs(args.curves), models=_pairs(args.models),
           config=args.config, noise_survey=args.noise_survey, noise_plot=args.noise_plot,
           out_summary=args.summary, max_figures=int(args.config.get("report", {}).get("figures", 24)))
    print(f"report written to {args.out}")


def _add(sub, name: str, func: Callable, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--config", type=_json_arg, default={},
                        help="settings of this step as a JSON object (keys as in config.yaml)")
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``astrodenoise`` command."""
    # "@FILE" reads arguments from FILE, one per line: the workflow passes the lists of a
    # large survey this way, since one shell word may not exceed 128 KiB on Linux.
    parser = argparse.ArgumentParser(prog="astrodenoise", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     fromfile_prefix_chars="@")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STEP")

    p = _add(sub, "simulate", _simulate, "Write the demo survey: raw/ exposures, truth/ images, catalog/.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--mosaic", metavar="NAME",
                   help="write one mosaic of side --config size instead, band by band: "
                        "raw/NAME.zarr, truth/NAME.zarr, catalog/NAME.ecsv")
    p.add_argument("--chunk", type=int, default=1024,
                   help="mosaic rows written at a time, also its zarr shard side (default 1024)")
    p.add_argument("--fits", action="store_true", help="mosaic: also write raw/NAME.fits, truth/NAME.fits")

    p = _add(sub, "ingest", _ingest, "Convert FITS exposures to chunked zarr v3 stores.")
    p.add_argument("input", nargs="+", help="FITS files (.fits, .fits.fz, .fits.gz)")
    p.add_argument("--out", help="zarr store to write (one input)")
    p.add_argument("--out-dir", help="directory for one <exposure>.zarr per input")

    p = _add(sub, "noise", _noise, "Measure sky level and noise sigma of ingested exposures (JSON).")
    p.add_argument("input", nargs="+", help="zarr stores from ingest")
    p.add_argument("--out", help="JSON file to write (one input)")
    p.add_argument("--out-dir", help="directory for one <store name>.json per input")

    p = _add(sub, "register", _register,
             "Register the exposures of one field to its first exposure (WCS or cross-correlation).")
    p.add_argument("--images", nargs="+", required=True, help="zarr stores of one field, reference first")
    p.add_argument("--out", required=True, help="JSON file to write")

    p = _add(sub, "noise-survey", _noise_survey,
             "Survey noise: gain and read noise from exposure pairs, exposure table, plot.")
    p.add_argument("--images", nargs="+", required=True, help="zarr stores from ingest")
    p.add_argument("--noise", nargs="+", required=True, help="noise JSON per image, same order")
    p.add_argument("--fields", nargs="+", required=True, help="field name per image, same order")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--plot", required=True, help="mean-variance PNG to write")
    p.add_argument("--registrations", nargs="*", help="register JSON per field")

    p = _add(sub, "train", _train, "Train a self-supervised denoiser on ingested exposures.")
    p.add_argument("--images", nargs="+", required=True, help="zarr stores from ingest")
    p.add_argument("--noise", nargs="+", required=True, help="noise JSON per image, same order")
    p.add_argument("--fields", nargs="+", required=True, help="field name per image, same order")
    p.add_argument("--method", choices=["n2v", "n2n"], required=True,
                   help="n2v: blind spot, single exposures; n2n: pairs of exposures of a field")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--curve", required=True, help="training curve CSV to write")
    p.add_argument("--plot", help="training curve PNG to write (optional)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: all)")
    p.add_argument("--registrations", nargs="*", help="register JSON per field (Noise2Noise alignment)")

    p = _add(sub, "predict", _predict, "Denoise an ingested exposure tile by tile (zarr + FITS).")
    p.add_argument("input", help="zarr store from ingest")
    p.add_argument("--noise", required=True, help="noise JSON of this exposure")
    p.add_argument("--model", required=True, help="checkpoint from train")
    p.add_argument("--out-zarr", required=True, help="zarr store to write")
    p.add_argument("--out-fits", required=True, help="FITS file to write (input header and WCS kept)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads in all (0: all)")
    p.add_argument("--execution", type=_json_arg, default={},
                   help="how it runs, as a JSON object (keys of execution.predict in config.yaml: "
                        "tile, workers, device, scheduler)")

    p = _add(sub, "evaluate", _evaluate,
             "Score input, Gaussian baseline and denoised images of exposures of one field.")
    p.add_argument("input", nargs="+", help="zarr stores from ingest (one field)")
    p.add_argument("--noise", nargs="+", required=True, help="noise JSON per image, same order")
    p.add_argument("--denoised", nargs="*", default=[], metavar="METHOD=PATH",
                   help="denoised zarr store (one image), or the directory of <image name>.zarr stores")
    p.add_argument("--truth", help="noise-free truth FITS of the field (demo survey)")
    p.add_argument("--catalog", help="source catalogue of the field (ECSV with x, y columns)")
    p.add_argument("--out-json", help="metrics JSON to write (one image)")
    p.add_argument("--out-png", help="cutout figure to write (one image)")
    p.add_argument("--out-dir", help="directory for <image name>.json and .png per image")
    p.add_argument("--registration", help="register JSON of the field: without a truth, each exposure "
                   "is scored against the mean of the others (leave-one-out)")
    p.add_argument("--models", nargs="*", default=[], metavar="METHOD=PT",
                   help="checkpoint of each method: injection-recovery denoises the injected "
                   "exposures with it")

    p = _add(sub, "report", _report, "Render the self-contained HTML report of a survey.")
    p.add_argument("--evaluations", nargs="+", required=True, help="evaluate JSON files")
    p.add_argument("--figures", nargs="+", required=True, help="evaluate PNG files, same order")
    p.add_argument("--noise", nargs="*", help="noise JSON files")
    p.add_argument("--curves", nargs="*", default=[], metavar="METHOD=CSV", help="training curves")
    p.add_argument("--models", nargs="*", default=[], metavar="METHOD=PT", help="checkpoints")
    p.add_argument("--noise-survey", help="survey noise JSON from noise-survey")
    p.add_argument("--noise-plot", help="mean-variance PNG from noise-survey")
    p.add_argument("--survey", required=True, help="survey name for the title")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--summary", help="JSON file for the overview numbers of the page")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``astrodenoise`` command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        # A <Step>Config dataclass refused an unknown key from --config.
        print(f"astrodenoise {args.command}: error: unknown setting in --config: {err}", file=sys.stderr)
        return 2
    except (InputError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"astrodenoise {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
