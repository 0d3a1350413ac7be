"""A synthetic video dataset in Multi-Moments-in-Time (MMiT) layout: the training job's embedded default data.

Each clip shows one textured object doing one *motion* (a temporal class) and may carry *appearance* labels (colour,
shape). Motion classes come in forward/backward pairs ("moving_right"/"moving_left", "growing"/"shrinking", ...): the
backward clip is the forward rendering played in reverse, so both have the same multiset of frames and any model that
averages over frames (TSN) cannot tell them apart, while a temporal model (TIN) can. Appearance is visible in any frame.

Layout under ROOT (as MMiT is distributed): videos/<motion>/clip_NNNNN.mp4 (h264, yuv420p), trainingSet.csv and
validationSet.csv (rows `path,id[,id...]`, 0-based ids, no header), moments_categories.txt (rows `name,index`) and
synthetic.json (the generation parameters; a matching one makes a second call a no-op).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

FORMAT_VERSION = 1
FPS = 8  # 24 frames at 8 fps ~ the 3 s of an MMiT clip
# Temporal classes in (forward, backward) pairs: the backward one is the forward rendering played in reverse.
PAIRS = [
    ("moving_right", "moving_left"),
    ("moving_down", "moving_up"),
    ("growing", "shrinking"),
    ("brightening", "darkening"),
]
MOTIONS = [name for pair in PAIRS for name in pair]  # class ids 0..7; motion // 2 is the pair, motion % 2 reversed
COLOURS = {"red": (225, 45, 40), "green": (40, 205, 70), "blue": (55, 85, 230)}  # blue: no label (a distractor)
SHAPES = ["square", "disc", "diamond"]  # diamond: no label
APPEARANCE = ["red", "green", "square", "disc"]


@dataclass
class SyntheticSpec:
    num_train: int = 320
    """Training clips."""
    num_val: int = 96
    """Validation clips."""
    frames: int = 24
    """Frames per clip on average (each clip varies by up to +-frames/6)."""
    size: int = 64
    """Frame width and height in pixels (even, for yuv420p)."""
    seed: int = 0
    """Everything (labels, geometry, texture, noise) follows from this."""


@dataclass(frozen=True)
class ClipParams:
    """Everything that fixes one clip's pixels except its motion direction and its noise seed."""

    frames: int
    size: int
    colour: str
    shape: str
    radius: tuple[float, float]  # object half-size at the start/end of the forward motion (pixels)
    centre: tuple[float, float, float, float]  # (x0, y0, x1, y1) at the start/end of the forward motion
    gain: tuple[float, float]  # object brightness at the start/end of the forward motion
    ramp: tuple[float, float]  # fraction of the clip where the motion starts and ends (holds before/after)


def class_names() -> list[str]:
    return MOTIONS + APPEARANCE


def temporal_class_pairs() -> list[tuple[int, int]]:
    """(forward, backward) class ids whose clips differ only in frame order."""
    return [(MOTIONS.index(forward), MOTIONS.index(backward)) for forward, backward in PAIRS]


def clip_labels(motion: int, params: ClipParams) -> list[int]:
    names = class_names()
    return [motion] + [names.index(a) for a in (params.colour, params.shape) if a in APPEARANCE]


def sample_clip(rng: np.random.Generator, motion: int, spec: SyntheticSpec) -> ClipParams:
    """Geometry for one clip. It depends only on the motion's *pair*, never on its direction (so TSN sees no cue)."""
    s, kind = float(spec.size), motion // 2
    r = rng.uniform(0.09, 0.14) * s
    radius, gain = (r, r), (1.0, 1.0)
    if kind == 2:  # growing (shrinking plays it backwards)
        radius = (rng.uniform(0.05, 0.08) * s, rng.uniform(0.17, 0.23) * s)
    if kind == 3:  # brightening (darkening plays it backwards)
        gain = (rng.uniform(0.2, 0.4), rng.uniform(0.9, 1.0))
    m = max(radius) * 1.45 + 1  # keeps even a diamond (half-diagonal 1.41 r) inside the frame
    x, y = rng.uniform(m, s - m, size=2)
    x1, y1 = x, y
    if kind in (0, 1):  # moving right / down (left / up play them backwards)
        travel = rng.uniform(0.55, 0.9) * (s - 2 * m)  # over half the free span: a clear, varied speed
        start = rng.uniform(m, s - m - travel)
        x, x1 = (start, start + travel) if kind == 0 else (x, x)
        y, y1 = (start, start + travel) if kind == 1 else (y, y)
    jitter = max(1, spec.frames // 6)
    return ClipParams(
        frames=int(spec.frames + rng.integers(-jitter, jitter + 1)),
        size=spec.size,
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        radius=radius,
        centre=(x, y, x1, y1),
        gain=gain,
        ramp=(rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)),
    )


