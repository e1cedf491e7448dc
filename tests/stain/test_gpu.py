"""The torch paths on a GPU give what they give on the CPU (skipped without CUDA)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from histoscope.stain import Augmentation, MacenkoNormalizer, ReinhardNormalizer, hed_jitter, random_hed_params
from histoscope.utils.convert import image_to_tensor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    from skimage import data

    ihc = np.array(data.immunohistochemistry())
    return image_to_tensor(np.stack([ihc[y : y + 128, x : x + 128] for y in (0, 256) for x in (0, 256)]))


def test_hed_jitter_cuda_equals_cpu(batch):
    p = random_hed_params(0, batch=len(batch))
    cpu = hed_jitter(batch, p)
    gpu = hed_jitter(batch.cuda(), p)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)


def test_normalizers_cuda_equal_cpu(batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cls in (MacenkoNormalizer, ReinhardNormalizer):
            cpu = cls(backend="torch").fit(batch[0]).transform(batch)
            gpu = cls(backend="torch", device="cuda").fit(batch[0]).transform(batch)
            assert gpu.device.type == "cuda"
            torch.testing.assert_close(gpu.cpu(), cpu, atol=2 / 255, rtol=0)


def test_augmentation_cuda_equals_cpu(batch):
    params = Augmentation("RCSEHB", crop=100, seed=0).make_params(len(batch), 128, 128)
    aug = Augmentation("RCSEHB", crop=100, seed=0)
    torch.testing.assert_close(aug.replay(batch.cuda(), params).cpu(), aug.replay(batch, params), atol=2e-3, rtol=0)
