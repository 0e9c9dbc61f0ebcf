"""8-bit integer inference on the CPU, learnt by quantisation-aware training.

On CPUs with AVX-512 VNNI (or AMX), oneDNN's int8 convolutions run several times faster than fp32
ones; on the 2-core build machine (AVX-512 VNNI, no AMX) one 96→96 3×3 convolution on 256² took 10 ms
in int8 against 51 ms in fp32, where bf16 is *slower* than fp32. A restoration network quantised after training loses
quality (the JPEG model 0.03 dB on validation, 0.06 dB at quality 90), so an int8 model is trained
for it: its weights and activations pass through fake quantisers during training (PyTorch's
FX quantisation-aware training), and the ranges the quantisers learnt are stored with the weights.

A model opts in by splitting its forward into a traceable *core* (a module whose forward is pure
tensor ops, no shape-dependent Python) and the wrapping it does around the core (padding, cropping,
residual connections to the input in fp32). :func:`prepare` turns the core into the fake-quantised
graph that trains and runs anywhere (CUDA included, in float); :func:`convert` turns that graph into
the real int8 one for the CPU. Layers named in ``keep_float`` stay fp32 (for example the last
convolution, whose output is added to the image). :class:`Int8Network` holds both graphs for a
model's int8 form (the JPEG U-Net's and the DWT's derive from it).

Built on ``torch.ao.quantization`` (FX graph mode, oneDNN backend), which PyTorch has deprecated in
favour of ``torchao``; the project pins torch, and :func:`available` says whether this build still
has it.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

ENGINE = "onednn"


@functools.cache
def available() -> bool:
    """Whether this PyTorch can run int8 models (the oneDNN quantised engine and FX quantisation)."""
    try:
        import torch.ao.quantization.quantize_fx  # noqa: F401
    except ImportError:
        return False
    return ENGINE in torch.backends.quantized.supported_engines


def fast_on_this_cpu() -> bool:
    """Whether int8 models run here and beat fp32 clearly: oneDNN with VNNI (AVX-512 or AVX) or AMX
    int8 instructions. Without them int8 still runs, with less of a gain."""
    try:
        flags = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        return False
    return available() and any(flags.get(k) for k in ("avx512_vnni", "avx_vnni", "amx_int8"))


def preferred(device: str = "auto", precision: str = "auto") -> bool:
    """Whether an engine with these settings should run a task's default model in its int8 form
    (``int8_of`` in the int8 model's manifest): on the CPU, with the precision left to the model,
    where int8 is fast (:func:`fast_on_this_cpu`)."""
    from restore_app.core.engine import select_device

    return precision == "auto" and select_device(device).type == "cpu" and fast_on_this_cpu()


def _backend_config():
    import torch.ao.quantization.backend_config.utils  # noqa: F401  (onednn's config needs it imported)
    from torch.ao.quantization.backend_config import get_onednn_backend_config

    return get_onednn_backend_config()


def _qconfig_mapping(keep_float: Iterable[str], keep_float_calls: Iterable[tuple[str, object, int]] = ()):
    from torch.ao.quantization import FakeQuantize, QConfig, QConfigMapping
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

    # Activations: unsigned 8-bit over the observed range (after ReLUs and for images in [0, 1], which
    # 1/255 steps hold exactly). Weights: signed 8-bit, symmetric, one scale per output channel.
    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False)
    weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                    quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    mapping = QConfigMapping().set_global(QConfig(activation=activation, weight=weight))
    for name in keep_float:
        mapping = mapping.set_module_name(name, None)
    for module_name, function, index in keep_float_calls:
        mapping = mapping.set_module_name_object_type_order(module_name, function, index, None)
    return mapping


def _weight_scale(w: torch.Tensor) -> torch.Tensor:
    """The int8 conversion's weight scales: signed 8-bit, symmetric, one per output channel, from the
    weight's own extremes (as ``MovingAveragePerChannelMinMaxObserver`` sets them for a fixed weight)."""
    extremes = w.detach().abs().amax(dim=tuple(range(1, w.ndim)))
    return (extremes / 127.5).clamp_min(torch.finfo(torch.float32).eps).float()


class _WeightFakeQuantConv2d(nn.Conv2d):
    """A convolution whose weight passes through the fake quantiser the int8 conversion will apply
    (signed 8-bit, symmetric, one scale per output channel, from the weight's own extremes).

    oneDNN fuses a convolution with the residual addition after it (``ConvAdd2d``), but PyTorch's
    quantisation-aware training leaves that fused convolution's weight in float; this class, swapped
    in by :func:`prepare` and out by :func:`convert`, lets training see its rounding too. It stands
    for the layers named in ``int8_input`` as well (:class:`Int8InputConv2d`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return self._conv_forward(x, torch.fake_quantize_per_channel_affine(w, _weight_scale(w), zero, 0, -128, 127),
                                  self.bias)


class Int8InputConv2d(nn.Module):
    """A convolution on the int8 graph's 8-bit activations, with 8-bit weights (as :func:`_weight_scale`
    quantises them), whose output stays fp32: oneDNN's ``qconv_pointwise`` with a float destination.

    It replaces a ``dequantize`` followed by the fp32 convolution for a last layer whose *output* must
    stay float (a correction added to the image): its input was 8-bit already. On the 2-core machine
    the JPEG U-Net's last convolution (48 → 4 channels on 256²) took 0.9 ms this way against 3.9 ms.
    The input is read in place (a ``quint8`` tensor viewed as ``uint8``); the weight is packed for each
    input scale met (one, in a converted graph).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("an int8-input convolution needs explicit zero padding")
        w = conv.weight.detach().float().cpu()
        scale = _weight_scale(w)
        zero = torch.zeros(w.shape[0], dtype=torch.int32)
        # rounded as the fake quantiser rounds (a weight of exactly ±127.5 steps goes the same way)
        rounded = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)
        self.register_buffer("weight_q", torch.round(rounded / scale.view(-1, 1, 1, 1)).to(torch.int8))
        self.register_buffer("w_scale", scale)
        self.register_buffer("w_zero_point", torch.zeros(w.shape[0], dtype=torch.int64))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().cpu())
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self._packed: dict[tuple[float, int], torch.Tensor] = {}

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        key = (float(q.q_scale()), int(q.q_zero_point()))
        packed = self._packed.get(key)
        if packed is None:
            packed = self._packed[key] = torch.ops.onednn.qconv_prepack(
                self.weight_q, self.w_scale, key[0], key[1], self.stride, self.padding, self.dilation,
                self.groups, None)
        return torch.ops.onednn.qconv_pointwise(
            q.view(torch.uint8), key[0], key[1], packed, self.w_scale, self.w_zero_point, self.bias,
            self.stride, self.padding, self.dilation, self.groups, 1.0, 0, torch.float32, "none", [], "")


