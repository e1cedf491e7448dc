"""CAM and Grad-CAM: the Grad-CAM = ReLU(CAM) identity for GAP networks, a manual
reference for other layers, localisation of a bright square, and the mechanics
(targets, restored model state, hooks, errors); overlays and the figure."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from histoscope.explain import cam_figure, class_activation_map, grad_cam, overlay_heatmap

SRC = Path(__file__).resolve().parents[2] / "src" / "histoscope" / "explain"


# --------------------------------------------------------------------------- networks


class GapNet(nn.Module):
    """A small GAP CNN with the timm interface (forward_features / forward_head / get_classifier)."""

    def __init__(self, n_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(f).flatten(1))

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ResNetAdapter(nn.Module):
    """torchvision's resnet18 behind the timm interface."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.net = resnet18(weights=None, num_classes=n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.net.fc(torch.flatten(self.net.avgpool(f), 1))

    def get_classifier(self) -> nn.Linear:
        return self.net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def seeded(factory, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def batch(seed: int, n: int = 4, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


@pytest.fixture
def gapnet() -> GapNet:
    return seeded(GapNet)


@pytest.fixture(scope="module")
def resnet() -> ResNetAdapter:
    return seeded(ResNetAdapter)


def squares(rng: np.random.Generator, n: int, size: int = 32, side: int = 8):
    """Dim noise images; label 1 ones carry a bright ``side`` x ``side`` square at a random place."""
    x = rng.uniform(0.1, 0.6, (n, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 2, n)
    boxes = rng.integers(0, size - side + 1, (n, 2))
    for i in np.flatnonzero(y):
        r, c = boxes[i]
        x[i, :, r : r + side, c : c + side] = rng.uniform(0.85, 1.0, (3, side, side))
    return torch.from_numpy(x), torch.from_numpy(y), boxes


@pytest.fixture(scope="module")
def square_net() -> GapNet:
    """GapNet trained for a few steps to tell 'bright square somewhere' (1) from 'none' (0)."""
    net = seeded(lambda: GapNet(n_classes=2))
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(50):
        x, y, _ = squares(rng, 32)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


class HandSquareNet(nn.Module):
    """Hand-set GAP network: channel 0 = ReLU(mean brightness of a 4x4 cell - 0.8) is the class-1 evidence."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, kernel_size=4, stride=4)
        with torch.no_grad():
            conv.weight[0] = 1 / 48
            conv.weight[1] = -1 / 48
            conv.bias.copy_(torch.tensor([-0.8, 0.5]))
        self.features = nn.Sequential(conv, nn.ReLU())
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0, 1.0], [200.0, 0.0]]))
            self.fc.bias.zero_()

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, f):
        return self.fc(f.mean(dim=(2, 3)))

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def manual_cam(model, x, target) -> torch.Tensor:
    """Zhou et al.'s map written out: sum_k w_{c,k} f_k, bilinear upsampling, per-image min-max."""
    with torch.no_grad():
        f = model.forward_features(x)
        m = torch.einsum("bk,bkhw->bhw", model.get_classifier().weight[target], f)
        m = nn.functional.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo = m.amin(dim=(1, 2), keepdim=True)
        hi = m.amax(dim=(1, 2), keepdim=True)
        return (m - lo) / (hi - lo)


# --------------------------------------------------------------------------- reference checks


@pytest.mark.parametrize("name", ["gapnet", "resnet"])
def test_cam_matches_written_out_formula(request, name):
    model = request.getfixturevalue(name).eval()
    x = batch(1, size=64)
    target = torch.tensor([0, 1, 2, 1])
    cam = class_activation_map(model, x, target=target)
    torch.testing.assert_close(cam, manual_cam(model, x, target), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, layer", [("gapnet", "features"), ("resnet", "net.layer4")])
def test_grad_cam_equals_relu_cam_for_gap_networks(request, name, layer):
    # y_c = b_c + (1/hw) sum_k w_ck sum_ij f_k,ij, so alpha_k^c = w_ck / (h w) and
    # Grad-CAM = ReLU(CAM) / (h w): after per-image normalisation they agree to float32
    # rounding (atol 1e-5 on maps in [0, 1]; both sum the channels in the same order).
    model = request.getfixturevalue(name)
    x = batch(2, n=4, size=64)
    for target in (None, 0, torch.tensor([0, 1, 2, 1])):
        gc = grad_cam(model, x, target_layer=layer, target=target)
        cam = class_activation_map(model, x, target=target, relu=True)
        torch.testing.assert_close(gc, cam, atol=1e-5, rtol=0)
    assert (gc.amax(dim=(1, 2)) == 1).sum() >= 2  # not a vacuous all-zero comparison


def test_grad_cam_matches_manual_autograd_at_an_inner_layer(resnet):
    # Not the last layer, so the identity above does not apply: compare with Eq. 1-2 written out.
    x = batch(3, n=3, size=64)
    target = torch.tensor([2, 0, 1])
    n = resnet.net
    resnet.eval()
    with torch.enable_grad():
        a = n.layer3(n.layer2(n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x))))))).detach().requires_grad_(True)
        logits = n.fc(torch.flatten(n.avgpool(n.layer4(a)), 1))
        (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    m = (g.mean(dim=(2, 3), keepdim=True) * a.detach()).sum(1).clamp_min(0)
    m = nn.functional.interpolate(m[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    m = m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
    torch.testing.assert_close(grad_cam(resnet, x, target_layer="net.layer3", target=target), m, atol=1e-5, rtol=0)
    for p in resnet.parameters():
        p.grad = None


# --------------------------------------------------------------------------- localisation


def _peak_in_box(maps: torch.Tensor, boxes: np.ndarray, idx: np.ndarray, side: int) -> list[bool]:
    hits = []
    for i in idx:
        r, c = np.unravel_index(int(maps[i].argmax()), tuple(maps[i].shape))
        hits.append(bool(boxes[i, 0] <= r < boxes[i, 0] + side and boxes[i, 1] <= c < boxes[i, 1] + side))
    return hits


def test_hand_built_network_localises_the_square():
    net = HandSquareNet()
    x, y, boxes = squares(np.random.default_rng(5), 16, size=64, side=12)
    assert (net(x).argmax(1) == y).all()  # the construction does what it says
    idx = np.flatnonzero(y.numpy())
    assert len(idx) >= 4
    for maps in (
        class_activation_map(net, x, target=1),
        grad_cam(net, x, target_layer="features", target=1),
        grad_cam(net, x, target_layer="features.0", target=1),  # before the ReLU
    ):
        assert all(_peak_in_box(maps, boxes, idx, 12))


def test_trained_network_localises_the_square(square_net):
    x, y, boxes = squares(np.random.default_rng(1), 32)
    with torch.no_grad():
        assert (square_net(x).argmax(1) == y).float().mean() >= 0.95
    idx = np.flatnonzero(y.numpy())
    for maps in (
        class_activation_map(square_net, x, target=1),
        grad_cam(square_net, x, target_layer="features", target=1),
        grad_cam(square_net, x, target_layer="features.3", target=1),  # an inner conv
    ):
        assert np.mean(_peak_in_box(maps, boxes, idx, 8)) >= 0.9


# --------------------------------------------------------------------------- mechanics


@pytest.mark.parametrize("fn", ["cam", "gradcam"])
def test_shapes_range_and_detached(gapnet, fn):
    x = batch(4, n=5, size=40)
    maps = class_activation_map(gapnet, x) if fn == "cam" else grad_cam(gapnet, x, target_layer="features")
    assert maps.shape == (5, 40, 40) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert not maps.requires_grad and maps.grad_fn is None


def test_cam_default_is_min_max():
    maps = class_activation_map(seeded(GapNet), batch(4))
    torch.testing.assert_close(maps.amin(dim=(1, 2)), torch.zeros(4))
    torch.testing.assert_close(maps.amax(dim=(1, 2)), torch.ones(4))


@pytest.mark.parametrize("fn", ["cam", "gradcam"])
def test_target_none_is_argmax_and_per_image_targets(gapnet, fn):
    def run(x, target):
        if fn == "cam":
            return class_activation_map(gapnet, x, target=target)
        return grad_cam(gapnet, x, target_layer=gapnet.features[3], target=target)

    x = batch(5, n=4)
    with torch.no_grad():
        pred = gapnet.eval()(x).argmax(1)
    torch.testing.assert_close(run(x, None), run(x, pred))
    targets = [2, 0, 1, 2]
    together = run(x, torch.tensor(targets))
    for i, t in enumerate(targets):
        torch.testing.assert_close(together[i], run(x[i : i + 1], t)[0], atol=1e-5, rtol=0)  # batched vs single convs
    torch.testing.assert_close(run(x, targets), together)  # a list works too
    torch.testing.assert_close(run(x, 1), run(x, [1, 1, 1, 1]))  # one int for all


@pytest.mark.parametrize("fn", ["cam", "gradcam"])
@pytest.mark.parametrize(
    "target, err",
    [
        (3, ValueError),
        (-1, ValueError),
        ([0, 1], ValueError),
        (torch.tensor([0.0, 1.0, 2.0, 0.0]), TypeError),
        (True, TypeError),
    ],
)
def test_bad_targets(gapnet, fn, target, err):
    x = batch(6)
    with pytest.raises(err):
        if fn == "cam":
            class_activation_map(gapnet, x, target=target)
        else:
            grad_cam(gapnet, x, target_layer="features", target=target)


def _state(model: nn.Module):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("fn", ["cam", "gradcam"])
def test_model_state_restored_and_no_gradient_leak(gapnet, fn):
    gapnet.train()
    gapnet.features[0].eval()  # mixed modes must come back as they were
    gapnet.features[0].weight.requires_grad_(False)  # and so must mixed requires_grad
    before = _state(gapnet)
    seen = []
    probe = gapnet.features[3].register_forward_pre_hook(lambda m, a: seen.append(m.training))
    x = batch(7)
    (class_activation_map(gapnet, x) if fn == "cam" else grad_cam(gapnet, x, target_layer="features.6"))
    probe.remove()
    assert seen == [False]  # ran in eval mode
    assert _state(gapnet) == before
    assert all(p.grad is None for p in gapnet.parameters())
    assert x.grad is None and not x.requires_grad
    assert all(not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks for m in gapnet.modules())


def test_grad_cam_under_no_grad_and_inference_mode(gapnet):
    x = batch(8)
    ref = grad_cam(gapnet, x, target_layer="features")
    with torch.no_grad():
        torch.testing.assert_close(grad_cam(gapnet, x, target_layer="features"), ref)
    with torch.inference_mode():
        xi = batch(8)
        torch.testing.assert_close(grad_cam(gapnet, xi, target_layer="features"), ref)
    assert torch.is_grad_enabled()


def test_grad_cam_survives_inplace_ops_after_the_layer():
    net = seeded(GapNet)
    for i in (1, 4, 7):
        net.features[i] = nn.ReLU(inplace=True)
    x = batch(9)
    plain = seeded(GapNet)
    torch.testing.assert_close(
        grad_cam(net, x, target_layer="features.6"), grad_cam(plain, x, target_layer="features.6"), atol=1e-6, rtol=0
    )


class Exploding(GapNet):
    boom = True

    def forward(self, x):
        f = self.forward_features(x)
        if self.boom:
            raise RuntimeError("boom")
        return self.forward_head(f)


def test_error_in_forward_removes_hooks_and_restores_state():
    net = seeded(Exploding)
    net.train()
    net.fc.weight.requires_grad_(False)
    before = _state(net)
    with pytest.raises(RuntimeError, match="boom"):
        grad_cam(net, batch(10), target_layer="features.6")
    assert _state(net) == before
    assert all(not m._forward_hooks for m in net.modules())

    class BadFeatures(GapNet):
        def forward_features(self, x):
            raise RuntimeError("bad features")

    net = seeded(BadFeatures).train()
    with pytest.raises(RuntimeError, match="bad features"):
        class_activation_map(net, batch(10))
    assert net.training and all(m.training for m in net.modules())


def test_tuple_output_layer_is_a_type_error_and_hooks_go():
    class TupleLayer(nn.Module):
        def forward(self, x):
            return x, x

    class Net(GapNet):
        def __init__(self):
            super().__init__()
            self.pair = TupleLayer()

        def forward(self, x):
            return self.forward_head(self.forward_features(self.pair(x)[0]))

    net = seeded(Net)
    with pytest.raises(TypeError, match="tensor"):
        grad_cam(net, batch(11), target_layer="pair")
    assert not net.pair._forward_hooks


def test_layer_must_run_once_and_reach_the_logits():
    class Twice(GapNet):
        def forward_features(self, x):
            f = self.features(x)
            return self.features[7](f)  # the ReLU runs twice

    class Unused(GapNet):
        def __init__(self):
            super().__init__()
            self.side = nn.Conv2d(3, 1, 1)
            self.spare = nn.Conv2d(3, 1, 1)

        def forward(self, x):
            return super().forward(x) + 0 * self.side(x).detach().mean()

    with pytest.raises(ValueError, match="ran 2 times"):
        grad_cam(seeded(Twice), batch(12), target_layer="features.7")
    with pytest.raises(ValueError, match="ran 0 times"):
        grad_cam(seeded(Unused), batch(12), target_layer="spare")
    with pytest.raises(ValueError, match="do not depend"):
        grad_cam(seeded(Unused), batch(12), target_layer="side")
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        grad_cam(seeded(GapNet), batch(12), target_layer="fc")


def test_all_zero_grad_cam_stays_zero():
    net = seeded(GapNet)
    with torch.no_grad():
        net.fc.weight[1] = -1.0  # post-ReLU features >= 0: only negative evidence for class 1
    maps = grad_cam(net, batch(13), target_layer="features", target=1)
    assert torch.isfinite(maps).all() and (maps == 0).all()
    cam = class_activation_map(net, batch(13), target=1, relu=True)
    assert torch.isfinite(cam).all() and (cam == 0).all()


def test_constant_cam_is_zero_not_nan():
    net = HandSquareNet()
    maps = class_activation_map(net, torch.full((2, 3, 16, 16), 0.3), target=1)  # channel 0 is 0 everywhere
    assert (maps == 0).all()


def test_dotted_names_and_bad_names(resnet):
    x = batch(14, n=2, size=64)
    torch.testing.assert_close(
        grad_cam(resnet, x, target_layer="net.layer4.1"), grad_cam(resnet, x, target_layer=resnet.net.layer4[1])
    )
    with pytest.raises(ValueError, match=r"no layer 'net\.layr4'.*'net\.layer4'"):
        grad_cam(resnet, x, target_layer="net.layr4")
    with pytest.raises(ValueError, match="no layer"):
        grad_cam(resnet, x, target_layer="")
    with pytest.raises(ValueError, match="not a submodule"):
        grad_cam(resnet, x, target_layer=nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="target_layer"):
        grad_cam(resnet, x, target_layer=4)


def test_torchvision_resnet_directly(resnet):
    # Grad-CAM needs no interface: a bare torchvision model works with a layer name.
    x = batch(15, n=2, size=64)
    bare = grad_cam(resnet.net, x, target_layer="layer4")
    torch.testing.assert_close(bare, grad_cam(resnet, x, target_layer="net.layer4"))


def test_cam_interface_errors():
    with pytest.raises(TypeError, match="forward_features, forward_head, get_classifier"):
        plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        class_activation_map(plain, batch(16))

    class NoLinear(GapNet):
        def get_classifier(self):
            return nn.Identity()

    with pytest.raises(TypeError, match="nn.Linear.*Identity"):
        class_activation_map(seeded(NoLinear), batch(16))

    class MaxHead(GapNet):
        def forward_head(self, f):
            return self.fc(f.amax(dim=(2, 3)))

    with pytest.raises(ValueError, match="GAP"):
        class_activation_map(seeded(MaxHead), batch(16))

    class FlatFeatures(GapNet):
        def forward_features(self, x):
            return self.pool(self.features(x)).flatten(1)

    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        class_activation_map(seeded(FlatFeatures), batch(16))


@pytest.mark.parametrize("fn", ["cam", "gradcam"])
@pytest.mark.parametrize(
    "x, err",
    [
        (np.zeros((1, 3, 8, 8), np.float32), TypeError),
        (torch.rand(3, 8, 8), ValueError),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError),
    ],
)
def test_bad_inputs(gapnet, fn, x, err):
    with pytest.raises(err):
        if fn == "cam":
            class_activation_map(gapnet, x)
        else:
            grad_cam(gapnet, x, target_layer="features")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_model_on_cuda_input_on_cpu(gapnet):
    x = batch(17)
    cpu_cam, cpu_gc = class_activation_map(gapnet, x), grad_cam(gapnet, x, target_layer="features")
    gapnet.cuda()
    cam, gc = class_activation_map(gapnet, x), grad_cam(gapnet, x, target_layer="features")
    assert cam.device.type == "cpu" and gc.device.type == "cpu"  # back on the caller's device
    torch.testing.assert_close(cam, cpu_cam, atol=5e-3, rtol=0)  # TF32 convolutions
    torch.testing.assert_close(gc, cpu_gc, atol=5e-3, rtol=0)
    assert grad_cam(gapnet, x.cuda(), target_layer="features").device.type == "cuda"


def test_explain_is_a_leaf_above_models():
    """histoscope.explain must not import histoscope.models or histoscope.train (they will import it)."""
    for path in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = "histoscope.explain".split(".")[: 2 - node.level + 1] if node.level else []
                names = [".".join([*base, node.module or ""])]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("histoscope.models", "histoscope.train")), (path.name, name)


# --------------------------------------------------------------------------- overlays and figure


@pytest.fixture
def patch() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)


