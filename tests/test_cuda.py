"""The CUDA kernel on the device it targets: against the CPU kernel and the reference (output and all three
gradients) in f32 / f64 / f16 / bf16, gradcheck, opcheck, non-contiguous inputs, large shapes, the current stream
(graph capture), the training engine's bf16 steps on one GPU without Ray (DDP and DeepSpeed: what a device machine
without Ray can run), and a TIN-R18 train step through Ray Train on one GPU. Skipped where there is no GPU."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from tin_core import interlace_backends, temporal_interlace, temporal_interlace_reference

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"),
    pytest.mark.gpu,
]

# Low precision against float32 on the same rounded inputs: a few roundings of 8 (bf16) or 11 (f16) mantissa bits.
TOLERANCE = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}


def inputs(n, t, c, spatial, g, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, c, *spatial, generator=gen)
    offsets = torch.rand(n, g, generator=gen) * 6 - 3
    weights = torch.rand(n, t, g, generator=gen) * 2
    return [v.to(device=device, dtype=dtype) for v in (x, offsets, weights)]


def forward_and_grads(fn, x, offsets, weights, grad):
    leaves = [v.detach().clone().requires_grad_(True) for v in (x, offsets, weights)]
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, leaves, grad))


def test_cuda_kernel_is_registered():
    assert interlace_backends()["cuda"], "the extension was built without its CUDA kernels"


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("groups", [1, 4])
def test_cuda_matches_cpu_kernel_and_reference(dtype, groups):
    x, offsets, weights = inputs(2, 7, 4 * groups, (5, 6), groups, torch.float32, "cpu", seed=groups)
    grad = torch.randn_like(x)
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32  # f16/bf16 against f32
    rounded = [v.to(dtype).to(compute) for v in (x, offsets, weights, grad)]  # the inputs as `dtype` holds them
    cpu = forward_and_grads(temporal_interlace, *rounded[:3], rounded[3])
    reference = forward_and_grads(temporal_interlace_reference, *rounded[:3], rounded[3])
    cuda = forward_and_grads(temporal_interlace, *(v.to(dtype).cuda() for v in (x, offsets, weights)),
                             grad.to(dtype).cuda())  # fmt: skip
    for got, want, want_ref in zip(cuda, cpu, reference, strict=True):
        assert got.dtype == dtype and got.is_cuda
        scale = want.abs().max().clamp(min=1.0)  # parameter gradients are sums over rows: compare relative to size
        torch.testing.assert_close(got.cpu().to(compute) / scale, want / scale, **TOLERANCE[dtype])
        torch.testing.assert_close(want, want_ref, atol=1e-4, rtol=1e-4)


def test_gradcheck_float64_on_cuda():
    x, offsets, weights = inputs(2, 5, 4, (3, 2), 2, torch.float64, "cuda", seed=7)
    offsets = offsets.floor() + 0.1 + 0.8 * torch.rand_like(offsets)  # away from the kinks at integers
    args = [v.requires_grad_(True) for v in (x, offsets, weights)]
    assert torch.autograd.gradcheck(temporal_interlace, args)


def test_opcheck_on_cuda():
    x, offsets, weights = inputs(2, 4, 4, (3,), 2, torch.float32, "cuda")
    torch.library.opcheck(torch.ops.tin.interlace.default, (x.requires_grad_(), offsets.requires_grad_(), weights))
    grad = torch.randn_like(x)
    for input_grad, param_grads in itertools.product([True, False], repeat=2):
        torch.library.opcheck(torch.ops.tin.interlace_backward.default,
                              (grad, x.detach(), offsets.detach(), weights, 2, input_grad, param_grads))  # fmt: skip


def test_noncontiguous_inputs_on_cuda():
    x = torch.randn(2, 3, 8, 5, 4, device="cuda").transpose(3, 4)
    offsets = (torch.rand(4, 2, device="cuda") * 2 - 1).t()  # [2, 4], not contiguous
    weights = torch.rand(2, 4, 3, device="cuda").transpose(1, 2)  # [2, 3, 4], not contiguous
    torch.testing.assert_close(
        temporal_interlace(x, offsets, weights), temporal_interlace_reference(x, offsets, weights)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c, channels", [(64, 64), (64, 16), (256, 256)])  # the last: rows of 4 parameter chunks
def test_channels_last_on_cuda_matches_the_cpu_kernel(dtype, c, channels):
    """A channels_last activation (as the engine runs models on GPU) is served in its layout: output and all three
    gradients equal the CPU kernel's on the same values, and stay channels_last."""
    frames = torch.randn(2 * 8, c, 14, 14, generator=torch.Generator().manual_seed(4)).to(dtype)
    x = frames.to(memory_format=torch.channels_last).view(2, 8, c, 14, 14)
    _, offsets, weights = inputs(2, 8, c, (14, 14), 4, dtype, "cpu", seed=5)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(dtype)
    fn = lambda *a: temporal_interlace(*a, channels=channels)  # noqa: E731
    want = forward_and_grads(fn, x, offsets, weights, grad)
    got = forward_and_grads(fn, *(v.cuda() for v in (x, offsets, weights)), grad.cuda())
    assert not got[0].is_contiguous() and got[0].view(16, c, 14, 14).is_contiguous(memory_format=torch.channels_last)
    for g, w in zip(got, want, strict=True):
        scale = w.abs().max().clamp(min=1.0)
        torch.testing.assert_close(g.cpu().float() / scale, w.float() / scale, **TOLERANCE[dtype])


