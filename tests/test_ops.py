"""The compiled interlace op against the independent PyTorch reference, its gradients, and its registration."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tin_core import interlace_backends, temporal_interlace, temporal_interlace_reference, temporal_shift

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def random_inputs(n, t, c, spatial, g, dtype, integer=False, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, c, *spatial, generator=gen, dtype=dtype)
    offsets = torch.rand(n, g, generator=gen, dtype=dtype) * 6 - 3  # (-3, 3)
    if integer:
        offsets = offsets.round()
    weights = torch.rand(n, t, g, generator=gen, dtype=dtype) * 2
    return [v.requires_grad_(requires_grad) for v in (x, offsets, weights)]


def test_compiled_kernels_present():
    backends = interlace_backends()
    assert backends["cpu"], "the CPU kernel must be compiled and registered"
    assert torch.ops.tin.interlace.default is not None


def test_cuda_kernel_built_where_toolkit_present():
    """On a machine with nvcc and a CUDA build of torch, the extension must carry the CUDA kernels too."""
    from pathlib import Path

    if torch.version.cuda is None or not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("no CUDA toolkit or CUDA build of torch here: the extension is CPU only by design")
    assert interlace_backends()["cuda"], "nvcc and CUDA torch are present but the CUDA kernel was not built"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("tin::interlace_backward", "CUDA")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("integer", [False, True])
def test_forward_matches_reference(dtype, groups, integer):
    for seed, (n, t, spatial) in enumerate([(2, 8, (5, 7)), (3, 5, (4,)), (1, 3, ()), (2, 16, (3, 2, 2))]):
        x, offsets, weights = random_inputs(n, t, 4 * groups, spatial, groups, dtype, integer, seed)
        out = temporal_interlace(x, offsets, weights)
        torch.testing.assert_close(out, temporal_interlace_reference(x, offsets, weights), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_backward_matches_reference(dtype, groups):
    x, offsets, weights = random_inputs(2, 6, 2 * groups, (3, 4), groups, dtype, seed=groups, requires_grad=True)
    grad_out = torch.randn_like(x)
    compiled = torch.autograd.grad(temporal_interlace(x, offsets, weights), (x, offsets, weights), grad_out)
    reference = torch.autograd.grad(temporal_interlace_reference(x, offsets, weights), (x, offsets, weights), grad_out)
    for got, want in zip(compiled, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4 if dtype == torch.float32 else 1e-11, rtol=1e-4)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_gradcheck_float64(groups):
    x, offsets, weights = random_inputs(2, 5, 2 * groups, (3, 2), groups, torch.float64, seed=7, requires_grad=True)
    # Keep offsets away from integers: there the op is continuous but not differentiable (a kink).
    with torch.no_grad():
        offsets.copy_(offsets.floor() + 0.1 + 0.8 * torch.rand_like(offsets))
    assert torch.autograd.gradcheck(temporal_interlace, (x, offsets, weights))


def test_opcheck():
    x, offsets, weights = random_inputs(2, 4, 4, (3,), 2, torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.tin.interlace.default, (x, offsets, weights))
    torch.library.opcheck(torch.ops.tin.interlace.default, (x.detach(), offsets.detach(), weights.detach()))


@pytest.mark.parametrize("channels", [4, 8, 12])
def test_interlacing_a_prefix_of_the_channels_copies_the_rest(channels):
    """channels=M: the first M channels are interlaced in G groups, the others pass through, values and gradients."""
    x, offsets, weights = random_inputs(2, 5, 16, (3, 2), 4, torch.float64, seed=channels, requires_grad=True)
    grad = torch.randn_like(x)
    got = temporal_interlace(x, offsets, weights, channels=channels)
    want = torch.cat([temporal_interlace(x[:, :, :channels], offsets, weights), x[:, :, channels:]], dim=2)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(got, temporal_interlace_reference(x, offsets, weights, channels=channels))
    for a, b in zip(torch.autograd.grad(got, (x, offsets, weights), grad),
                    torch.autograd.grad(want, (x, offsets, weights), grad), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    torch.library.opcheck(torch.ops.tin.interlace.default, (x, offsets, weights, channels))
    assert torch.autograd.gradcheck(lambda *a: temporal_interlace(*a, channels=channels), (x, offsets, weights))


@pytest.mark.parametrize("channels, fragment", [(20, "exceeds"), (6, "not divisible"), (2, "not divisible")])
def test_bad_channel_counts_are_refused(channels, fragment):
    x, offsets, weights = random_inputs(1, 3, 16, (2,), 4, torch.float32)
    with pytest.raises(ValueError, match=fragment):
        temporal_interlace(x, offsets, weights, channels=channels)
    with pytest.raises(RuntimeError, match=fragment):
        torch.ops.tin.interlace(x, offsets, weights, channels)


def test_opcheck_backward_with_and_without_each_gradient():
    x, offsets, weights = random_inputs(2, 4, 4, (3,), 2, torch.float64)
    grad = torch.randn_like(x)
    for input_grad, param_grads in itertools.product([True, False], repeat=2):
        torch.library.opcheck(
            torch.ops.tin.interlace_backward.default, (grad, x, offsets, weights, 2, input_grad, param_grads)
        )


def test_backward_computes_only_what_is_asked():
    x, offsets, weights = random_inputs(2, 5, 4, (3,), 2, torch.float64)
    grad = torch.randn_like(x)
    full = torch.ops.tin.interlace_backward(grad, x, offsets, weights)
    no_input = torch.ops.tin.interlace_backward(grad, x, offsets, weights, -1, False, True)
    no_params = torch.ops.tin.interlace_backward(grad, x, offsets, weights, -1, True, False)
    assert no_input[0].numel() == 0 and no_params[1].numel() == 0 and no_params[2].numel() == 0
    torch.testing.assert_close(no_input[1:], full[1:], atol=0, rtol=0)
    torch.testing.assert_close(no_params[0], full[0], atol=0, rtol=0)
    # Through autograd, whichever inputs require grad get exactly the full gradients.
    for wants in [(True, False, False), (False, True, True), (False, False, True), (True, True, True)]:
        inputs = [v.clone().requires_grad_(w) for v, w in zip((x, offsets, weights), wants, strict=True)]
        temporal_interlace(*inputs).backward(grad)
        for v, want, expected in zip(inputs, wants, full, strict=True):
            assert (v.grad is not None) == want
            if want:
                torch.testing.assert_close(v.grad, expected, atol=0, rtol=0)


# Half and bfloat16 on CPU: against the float32 kernel, with tolerances of their rounding (8 and 11 bits of mantissa)
# at values of order 1 (a few roundings: of the inputs, of the accumulated output).
LOW_PRECISION = {torch.bfloat16: dict(atol=3e-2, rtol=3e-2), torch.float16: dict(atol=4e-3, rtol=4e-3)}


@pytest.mark.parametrize("dtype", list(LOW_PRECISION))
def test_low_precision_cpu_matches_float32(dtype):
    x, offsets, weights = random_inputs(2, 6, 8, (5, 5), 4, torch.float32, seed=3)
    low = [v.to(dtype) for v in (x, offsets, weights)]
    exact = [v.float() for v in low]  # the same rounded inputs in float32: only the op's own rounding differs
    out = temporal_interlace(*low)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), temporal_interlace(*exact), **LOW_PRECISION[dtype])
    grad = torch.randn_like(x)
    got = torch.ops.tin.interlace_backward(grad.to(dtype), *low)
    want = torch.ops.tin.interlace_backward(grad.to(dtype).float(), *exact)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        scale = w.abs().max().clamp(min=1.0)  # parameter gradients are sums over a row: compare relative to size
        torch.testing.assert_close(g.float() / scale, w / scale, **LOW_PRECISION[dtype])


@pytest.mark.parametrize("shift", [-3, -1, 0, 1, 2, 5])
def test_integer_offset_is_index_shift(shift):
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
    offsets = torch.full((2, 2), float(shift), dtype=torch.float64)
    weights = torch.ones(2, 6, 2, dtype=torch.float64)
    expected = torch.zeros_like(x)
    for t in range(6):
        if 0 <= t - shift < 6:
            expected[:, t] = x[:, t - shift]
    torch.testing.assert_close(temporal_interlace(x, offsets, weights), expected, atol=0, rtol=0)


def test_temporal_shift_is_interlace_with_unit_offsets():
    x = torch.randn(2, 8, 16, 3, 3)
    fold_div = 8
    # Groups of C / fold_div channels: first takes t + 1 (offset -1), second t - 1 (offset +1), the rest stay.
    offsets = torch.zeros(2, fold_div)
    offsets[:, 0], offsets[:, 1] = -1.0, 1.0
    weights = torch.ones(2, 8, fold_div)
    torch.testing.assert_close(temporal_shift(x, fold_div), temporal_interlace(x, offsets, weights), atol=0, rtol=0)


def test_rtcn_equivalence():
    """Paper, Eq. 6-11: with a fixed offset b = k + f, TIN is a kernel-2 temporal convolution with taps [(1-f)w, fw]
    over frames (t - k, t - k - 1) (for a frame-constant weight w)."""
    n, t, c = 2, 8, 3
    x = torch.randn(n, t, c, 5, dtype=torch.float64)
    b, w = 1.3, 0.7
    k, f = 1, 0.3
    out = temporal_interlace(
        x, torch.full((n, 1), b, dtype=torch.float64), torch.full((n, t, 1), w, dtype=torch.float64)
    )
    # conv1d over time per (channel, pixel): out[t] = taps[0] * x[t-k-1] + taps[1] * x[t-k] (cross-correlation).
    series = x.permute(0, 2, 3, 1).reshape(-1, 1, t)
    taps = torch.tensor([[[f * w, (1 - f) * w]]], dtype=torch.float64)
    conv = F.conv1d(F.pad(series, (k + 1, 0)), taps)[..., :t]
    expected = conv.reshape(n, c, 5, t).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected)


def test_padding_never_reads_inf():
    x = torch.full((1, 4, 2, 3), float("inf"))
    x[:, 1] = 1.0
    out = temporal_interlace(x[:, 1:2].expand(1, 1, 2, 3).contiguous(), torch.tensor([[2.5]]), torch.ones(1, 1, 1))
    assert torch.equal(out, torch.zeros(1, 1, 2, 3)), "frames shifted in from outside the clip must be exactly 0"


@pytest.mark.parametrize(
    "x_shape, offsets_shape, weights_shape, fragment",
    [
        ((2, 4, 6, 3), (2, 4), (2, 4, 4), "not divisible"),
        ((2, 4, 8, 3), (3, 4), (2, 4, 4), "batch"),
        ((2, 4, 8, 3), (2, 4), (2, 5, 4), "weights must be"),
        ((2, 4, 8, 3), (2, 4), (2, 4, 2), "weights must be"),
        ((8, 3), (2, 4), (2, 4, 4), "expects"),
        ((2, 4, 8), (2, 4, 1), (2, 4, 4), "expects"),
    ],
)
def test_bad_shapes_raise_value_error(x_shape, offsets_shape, weights_shape, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        temporal_interlace(torch.randn(x_shape), torch.randn(offsets_shape), torch.randn(weights_shape))
    assert str(tuple(x_shape)) in str(info.value)


def test_direct_op_call_checks_shapes():
    """The raw op, bypassing the Python checks, refuses instead of reading out of bounds."""
    with pytest.raises(RuntimeError, match="weights"):
        torch.ops.tin.interlace(torch.randn(2, 4, 8, 3), torch.randn(2, 4), torch.randn(2, 3, 4))


def test_fake_implementation_checks_shapes():
    """Tracing (FakeTensorMode, as torch.compile and torch.export do) refuses what the kernels refuse."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.tin.interlace(torch.empty(2, 4, 8, 3), torch.empty(2, 4), torch.empty(2, 4, 4))
        assert out.shape == (2, 4, 8, 3)
        with pytest.raises(RuntimeError, match="weights must be"):
            torch.ops.tin.interlace(torch.empty(2, 4, 8, 3), torch.empty(2, 4), torch.empty(2, 3, 4))
        with pytest.raises(RuntimeError, match="not divisible"):
            torch.ops.tin.interlace(torch.empty(2, 4, 6, 3), torch.empty(2, 4), torch.empty(2, 4, 4))


