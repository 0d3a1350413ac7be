"""GPU benchmarks of the interlace op and of TIN's training cost, as ratios measured in one run (CUDA events,
medians of interleaved repeats), for the prepared GPU check (`make gpu-check`):

(a) op forward / a clone of the same tensor, ResNet-50 shapes, N=8, T=8          [target <= 1.3: >= 70% bandwidth]
    and its backward / a clone (no target: it reads grad twice and x's two frames, and writes grad_x)
(b) forward+backward: the compiled op against the pure-PyTorch reference         [target >= 5x]
(c) train step (forward, backward, SGD), bf16 autocast, channels_last, 8 clips x 8 frames at 224 px:
    TIN-R50 / TSN-R50 and TIN-R50 / TSM-R50                                        [target <= 1.05]
(d) clips/s of each model alone (train step)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.op import LINES, median_times, out
from benchmarks.results import record
from tin_core import ModelConfig, interlace_backends, temporal_interlace, temporal_interlace_reference


def cuda_seconds(fn: Callable[[], object], calls: int = 1) -> float:
    """Seconds per call of `calls` back-to-back calls, timed with CUDA events on the current stream (several calls per
    pair of events, so that a kernel of microseconds is not timed as the host's launch overhead)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def cuda_times(
    candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 3, calls: int = 1
) -> dict[str, float]:
    """Median seconds per call of each candidate, interleaved, timed with CUDA events."""
    return median_times(candidates, repeats, warmup, timer=lambda fn: cuda_seconds(fn, calls))


# The interlaced channels (C/4) of ResNet-50's block inputs at 224 px: layer1-4.
OP_SHAPES = [(8, 8, 64, 56, 56), (8, 8, 128, 28, 28), (8, 8, 256, 14, 14), (8, 8, 512, 7, 7)]


def op_inputs(n, t, c, h, w, dtype=torch.float32, requires_grad=False):
    x = torch.randn(n, t, c, h, w, device="cuda", dtype=dtype, requires_grad=requires_grad)
    offsets = (torch.rand(n, 4, device="cuda", dtype=dtype) * 4 - 2).requires_grad_(requires_grad)
    weights = (torch.rand(n, t, 4, device="cuda", dtype=dtype) * 2).requires_grad_(requires_grad)
    return x, offsets, weights


def bench_op(repeats: int) -> None:
    out("(a) op forward / x.clone()  [target <= 1.3]")
    for shape in OP_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            x, offsets, weights = op_inputs(*shape, dtype=dtype)
            with torch.no_grad():
                t = cuda_times({"op": lambda: temporal_interlace(x, offsets, weights), "clone": x.clone}, repeats,
                               calls=20)  # fmt: skip
            gbs = 2 * x.numel() * x.element_size() / t["op"] / 1e9
            out(f"    {list(shape)} {str(dtype)[6:]}: op {t['op'] * 1e6:.0f} us, clone {t['clone'] * 1e6:.0f} us, "
                f"ratio {t['op'] / t['clone']:.2f} ({gbs:.0f} GB/s read+write)")  # fmt: skip
    out("    backward (all three gradients) / x.clone(), bf16: reads grad twice and x's two frames, writes grad_x")
    for shape in OP_SHAPES:
        x, offsets, weights = op_inputs(*shape, dtype=torch.bfloat16)
        grad = torch.randn_like(x)
        t = cuda_times({"backward": lambda: torch.ops.tin.interlace_backward(grad, x, offsets, weights),
                        "clone": x.clone}, repeats, calls=20)  # fmt: skip
        out(f"    {list(shape)}: backward {t['backward'] * 1e6:.0f} us, clone {t['clone'] * 1e6:.0f} us, "
            f"ratio {t['backward'] / t['clone']:.2f}")  # fmt: skip
    out("(b) forward+backward: reference / compiled op  [target >= 5x]")
    for shape in OP_SHAPES[:2]:
        x, offsets, weights = op_inputs(*shape, requires_grad=True)
        grad = torch.randn_like(x)

        def step(fn):
            return lambda: torch.autograd.grad(fn(x, offsets, weights), (x, offsets, weights), grad)

        t = cuda_times({"compiled": step(temporal_interlace), "reference": step(temporal_interlace_reference)},
                       repeats, calls=5)  # fmt: skip
        out(f"    {list(shape)}: compiled {t['compiled'] * 1e3:.2f} ms, reference {t['reference'] * 1e3:.2f} ms, "
            f"speed-up {t['reference'] / t['compiled']:.1f}x")  # fmt: skip


def bench_train_step(repeats: int, size: int = 224, clips: int = 8, frames: int = 8) -> None:
    out(f"(c) train step, ResNet-50, bf16 autocast, channels_last, {clips} clips x {frames} frames at {size} px")
    x = torch.randn(clips, frames, 3, size, size, device="cuda")
    target = torch.zeros(clips, 200, device="cuda")
    target[:, 3] = 1
    steps = {}
    for arch in ("tsn", "tsm", "tin"):
        torch.manual_seed(0)
        model = ModelConfig(arch=arch, backbone="resnet50", num_segments=frames).build(200)
        model = model.cuda().to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(x)
            F.binary_cross_entropy_with_logits(logits.float(), target).backward()
            optimizer.step()

        steps[arch] = step
    t = cuda_times(steps, repeats)
    out(f"    TSN {t['tsn'] * 1e3:.1f} ms, TSM {t['tsm'] * 1e3:.1f} ms, TIN {t['tin'] * 1e3:.1f} ms; "
        f"TIN/TSN {t['tin'] / t['tsn']:.3f}, TIN/TSM {t['tin'] / t['tsm']:.3f}  [target <= 1.05]")  # fmt: skip
    out("(d) " + ", ".join(f"{arch.upper()} {clips / s:.0f} clips/s" for arch, s in t.items()) + " (train step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per measurement")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here")
    if not interlace_backends()["cuda"]:
        raise SystemExit("the op was built without CUDA kernels: (a) and (b) would time the reference against itself")
    torch.backends.cudnn.benchmark = True
    out(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, compiled kernels: {interlace_backends()}")
    bench_op(args.repeats)
    bench_train_step(max(5, args.repeats // 2))
    record("GPU: interlace op and TIN's training cost", "```\n" + "\n".join(LINES) + "\n```")


if __name__ == "__main__":
    main()
