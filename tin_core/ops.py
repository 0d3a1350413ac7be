"""The temporal interlace op and TSM's temporal shift.

`temporal_interlace` dispatches to the compiled `torch.ops.tin.interlace` (kernels in `cuda/`, built into the
top-level extension module `tin_ops`). This module registers the op's fake implementation (so `torch.compile` and
`torch.export` trace it as one op) and its autograd formula, and keeps a pure-PyTorch reference, written
independently of the kernels, that tests compare against and that serves as the fallback where no compiled kernel
exists for the tensor's device.
"""

from __future__ import annotations

import logging
import warnings

import torch

logger = logging.getLogger(__name__)

try:
    import tin_ops  # noqa: F401  (importing registers torch.ops.tin)

    _IMPORT_ERROR: ImportError | None = None
except ImportError as error:  # the extension was not built: reference fallback
    _IMPORT_ERROR = error


def interlace_backends() -> dict[str, bool]:
    """Which devices have a compiled interlace kernel, e.g. {"cpu": True, "cuda": True}."""
    if _IMPORT_ERROR is not None:
        return {"cpu": False, "cuda": False}
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    return {"cpu": has_kernel("tin::interlace", "CPU"), "cuda": has_kernel("tin::interlace", "CUDA")}


_COMPILED_DEVICES = frozenset(device for device, present in interlace_backends().items() if present)
_warned_fallback: set[str] = set()


def _check_fake_shapes(x: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, channels: int) -> None:
    """The kernels' input checks, for tracing (symbolic shapes): torch._check records them as guards."""
    torch._check(
        x.dim() >= 3 and offsets.dim() == 2 and weights.dim() == 3,
        lambda: "x [N, T, C, *S], offsets [N, G], weights [N, T, G]",
    )
    n, t, c, g = x.shape[0], x.shape[1], x.shape[2], offsets.shape[1]
    moved = c if channels < 0 else channels
    torch._check(moved <= c, lambda: f"channels={channels} exceeds C={c}")
    torch._check(g >= 1 and moved >= g and moved % g == 0, lambda: f"{moved} channels are not divisible by G={g}")
    torch._check(offsets.shape[0] == n and weights.shape[0] == n, lambda: f"batch sizes differ (N={n} in x)")
    torch._check(
        weights.shape[1] == t and weights.shape[2] == g, lambda: f"weights must be [N, T, G] = [{n}, {t}, {g}]"
    )
    torch._check(
        offsets.dtype == x.dtype and weights.dtype == x.dtype, lambda: "x, offsets and weights must share a dtype"
    )


