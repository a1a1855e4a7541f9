"""Chip-batched layers: equal to the plain torch model, and chip results independent of the block."""

from __future__ import annotations

import dataclasses

import torch

from mcstudy.analog import AnalogNetwork
from mcstudy.hardware import BetweenChip, Population, Variation, WithinChip
from mcstudy.hardware.mapping import DifferentialPair, Encoding
from mcstudy.hardware.pcm import PCMDevice, PCMParams
from mcstudy.models import build_model
from mcstudy.models.zoo import LeNetParams, MLPParams
from mcstudy.rng import chip_stream


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "lenet":
        return build_model("lenet", LeNetParams(), (1, 28, 28), 10).eval()
    return build_model("mlp", MLPParams(hidden=(32, 16)), (1, 8, 8), 10).eval()


def test_nominal_weights_reproduce_the_torch_model() -> None:
    for name, shape in (("mlp", (1, 8, 8)), ("lenet", (1, 28, 28))):
        model = _model(name)
        x = torch.rand(20, *shape)
        net = AnalogNetwork(model)
        out = net.forward(x, net.nominal_read(3))
        assert out.shape == (3, 20, 10)
        for c in range(3):
            torch.testing.assert_close(out[c], model(x), rtol=1e-5, atol=1e-5)


def test_output_scale_multiplies_each_chips_layer_output() -> None:
    model = _model("mlp")
    net = AnalogNetwork(model)
    x = torch.rand(5, 1, 8, 8)
    scales = [torch.tensor([1.0, 2.0]) if i == 2 else None for i in range(len(net.layers))]
    out = net.forward(x, net.nominal_read(2), scales)
    # the last layer's analog product doubles on chip 1; its bias does not
    bias = model[-1].bias
    torch.testing.assert_close(out[1] - bias, 2 * (out[0] - bias), rtol=1e-5, atol=1e-5)


def test_lenet_chip_is_the_same_alone_and_in_a_block() -> None:
    model = _model("lenet")
    net = AnalogNetwork(model)
    population = Population(
        PCMDevice(PCMParams()), DifferentialPair(Encoding()),
        Variation(within=WithinChip(sigma=0.05), between=BetweenChip(sigma=0.1)),
    )  # fmt: skip
    x = torch.rand(16, 1, 28, 28)
    block = population.program(net.nominal, chip_stream(3, "pcm", range(12)), net.granules)
    alone = population.program(net.nominal, chip_stream(3, "pcm", [7]), net.granules)
    out_block = net.forward(x, block.read(86400.0))
    out_alone = net.forward(x, alone.read(86400.0))
    assert torch.equal(out_block[7], out_alone[0])
    assert not torch.equal(out_block[6], out_block[7])


def test_a_wide_mlp_chip_is_the_same_alone_and_in_a_block() -> None:
    """A 784-input layer (MNIST): the BLAS sums a batch of one chip differently from a
    larger batch for rows this long, so a block of one must not take that kernel."""
    torch.manual_seed(0)
    net = AnalogNetwork(build_model("mlp", MLPParams(hidden=(64,)), (1, 28, 28), 10).eval())
    population = Population(PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(within=WithinChip(sigma=0.05)))
    x = torch.rand(64, 1, 28, 28)
    block = net.forward(x, population.program(net.nominal, chip_stream(3, "pcm", range(5)), net.granules).read(86400.0))
    for c in (0, 4):
        alone = net.forward(x, population.program(net.nominal, chip_stream(3, "pcm", [c]), net.granules).read(86400.0))
        assert torch.equal(block[c], alone[0])


def test_resnet20_runs_on_chips() -> None:
    from mcstudy.models.zoo import ResNetParams

    torch.manual_seed(0)
    model = build_model("resnet20", ResNetParams(), (3, 32, 32), 10).eval()
    assert sum(p.numel() for p in model.parameters()) == 269_722  # ResNet-20, He et al. 2016
    net = AnalogNetwork(model)
    assert len(net.layers) == 20  # 19 convolutions and the classifier
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(net.forward(x, net.nominal_read(2))[1], model(x), rtol=1e-4, atol=1e-5)


