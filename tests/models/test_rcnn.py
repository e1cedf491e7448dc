"""MITOS-RCNN (models/rcnn.py): trunk geometry, anchors, the conv3 + conv4 fusion, the cascaded RPN's
loss against torchvision's components and a hand computation, eq. 2's lambda, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from histoscope.models import create_model, list_models
from histoscope.models.rcnn import BOX_LOSSES, CascadeRPN, FusionNeck, L2Norm, MitosRCNN, SmallObjectAnchors, mitos_rcnn_loss, vgg16_stages


def _model(variant: str = "cascade", **kw) -> MitosRCNN:
    torch.manual_seed(0)
    return create_model("mitos_rcnn", num_classes=2, variant=variant, width=kw.pop("width", 0.125), **kw)


def test_registered_with_its_preprocessing():
    assert "mitos_rcnn" in list_models()
    m = _model()
    assert m.config.mpp == 0.25 and m.config.classes == ["background", "mitosis"] and m.config.input_size == 96
    assert m.config.arch_kwargs["variant"] == "cascade"


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown MITOS-RCNN variant 'conv6'; choose one of \['conv5', 'conv4', 'cascade'\]"):
        _model("conv6")


def test_vgg16_stages_follow_torchvision_layout():
    """Width 1 has exactly torchvision VGG-16's convolutions (conv1_1 .. conv5_3)."""
    from torchvision.models import vgg16

    to3, to4, to5, (c3, c4, c5) = vgg16_stages(1.0, batch_norm=False)
    ours = [m for s in (to3, to4, to5) for m in s if isinstance(m, torch.nn.Conv2d)]
    with torch.device("meta"):  # the layout only: no 138 M parameters to initialise
        ref = [m for m in vgg16(weights=None).features if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in ours] == [(m.in_channels, m.out_channels, m.kernel_size) for m in ref]
    assert (c3, c4, c5) == (256, 512, 512)
    assert vgg16_stages(0.25)[3] == (64, 128, 128)


@pytest.mark.parametrize("size", [96, 100, 128])
def test_feature_strides(size):
    m = _model().eval()
    with torch.no_grad():
        f = m.forward_features(torch.rand(2, 3, size, size))
    assert f["conv3"].shape[-1] == size // 4 and f["conv4"].shape[-1] == size // 8
    assert f["fused"].shape[-2:] == f["conv3"].shape[-2:] and f["fused"].shape[1] == 32  # 256 * width
    m5 = _model("conv5").eval()
    with torch.no_grad():
        assert m5.forward_features(torch.rand(1, 3, size, size))["conv5"].shape[-1] == size // 16
    assert m.stride == 4 and m5.stride == 16 and _model("conv4").stride == 8


def test_anchors_small_plus_one_64px_square():
    gen = SmallObjectAnchors()
    a = gen.cell_anchors[0]
    wh = torch.stack([a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]], 1)
    assert gen.num_anchors_per_location() == [10] and len(a) == 10
    squares = sorted(int(w) for w, h in wh.tolist() if w == h)
    assert squares == [16, 24, 32, 64]  # 1:1 at 16, 24, 32 and the paper's 64 x 64
    assert wh.min() >= 11 and (wh == 64).all(1).sum() == 1  # only one 64 px anchor (1:1)
    # over an image: one set per feature-map cell, centred on the cell's stride grid
    img = ImageList(torch.zeros(1, 3, 96, 96), [(96, 96)])
    anchors = gen(img, [torch.zeros(1, 8, 12, 12)])[0]
    assert anchors.shape == (12 * 12 * 10, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert set(centres[:, 0].unique().tolist()) == {8.0 * i for i in range(12)}


def test_l2norm_and_fusion_by_hand():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9)
    n = L2Norm(5, scale=3.0)
    assert torch.allclose(n(x).norm(dim=1), torch.full((2, 7, 9), 3.0), atol=1e-5)
    neck = FusionNeck(6, 10, 12)
    c3, c4 = torch.randn(1, 6, 25, 25), torch.randn(1, 10, 12, 12)
    up = neck.up(c4, output_size=[25, 25])
    assert up.shape[-2:] == (25, 25)
    expect = F.relu(neck.reduce(torch.cat([20 * c3 / c3.norm(dim=1, keepdim=True), 20 * up / up.norm(dim=1, keepdim=True)], 1)))
    assert torch.allclose(neck(c3, c4), expect, atol=1e-5)