def _fused_add_convs(model: nn.Module) -> list[nn.Conv2d]:
    from torch.ao.nn.intrinsic import ConvAdd2d, ConvAddReLU2d

    return [m[0] for m in model.modules() if isinstance(m, ConvAdd2d | ConvAddReLU2d)]


def prepare(core: nn.Module, example: torch.Tensor, keep_float: Iterable[str] = (),
            keep_float_calls: Iterable[tuple[str, object, int]] = (), int8_input: Iterable[str] = ()) -> nn.Module:
    """The fake-quantised (training) graph of ``core``; it runs in float on any device.

    ``keep_float`` names submodules that stay fp32; ``keep_float_calls`` names function calls that do,
    as ``(module name, function, index)``: the ``index``-th call of ``function`` in that module's own
    code (``""`` for ``core``'s). Shape operations such as a pixel shuffle take their input's
    quantisation, so one after a float layer needs naming too, or its float output is quantised.
    ``int8_input`` names convolutions among ``keep_float`` whose output stays float but whose input
    (the 8-bit output of a quantised layer) and weights are 8-bit (:class:`Int8InputConv2d`); here
    their weights pass through the weight quantiser.
    """
    int8_input = tuple(int8_input)
    if missing := set(int8_input) - set(keep_float):
        raise ValueError(f"int8_input layers must be in keep_float too: {sorted(missing)}")
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        prepared = prepare_qat_fx(core.train(), _qconfig_mapping(keep_float, keep_float_calls),
                                  example_inputs=(example,), backend_config=_backend_config())
    for conv in _fused_add_convs(prepared) + [prepared.get_submodule(name) for name in int8_input]:
        if type(conv) is nn.Conv2d:
            conv.__class__ = _WeightFakeQuantConv2d
        elif type(conv) is not _WeightFakeQuantConv2d:
            raise TypeError(f"an int8-input layer must be a Conv2d; got {type(conv).__name__}")
    return prepared