@pytest.mark.parametrize("shape", [(2, 32, 256, 56, 56), (2, 8, 2048, 14, 14), (1, 32, 2048, 7, 7)])
def test_large_shapes_match_the_reference(shape):
    n, t, c, h, w = shape
    x, offsets, weights = inputs(n, t, c, (h, w), 4, torch.float32, "cuda", seed=sum(shape))
    grad = torch.randn_like(x)
    got = forward_and_grads(temporal_interlace, x, offsets, weights, grad)
    want = forward_and_grads(temporal_interlace_reference, x, offsets, weights, grad)
    for g, r in zip(got, want, strict=True):
        scale = r.abs().max().clamp(min=1.0)
        torch.testing.assert_close(g / scale, r / scale, atol=1e-5, rtol=1e-4)


def test_more_rows_than_one_grid_dimension_holds():
    """520 x 32 x 4 = 66560 (sample, frame, group) rows: past the 65535 blocks a grid's y dimension holds, so the
    gather and parameter-gradient kernels stride over rows; every row must still be computed, once."""
    x, offsets, weights = inputs(520, 32, 8, (2,), 4, torch.float32, "cpu", seed=9)
    grad = torch.randn_like(x)
    want = forward_and_grads(temporal_interlace, x, offsets, weights, grad)
    got = forward_and_grads(temporal_interlace, *(v.cuda() for v in (x, offsets, weights)), grad.cuda())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.cpu(), w, **TOLERANCE[torch.float32])