def test_box_coder_round_trip():
    """The cascaded RPN predicts deltas with torchvision's BoxCoder: decode(encode(gt)) == gt."""
    rpn2 = CascadeRPN(8, representation=16)
    assert isinstance(rpn2.box_coder, BoxCoder)
    props = torch.tensor([[10.0, 10, 40, 40], [50, 50, 90, 80], [0, 0, 16, 16]])
    gt = torch.tensor([[12.0, 8, 44, 40], [48, 52, 80, 84], [2, 1, 30, 20]])
    codes = rpn2.box_coder.encode([gt], [props])[0]
    assert torch.allclose(rpn2.box_coder.decode(codes, [props]).view(-1, 4), gt, atol=1e-4)


def test_cascade_rpn_loss_is_the_hand_computation():
    """Fewer proposals than the sampler's batch: every labelled one is sampled, so the loss is
    BCE over the matched labels + smooth L1 (beta 1/9) of the positives / number sampled."""
    torch.manual_seed(0)
    rpn2 = CascadeRPN(4, representation=8).train()
    fused = torch.randn(1, 4, 24, 24)
    gt = torch.tensor([[30.0, 30, 62, 62]])
    props = torch.tensor([[31.0, 29, 63, 61], [0, 0, 32, 32], [60, 60, 92, 92], [36, 36, 68, 68], [20, 40, 52, 72]])
    _, losses = rpn2(fused, [props], [(96, 96)], [{"boxes": gt, "labels": torch.tensor([1])}])
    allp = torch.cat([props, gt])  # ground truth added to the proposals in training
    obj, deltas = rpn2.head(rpn2.roi_pool({"0": fused}, [allp], [(96, 96)]))
    iou = box_iou(gt, allp)[0]
    labels = torch.full((len(allp),), -1.0)
    labels[iou < 0.3] = 0
    labels[iou >= 0.7] = 1
    labels[iou == iou.max()] = 1  # low-quality match: the best proposal of each ground truth
    keep = labels >= 0
    pos = labels == 1
    target = rpn2.box_coder.encode([gt.expand(len(allp), 4)], [allp])[0]
    bce = F.binary_cross_entropy_with_logits(obj[keep], labels[keep])
    l1 = F.smooth_l1_loss(deltas[pos], target[pos], beta=1 / 9, reduction="sum") / keep.sum()
    assert torch.allclose(losses["loss_rpn2_objectness"], bce, atol=1e-6)
    assert torch.allclose(losses["loss_rpn2_box_reg"], l1, atol=1e-6)


def test_eq2_lambda_weights_the_box_terms():
    losses = {"loss_objectness": torch.tensor(0.7), "loss_rpn_box_reg": torch.tensor(0.02), "loss_rpn2_objectness": torch.tensor(0.5),
              "loss_rpn2_box_reg": torch.tensor(0.01), "loss_classifier": torch.tensor(0.3), "loss_box_reg": torch.tensor(0.05)}  # fmt: skip
    assert set(BOX_LOSSES) <= set(losses)
    assert float(mitos_rcnn_loss(losses)) == pytest.approx(0.7 + 0.5 + 0.3 + 10 * (0.02 + 0.01 + 0.05))
    assert float(mitos_rcnn_loss(losses, box_weight=1.0)) == pytest.approx(1.58)
    m = _model().train()
    x = torch.rand(2, 3, 96, 96)
    targets = [{"boxes": torch.tensor([[30.0, 30, 62, 62]]), "labels": torch.tensor([1])}, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    out = m(x, targets)
    assert set(out) == {"loss_objectness", "loss_rpn_box_reg", "loss_rpn2_objectness", "loss_rpn2_box_reg", "loss_classifier", "loss_box_reg"}
    assert torch.allclose(m.loss(out), mitos_rcnn_loss(out, box_weight=10.0))
    assert set(_model("conv5").train()(x, targets)) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def test_eval_output_and_bad_input():
    m = _model("conv4").eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, 128, 128))
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    b = out[0]["boxes"]
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 128).all() and (out[0]["scores"] <= 1).all()
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\) images"):
        m(torch.rand(3, 128, 128))
    with pytest.raises(ValueError, match="training needs one target dict per image"):
        m.train()(torch.rand(1, 3, 96, 96))