def test_compiled_converters_give_the_tensor_codes_bits() -> None:
    """In evaluation the DAC, the per-vector input scale and the ADC run as compiled passes
    (hardware/periphery.py); with autograd on, the tensor code runs. Both give the same bits,
    for linear and convolution layers, signed and unsigned DACs, per-vector and fixed ranges."""
    from mcstudy.hardware import PeripherySpec, TileSpec
    from mcstudy.hardware.periphery import ADCSpec, DACSpec

    torch.manual_seed(0)
    x = torch.rand(60, 1, 28, 28)
    for model in (build_model("mlp", MLPParams(hidden=(64, 32)), (1, 28, 28), 10), build_model("lenet", LeNetParams(), (1, 28, 28), 10)):
        net = AnalogNetwork(model.eval())
        for dac in (DACSpec(bits=8), DACSpec(bits=6, signed=False), DACSpec(bits=8, mode="fixed", range=1.0)):
            periphery = PeripherySpec(dac=dac, adc=ADCSpec(bits=7))
            pop = Population(PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(), TileSpec(rows=128, cols=64), periphery)
            read = pop.program(net.nominal, chip_stream(0, "converters", range(3)), net.granules).read(100.0)
            with torch.no_grad():
                compiled = net.logits(x, read)
            with torch.enable_grad():
                tensor = net.logits(x, read).detach()
            assert torch.equal(compiled, tensor)


def test_the_first_layers_shared_input_gives_the_copied_inputs_bits() -> None:
    """A Sequential's first analog layer after only reshaping modules takes one copy of the
    inputs viewed by every chip (stride 0) instead of a (C·N, ...) copy: same logits and
    gradients, with and without converters, and nothing left set after the call."""
    from mcstudy.hardware import PeripherySpec
    from mcstudy.hardware.periphery import ADCSpec, DACSpec

    torch.manual_seed(0)
    model = build_model("mlp", MLPParams(hidden=(64, 32)), (1, 28, 28), 10).eval()
    x = torch.rand(40, 1, 28, 28)
    for periphery in (PeripherySpec(), PeripherySpec(dac=DACSpec(bits=8), adc=ADCSpec(bits=8))):
        net, copied = AnalogNetwork(model), AnalogNetwork(model)
        copied._shared_at = None
        assert net._shared_at == 1  # after the Flatten
        pop = Population(PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(), periphery=periphery)
        read = pop.program(net.nominal, chip_stream(0, "shared", range(3)), net.granules).read(100.0)
        assert torch.equal(net.forward(x, read), copied.forward(x, read))
        assert all(layer.call is None for layer in net.layers)
        grads = []
        for n in (net, copied):
            w = read.layers[0].weight.detach().clone().requires_grad_(True)
            layers = [dataclasses.replace(read.layers[0], weight=w), *read.layers[1:]]
            n.logits(x, dataclasses.replace(read, layers=layers)).sum().backward()
            grads.append(w.grad)
        assert torch.equal(grads[0], grads[1])


def test_the_digital_stage_in_one_pass_gives_the_tensor_bits() -> None:
    """Without autograd an analog layer's neuron gain, offset, output scale, shift, bias and
    a following ReLU run as one compiled pass in place (kernels.neuron_epilogue): the bits
    of the tensor operations, −0 and NaN included, for linear and convolution outputs."""
    from mcstudy.analog.layers import _digital_stage

    gen = torch.Generator().manual_seed(3)
    for shape in ((3, 5, 17, 1), (3, 4, 6, 25)):
        c, _, n_out, _ = shape
        y = torch.randn(*shape, generator=gen)
        y.view(-1)[::7] = -0.0
        y.view(-1)[3] = float("nan")
        trims = [(False, torch.rand(c, n_out, generator=gen) + 0.5), (True, torch.randn(c, 1, generator=gen)),
                 (False, torch.rand(c, 1, generator=gen)), (True, torch.randn(1, n_out, generator=gen))]  # fmt: skip
        for relu in (False, True):
            for k in range(len(trims) + 1):
                ref = _digital_stage(y.squeeze(-1) if shape[3] == 1 else y, trims[:k], relu, keep=True)
                with torch.no_grad():
                    got = _digital_stage(y.clone(), trims[:k], relu, keep=False)
                assert torch.equal(got.view(-1).view(torch.int32), ref.reshape(-1).view(torch.int32))


