import re

import pytest
import torch

import pocketnas
from pocketnas.evaluation.cost import count_flops, count_parameters
from pocketnas.layers import FactorizedReduce

POCKETNETS = {
    "pocketnet_s_128": (925_632, 587.11),
    "pocketnet_s_256": (991_424, 587.24),
    "pocketnet_m_128": (1_686_656, 1099.02),
    "pocketnet_m_256": (1_752_448, 1099.16),
}


@pytest.mark.parametrize("name", sorted(POCKETNETS))
def test_pocketnet_params_and_flops_match_paper(name):
    params, mflops = POCKETNETS[name]
    model = pocketnas.create_model(name)
    assert count_parameters(model) == params
    assert round(count_flops(model).mflops, 2) == mflops
    cfg = pocketnas.model_cfg(name)
    assert (cfg.reference_params, cfg.reference_mflops) == (params, mflops)


def _reference_keys(path):
    ref = {}
    for line in open(path, encoding="utf-8"):
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.rstrip("\n").split("\t")
        ref[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return ref


@pytest.mark.parametrize("name,notes", [("pocketnet_s_128", "pocketnet_s_128_state_dict.txt"),
                                        ("pocketnet_m_256", "pocketnet_m_256_state_dict.txt")])
def test_state_dict_layout_is_the_release_layout(shared, name, notes):
    ref = _reference_keys(f"{shared}/notes/{notes}")
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in pocketnas.create_model(name).state_dict().items()}
    assert list(own) == list(ref)
    assert own == ref


def test_iresnet100_teacher_size():
    with torch.device("meta"):
        model = pocketnas.create_model("iresnet100")
    assert abs(count_parameters(model) - 65.2e6) < 0.1e6
    with torch.device("meta"):
        small = pocketnas.create_model("iresnet100", embedding_size=128)
    assert count_parameters(small) < count_parameters(model)


def test_mobilefacenet_is_about_one_million_params():
    n = count_parameters(pocketnas.create_model("mobilefacenet"))
    assert 0.98e6 < n < 1.02e6


@pytest.mark.parametrize("name", pocketnas.list_models())
def test_every_registered_model_embeds_faces(name, orl_faces):
    from pocketnas.models.calibrate import calibrate_batchnorm

    images, _ = orl_faces
    model = pocketnas.create_model(name)
    calibrate_batchnorm(model, [images[::50]])  # 8 people: fresh BN statistics would blow up deep nets
    with torch.no_grad():
        out = model.eval()(images[1:3])
    assert out.shape == (2, pocketnas.model_cfg(name).embedding_size)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


def test_list_models_filters():
    assert pocketnas.list_models("pocketnet_s*") == ["pocketnet_s_128", "pocketnet_s_256"]
    assert {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet"} <= set(pocketnas.list_models())


def test_unknown_model_suggests_names():
    with pytest.raises(KeyError, match="pocketnet_s_128"):
        pocketnas.create_model("pocketnet_s128")


def test_overrides_embedding_and_genotype():
    model = pocketnas.create_model("pocketnet_s_128", embedding_size=512, genotype="pocketnet_cifar10")
    assert model.tail_width == 1024
    assert model.genotype == pocketnas.get_genotype("pocketnet_cifar10")
    assert model.pocketnas_kwargs["genotype"] == model.genotype.to_dict()
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 112, 112)).shape == (1, 512)


def test_wrong_input_size_is_an_error_not_a_wrong_answer():
    model = pocketnas.create_model("pocketnet_s_128").eval()
    for size in (120, 128, 96):
        with pytest.raises(ValueError, match="expects N x 3 x 112 x 112"):
            model(torch.zeros(1, 3, size, size))


def test_smaller_crops_build_with_matching_tail():
    model = pocketnas.create_model("pocketnet_s_128", input_size=56).eval()
    assert model.final_size == 4 and model.tail[4].kernel_size == (4, 4)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 56, 56)).shape == (2, 128)


def test_factorized_reduce_matches_original_on_even_maps_and_handles_odd():
    fr = FactorizedReduce(8, 8).eval()
    x = torch.randn(2, 8, 14, 14)
    with torch.no_grad():
        y = fr.relu(x)
        expected = fr.bn(torch.cat([fr.conv12(fr.conv11(y)), fr.conv22(fr.conv21(y[:, :, 1:, 1:]))], 1))
        assert torch.equal(fr(x), expected)
        assert fr(torch.randn(2, 8, 7, 7)).shape == (2, 8, 4, 4)


