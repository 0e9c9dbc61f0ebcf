"""The int8 graphs' own passes (restore_app.core.int8), on small networks of their own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

int8 = pytest.importorskip("restore_app.core.int8")
pytestmark = pytest.mark.skipif(not int8.available(), reason="this PyTorch has no oneDNN quantised engine")


class _LongSkip(nn.Module):
    """A residual block whose input is also added again after it (a long skip): the first layer's
    output is both the fused convolution + addition's summand and read by a later addition."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.tail = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = F.relu(self.head(x))
        f = f0 + self.conv2(F.relu(self.conv1(f0)))
        return self.tail(f + f0)


def _prepared() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 24, 32).contiguous(memory_format=torch.channels_last)
    prepared = int8.prepare(_LongSkip(), x, keep_float=("tail",), int8_input=("tail",))
    with torch.no_grad():
        for seed in range(3):  # the quantisers' ranges
            prepared(torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(seed)))
    int8.freeze_ranges(prepared)
    return prepared.eval(), x


def test_a_summand_read_again_is_copied_before_the_in_place_sum(monkeypatch):
    """oneDNN's int8 convolution + addition writes its sum over the tensor it adds; where that tensor
    is read again later, the converted graph gives the convolution a copy, and computes what the
    fake-quantised graph that trains computes."""
    prepared, x = _prepared()
    with torch.no_grad():
        sim = prepared(x)
        graph = int8.convert(prepared)
        real = graph(x)
    assert any(n.op == "call_method" and n.target == "clone" for n in graph.graph.nodes)
    step = float((sim.abs().max()) / 255)
    assert float((real - sim).abs().max()) < 4 * step  # a few 8-bit steps of rounding, no more
    monkeypatch.setattr(int8, "_accumulators_copied", lambda graph_module: None)  # as before the copy
    with torch.no_grad():
        broken = int8.convert(prepared)(x)
    assert float((broken - sim).abs().max()) > 10 * step  # the skip read the sum, not the first layer's output


def test_calibrated_ranges_are_tighter_kept_and_converted():
    """Histogram calibration narrows a long-tailed activation's range below its min–max span, stops the
    observers (more data leaves the ranges alone), and the int8 graph takes the calibrated ranges."""
    from torch.ao.quantization import FakeQuantize

    prepared, x = _prepared()
    quantisers = [m for m in prepared.modules()
                  if isinstance(m, FakeQuantize) and m.qscheme == torch.per_tensor_affine]
    spans = [[0.0, 0.0] for _ in quantisers]  # each quantiser's input min and max over the data

    def record(span):
        def hook(module, args):
            span[0], span[1] = min(span[0], float(args[0].min())), max(span[1], float(args[0].max()))
        return hook

    def feed():
        g = torch.Generator().manual_seed(7)
        for _ in range(3):
            prepared(-torch.log(torch.rand(2, 3, 24, 32, generator=g)))  # exponential: a long tail

    hooks = [m.register_forward_pre_hook(record(span)) for m, span in zip(quantisers, spans, strict=True)]
    int8.calibrate_ranges(prepared, feed)
    for hook in hooks:
        hook.remove()
    after = [float(m.scale) for m in quantisers]
    minmax = [(hi - lo) / 255 for lo, hi in spans]
    assert all(a <= 1.01 * b for a, b in zip(after, minmax, strict=True))
    assert any(a < 0.97 * b for a, b in zip(after, minmax, strict=True))  # tighter than the min–max span
    prepared.train()
    with torch.no_grad():
        prepared(torch.rand(2, 3, 24, 32) * 10)  # would widen the ranges if the observers still ran
    assert [float(m.scale) for m in quantisers] == after
    graph = int8.convert(prepared)
    first = next(n for n in graph.graph.nodes if n.op == "call_function" and n.target is torch.quantize_per_tensor)
    scale = float(getattr(graph, first.args[1].target))
    assert scale == pytest.approx(after[0], rel=1e-5)