def test_overlay_shape_dtype_and_alpha(patch):
    heat = np.linspace(0, 1, 32 * 48).reshape(32, 48)
    out = overlay_heatmap(patch, heat)
    assert out.shape == patch.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay_heatmap(patch, heat, alpha=0.0), patch)
    import matplotlib

    full = overlay_heatmap(patch, heat, alpha=1.0, cmap="viridis")
    expected = np.rint(matplotlib.colormaps["viridis"](heat)[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(full, expected)
    blend = overlay_heatmap(patch, heat, alpha=0.4)
    np.testing.assert_allclose(blend, 0.6 * patch + 0.4 * overlay_heatmap(patch, heat, alpha=1.0), atol=1.0)


def test_overlay_resizes_and_takes_tensors(patch):
    small = np.array([[0.0, 1.0], [1.0, 0.0]])
    out = overlay_heatmap(patch, small, alpha=1.0)
    assert out.shape == patch.shape
    np.testing.assert_array_equal(out, overlay_heatmap(patch, torch.tensor(small, dtype=torch.float32), alpha=1.0))
    big = np.repeat(np.repeat(small, 16, axis=0), 24, axis=1)  # the same map at full size
    np.testing.assert_array_equal(out[0, 0], overlay_heatmap(patch, big, alpha=1.0)[0, 0])  # corners keep their value
    np.testing.assert_array_equal(out[-1, 0], overlay_heatmap(patch, big, alpha=1.0)[-1, 0])


@pytest.mark.parametrize(
    "image, heat, kw, err",
    [
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8)), {}, TypeError),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8)), {}, ValueError),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8)), {}, ValueError),
        (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 1.5), {}, ValueError),
        (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), np.nan), {}, ValueError),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), {"alpha": 1.2}, ValueError),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), {"cmap": "jett"}, ValueError),
    ],
)
def test_overlay_errors(image, heat, kw, err):
    with pytest.raises(err):
        overlay_heatmap(image, heat, **kw)