def test_runs_on_the_current_stream():
    """Captured into a CUDA graph (which captures the current stream only): replayed on new values written into the
    same inputs, the graph's output and gradients are those of the new values, so every kernel and copy of forward
    and backward ran on the current stream (one launched elsewhere would have run once, at capture, on the old
    values; one on the legacy default stream fails the capture)."""
    x, offsets, weights = inputs(2, 8, 64, (28, 28), 4, torch.float32, "cuda")
    grad = torch.randn_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up on a side stream, as graph capture asks
        temporal_interlace(x, offsets, weights)
        torch.ops.tin.interlace_backward(grad, x, offsets, weights)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = temporal_interlace(x, offsets, weights)
        grads = torch.ops.tin.interlace_backward(grad, x, offsets, weights)
    new_x, new_offsets, new_weights = inputs(2, 8, 64, (28, 28), 4, torch.float32, "cuda", seed=1)
    for old, new in ((x, new_x), (offsets, new_offsets), (weights, new_weights), (grad, torch.randn_like(grad))):
        old.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, temporal_interlace_reference(x, offsets, weights))
    for got, want in zip(grads, torch.ops.tin.interlace_backward(grad, x, offsets, weights), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("shape", [(2, 3, 4, 0), (0, 3, 4, 5), (2, 3, 4, 0, 5), (2, 0, 4, 5)])
def test_empty_tensors_pass_through_on_cuda(shape):
    x = torch.randn(*shape, device="cuda", requires_grad=True)
    offsets = torch.rand(shape[0], 2, device="cuda", requires_grad=True)
    weights = torch.rand(shape[0], shape[1], 2, device="cuda", requires_grad=True)
    out = temporal_interlace(x, offsets, weights)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape
    assert not offsets.grad.any() and not weights.grad.any()


# --- the training engine on one GPU, without Ray -------------------------------------------------------------


@pytest.fixture
def nccl_rank(monkeypatch):
    """torch.distributed over nccl with one rank, as Ray Train sets it up on a GPU worker."""
    import torch.distributed as dist
    from conftest import free_port

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "DS_ACCELERATOR": "cuda"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    yield torch.device("cuda", 0)
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_engine_trains_tin_r18_in_bf16_on_one_gpu(nccl_rank, strategy, tmp_path):
    """Both engines on one rank: bf16 autocast, accumulation, fp32 weights and checkpoint (one rank: no DDP wrapper;
    two-rank DDP runs in test_train_job.py on CPU)."""
    pytest.importorskip("tyro", reason="tyro (the job's config) is not installed here")
    if strategy == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed here")
    import torch.nn.functional as F

    from pipeline.train.config import JobConfig
    from pipeline.train.engine import MODEL_FILE, make_engine
    from tin_core import ModelConfig

    cfg = JobConfig().override(arch="tin", backbone="resnet18", num_segments=4, lr=0.05, batch_size=2,
                               strategy=strategy, grad_accum=2, use_gpu=True, zero_stage=2)  # fmt: skip
    torch.manual_seed(0)
    engine = make_engine(ModelConfig(**cfg.model.to_dict()).build(5), cfg, nccl_rank, fc_lr5=False)
    assert engine.autocast["enabled"]  # --precision auto: bf16 on GPU
    if strategy == "ddp":  # ZeRO moves DeepSpeed's weights into flat, channels-first buffers
        assert engine.module.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    clips = torch.randn(2, 4, 3, 56, 56, generator=gen).to(nccl_rank)
    labels = (torch.rand(2, 5, generator=gen) > 0.5).float().to(nccl_rank)
    start = engine.module.fc.weight.detach().clone()
    losses = []
    for i, last in enumerate([False, True, False, True]):  # two steps of two accumulated batches
        logits = engine.forward(clips, last)
        assert logits.dtype == torch.float32 and logits.is_cuda
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        engine.step(loss)
        losses.append(loss.item())
        if i == 0:
            assert torch.equal(engine.module.fc.weight, start), "the first batch only accumulates"
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())  # fp32 weights under bf16 autocast
    engine.save(tmp_path)
    state = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


# --- a TIN-R18 train step through Ray Train on one GPU ----------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    pytest.importorskip("ray.train", reason="Ray Train is not installed here")
    pytest.importorskip("mlflow", reason="MLflow is not installed here")
    from conftest import local_ray

    with local_ray(tmp_path_factory.mktemp("ray"), num_cpus=4, num_gpus=1):
        yield


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_tin_r18_trains_in_bf16_on_one_gpu(gpu_cluster, tmp_path, strategy):
    if strategy == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed here")
    from pipeline.data.synthetic import SyntheticSpec, generate_mmit
    from pipeline.train.config import JobConfig
    from pipeline.train.driver import run_training

    root = generate_mmit(tmp_path / "mmit", SyntheticSpec(num_train=16, num_val=8, frames=12, size=64))
    cfg = JobConfig().override(root=str(root), arch="tin", backbone="resnet18", num_segments=4, frame_size=56,
                               epochs=1, batch_size=4, use_gpu=True, num_workers=1, strategy=strategy,
                               decoders=2, storage=str(tmp_path / "runs"), name=f"gpu-{strategy}",
                               mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db", register_as=f"gpu-{strategy}")  # fmt: skip
    assert cfg.dist.precision == "auto"  # bf16 on GPU
    os.environ.setdefault("DS_ACCELERATOR", "cuda")
    outcome = run_training(cfg)
    assert 0 <= outcome.metrics["val_map"] <= 1 and outcome.metrics["val_videos"] == 8
    state = torch.load(tmp_path / "runs" / f"gpu-{strategy}" / "epoch-0000" / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())  # fp32 checkpoints