def test_checkpoint_and_bundle_round_trip(tmp_path, monkeypatch):
    """A training checkpoint reloads through the safe loader (weights_only), a bundle through
    load_pretrained (sha256 checked), both rebuilt from the file's config alone."""
    from histoscope.models import pretrained as pre
    from histoscope.train.engine import _save, load_checkpoint

    m = _model("cascade", width=0.125).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ref = m(x)[0]
    _save(tmp_path / "best.pt", {"model": m.state_dict(), "config": m.config.to_dict(), "epoch": 1})
    back = load_checkpoint(tmp_path / "best.pt")
    assert isinstance(back, MitosRCNN) and back.variant == "cascade" and back.width == 0.125
    with torch.no_grad():
        out = back(x)[0]
    assert torch.equal(out["boxes"], ref["boxes"]) and torch.equal(out["scores"], ref["scores"])
    monkeypatch.setattr(pre, "BUNDLED", tmp_path / "weights")
    pre.export_bundle(m, tmp_path / "weights" / "toy_rcnn.pt", card={"detection_threshold": 0.6, "body": "test"})
    loaded = pre.load_pretrained("toy_rcnn")
    assert isinstance(loaded, MitosRCNN) and loaded.card["detection_threshold"] == 0.6
    for k, v in m.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(loaded.state_dict()[k], v.half().float())
    # the exported file by its path (what `train rcnn --export F` then `detect --model F` does)
    by_path = pre.resolve_model(tmp_path / "weights" / "toy_rcnn.pt")
    assert isinstance(by_path, MitosRCNN) and by_path.card["detection_threshold"] == 0.6
    assert all(torch.equal(by_path.state_dict()[k], v) for k, v in loaded.state_dict().items())
    with open(tmp_path / "weights" / "toy_rcnn.pt", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ValueError, match="does not match its model card"):
        pre.load_pretrained("toy_rcnn")
    with pytest.raises(ValueError, match=r"toy_rcnn\.pt: checksum .* does not match its model card"):
        pre.resolve_model(tmp_path / "weights" / "toy_rcnn.pt")
    (tmp_path / "weights" / "toy_rcnn.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"toy_rcnn\.json: not a readable model card for toy_rcnn\.pt"):
        pre.resolve_model(tmp_path / "weights" / "toy_rcnn.pt")


def test_cuda_when_asked():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    m = _model().to("cuda").eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 96, 96, device="cuda"))
    assert out[0]["boxes"].device.type == "cuda"


def test_iou_of_boxes_around_the_same_centre():
    """8 um boxes around centroids 2 um apart still overlap at IoU > 0.5 (the head's positive threshold)."""
    from histoscope.datasets.mitosis_boxes import boxes_from_centroids

    a = torch.from_numpy(boxes_from_centroids(np.array([[64.0, 64.0]]), mpp=0.25))
    b = torch.from_numpy(boxes_from_centroids(np.array([[72.0, 64.0]]), mpp=0.25))
    assert float(box_iou(a, b)) == pytest.approx(24 * 32 / (2 * 32 * 32 - 24 * 32))
