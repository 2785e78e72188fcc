"""Tests of astrodenoise.cli: sub-commands, help and error reporting."""

from __future__ import annotations

import pytest

from astrodenoise.cli import build_parser, main

STEPS = ["simulate", "ingest", "noise", "train", "predict", "evaluate", "report"]


@pytest.mark.parametrize("argv", [["--help"]] + [[step, "--help"] for step in STEPS])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    assert exit_info.value.code == 0
    assert "usage: astrodenoise" in capsys.readouterr().out


MINIMAL_ARGS = {
    "simulate": ["simulate", "--out", "d"],
    "ingest": ["ingest", "a.fits", "--out", "a.zarr"],
    "noise": ["noise", "a.zarr", "--out", "a.json"],
    "train": ["train", "--images", "a.zarr", "--noise", "a.json", "--fields", "f",
              "--method", "n2v", "--out", "m.pt", "--curve", "c.csv"],
    "predict": ["predict", "a.zarr", "--noise", "a.json", "--model", "m.pt",
                "--out-zarr", "d.zarr", "--out-fits", "d.fits"],
    "evaluate": ["evaluate", "a.zarr", "--noise", "a.json", "--out-json", "e.json",
                 "--out-png", "e.png"],
    "report": ["report", "--evaluations", "e.json", "--figures", "e.png", "--survey", "s",
               "--out", "r.html"],
}


@pytest.mark.parametrize("step", STEPS)
def test_parser_accepts_minimal_arguments_of_every_step(step):
    args = build_parser().parse_args(MINIMAL_ARGS[step])

    assert args.command == step
    assert callable(args.func)
    assert args.config == {}


def test_missing_step_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main([])

    assert exit_info.value.code == 2


@pytest.mark.parametrize("config", ["{not json", "[1, 2]"])
def test_bad_config_json_is_a_usage_error(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "a.fits", "--out", "a.zarr", "--config", config])

    assert exit_info.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_ingest_missing_input_returns_2_and_names_file(tmp_path, capsys):
    missing = tmp_path / "nope.fits"
    out = tmp_path / "nope.zarr"

    status = main(["ingest", str(missing), "--out", str(out)])

    err = capsys.readouterr().err
    assert status == 2
    assert "astrodenoise ingest: error:" in err
    assert str(missing) in err
    assert not out.exists()


def test_noise_missing_store_returns_2(tmp_path, capsys):
    missing = tmp_path / "nope.zarr"

    status = main(["noise", str(missing), "--out", str(tmp_path / "n.json")])

    assert status == 2
    assert str(missing) in capsys.readouterr().err


def test_simulate_then_ingest_and_noise_by_hand(tmp_path, capsys):
    config = '{"n_fields": 1, "n_exposures": 1, "size": 64, "cosmic_rays_per_mpix": 0}'

    assert main(["simulate", "--out", str(tmp_path / "demo"), "--config", config]) == 0
    raw = tmp_path / "demo" / "raw" / "field00_e00.fits"
    assert main(["ingest", str(raw), "--out", str(tmp_path / "e.zarr")]) == 0
    assert main(["noise", str(tmp_path / "e.zarr"), "--out", str(tmp_path / "e.json")]) == 0

    out = capsys.readouterr().out
    assert "wrote 1 exposures of 1 fields" in out
    assert (tmp_path / "e.json").is_file()


def test_malformed_denoised_pair_returns_2(tmp_path, capsys):
    status = main(["evaluate", "a.zarr", "--noise", "a.json", "--denoised", "n2n",
                   "--out-json", str(tmp_path / "e.json"), "--out-png", str(tmp_path / "e.png")])

    assert status == 2
    assert "NAME=PATH" in capsys.readouterr().err


def test_unknown_config_key_returns_2(fits_with_wcs, tmp_path, capsys):
    status = main(["ingest", str(fits_with_wcs), "--out", str(tmp_path / "e.zarr"),
                   "--config", '{"chunks": 64}'])

    assert status == 2
    assert "chunks" in capsys.readouterr().err