def test_noncontiguous_and_cast_inputs():
    x = torch.randn(2, 3, 8, 5, 4).transpose(3, 4)  # non-contiguous
    offsets = torch.rand(2, 4, dtype=torch.float64) * 2 - 1  # other dtype: computed in x's dtype
    weights = torch.rand(2, 3, 4)
    torch.testing.assert_close(
        temporal_interlace(x, offsets, weights), temporal_interlace_reference(x, offsets.float(), weights)
    )


def channels_last_clip(n, t, c, h, w, dtype=torch.float64, seed=0):
    """x as a channels_last model hands it to the op: a [N*T, C, H, W] channels_last activation viewed 5-D."""
    frames = torch.randn(n * t, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return frames.to(memory_format=torch.channels_last).view(n, t, c, h, w)


def is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.permute(0, 1, 3, 4, 2).is_contiguous()


@pytest.mark.parametrize("channels", [16, 8])
def test_channels_last_is_served_in_place_of_a_copy(channels):
    """No transposes around the op in a channels_last model: output and input gradient keep the layout, and every
    value and gradient equals the channels-first op's, whatever the incoming gradient's layout."""
    x = channels_last_clip(2, 5, 16, 3, 4).requires_grad_(True)
    _, offsets, weights = random_inputs(2, 5, 16, (3, 4), 4, torch.float64, seed=1, requires_grad=True)
    dense = x.detach().contiguous().requires_grad_(True)
    out = temporal_interlace(x, offsets, weights, channels=channels)
    want = temporal_interlace(dense, offsets, weights, channels=channels)
    assert is_channels_last(out) and out.view(10, 16, 3, 4).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    torch.testing.assert_close(out, temporal_interlace_reference(dense, offsets, weights, channels=channels))
    for grad in (torch.randn_like(want), channels_last_clip(2, 5, 16, 3, 4, seed=2)):
        got = torch.autograd.grad(out, (x, offsets, weights), grad, retain_graph=True)
        expected = torch.autograd.grad(want, (dense, offsets, weights), grad, retain_graph=True)
        assert is_channels_last(got[0])
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    torch.library.opcheck(torch.ops.tin.interlace.default, (x, offsets, weights, channels))
    grad = channels_last_clip(2, 5, 16, 3, 4, seed=3)
    args = (grad, x.detach(), offsets.detach(), weights.detach(), channels, True, True)
    torch.library.opcheck(torch.ops.tin.interlace_backward.default, args)


def test_channels_last_model_matches_channels_first():
    """TIN-R18 in channels_last (as the engine runs it on GPU) gives the channels-first model's logits."""
    from tin_core import build_model

    torch.manual_seed(0)
    model = build_model("tin", 5, num_segments=4, backbone="resnet18").eval()
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        want = model(clips)
        got = model.to(memory_format=torch.channels_last)(clips)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 4, 0), (0, 3, 4, 5), (2, 3, 4, 0, 5), (2, 0, 4, 5)])
