"""The whole-slide mitosis paper's all-convolutional CNN (Table II): shapes, width factor, dense = patch-wise."""

from __future__ import annotations

import pytest
import torch

from histoscope.models import create_model
from histoscope.models.mitosis import STRIDE2_FIRST, TABLE_II, head_kernel


def _net(size: int = 64, **kw):
    torch.manual_seed(0)
    return create_model("mitosis_cnn", num_classes=2, input_size=size, mpp=0.25, **kw).eval()


def test_table_ii_head_kernel_is_14_for_100px_and_5_for_64px():
    # 100 -> 98 -> 48 -> 46 -> 22 -> 20 -> 18 -> 16 -> 14: the paper's 14 x 14 convolution
    assert head_kernel(100) == 14
    assert head_kernel(64) == 5
    assert [c for c, _ in TABLE_II] == [32, 32, 64, 64, 128, 128, 256, 256]
    assert sum(s == 2 for _, s in TABLE_II) == 2


def test_width_factor_scales_every_layer():
    full, half = _net(width=1.0), _net(width=0.5)
    convs = lambda m: [l.out_channels for l in m.modules() if isinstance(l, torch.nn.Conv2d)]  # noqa: E731
    assert convs(full) == [32, 32, 64, 64, 128, 128, 256, 256, 512, 2]
    assert convs(half) == [16, 16, 32, 32, 64, 64, 128, 128, 256, 2]
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0.2 < n(half) / n(full) < 0.3  # parameters scale ~ gamma^2


@pytest.mark.parametrize("size,strides", [(64, None), (100, None), (64, STRIDE2_FIRST), (100, (2, 2, 1, 2, 1, 1, 1, 1))])
def test_dense_output_equals_patchwise_evaluation(size, strides):
    m = _net(size, width=0.25, strides=strides)
    st = m.stride
    x = torch.rand(1, 3, size + 5 * st + 3, size + 7 * st + 1)
    with torch.no_grad():
        dense = m.forward_dense(x)
        rf = m.receptive_field
        assert size - 8 <= rf <= size
        assert dense.shape[-2:] == ((x.shape[-2] - rf) // st + 1, (x.shape[-1] - rf) // st + 1)
        for i, j in [(0, 0), (2, 3), (5, 7), (4, 1), (dense.shape[-2] - 1, dense.shape[-1] - 1)]:
            if st * i + size > x.shape[-2] or st * j + size > x.shape[-1]:
                continue
            patch = m(x[:, :, st * i : st * i + size, st * j : st * j + size])
            assert torch.allclose(dense[0, :, i, j], patch[0], atol=1e-5)


def test_patch_forward_rejects_other_sizes_and_names_forward_dense():
    m = _net(64, width=0.25)
    with pytest.raises(ValueError, match="forward_dense"):
        m(torch.rand(1, 3, 80, 80))
    with pytest.raises(ValueError, match="smaller than"):
        m.forward_dense(torch.rand(1, 3, 40, 40))
    with pytest.raises(ValueError, match="2 classes"):
        create_model("mitosis_cnn", num_classes=3)
    with pytest.raises(ValueError, match="too small"):
        create_model("mitosis_cnn", num_classes=2, input_size=16)
    with pytest.raises(ValueError, match="strides must be 8"):
        create_model("mitosis_cnn", num_classes=2, strides=(2, 2))


def test_stride2_variant_has_stride_two_first_layers_and_the_same_total_stride():
    m = _net(64, width=0.5, strides=STRIDE2_FIRST)
    convs = [l for l in m.features if isinstance(l, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == list(STRIDE2_FIRST)
    assert m.stride == 4 and m.head_kernel == 3


def test_total_stride_is_the_product_of_the_layer_strides():
    assert _net(100, width=0.25, strides=(2, 2, 1, 2, 1, 1, 1, 1)).stride == 8
    assert _net(64, width=0.25).stride == 4


def test_grad_cam_runs_on_the_last_feature_map():
    from histoscope.explain import grad_cam

    m = _net(64, width=0.25)
    cam = grad_cam(m, torch.rand(2, 3, 64, 64), target_layer=m.features, target=1)
    assert cam.shape[0] == 2 and torch.isfinite(cam).all()
