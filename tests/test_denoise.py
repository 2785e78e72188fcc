"""Tests of astrodenoise.denoise: loading a checkpoint and running it, at any precision, on any device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from astrodenoise import io
from astrodenoise.denoise import denoise_array, denoise_with_uncertainty, load_model, torch_device
from conftest import SIGMA, SKY, checkpoint_norm, linear_norm

pytestmark = pytest.mark.usefixtures("_fresh_model_cache")  # load_model caches on the path


def test_denoise_array_keeps_nan_and_units(make_image, tiny_checkpoint):
    image = make_image((40, 44), sky=SKY, sigma=SIGMA, seed=8).data.copy()
    image[10, 10] = np.nan
    model, scale = load_model(str(tiny_checkpoint), "cpu"), checkpoint_norm(tiny_checkpoint).scale

    out = denoise_array(image, model, norm=linear_norm(scale))
    shifted = denoise_array(image + 50.0, model, norm=linear_norm(scale, SKY + 50.0))

    assert out.shape == image.shape and out.dtype == np.float32
    assert np.isnan(out[10, 10]) and np.isfinite(out).sum() == out.size - 1
    # Normalisation is global: shifting data and offset together shifts the output.
    np.testing.assert_allclose(shifted, out + 50.0, rtol=0, atol=1e-4)


def test_load_model_restores_weights_and_scale(tmp_path, make_checkpoint, tiny_unet):
    path = make_checkpoint(tmp_path / "m.pt", scale=4.5, seed=3)
    saved = io.load_checkpoint(path)["model"]

    model, scale = load_model(str(path), "cpu"), checkpoint_norm(path).scale

    assert scale == 4.5
    assert not model.training
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[key])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_raises():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        torch_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_prediction_matches_cpu(make_image, tiny_checkpoint):
    image = make_image((96, 96), sky=SKY, sigma=SIGMA, seed=9).data
    cpu_model, scale = load_model(str(tiny_checkpoint), "cpu"), checkpoint_norm(tiny_checkpoint).scale
    gpu_model = load_model(str(tiny_checkpoint), "cuda")

    on_cpu = denoise_array(image, cpu_model, norm=linear_norm(scale))
    on_gpu = denoise_array(image, gpu_model, norm=linear_norm(scale))

    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-3 * SIGMA)


def test_uncertainty_mean_is_close_to_plain_prediction(make_image, tiny_checkpoint):
    image = make_image((64, 64), sky=SKY, sigma=SIGMA, seed=12).data
    model, scale = load_model(str(tiny_checkpoint), "cpu"), checkpoint_norm(tiny_checkpoint).scale
    plain = denoise_array(image, model, norm=linear_norm(scale))

    mean, err = denoise_with_uncertainty(image, model, norm=linear_norm(scale))

    # A random network is not equivariant, but each copy lies within a few spreads.
    assert np.abs(plain - mean).max() <= 3 * np.sqrt(8) * err.max()


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_stays_close_to_float32(make_image, tiny_checkpoint, precision):
    image = make_image((64, 96), sky=SKY, sigma=SIGMA, seed=13).data
    model, scale = load_model(str(tiny_checkpoint), "cpu"), checkpoint_norm(tiny_checkpoint).scale
    exact = denoise_array(image, model, norm=linear_norm(scale))

    reduced = denoise_array(image, model, norm=linear_norm(scale), precision=precision)

    assert reduced.dtype == np.float32
    np.testing.assert_allclose(reduced, exact, rtol=2e-2, atol=0.05 * SIGMA)