def test_empty_tensors_pass_through(shape):
    x = torch.randn(*shape, requires_grad=True)
    offsets = torch.rand(shape[0], 2, requires_grad=True)
    weights = torch.rand(shape[0], shape[1], 2, requires_grad=True)
    out = temporal_interlace(x, offsets, weights)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape
    assert not offsets.grad.any() and not weights.grad.any()


def test_torch_compile_fullgraph_sees_one_op():
    def f(x, offsets, weights):
        return temporal_interlace(x * 2, offsets, weights).sum()

    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x, offsets, weights = random_inputs(2, 4, 4, (3, 3), 2, torch.float32, requires_grad=True)
    value = torch.compile(f, fullgraph=True, backend=recording_backend)(x, offsets, weights)
    value.backward()
    torch.testing.assert_close(value, f(x, offsets, weights))
    targets = [node.target for gm in graphs for node in gm.graph.nodes]
    interlace_calls = [t for t in targets if t in (torch.ops.tin.interlace, torch.ops.tin.interlace.default)]
    assert len(interlace_calls) == 1, targets
    assert x.grad is not None and offsets.grad is not None and weights.grad is not None


FALLBACK = (
    "import logging, sys, warnings, torch\n"
    "logging.basicConfig(level=logging.INFO)\n"
    "from tin_core import temporal_interlace, interlace_backends\n"
    "assert interlace_backends() == {'cpu': False, 'cuda': False}\n"
    "with warnings.catch_warnings(record=True) as w:\n"
    "    warnings.simplefilter('always')\n"
    "    for _ in range(3): temporal_interlace(torch.randn(1, 4, 2, 3), torch.rand(1, 2), torch.ones(1, 4, 2))\n"
    "print(sum('reference' in str(x.message) for x in w))\n"
)