def test_darts_operations_build_a_network():
    from pocketnas.genotype import Genotype

    g = Genotype(normal=[[("sep_conv_3x3", 0), ("dil_conv_5x5", 1)], [("skip_connect", 0), ("avg_pool_3x3", 2)]],
                 normal_concat=[2, 3],
                 reduce=[[("sep_conv_5x5", 0), ("skip_connect", 1)], [("dil_conv_3x3", 2), ("max_pool_3x3", 1)]],
                 reduce_concat=[2, 3])
    model = pocketnas.create_model("pocketnet", genotype=g, channels=8, layers=3, act="relu").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, 128)


@pytest.mark.parametrize("shape,n", [((8, 6, 9, 9), 6), ((5, 16), 16), ((4, 5, 6), 1)])
def test_prelu_fast_backward_equals_torch(shape, n):
    """pocketnas's PReLU (the cells' activation) against torch's: the same output and input gradient bit for bit,
    the slope gradient up to summation order, at zero inputs too (torch's convention: slope there), channels_last
    included; twice differentiable; torch's operation when no gradient is asked for."""
    from pocketnas.layers.kernels import PReLU, _PReLUFunction, own_kernels, set_own_kernels

    torch.manual_seed(0)
    ours, ref = PReLU(n), torch.nn.PReLU(n)
    with torch.no_grad():
        ours.weight.uniform_(-0.5, 1.5)
        ref.weight.copy_(ours.weight)
    x = torch.randn(*shape)
    x.view(-1)[::7] = 0.0
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(*shape)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    ya.backward(g)
    yb.backward(g)
    assert ya.grad_fn is not None and "PReLUFunction" in type(ya.grad_fn).__name__
    assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
    assert torch.allclose(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    xd = (torch.randn(*shape[:2], 3, 3, dtype=torch.double) + 0.05).requires_grad_()
    wd = torch.rand(n, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradgradcheck(_PReLUFunction.apply, (xd, wd))
    net = torch.nn.Sequential(PReLU(n), torch.nn.Sequential(PReLU(n)))
    keys = list(net.state_dict())
    set_own_kernels(net, False)  # the one switch: torch's operation, the same module and keys
    assert list(net.state_dict()) == keys
    with torch.no_grad():
        net[0].weight.copy_(ref.weight)
    xc = x.clone().requires_grad_()
    net[0](xc).backward(g)
    assert torch.equal(xc.grad, xb.grad)
    assert "PReLUFunction" not in type(net[0](xc).grad_fn).__name__
    with own_kernels(False):  # decided when a module is built
        assert not PReLU(n).own_kernel
    assert PReLU(n).own_kernel


@pytest.mark.parametrize("kernel,stride,dilation", [(5, 1, 1), (7, 1, 1), (7, 2, 1), (5, 2, 1), (3, 1, 2),
                                                     (5, 1, 2), (3, 1, 1)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_depthwise_conv_weight_gradient_equals_torch(kernel, stride, dilation, channels_last):
    """pocketnas's depthwise convolution against torch's: the same output and input gradient bit for bit, the
    weight gradient (computed as a convolution of its own past 3x3) equal up to summation order; the same
    state-dict key; twice differentiable; torch's operation for 3x3 and when the weight needs no gradient."""
    from pocketnas.layers.kernels import DepthwiseConv2d, _DepthwiseConvFunction

    torch.manual_seed(kernel * 10 + stride)
    padding = dilation * (kernel // 2)
    ours = DepthwiseConv2d(8, kernel, stride, padding, dilation)
    ref = torch.nn.Conv2d(8, 8, kernel, stride, padding, dilation=dilation, groups=8, bias=False)
    ref.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight"]
    x = torch.randn(6, 8, 15, 15)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    own = dilation * (kernel - 1) + 1 > 3
    assert ("DepthwiseConvFunction" in type(ya.grad_fn).__name__) == own
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
    assert torch.allclose(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    assert ya.is_contiguous(memory_format=torch.channels_last) == channels_last
    ours.weight.requires_grad_(False)
    assert "DepthwiseConvFunction" not in type(ours(xa).grad_fn).__name__
    xd = torch.randn(2, 3, 9, 9, dtype=torch.double, requires_grad=True)
    wd = torch.randn(3, 1, kernel, kernel, dtype=torch.double, requires_grad=True)
    conf = ((stride, stride), (padding, padding), (dilation, dilation))
    assert torch.autograd.gradgradcheck(lambda a, b: _DepthwiseConvFunction.apply(a, b, *conf), (xd, wd))


@pytest.mark.parametrize("count_include_pad", [False, True])
def test_average_pool_as_convolution_equals_torch(count_include_pad):
    """pocketnas's average pool (a constant-kernel depthwise convolution on large channels-last maps) against
    torch's: the same output and input gradient up to float rounding, channels-last kept, map sizes changing
    between calls (the window counts follow); torch's own operation on small maps, strides above 1 and NCHW."""
    from pocketnas.layers.kernels import AvgPool2d

    torch.manual_seed(0)
    ours = AvgPool2d(3, 1, 1, count_include_pad=count_include_pad)
    for shape in [(4, 8, 15, 17), (2, 8, 28, 28), (4, 8, 15, 17)]:
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), torch.nn.functional.avg_pool2d(xb, 3, 1, 1, count_include_pad=count_include_pad)
        assert type(ya.grad_fn).__name__ == "MulBackward0"  # the convolution path
        g = torch.randn_like(yb)
        ya.backward(g)
        yb.backward(g)
        assert torch.allclose(ya, yb, atol=1e-6) and torch.allclose(xa.grad, xb.grad, atol=1e-6)
        assert ya.is_contiguous(memory_format=torch.channels_last)
    small = torch.randn(2, 8, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert "AvgPool" in type(ours(small).grad_fn).__name__
    assert "AvgPool" in type(ours(x.contiguous().requires_grad_()).grad_fn).__name__
    strided = AvgPool2d(3, 2, 1, count_include_pad=count_include_pad)
    assert "AvgPool" in type(strided(x.requires_grad_()).grad_fn).__name__


def test_own_cpu_kernels_step_aside_during_onnx_export(tmp_path):
    """The export check pocketnas's own kernels make (flags imported once) says what torch's own function says,
    inside an ONNX export and outside it."""
    pytest.importorskip("onnx")
    from pocketnas.layers.kernels import eager_cpu, in_onnx_export

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((in_onnx_export(), torch.onnx.is_in_onnx_export(), eager_cpu(x)))
            return x * 2

    torch.onnx.export(Probe(), (torch.randn(1, 3),), str(tmp_path / "probe.onnx"), dynamo=False)
    assert seen and all(ours and theirs and not eager for ours, theirs, eager in seen)
    assert in_onnx_export() is False and torch.onnx.is_in_onnx_export() is False and eager_cpu(torch.ones(1))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_narrow_channels_last_batchnorm_equals_torch(momentum):
    """The search operations' BatchNorm against torch's on narrow channels-last maps (its own path) and on the
    others (torch's): the same output, input gradient and running statistics over several steps, then the same
    inference output; the state-dict keys are torch's; a second derivative through its own path is refused."""
    from pocketnas.layers.kernels import BatchNorm2d

    torch.manual_seed(0)
    for channels, channels_last, own_path in [(8, True, True), (8, False, False), (16, True, False)]:
        ours = BatchNorm2d(channels, affine=False, momentum=momentum)
        ref = torch.nn.BatchNorm2d(channels, affine=False, momentum=momentum)
        assert list(ours.state_dict()) == list(ref.state_dict())
        for _ in range(3):
            x = torch.randn(4, channels, 5, 5) * 3 + 1
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            g = torch.randn_like(x)
            ya, yb = ours(xa), ref(xb)
            assert ("Narrow" in type(ya.grad_fn).__name__) == own_path
            ya.backward(g)
            yb.backward(g)
            assert torch.allclose(ya, yb, atol=2e-6) and torch.allclose(xa.grad, xb.grad, atol=2e-6)
            assert ya.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert torch.allclose(ours.running_mean, ref.running_mean, atol=1e-6)
        assert torch.allclose(ours.running_var, ref.running_var, atol=1e-5)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
        ours.eval()
        ref.eval()
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
    bn = BatchNorm2d(8, affine=False)
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    (dx,) = torch.autograd.grad(bn(x).pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="twice|once"):
        dx.sum().backward()
