"""Your own network: a module beside the study file, built by your function; its Linear
and Conv2d layers on the chips, everything else digital and listed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import mcstudy

from .conftest import run_cli

MODULE = '''
import math
import torch
import torch.nn as nn


class Scale(nn.Module):
    """A layer mcstudy has never seen: it stays digital."""

    def __init__(self, n):
        super().__init__()
        self.g = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.g


def build(input_shape, n_classes, width=32):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.LayerNorm(width), nn.GELU(), Scale(width),
        nn.Linear(width, n_classes),
    )


def not_a_module(input_shape, n_classes, **kwargs):
    return [1, 2, 3]
'''


def _study(tmp_path: Path, factory: str = "mynet:build", module: str = MODULE) -> Path:
    (tmp_path / "mynet.py").write_text(module)
    raw = {
        "name": "mynet", "seed": 1, "chips": 4, "times": ["20s", "1d"],
        "model": {"factory": factory, "kwargs": {"width": 24}},
        "variants": {"float": {"trainer": "standard", "epochs": 4}, "qat": {"trainer": "quantization_aware", "bits": 4, "epochs": 4}},
        "hardware": {"ideal": {"device": "ideal", "mapping": "differential"}, "pcm": {"device": "pcm", "mapping": "differential"}},
    }  # fmt: skip
    path = tmp_path / "mynet.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_module_beside_the_study_runs_on_a_local_pool(tmp_path: Path, cache_dir: Path) -> None:
    study = _study(tmp_path)
    out = tmp_path / "out.zarr"
    r = run_cli("run", study, "--out", out, "--executor", "local", "--workers", "2", cwd=Path("/"), cache=cache_dir)
    assert r.returncode == 0, r.stderr
    assert "on the chips (float, qat): 1: Linear 24×64, 5: Linear 10×24 = 1,776 weights" in r.stderr, r.stderr
    assert "devices per chip: 3,552 with differential mapping (2 per weight: ideal, pcm)" in r.stderr, r.stderr
    assert "digital (no analog form in mcstudy): Flatten, LayerNorm, GELU, Scale" in r.stderr, r.stderr
    ds = mcstudy.open_results(out)
    ideal = ds["accuracy"].sel(hardware="ideal").load()
    for v in ("float", "qat"):  # ideal chips are the module itself, the unseen layer included
        np.testing.assert_array_equal(ideal.sel(variant=v).values, np.float32(ds["float_accuracy"].sel(variant=v)))
    assert float(ds["float_accuracy"].sel(variant="float")) > 0.5
    serial = mcstudy.run(study, out=tmp_path / "serial.zarr", executor="serial", cache_dir=cache_dir)
    np.testing.assert_array_equal(serial["accuracy"].values, ds["accuracy"].values)


def test_the_modules_source_is_part_of_the_study(tmp_path: Path) -> None:
    study = _study(tmp_path)
    spec = mcstudy.load_study(study)
    assert spec.model.name == "factory" and spec.model.params.source_dir == str(tmp_path.resolve())
    (tmp_path / "mynet.py").write_text(MODULE.replace("width=32", "width=33"))
    assert mcstudy.load_study(study).hash != spec.hash


@pytest.mark.parametrize(
    "factory, module, message",
    [
        ("nowhere:build", MODULE, "model.factory: no module 'nowhere'"),
        ("mynet:missing", MODULE, "has no function 'missing'"),
        ("mynet:not_a_module", MODULE, "returned list, not a torch.nn.Module"),
        ("mynet:build", "raise RuntimeError('broken on import')\n", "importing 'mynet' failed: RuntimeError: broken on import"),
        ("mynet build", MODULE, "model.factory"),
    ],
)
def test_a_factory_that_does_not_build_exits_2_and_writes_nothing(tmp_path: Path, factory: str, module: str, message: str) -> None:
    study = _study(tmp_path, factory, module)
    out = tmp_path / "out.zarr"
    r = run_cli("run", study, "--out", out, "--executor", "serial", cwd=Path("/"))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


def test_linear_layers_run_on_every_token() -> None:
    """A Linear applied to (N, tokens, features) runs each token through the crossbar as
    an input vector of its sample: on ideal devices the module's own output, and
    per-vector read noise is the same however the inputs are batched."""
    import torch
    import torch.nn as nn

    from mcstudy.analog import AnalogNetwork
    from mcstudy.hardware import Population, TileSpec, Variation
    from mcstudy.hardware.ideal import IdealDevice, IdealParams
    from mcstudy.hardware.mapping import DifferentialPair, Encoding
    from mcstudy.hardware.pcm import PCMDevice, PCMParams
    from mcstudy.rng import chip_stream

    class TokenNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.norm, self.head = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = nn.functional.gelu(self.norm(self.proj(x.reshape(x.shape[0], 8, 8))))  # 8 tokens of 8 features
            return self.head(h.mean(1))

    torch.manual_seed(0)
    module = TokenNet().eval()
    x = torch.rand(20, 1, 8, 8)
    net = AnalogNetwork(module)
    assert [tuple(w.shape) for w in net.nominal] == [(16, 8), (10, 16)]
    ideal = Population(IdealDevice(IdealParams()), DifferentialPair(Encoding()), Variation(), TileSpec())
    read = ideal.program(net.nominal, chip_stream(0, "tokens", range(3)), net.granules).read(20.0)
    with torch.no_grad():
        torch.testing.assert_close(net.forward(x, read), module(x).expand(3, -1, -1), rtol=0, atol=1e-5)
    pcm = Population(PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(), TileSpec(), read_noise="per_vector")
    read = pcm.program(net.nominal, chip_stream(0, "tokens", range(3)), net.granules).read(3600.0)
    whole = net.forward(x, read)
    batched = torch.cat([net.forward(x[:7], read, sample_offset=0), net.forward(x[7:], read, sample_offset=7)], 1)
    assert torch.equal(whole, batched)
    same = torch.cat([x[:1]] * 2)  # the same sample twice: different input vectors, different noise
    y = net.forward(same, read)
    assert not torch.equal(y[:, 0], y[:, 1])


class _EveryKind(__import__("torch").nn.Module):
    """Every layer kind mcstudy maps to crossbars, in the layouts torch allows: Conv1d, a
    grouped Conv1d (digital), a 2-layer bidirectional sequence-first LSTM, torch's own
    sequence-first TransformerEncoderLayer (GELU, layer norm), cross-attention with its
    own key and value widths fed by Linear layers on sequence-first tokens, and a GRU,
    which mcstudy has no analog form for."""

    def __init__(self) -> None:
        import torch.nn as nn

        super().__init__()
        self.conv, self.grouped = nn.Conv1d(2, 8, 3, padding=1), nn.Conv1d(8, 8, 3, padding="same", groups=2)
        self.lstm = nn.LSTM(8, 6, num_layers=2, bidirectional=True)
        self.encoder = nn.TransformerEncoderLayer(12, 2, 24, dropout=0.0, activation="gelu")
        self.cross = nn.MultiheadAttention(12, 3, kdim=5, vdim=4)
        self.to_k, self.to_v = nn.Linear(12, 5), nn.Linear(12, 4)
        self.gru, self.head = nn.GRU(12, 4, batch_first=True), nn.Linear(4, 3)

    def forward(self, x):
        import torch

        h = self.grouped(torch.relu(self.conv(x))).permute(2, 0, 1)  # (L, N, 8): sequence first
        h = self.encoder(self.lstm(h)[0])
        a, _ = self.cross(h, self.to_k(h), self.to_v(h), need_weights=True)
        return self.head(self.gru((h + a).transpose(0, 1))[0][:, -1])


def test_every_analog_kind_runs_on_the_chips_as_torch_computes_it() -> None:
    """Conv1d, LSTM and attention projections run on crossbars, named as training names
    them; on ideal devices the chips compute the module's own function; with PCM noise a
    chip gets the same numbers alone as in a block and however its inputs are batched."""
    import torch

    from mcstudy.analog import AnalogNetwork
    from mcstudy.hardware import Population, TileSpec, Variation, WithinChip
    from mcstudy.hardware.ideal import IdealDevice, IdealParams
    from mcstudy.hardware.mapping import DifferentialPair, Encoding
    from mcstudy.hardware.pcm import PCMDevice, PCMParams
    from mcstudy.models.crossbars import analog_weight_names
    from mcstudy.rng import chip_stream

    torch.manual_seed(0)
    module = _EveryKind().eval()
    net = AnalogNetwork(module)
    assert net.weight_names == analog_weight_names(module)
    assert net.weight_names == [
        "conv.weight", *(f"lstm.weight_{k}_l{i}{d}" for i in (0, 1) for d in ("", "_reverse") for k in ("ih", "hh")),
        "encoder.self_attn.in_proj_weight", "encoder.self_attn.out_proj.weight", "encoder.linear1.weight", "encoder.linear2.weight",
        "cross.q_proj_weight", "cross.k_proj_weight", "cross.v_proj_weight", "cross.out_proj.weight", "to_k.weight", "to_v.weight", "head.weight",
    ]  # fmt: skip
    assert [tuple(w.shape) for w in net.nominal[:3]] == [(8, 6), (24, 8), (24, 6)]
    analog, digital = net.describe()
    assert "encoder.self_attn.in_proj_weight: attention q·k·v projection 36×12" in analog
    assert any(d.startswith("Conv1d (groups=2") for d in digital) and "GRU" in digital and "LayerNorm" in digital

    x = torch.randn(9, 2, 7)
    ideal = Population(IdealDevice(IdealParams()), DifferentialPair(Encoding()), Variation(), TileSpec())
    read = ideal.program(net.nominal, chip_stream(0, "kinds", range(2)), net.granules).read(20.0)
    with torch.no_grad():
        torch.testing.assert_close(net.forward(x, read), module(x).expand(2, -1, -1), rtol=0, atol=2e-5)

    pcm = Population(PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(within=WithinChip(sigma=0.05)), TileSpec(rows=16), read_noise="per_vector")
    block = net.forward(x, pcm.program(net.nominal, chip_stream(1, "kinds", range(3)), net.granules).read(3600.0))
    alone = net.forward(x, pcm.program(net.nominal, chip_stream(1, "kinds", [2]), net.granules).read(3600.0))
    assert torch.equal(block[2], alone[0])
    read = pcm.program(net.nominal, chip_stream(1, "kinds", range(3)), net.granules).read(3600.0)
    batched = torch.cat([net.forward(x[:4], read), net.forward(x[4:], read, sample_offset=4)], 1)
    assert torch.equal(block, batched)
    assert (block - module(x).detach()).abs().max() > 1e-3  # the noise is there


def test_layouts_a_chip_can_and_cannot_take() -> None:
    """Samples merged in front of tokens ((N·T, F)) are each sample's T input vectors (the
    same noise however batched); a layout that mixes samples ((T·N, F)) is refused; an
    attention kept digital keeps its output projection; a query that may attend to no key
    gives 0, as torch's attention without weights does; torch's LSTM attributes are there."""
    import torch
    import torch.nn as nn

    from mcstudy.analog import AnalogNetwork
    from mcstudy.errors import McStudyError
    from mcstudy.hardware import Population, TileSpec, Variation
    from mcstudy.hardware.mapping import DifferentialPair, Encoding
    from mcstudy.hardware.pcm import PCMDevice, PCMParams
    from mcstudy.rng import chip_stream

    class Merged(nn.Module):
        def __init__(self, time_major: bool) -> None:
            super().__init__()
            self.f, self.time_major = nn.Linear(5, 6), time_major

        def forward(self, x):
            n, t, f = x.shape
            if self.time_major:
                return self.f(x.transpose(0, 1).reshape(t * n, f)).reshape(t, n, 6).transpose(0, 1).reshape(n, -1)
            return self.f(x.reshape(n * t, f)).reshape(n, t * 6)

    torch.manual_seed(0)
    pcm = Population(PCMDevice(PCMParams()), DifferentialPair(Encoding()), Variation(), TileSpec(), read_noise="per_vector")
    net = AnalogNetwork(Merged(False).eval())
    read = pcm.program(net.nominal, chip_stream(0, "merged", range(2)), net.granules).read(3600.0)
    x = torch.ones(9, 7, 5)  # every token the same vector: equal outputs would be equal noise draws
    whole = net.forward(x, read)
    assert torch.equal(whole, torch.cat([net.forward(x[:4], read), net.forward(x[4:], read, sample_offset=4)], 1))
    tokens = whole.view(2, 9, 7, 6)
    assert not torch.equal(tokens[0, 0, 4], tokens[0, 4, 0]) and net.layers[0].rows_per_sample == 7
    with pytest.raises(McStudyError, match="mixes the samples"):
        AnalogNetwork(Merged(True).eval()).forward(x, read)

    class Attend(nn.Module):
        def __init__(self, bias_kv: bool) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=bias_kv)
            self.lstm, self.head = nn.LSTM(8, 8, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            self.lstm.flatten_parameters()
            h = x.reshape(x.shape[0], 4, 8)
            pad = torch.zeros(x.shape[0], 4)
            pad[:, 0] = float("-inf")  # with the causal mask, the first query may attend to no key
            causal = nn.Transformer.generate_square_subsequent_mask(4)
            a = self.attn(h, h, h, key_padding_mask=pad, attn_mask=causal, need_weights=False)[0]
            h = self.lstm(h + a)[0]
            zeros = torch.zeros(self.lstm.num_layers * (2 if self.lstm.bidirectional else 1), x.shape[0], 8)
            return self.head(h[:, -1] + zeros[-1]) + a[:, 0, :3]

    x = torch.randn(5, 32)
    for bias_kv, crossbars in ((False, 5), (True, 3)):
        module = Attend(bias_kv).eval()
        net = AnalogNetwork(module)
        assert len(net.layers) == crossbars and (bias_kv or "attn.out_proj.weight" in net.weight_names)
        with torch.no_grad():
            torch.testing.assert_close(net.forward(x, net.nominal_read(2)), module(x).expand(2, -1, -1), rtol=0, atol=2e-5)


def test_self_tuning_refuses_a_crossbar_read_several_times_per_pass(tmp_path: Path, cache_dir: Path) -> None:
    """Self-tuning trims each crossbar's output once per forward pass; an LSTM reads its
    crossbars once per time step: refused with the crossbars named, nothing written."""
    raw = {
        "name": "lstm_tune", "seed": 1, "chips": 2, "times": ["20s"], "model": {"name": "lstm", "hidden": 8, "step": 8},
        "variants": {"f": {"trainer": "standard", "epochs": 1}}, "hardware": {"pcm": {"device": "pcm"}},
        "procedures": {"tune": {"kind": "self_tuning"}},
    }  # fmt: skip
    with pytest.raises(mcstudy.SpecError) as e:
        mcstudy.run(raw, out=tmp_path / "out.zarr", executor="serial", cache_dir=cache_dir, progress=False)
    assert [p for p, m in e.value.problems if "ih.0 (8×), hh.0 (8×)" in m] == ["procedures.tune"], e.value.problems
    assert not (tmp_path / "out.zarr").exists()
