"""Benchmarks of the interlace op and of TIN's training cost, as ratios measured in one run.

    python -m benchmarks.op            # the full run (ResNet-50 at 224 and 112 px; a few minutes on 2 cores)
    python -m benchmarks.op --quick    # smaller shapes, fewer repeats

Prints (a) op forward / x.clone() on ResNet-50-like tensors (target <= 1.5), (b) the compiled op's forward+backward
against the pure-PyTorch reference (target >= 4x faster), (c) train-step time of TIN-R50 over TSN-R50 and TSM-R50
(target <= 1.05). Timings are medians of interleaved repeats, so that machine noise hits every candidate alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.results import record
from tin_core.model import build_model
from tin_core.ops import interlace_backends, temporal_interlace, temporal_interlace_reference

LINES: list[str] = []


def out(text: str) -> None:
    print(text, flush=True)
    LINES.append(text)


def wall_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_times(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    timer: Callable[[Callable[[], object]], float] = wall_seconds,
) -> dict[str, float]:
    """Median seconds per call of each candidate (`timer(fn)` times one call), interleaving the candidates in every
    round."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            samples[name].append(timer(fn))
    return {name: statistics.median(s) for name, s in samples.items()}


def interlace_inputs(n: int, t: int, c: int, hw: int, groups: int = 4, requires_grad: bool = False):
    x = torch.randn(n, t, c, hw, hw, requires_grad=requires_grad)
    offsets = (torch.rand(n, groups) * 4 - 2).requires_grad_(requires_grad)
    weights = (torch.rand(n, t, groups) * 2).requires_grad_(requires_grad)
    return x, offsets, weights


def bench_forward_vs_clone(shapes, repeats: int) -> None:
    out("(a) op forward / x.clone()  [target <= 1.5]")
    for n, t, c, hw in shapes:
        x, offsets, weights = interlace_inputs(n, t, c, hw)
        with torch.no_grad():
            times = median_times(
                {"op": lambda: temporal_interlace(x, offsets, weights), "clone": lambda: x.clone()}, repeats
            )
        out(
            f"    x [{n}, {t}, {c}, {hw}, {hw}]: op {times['op'] * 1e3:.2f} ms, clone {times['clone'] * 1e3:.2f} ms, "
            f"ratio {times['op'] / times['clone']:.2f}"
        )


def bench_compiled_vs_reference(shapes, repeats: int) -> None:
    out("(b) forward+backward: reference / compiled op  [target >= 4x]")
    for n, t, c, hw in shapes:
        x, offsets, weights = interlace_inputs(n, t, c, hw, requires_grad=True)
        grad = torch.randn(n, t, c, hw, hw)

        def step(fn):
            return lambda: torch.autograd.grad(fn(x, offsets, weights), (x, offsets, weights), grad)

        times = median_times(
            {"compiled": step(temporal_interlace), "reference": step(temporal_interlace_reference)}, repeats
        )
        out(
            f"    x [{n}, {t}, {c}, {hw}, {hw}]: compiled {times['compiled'] * 1e3:.2f} ms, "
            f"reference {times['reference'] * 1e3:.2f} ms, speed-up {times['reference'] / times['compiled']:.2f}x"
        )


def bench_train_step(sizes, t: int, repeats: int, backbone: str) -> None:
    out(f"(c) train step (forward+backward+SGD) {backbone}, batch 1x{t}x3xHxW  [target TIN/TSN, TIN/TSM <= 1.05]")
    for size in sizes:
        clips = torch.randn(1, t, 3, size, size)
        target = torch.zeros(1, 200)
        target[0, 3] = 1
        steps = {}
        for arch in ("tsn", "tsm", "tin"):
            torch.manual_seed(0)
            model = build_model(arch, 200, num_segments=t, backbone=backbone).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

            def step(model=model, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(clips), target)
                loss.backward()
                optimizer.step()

            steps[arch] = step
        times = median_times(steps, repeats)
        out(
            f"    {size} px: TSN {times['tsn']:.3f} s, TSM {times['tsm']:.3f} s, TIN {times['tin']:.3f} s; "
            f"TIN/TSN {times['tin'] / times['tsn']:.3f}, TIN/TSM {times['tin'] / times['tsm']:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement")
    args = parser.parse_args()
    out(f"torch {torch.__version__}, {torch.get_num_threads()} threads, compiled kernels: {interlace_backends()}")
    if args.quick:
        op_shapes, sizes, backbone, repeats = [(1, 8, 64, 28)], [64], "resnet18", args.repeats or 3
    else:
        op_shapes, sizes, backbone, repeats = (
            [(1, 8, 256, 56), (1, 8, 1024, 14)],
            [224, 112],
            "resnet50",
            args.repeats or 5,
        )
    bench_forward_vs_clone(op_shapes, repeats * 10)
    bench_compiled_vs_reference(op_shapes, repeats * 4)
    bench_train_step(sizes, 8, repeats, backbone)
    if not args.quick:
        record("Interlace op and TIN's training cost (CPU)", "```\n" + "\n".join(LINES) + "\n```")


if __name__ == "__main__":
    main()