def convert(prepared: nn.Module, int8_input: Iterable[str] = ()) -> nn.Module:
    """The int8 CPU graph of a :func:`prepare`-d graph, with the ranges its quantisers hold (a copy);
    ``int8_input`` as given to :func:`prepare`."""
    from torch.ao.quantization.quantize_fx import convert_fx

    if not available():
        raise RuntimeError(f"this PyTorch build has no {ENGINE} quantised engine")
    torch.backends.quantized.engine = ENGINE
    # normal tensors even when called under inference mode (the graph is cached and may run outside it)
    with torch.inference_mode(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = copy.deepcopy(prepared).cpu().eval()
        for conv in _fused_add_convs(model):
            if type(conv) is _WeightFakeQuantConv2d:
                conv.__class__ = nn.Conv2d  # the converter quantises the weight itself, as above
        converted = convert_fx(model, backend_config=_backend_config())
    _channels_last_pixel_shuffles(converted)
    _accumulators_copied(converted)
    _relus_into_convs(converted)
    _int8_input_convs(converted, int8_input)
    return converted.eval()


def pixel_shuffle_channels_last(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``pixel_shuffle(x, factor)`` computed as one copy in channels-last order, which the result has.

    The same values as :func:`torch.pixel_shuffle`. On int8 tensors that one's generic path, with the
    copy back to channels-last that int8 additions want, took 8.6 ms against 1.4 ms for the JPEG
    U-Net's two up-samplings of a 512² image.
    """
    n, c, h, w = x.shape
    c //= factor * factor
    t = x.permute(0, 2, 3, 1).reshape(n, h, w, c, factor, factor).permute(0, 1, 4, 2, 5, 3)
    return t.reshape(n, h * factor, w * factor, c).permute(0, 3, 1, 2)


def _channels_last_pixel_shuffles(graph_module: nn.Module) -> None:
    """Swap the converted graph's pixel shuffles for :func:`pixel_shuffle_channels_last` (in place)."""
    import torch.nn.functional as F

    graph = graph_module.graph
    for node in graph.nodes:
        if node.op == "call_function" and node.target in (torch.pixel_shuffle, F.pixel_shuffle):
            node.target = pixel_shuffle_channels_last
    graph_module.recompile()


def _accumulators_copied(graph_module: nn.Module) -> None:
    """Give each fused int8 convolution + addition a copy of the tensor it adds where that tensor is read
    again later (in place).

    oneDNN's ``ConvAdd2d`` writes its sum into the buffer of the tensor it adds, so that tensor is gone
    after the call. In a chain of residual blocks that is free, but a tensor that a later layer reads
    too (a long skip connection over the blocks) would be read overwritten: the demosaicing network's
    skip from its first layer to its last came out 9 dB worse before this copy.
    """
    from torch.ao.nn.intrinsic.quantized import ConvAdd2d, ConvAddReLU2d

    graph = graph_module.graph
    position = {node: i for i, node in enumerate(graph.nodes)}
    changed = False
    for node in list(graph.nodes):
        if not (node.op == "call_module"
                and isinstance(graph_module.get_submodule(node.target), ConvAdd2d | ConvAddReLU2d)):
            continue
        added = node.args[1]
        if node.args[0] is added or any(position[user] > position[node] for user in added.users if user is not node):
            with graph.inserting_before(node):
                summand = graph.call_method("clone", (added,))
            node.args = (node.args[0], summand, *node.args[2:])
            changed = True
    if changed:
        graph_module.recompile()


def _relus_into_convs(graph_module: nn.Module) -> None:
    """Fuse each ReLU that follows a quantised convolution through shape operations alone (a pixel
    shuffle, a layout copy) into the convolution (in place): the sub-pixel up-samplings' ReLUs, which
    the converter leaves as a pass of their own over the up-sampled tensor. With the convolution's
    output scale and zero point kept, the values are the same: ``q(max(y, 0)) = max(q(y), q(0))``."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq
    import torch.nn.functional as F

    graph = graph_module.graph
    changed = False
    for node in list(graph.nodes):
        if not (node.op == "call_function" and node.target in (F.relu, torch.relu) and len(node.args) == 1):
            continue
        source = node.args[0]
        while len(source.users) == 1 and (
                (source.op == "call_function" and source.target is pixel_shuffle_channels_last)
                or (source.op == "call_method" and source.target == "contiguous")):
            source = source.args[0]
        if not (source.op == "call_module" and len(source.users) == 1):
            continue
        conv = graph_module.get_submodule(source.target)
        if type(conv) is not nnq.Conv2d:
            continue
        fused = nniq.ConvReLU2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                conv.dilation, conv.groups, True, conv.padding_mode)
        fused.set_weight_bias(*conv._weight_bias())
        fused.scale, fused.zero_point = conv.scale, conv.zero_point
        graph_module.set_submodule(source.target, fused)
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
        changed = True
    if changed:
        graph_module.recompile()


def _int8_input_convs(graph_module: nn.Module, names: Iterable[str]) -> None:
    """Swap each named float convolution of a converted graph, with the ``dequantize`` before it, for
    an :class:`Int8InputConv2d` on the quantised tensor (in place)."""
    names = set(names)
    if not names:
        return
    graph = graph_module.graph
    done = set()
    for node in list(graph.nodes):
        if node.op != "call_module" or node.target not in names:
            continue
        source = node.args[0]
        if not (len(node.args) == 1 and not node.kwargs and getattr(source, "op", None) == "call_method"
                and source.target == "dequantize"):
            raise ValueError(f"{node.target!r} does not take a dequantised 8-bit tensor alone")
        graph_module.set_submodule(node.target, Int8InputConv2d(graph_module.get_submodule(node.target)))
        node.args = (source.args[0],)
        if not source.users:
            graph.erase_node(source)
        done.add(node.target)
    if missing := names - done:
        raise ValueError(f"int8_input layers not called in the graph: {sorted(missing)}")
    graph_module.recompile()


class Int8Network(nn.Module):
    """Base of a network's int8 form: holds the fake-quantised graph (``qat``) of a float *core*,
    which trains by quantisation-aware training and runs in float on any device; in eval mode on the
    CPU, :meth:`graph_for` gives instead the int8 graph converted from it, cached until the weights or
    the mode change. Subclasses wrap the graph (padding, cropping, residuals) in their forward.
    """

    def __init__(self, core: nn.Module, example: torch.Tensor, keep_float: Iterable[str] = (),
                 keep_float_calls: Iterable[tuple[str, object, int]] = (), int8_input: Iterable[str] = ()) -> None:
        super().__init__()
        self.learn_ranges = True  # in training mode the activations' quantisers follow their ranges
        self.int8_input = tuple(int8_input)
        self.qat = prepare(core, example, keep_float, keep_float_calls, self.int8_input)
        with torch.no_grad():  # gives the per-channel quantisers their shapes, which saved weights have
            self.qat(example)
        self.__dict__["_int8"] = None  # the converted graph: not a child, so .to() and state_dict skip it
        self.register_load_state_dict_post_hook(lambda module, keys: module._drop_int8())

    def _drop_int8(self) -> None:
        self.__dict__["_int8"] = None

    def train(self, mode: bool = True) -> Int8Network:
        super().train(mode)
        # in training the weights' ranges follow the weights; the activations' too unless kept
        freeze_ranges(self.qat, frozen=not mode)
        if mode and not self.learn_ranges:
            freeze_ranges(self.qat, weights=False)
        self._drop_int8()  # the weights may change in training; a later eval converts them again
        return self

    def take_float_parameters(self, values: Iterable[torch.Tensor]) -> None:
        """Copy a float network's parameters, in the order of ``qat.parameters()``, into the graph;
        the quantisers' ranges start afresh from the next batch seen in training mode."""
        values, own = list(values), list(self.qat.parameters())
        if [v.shape for v in values] != [p.shape for p in own]:
            raise ValueError(f"the quantised graph's parameters do not match {type(self).__name__}'s float network")
        with torch.no_grad():
            for value, p in zip(values, own, strict=True):
                p.copy_(value)
        for module in self.qat.modules():
            if hasattr(module, "reset_min_max_vals"):
                module.reset_min_max_vals()
        self._drop_int8()

    def int8_graph(self) -> nn.Module:
        """The int8 CPU graph of the current weights and ranges (converted once, then cached)."""
        if self.__dict__["_int8"] is None:
            self.__dict__["_int8"] = convert(self.qat, self.int8_input)
        return self.__dict__["_int8"]

    def graph_for(self, x: torch.Tensor) -> nn.Module:
        """The graph to run on ``x``: the int8 one for fp32 input on the CPU in eval mode, where this
        PyTorch has the engine; the fake-quantised one (in float) otherwise."""
        real = not self.training and x.device.type == "cpu" and x.dtype == torch.float32 and available()
        return self.int8_graph() if real else self.qat


def calibrate_ranges(prepared: nn.Module, feed: Callable[[], object]) -> None:
    """Set each activation quantiser's range to the one with the least rounding and clipping error
    over the activations ``feed()`` sends through ``prepared`` (a histogram observer's choice), instead
    of their whole min–max span, and stop the range observers.

    A min–max range spends 8-bit steps on rare extremes; a residual network's summed activations
    have long tails, so a tighter range rounds the bulk of them more finely. For the demosaicing
    network it was worth 0.06 dB noise-free on validation before any training (CARD.md). The ranges are
    stored in the observers, from which :func:`convert` takes them, and in the quantisers; the weights'
    quantisers are left alone (their observers see the weights in ``feed`` if they are running).
    ``feed`` must keep the activations' observers stopped (an :class:`Int8Network` with ``learn_ranges``
    off does, in either mode)."""
    from torch.ao.quantization.observer import HistogramObserver

    quantisers = _activation_quantisers(prepared)
    freeze_ranges(prepared, weights=False)
    histograms = [HistogramObserver(dtype=m.dtype, quant_min=m.quant_min, quant_max=m.quant_max) for m in quantisers]
    hooks = [m.register_forward_pre_hook(lambda module, args, h=h: h(args[0].detach().float()))
             for m, h in zip(quantisers, histograms, strict=True)]
    for m in quantisers:  # the histograms see the float activations, as the observers would
        m.disable_fake_quant()
    try:
        with torch.no_grad():
            feed()
    finally:
        for m, hook in zip(quantisers, hooks, strict=True):
            hook.remove()
            m.enable_fake_quant()
    for m, h in zip(quantisers, histograms, strict=True):
        scale, zero = h.calculate_qparams()
        observer = m.activation_post_process
        observer.min_val.fill_(float((m.quant_min - zero.item()) * scale.item()))
        observer.max_val.fill_(float((m.quant_max - zero.item()) * scale.item()))
        m.scale.copy_(scale.reshape(m.scale.shape))
        m.zero_point.copy_(zero.reshape(m.zero_point.shape).to(m.zero_point.dtype))


def _quantisers(prepared: nn.Module) -> list[nn.Module]:
    from torch.ao.quantization import FakeQuantize

    return [m for m in prepared.modules() if isinstance(m, FakeQuantize)]


def _activation_quantisers(prepared: nn.Module) -> list[nn.Module]:
    """The activations' quantisers (one range per tensor; the weights' have one per channel)."""
    return [m for m in _quantisers(prepared) if m.qscheme == torch.per_tensor_affine]


def freeze_ranges(prepared: nn.Module, frozen: bool = True, weights: bool = True) -> None:
    """Stop (or restart) the quantisers' range observers; with ``weights=False`` only the activations'
    (the weights' per-channel ones are left as they are)."""
    for m in _quantisers(prepared) if weights else _activation_quantisers(prepared):
        m.disable_observer() if frozen else m.enable_observer()


__all__ = ["ENGINE", "Int8InputConv2d", "Int8Network", "available", "calibrate_ranges", "convert", "fast_on_this_cpu",
           "freeze_ranges", "pixel_shuffle_channels_last", "preferred", "prepare"]