def test_a_relu_after_an_analog_layer_runs_in_its_digital_stage() -> None:
    """AnalogNetwork moves a ReLU that directly follows an analog layer into that layer: the
    evaluation logits equal the tensor path's (taken with autograd on), and the gradients
    flow as through the ReLU module."""
    from mcstudy.hardware import PeripherySpec
    from mcstudy.hardware.periphery import MismatchSpec, OpDriftSpec

    torch.manual_seed(0)
    periphery = PeripherySpec(op_drift=OpDriftSpec(gain=0.05, granularity="neuron"), mismatch=MismatchSpec(offset=0.02))
    for name, params, x in (("mlp", MLPParams(hidden=(64, 32)), torch.rand(20, 1, 28, 28)),
                            ("lenet", LeNetParams(), torch.rand(6, 1, 28, 28))):  # fmt: skip
        model = build_model(name, params, (1, 28, 28), 10).eval()
        net = AnalogNetwork(model)
        assert all(layer.relu for layer in net.layers[:-1]) and not net.layers[-1].relu
        assert not any(isinstance(m, torch.nn.ReLU) for m in net.module.modules())
        pop = Population(PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(), periphery=periphery)
        read = pop.program(net.nominal, chip_stream(0, "relu", range(2)), net.granules).read(100.0)
        fast = net.forward(x, read)
        with torch.enable_grad():
            w = read.layers[0].weight.detach().clone().requires_grad_(True)
            layers = [dataclasses.replace(read.layers[0], weight=w), *read.layers[1:]]
            tensor_path = net.logits(x, dataclasses.replace(read, layers=layers))
            tensor_path.sum().backward()
        assert torch.equal(fast, tensor_path.detach())
        assert w.grad is not None and w.grad.abs().sum() > 0


def test_compiled_max_pooling_gives_pytorchs_bits() -> None:
    """AnalogNetwork evaluates MaxPool2d with a compiled kernel (kernels.max_pool_planes):
    PyTorch's values bit for bit — ties keep the first value (−0 vs +0), NaN and −∞
    propagate — for strides, padding and dilation; ceil mode and gradients go to PyTorch."""
    import torch.nn.functional as F

    from mcstudy.analog.layers import CompiledMaxPool2d

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 13, 12, generator=gen).relu()
    x.view(-1)[::5] = -0.0
    x.view(-1)[7], x.view(-1)[100] = float("nan"), float("-inf")
    configs = [(2, None, 0, 1), ((1, 2), None, 0, 1), (3, 2, 1, 1), ((3, 2), (1, 2), 1, (2, 1)), ((2, 3), (3, 2), 1, 2)]
    for k, s, p, d in configs:
        pool = CompiledMaxPool2d.like(torch.nn.MaxPool2d(k, s, p, d))
        ref = F.max_pool2d(x, k, s, p, d)
        with torch.no_grad():
            got = pool(x)
        assert got.shape == ref.shape and torch.equal(got.view(torch.int32), ref.view(torch.int32))
    ceil = CompiledMaxPool2d.like(torch.nn.MaxPool2d(2, ceil_mode=True))
    assert torch.equal(ceil(x[:, :, :11, :11]).view(torch.int32), F.max_pool2d(x[:, :, :11, :11], 2, ceil_mode=True).view(torch.int32))
    xg = torch.randn(2, 2, 6, 6, generator=gen, requires_grad=True)
    CompiledMaxPool2d.like(torch.nn.MaxPool2d(2))(xg).sum().backward()
    assert xg.grad is not None and xg.grad.sum() == 2 * 2 * 3 * 3
    net = AnalogNetwork(build_model("lenet", LeNetParams(), (1, 28, 28), 10))
    assert sum(isinstance(m, CompiledMaxPool2d) for m in net.module.modules()) == 2


def test_the_zoo_transformer_runs_its_projections_on_chips() -> None:
    """The zoo's transformer: patch embedding, q·k·v and output projections, feed-forward
    layers and classifier on crossbars (6 per block + 2); on ideal devices the chips
    compute the module; drift compensation's readout reaches every crossbar."""
    from mcstudy.hardware import TileSpec
    from mcstudy.hardware.ideal import IdealDevice, IdealParams
    from mcstudy.models.zoo import TransformerParams

    torch.manual_seed(0)
    model = build_model("transformer", TransformerParams(dim=16, heads=2, blocks=2, mlp=24, patch=4), (1, 40), 10).eval()
    net = AnalogNetwork(model)
    assert net.weight_names == [
        "embed.weight", *(f"blocks.{b}.{w}" for b in (0, 1) for w in ("attn.in_proj_weight", "attn.out_proj.weight", "ff.0.weight", "ff.2.weight")),
        "head.weight",
    ]  # fmt: skip
    assert [tuple(w.shape) for w in net.nominal[:3]] == [(16, 4), (48, 16), (16, 16)]
    x = torch.randn(6, 1, 40)
    ideal = Population(IdealDevice(IdealParams()), DifferentialPair(Encoding()), Variation(), TileSpec())
    read = ideal.program(net.nominal, chip_stream(0, "transformer", range(2)), net.granules).read(20.0)
    torch.testing.assert_close(net.forward(x, read), model(x).detach().expand(2, -1, -1), rtol=0, atol=2e-5)
    probes = [torch.eye(w.shape[1]) for w in net.nominal]
    assert [tuple(o.shape) for o in net.readout(probes, read)][:2] == [(2, 4, 16), (2, 16, 48)]