def render_clip(motion: int, params: ClipParams, seed: int) -> np.ndarray:
    """The clip's frames as uint8 [T, H, W, 3]. A backward class is its forward class's frames reversed, exactly."""
    rng = np.random.default_rng(seed)
    t_count, s = params.frames, params.size
    # Progress 0 -> 1 with a short hold at each end, so speed and timing vary from clip to clip.
    a, b = params.ramp
    t = np.clip((np.linspace(0.0, 1.0, t_count) - a) / (b - a), 0.0, 1.0)[:, None, None]  # (T, 1, 1)
    x0, y0, x1, y1 = params.centre
    cx, cy = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
    r = params.radius[0] + (params.radius[1] - params.radius[0]) * t
    gain = params.gain[0] + (params.gain[1] - params.gain[0]) * t
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    dx, dy = np.abs(xx - cx), np.abs(yy - cy)  # (T, H, W)
    if params.shape == "disc":
        dist = np.hypot(dx, dy) - r
    elif params.shape == "square":
        dist = np.maximum(dx, dy) - r
    else:  # diamond with the square's area
        dist = (dx + dy - r * np.sqrt(2.0)) / np.sqrt(2.0)
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]  # anti-aliased 1 px edge, (T, H, W, 1)
    # Background: smooth random texture (bilinear upsampling of an 8x8 grid), a little per-frame sensor noise.
    coarse = rng.uniform(50, 170, size=(8, 8, 1)) + rng.uniform(-20, 20, size=(8, 8, 3))
    grid = np.linspace(0, 7, s)
    i0 = np.minimum(grid.astype(int), 6)
    w = (grid - i0)[:, None, None]  # (S, 1, 1)
    rows = coarse[i0] * (1 - w) + coarse[i0 + 1] * w  # (S, 8, 3)
    background = rows[:, i0] * (1 - w[:, 0]) + rows[:, i0 + 1] * w[:, 0]  # (S, S, 3)
    colour = np.array(COLOURS[params.colour], np.float32) + rng.uniform(-20, 20, size=3)
    texture = rng.uniform(0.85, 1.0, size=(s, s, 1))  # the object is not perfectly flat either
    obj = colour * texture * gain[..., None]
    frames = background * (1 - alpha) + obj * alpha + rng.normal(0.0, 4.0, size=(t_count, s, s, 3))
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    return frames[::-1].copy() if motion % 2 else frames


def write_video(path: Path, frames: np.ndarray) -> None:
    """h264 (libx264, yuv420p) mp4, every frame intra-coded at a constant quantiser.

    Why: each decoded frame is then a function of its own source frame only (rate control, references and CRF's
    complexity history would all make it depend on the frame's neighbours), so a backward clip decodes to exactly the
    forward clip's decoded frames reversed: the files, not just the renderings, carry no direction cue for TSN.
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qp": "20", "preset": "veryfast", "x264-params": "keyint=1"}
        stream.codec_context.thread_count = 1  # tiny frames: threads cost more than they save
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _split_rows(spec: SyntheticSpec, split: int, count: int, first: int, videos: Path) -> list[str]:
    """Write one split's clips and return its CSV rows. Motions are balanced, then shuffled."""
    rng = np.random.default_rng([spec.seed, split])
    motions = rng.permutation(np.resize(np.arange(len(MOTIONS)), count))
    rows = []
    for i, motion in enumerate(motions):
        params = sample_clip(rng, int(motion), spec)
        clip_seed = int(rng.integers(2**63))
        rel = f"{MOTIONS[motion]}/clip_{first + i:05d}.mp4"
        (videos / MOTIONS[motion]).mkdir(parents=True, exist_ok=True)
        write_video(videos / rel, render_clip(int(motion), params, clip_seed))
        rows.append(",".join([rel, *map(str, clip_labels(int(motion), params))]))
    return rows


def _is_complete(root: Path, meta: dict) -> bool:
    try:
        return json.loads((root / "synthetic.json").read_text()) == meta
    except (OSError, ValueError):
        return False


def generate_mmit(root: str | Path, spec: SyntheticSpec | None = None) -> Path:
    """Write the dataset under root (atomically) and return root; a complete root with the same spec is reused."""
    root, spec = Path(root), spec or SyntheticSpec()
    if spec.size % 2 or spec.frames < 8:
        raise ValueError(f"size must be even and frames >= 8, got {spec}")
    meta = {"format": FORMAT_VERSION, **asdict(spec)}
    if _is_complete(root, meta):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a hidden sibling (same filesystem, so the final rename is atomic); remove it on any failure.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        train = _split_rows(spec, 0, spec.num_train, 0, tmp / "videos")
        val = _split_rows(spec, 1, spec.num_val, spec.num_train, tmp / "videos")
        (tmp / "trainingSet.csv").write_text("".join(row + "\n" for row in train))
        (tmp / "validationSet.csv").write_text("".join(row + "\n" for row in val))
        (tmp / "moments_categories.txt").write_text("".join(f"{n},{i}\n" for i, n in enumerate(class_names())))
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=1) + "\n")  # written last: marks completion
        if _is_complete(root, meta):  # a concurrent run finished first
            shutil.rmtree(tmp)
            return root
        if root.exists():  # a stale or different dataset: move it aside, then swap ours in
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / "data")
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic MMiT-layout video dataset.")
    parser.add_argument("root", help="output folder (created atomically; reused if it holds the same spec)")
    parser.add_argument("--num-train", type=int, default=SyntheticSpec.num_train, help="training clips")
    parser.add_argument("--num-val", type=int, default=SyntheticSpec.num_val, help="validation clips")
    parser.add_argument("--frames", type=int, default=SyntheticSpec.frames, help="mean frames per clip")
    parser.add_argument("--size", type=int, default=SyntheticSpec.size, help="frame size in pixels (even)")
    parser.add_argument("--seed", type=int, default=SyntheticSpec.seed, help="random seed")
    args = parser.parse_args(argv)
    spec = SyntheticSpec(args.num_train, args.num_val, args.frames, args.size, args.seed)
    start = time.perf_counter()
    root = generate_mmit(args.root, spec)
    print(f"wrote {spec.num_train}+{spec.num_val} clips to {root.resolve()} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