def test_cam_figure_writes_a_png(square_net, tmp_path):
    from PIL import Image

    x, y, _ = squares(np.random.default_rng(2), 6)
    with torch.no_grad():
        prob = square_net(x).softmax(1)
    maps = class_activation_map(square_net, x)
    names = ["blank", "square"]
    pred = prob.argmax(1)
    titles = [f"true: {names[int(y[i])]} / pred: {names[int(pred[i])]} {prob[i, pred[i]]:.2f}" for i in range(len(x))]
    out = cam_figure(x, maps, tmp_path / "figs" / "cam.png", titles=titles, ncols=3, suptitle="CAM, predicted class")
    assert out == tmp_path / "figs" / "cam.png" and out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["cam.png"]  # no partial file left behind
    with Image.open(out) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[0] > 200 and arr.shape[1] > 600
    assert arr.std() > 20 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 1000  # not blank


def test_cam_figure_accepts_uint8_lists_and_checks_counts(tmp_path):
    ims = [np.full((16, 16, 3), v, np.uint8) for v in (50, 150)]
    heats = [np.eye(16), np.zeros((4, 4))]
    assert cam_figure(ims, heats, tmp_path / "a.png").exists()
    with pytest.raises(ValueError, match="2 images but 1 heatmaps"):
        cam_figure(ims, heats[:1], tmp_path / "b.png")
    with pytest.raises(ValueError, match="titles"):
        cam_figure(ims, heats, tmp_path / "b.png", titles=["one"])
    with pytest.raises(ValueError, match="ncols"):
        cam_figure(ims, heats, tmp_path / "b.png", ncols=0)
    assert not (tmp_path / "b.png").exists()