@pytest.mark.integration
def test_reference_fallback_without_extension_logs_once_and_does_not_warn():
    """A registered model's consumer has tin_core without the extension: the reference serves, said once in the log,
    with no warning that would ask them to build a repository they do not have."""
    code = "import sys; sys.modules['tin_ops'] = None\n" + FALLBACK
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "0"
    assert result.stderr.count("tin_ops extension is not installed") == 1, result.stderr


@pytest.mark.integration
def test_reference_fallback_warns_once_when_the_extension_is_broken(tmp_path):
    (tmp_path / "tin_ops.py").write_text("raise ImportError('undefined symbol: _ZN3c10')\n")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + FALLBACK
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "1", result.stderr


def test_all_offsets_and_frames_combinations_small():
    """Exhaustive over small T and offsets on a grid, including exact integers and offsets beyond T."""
    for t, b in itertools.product([1, 2, 3, 5], [-4.0, -1.5, -1.0, -0.25, 0.0, 0.5, 1.0, 2.75, 6.0]):
        x = torch.randn(1, t, 2, 2, dtype=torch.float64)
        args = (x, torch.tensor([[b, -b]], dtype=torch.float64), torch.rand(1, t, 2, dtype=torch.float64))
        torch.testing.assert_close(temporal_interlace(*args), temporal_interlace_reference(*args))