def _empty_in_kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """What the kernels write to: x's layout when it is channels-first ([N, T, C, *S] contiguous) or channels-last
    ([N, T, *S, C] contiguous, a channels_last activation), else channels-first (cuda/interlace_host.h)."""
    channels_last = x.dim() >= 4 and x.permute(0, 1, *range(3, x.dim()), 2).is_contiguous()
    if x.is_contiguous() or channels_last:
        return torch.empty_like(x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


if _IMPORT_ERROR is None:

    @torch.library.register_fake("tin::interlace")
    def _interlace_fake(x: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, channels: int = -1):
        _check_fake_shapes(x, offsets, weights, channels)
        return _empty_in_kernel_layout(x)

    @torch.library.register_fake("tin::interlace_backward")
    def _interlace_backward_fake(
        grad: torch.Tensor,
        x: torch.Tensor,
        offsets: torch.Tensor,
        weights: torch.Tensor,
        channels: int = -1,
        input_grad: bool = True,
        param_grads: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_fake_shapes(x, offsets, weights, channels)
        torch._check(grad.shape == x.shape, lambda: f"grad {tuple(grad.shape)} != x {tuple(x.shape)}")
        grad_x = _empty_in_kernel_layout(x) if input_grad else x.new_empty(0)
        if not param_grads:
            return grad_x, offsets.new_empty(0), weights.new_empty(0)
        return grad_x, torch.empty_like(offsets), torch.empty_like(weights)

    def _setup_context(ctx, inputs, output) -> None:
        x, offsets, weights, channels = inputs
        ctx.save_for_backward(x, offsets, weights)
        ctx.channels = channels

    def _backward(ctx, grad: torch.Tensor):
        """Only the gradients autograd asks for are computed: a frozen TIN module skips the parameter gradients, a
        first layer without an input gradient skips the input gradient."""
        x, offsets, weights = ctx.saved_tensors
        need_x, need_offsets, need_weights = ctx.needs_input_grad[:3]
        grad_x, grad_offsets, grad_weights = torch.ops.tin.interlace_backward(
            grad, x, offsets, weights, ctx.channels, need_x, need_offsets or need_weights
        )
        return (
            grad_x if need_x else None,
            grad_offsets if need_offsets else None,
            grad_weights if need_weights else None,
            None,
        )

    torch.library.register_autograd("tin::interlace", _backward, setup_context=_setup_context)


def _check_interlace_shapes(x: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, channels: int) -> None:
    problem = _interlace_shape_problem(x, offsets, weights, channels)
    if problem:
        shapes = f"x {tuple(x.shape)}, offsets {tuple(offsets.shape)}, weights {tuple(weights.shape)}"
        raise ValueError(f"temporal_interlace: {problem}; got {shapes}")


def _interlace_shape_problem(
    x: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, channels: int
) -> str | None:
    if x.dim() < 3 or offsets.dim() != 2 or weights.dim() != 3:
        return "expects x [N, T, C, *S], offsets [N, G], weights [N, T, G]"
    n, t, c = x.shape[:3]
    g = offsets.shape[1]
    moved = c if channels < 0 else channels
    if moved > c:
        return f"channels={channels} exceeds C={c}"
    if g < 1 or moved < g or moved % g != 0:
        return f"channels C={moved} are not divisible by groups G={g}"
    if offsets.shape[0] != n or weights.shape[0] != n:
        return f"batch sizes differ (N={n} in x)"
    if weights.shape[1] != t or weights.shape[2] != g:
        return f"weights must be [N, T, G] = [{n}, {t}, {g}]"
    if not (x.is_floating_point() and offsets.is_floating_point() and weights.is_floating_point()):
        return f"needs floating-point tensors, not {x.dtype}, {offsets.dtype}, {weights.dtype}"
    return None


def temporal_interlace(
    x: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, channels: int | None = None
) -> torch.Tensor:
    """Shift channel groups along time by fractional offsets, interpolating linearly, and weight each output frame.

    x: [N, T, C, *S]; offsets: [N, G]; weights: [N, T, G]. The first `channels` channels (default: all) are split into
    G groups, group g being channels [g*M, (g+1)*M) with M = channels/G; the other channels are copied as they are.
    With b the group's offset, k = floor(b) and f = b - k:

        out[n, t, c] = weights[n, t, g] * ((1 - f) * x[n, t - k, c] + f * x[n, t - k - 1, c])

    and frames outside [0, T) read as zero, so a positive offset carries the past into the future. Differentiable in
    x, offsets (through f) and weights. offsets and weights are computed in x's dtype. Interlacing a prefix of the
    channels in place of a split, an interlace and a concatenation saves two passes over the tensor. x may be stored
    channels-last (a channels_last activation viewed [N, T, C, H, W]): the kernels read it and write the output so,
    with no transposes around the op.
    """
    channels = -1 if channels is None else channels
    _check_interlace_shapes(x, offsets, weights, channels)
    offsets = offsets.to(x.dtype)
    weights = weights.to(x.dtype)
    if x.device.type in _COMPILED_DEVICES:
        return torch.ops.tin.interlace(x, offsets, weights, channels)
    if x.device.type not in _warned_fallback:
        _warned_fallback.add(x.device.type)
        _fallback_notice(x.device.type)
    return temporal_interlace_reference(x, offsets, weights, channels)


def _fallback_notice(device: str) -> None:
    """Where the extension is absent (a registered model's consumer), say so in the log; where it is installed but
    cannot serve the device or fails to load, warn: that is a broken build."""
    if isinstance(_IMPORT_ERROR, ModuleNotFoundError) and _IMPORT_ERROR.name == "tin_ops":
        logger.info("tin_core: the tin_ops extension is not installed; interlacing with the PyTorch reference")
        return
    why = f"the extension failed to import ({_IMPORT_ERROR})" if _IMPORT_ERROR else "it was built without one"
    warnings.warn(f"tin_core: no compiled interlace kernel for {device} ({why}); using the slower PyTorch reference",
                  RuntimeWarning, stacklevel=3)  # fmt: skip


def temporal_interlace_reference(
    x: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, channels: int | None = None
) -> torch.Tensor:
    """Pure-PyTorch `temporal_interlace`: gathers the two source frames by index and masks those out of range.

    Written apart from the kernels on purpose (index gathers and autograd instead of taps and hand-written
    gradients), so that agreement between the two is evidence.
    """
    channels = -1 if channels is None else channels
    _check_interlace_shapes(x, offsets, weights, channels)
    if 0 <= channels < x.shape[2]:
        moved = temporal_interlace_reference(x[:, :, :channels], offsets, weights)
        return torch.cat([moved, x[:, :, channels:]], dim=2)
    n, t, c = x.shape[:3]
    g = offsets.shape[1]
    xg = x.reshape(n, t, g, c // g, -1)  # [N, T, G, C/G, S]
    shift = torch.floor(offsets)
    frac = (offsets - shift)[:, None, :, None, None]  # [N, 1, G, 1, 1]
    frames = torch.arange(t, device=x.device)[None, :, None]  # [1, T, 1]
    source = frames - shift.long()[:, None, :]  # [N, T, G]: frame t - k

    def frames_at(index: torch.Tensor) -> torch.Tensor:
        valid = ((index >= 0) & (index < t))[..., None, None]
        gathered = torch.gather(xg, 1, index.clamp(0, t - 1)[..., None, None].expand(-1, -1, -1, *xg.shape[3:]))
        return torch.where(valid, gathered, torch.zeros((), dtype=x.dtype, device=x.device))

    mixed = (1 - frac) * frames_at(source) + frac * frames_at(source - 1)
    return (mixed * weights.to(x.dtype)[..., None, None]).reshape(x.shape)


def temporal_shift(x: torch.Tensor, fold_div: int = 8) -> torch.Tensor:
    """TSM's shift on x [N, T, C, *S]: with fold = C // fold_div, channels [0, fold) of frame t take frame t + 1,
    channels [fold, 2 fold) take frame t - 1, the rest stay; frames outside the clip read as zero."""
    if x.dim() < 3:
        raise ValueError(f"temporal_shift expects x [N, T, C, *S]; got {tuple(x.shape)}")
    fold = x.shape[2] // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out
