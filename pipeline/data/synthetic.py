"""Synthetic videos of events that differ only by the direction of time, in Multi-Moments-in-Time (MMiT) layout.

Each clip shows one or more sprites; each *labelled* sprite does one event, and events come in time-reversed pairs
("moving_right"/"moving_left", "growing"/"shrinking", "turning_clockwise"/"turning_counterclockwise", ...): a
backward sprite runs its forward trajectory in reverse, and a sprite's geometry depends only on its event's *pair*, so
both directions show the same distribution of frame sets. A model that averages over frames (TSN) can name the pair
but not the direction; a temporal model (TSM, TIN) can name both. Optional *appearance* labels (colour, shape) are
visible in any frame; unlabelled distractor sprites wobble without a direction, and clips vary in length and noise.

`SyntheticSpec()` is the training job's embedded default (one large sprite, appearance labels); the temporal
benchmark (`benchmarks/temporal.py`) uses small sprites, two events, distractors and a dark noisy background.

Layout under ROOT: videos/<first event>/clip_NNNNN.mp4 (h264, yuv420p), trainingSet.csv and validationSet.csv (rows
`path,id[,id...]`, 0-based ids, no header), moments_categories.txt (rows `name,index`) and synthetic.json (the
generation parameters; a matching one makes a second call a no-op).
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

from pipeline.bars import progress_bar

FORMAT_VERSION = 2
FPS = 8  # 24 frames at 8 fps ~ the 3 s of an MMiT clip
# Events in (forward, backward) pairs: the backward one is the forward trajectory played in reverse.
PAIRS = [
    ("moving_right", "moving_left"),
    ("moving_down", "moving_up"),
    ("growing", "shrinking"),
    ("brightening", "darkening"),
    ("turning_clockwise", "turning_counterclockwise"),
]
EVENTS = [name for pair in PAIRS for name in pair]  # class ids 0..9; event // 2 is the pair, event % 2 reversed
COLOURS = {
    "red": (230, 50, 45),
    "green": (45, 210, 75),
    "blue": (60, 95, 235),
    "yellow": (225, 215, 60),
    "magenta": (215, 70, 210),
    "cyan": (60, 205, 215),
}
SHAPES = ["square", "disc", "triangle", "bar"]  # all but the disc show their orientation
EXTENT = {"square": 1.28, "disc": 1.0, "triangle": 1.2, "bar": 1.75}  # farthest point from the centre, in radii
APPEARANCE = ["red", "green", "square", "disc"]  # the appearance labels; other colours and shapes carry none


@dataclass
class SyntheticSpec:
    num_train: int = 320
    """Training clips."""
    num_val: int = 96
    """Validation clips."""
    frames: int = 24
    """Frames per clip on average."""
    size: int = 64
    """Frame width and height in pixels (even, for yuv420p)."""
    seed: int = 0
    """Everything (labels, geometry, noise) follows from this."""
    max_events: int = 1
    """Labelled sprites per clip: 1 to max_events, each doing one event."""
    distractors: int = 0
    """Unlabelled sprites per clip: 0 to distractors, wobbling in place with no direction."""
    sprite_radius: tuple[float, float] = (0.09, 0.14)
    """Range of a sprite's half-size, as a fraction of the frame size."""
    noise: float = 4.0
    """Standard deviation of the per-pixel, per-frame noise (grey levels)."""
    dark: bool = False
    """A dark background (levels 10-40) instead of a mid-grey texture."""
    appearance: bool = True
    """Add the appearance labels (APPEARANCE) of the labelled sprites."""
    length_jitter: float = 1 / 6
    """Each clip's length varies by up to this fraction of `frames`."""

    def class_names(self) -> list[str]:
        return EVENTS + (APPEARANCE if self.appearance else [])


@dataclass(frozen=True)
class Sprite:
    """One sprite's look and its forward trajectory; `event` None is a distractor."""

    event: int | None
    shape: str
    colour: str
    radius: tuple[float, float]  # half-size at the start/end of the forward trajectory (pixels)
    centre: tuple[float, float, float, float]  # (x0, y0, x1, y1) at the start/end of the forward trajectory
    gain: tuple[float, float]  # brightness at the start/end of the forward trajectory
    angle: tuple[float, float]  # orientation (radians, clockwise on screen) at the start/end
    ramp: tuple[float, float]  # fraction of the clip where the event starts and ends (holds before/after)
    wobble: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # distractors: amplitude x, y, periods, phase


@dataclass(frozen=True)
class ClipParams:
    frames: int
    size: int
    sprites: tuple[Sprite, ...]
    dark: bool
    noise: float


def class_names(spec: SyntheticSpec | None = None) -> list[str]:
    return (spec or SyntheticSpec()).class_names()


def temporal_class_pairs() -> list[tuple[int, int]]:
    """(forward, backward) class ids whose clips differ only in the direction of time."""
    return [(EVENTS.index(forward), EVENTS.index(backward)) for forward, backward in PAIRS]


def clip_labels(params: ClipParams, spec: SyntheticSpec) -> list[int]:
    """The events of the labelled sprites, then their appearance labels; sorted, without repeats."""
    names = spec.class_names()
    labelled = [s for s in params.sprites if s.event is not None]
    labels = {s.event for s in labelled}
    if spec.appearance:
        labels |= {names.index(a) for s in labelled for a in (s.colour, s.shape) if a in APPEARANCE}
    return sorted(labels)


def sample_sprite(rng: np.random.Generator, event: int | None, spec: SyntheticSpec) -> Sprite:
    """A sprite whose geometry depends only on its event's *pair*, never on its direction (so TSN sees no cue)."""
    s, kind = float(spec.size), (event // 2 if event is not None else None)
    r = rng.uniform(*spec.sprite_radius) * s
    radius, gain, wobble = (r, r), (1.0, 1.0), (0.0, 0.0, 0.0, 0.0)
    a0 = rng.uniform(0, 2 * np.pi)
    angle = (a0, a0)
    shape = str(rng.choice(SHAPES[:1] + SHAPES[2:] if kind == 4 else SHAPES))  # a turning disc would not show it
    if kind == 2:  # growing (shrinking plays it backwards)
        radius = (r * rng.uniform(0.5, 0.7), r * rng.uniform(1.5, 1.9))
    elif kind == 3:  # brightening (darkening plays it backwards)
        gain = (rng.uniform(0.2, 0.4), rng.uniform(0.9, 1.0))
    elif kind == 4:  # turning clockwise (counterclockwise plays it backwards), less than 45 degrees per 1/8 clip
        angle = (a0, a0 + rng.uniform(np.pi / 3, 5 * np.pi / 6))
    m = min(max(radius) * EXTENT[shape] + 1, s / 2 - 1)  # inside the frame at any orientation, if it fits at all
    x, y = rng.uniform(m, s - m, size=2)
    x1, y1 = x, y
    if kind in (0, 1):  # moving right / down (left / up play them backwards)
        travel = rng.uniform(0.4, 0.75) * (s - 2 * m)
        start = rng.uniform(m, s - m - travel)
        x, x1 = (start, start + travel) if kind == 0 else (x, x)
        y, y1 = (start, start + travel) if kind == 1 else (y, y)
    if event is None:  # a distractor: sinusoidal wobble, its phase uniform, so reversed it is the same distribution
        wobble = (rng.uniform(1, 3), rng.uniform(1, 3), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi))
    return Sprite(
        event=event,
        shape=shape,
        colour=str(rng.choice(list(COLOURS))),
        radius=radius,
        centre=(x, y, x1, y1),
        gain=gain,
        angle=angle,
        ramp=(rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0)),
        wobble=wobble,
    )


def sample_clip(rng: np.random.Generator, events: list[int], spec: SyntheticSpec) -> ClipParams:
    """A clip with one labelled sprite per event and 0..spec.distractors distractors, in random depth order."""
    jitter = max(1, round(spec.frames * spec.length_jitter))
    sprites = [sample_sprite(rng, e, spec) for e in events]
    sprites += [sample_sprite(rng, None, spec) for _ in range(int(rng.integers(0, spec.distractors + 1)))]
    order = rng.permutation(len(sprites))
    return ClipParams(
        frames=max(8, int(spec.frames + rng.integers(-jitter, jitter + 1))),
        size=spec.size,
        sprites=tuple(sprites[i] for i in order),
        dark=spec.dark,
        noise=spec.noise,
    )


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) to a shape of half-size r in its own coordinates (u, v)."""
    if shape == "disc":
        return np.hypot(u, v) - r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - r * 0.9
    if shape == "bar":
        return np.maximum(np.abs(u) - 1.7 * r, np.abs(v) - 0.5 * r)
    sides = [np.cos(a) * u + np.sin(a) * v for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
    return np.maximum(np.maximum(sides[0], sides[1]), sides[2]) - r * 0.6  # a triangle


def _sprite_layer(sprite: Sprite, frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha [T, H, W, 1], colour [T, 1, 1, 3]) of one sprite; a backward event runs time the other way."""
    t = np.linspace(0.0, 1.0, frames)
    a, b = sprite.ramp
    progress = np.clip((t - a) / (b - a), 0.0, 1.0)
    if sprite.event is not None and sprite.event % 2:
        progress = progress[::-1]
    p = progress[:, None, None]  # (T, 1, 1)
    x0, y0, x1, y1 = sprite.centre
    ax, ay, periods, phase = sprite.wobble
    swing = np.sin(2 * np.pi * periods * t + phase)[:, None, None]
    cx, cy = x0 + (x1 - x0) * p + ax * swing, y0 + (y1 - y0) * p + ay * swing
    r = sprite.radius[0] + (sprite.radius[1] - sprite.radius[0]) * p
    theta = sprite.angle[0] + (sprite.angle[1] - sprite.angle[0]) * p
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy  # (T, H, W)
    u, v = np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy
    alpha = np.clip(0.5 - _shape_distance(sprite.shape, u, v, r), 0.0, 1.0)[..., None]  # 1 px anti-aliased edge
    gain = sprite.gain[0] + (sprite.gain[1] - sprite.gain[0]) * progress
    colour = np.asarray(COLOURS[sprite.colour], np.float32) * gain[:, None, None, None]
    return alpha, colour


def _background(rng: np.random.Generator, size: int, dark: bool) -> np.ndarray:
    """A smooth random texture (bilinear upsampling of an 8x8 grid), [H, W, 3]."""
    low, high, tint = (10, 40, 6) if dark else (50, 170, 20)
    coarse = rng.uniform(low, high, size=(8, 8, 1)) + rng.uniform(-tint, tint, size=(8, 8, 3))
    grid = np.linspace(0, 7, size)
    i0 = np.minimum(grid.astype(int), 6)
    w = (grid - i0)[:, None, None]  # (S, 1, 1)
    rows = coarse[i0] * (1 - w) + coarse[i0 + 1] * w  # (S, 8, 3)
    return rows[:, i0] * (1 - w[:, 0]) + rows[:, i0 + 1] * w[:, 0]  # (S, S, 3)


def render_clip(params: ClipParams, seed: int) -> np.ndarray:
    """The clip's frames as uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    t_count, s = params.frames, params.size
    frames = np.broadcast_to(_background(rng, s, params.dark), (t_count, s, s, 3)).astype(np.float32)
    for sprite in params.sprites:
        alpha, colour = _sprite_layer(sprite, t_count, s)
        frames = frames * (1 - alpha) + colour * alpha
    if params.noise > 0:
        frames += rng.normal(0.0, params.noise, size=frames.shape).astype(np.float32)
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_video(path: Path, frames: np.ndarray) -> None:
    """h264 (libx264, yuv420p) mp4, every frame intra-coded at a constant quantiser, so that each decoded frame is a
    function of its own source frame only (rate control and references would make it depend on its neighbours, and
    the file's frames would then carry a direction cue that the renderings do not)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qp": "20", "preset": "veryfast", "x264-params": "keyint=1"}
        stream.codec_context.thread_count = 1  # tiny frames: threads cost more than they save
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _split_rows(spec: SyntheticSpec, split: int, count: int, first: int, videos: Path, bar) -> list[str]:
    """Write one split's clips and return its CSV rows. First events are balanced over the classes, then shuffled."""
    rng = np.random.default_rng([spec.seed, split])
    firsts = rng.permutation(np.resize(np.arange(len(EVENTS)), count))
    rows = []
    for i, first_event in enumerate(firsts):
        events = [int(first_event)] + [int(e) for e in rng.integers(0, len(EVENTS), rng.integers(0, spec.max_events))]
        params = sample_clip(rng, events, spec)
        clip_seed = int(rng.integers(2**63))
        rel = f"{EVENTS[first_event]}/clip_{first + i:05d}.mp4"
        (videos / EVENTS[first_event]).mkdir(parents=True, exist_ok=True)
        write_video(videos / rel, render_clip(params, clip_seed))
        rows.append(",".join([rel, *map(str, clip_labels(params, spec))]))
        bar.update()
    return rows


def _is_complete(root: Path, meta: dict) -> bool:
    try:
        return json.loads((root / "synthetic.json").read_text()) == meta
    except (OSError, ValueError):
        return False


def generate_mmit(root: str | Path, spec: SyntheticSpec | None = None) -> Path:
    """Write the dataset under root (atomically) and return root; a complete root with the same spec is reused."""
    root, spec = Path(root), spec or SyntheticSpec()
    if spec.size % 2 or spec.frames < 8 or spec.max_events < 1 or spec.distractors < 0:
        raise ValueError(f"size must be even, frames >= 8, max_events >= 1 and distractors >= 0, got {spec}")
    meta = json.loads(json.dumps({"format": FORMAT_VERSION, **asdict(spec)}))  # tuples as lists, as read back
    if _is_complete(root, meta):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a hidden sibling (same filesystem, so the final rename is atomic); remove it on any failure.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        with progress_bar(spec.num_train + spec.num_val, f"generating {root.name}", "clip") as bar:
            train = _split_rows(spec, 0, spec.num_train, 0, tmp / "videos", bar)
            val = _split_rows(spec, 1, spec.num_val, spec.num_train, tmp / "videos", bar)
        (tmp / "trainingSet.csv").write_text("".join(row + "\n" for row in train))
        (tmp / "validationSet.csv").write_text("".join(row + "\n" for row in val))
        categories = "".join(f"{n},{i}\n" for i, n in enumerate(spec.class_names()))
        (tmp / "moments_categories.txt").write_text(categories)
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
    defaults = SyntheticSpec()
    parser = argparse.ArgumentParser(description="Generate the synthetic MMiT-layout video dataset.")
    parser.add_argument("root", help="output folder (created atomically; reused if it holds the same spec)")
    parser.add_argument("--num-train", type=int, default=defaults.num_train, help="training clips")
    parser.add_argument("--num-val", type=int, default=defaults.num_val, help="validation clips")
    parser.add_argument("--frames", type=int, default=defaults.frames, help="mean frames per clip")
    parser.add_argument("--size", type=int, default=defaults.size, help="frame size in pixels (even)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--max-events", type=int, default=defaults.max_events, help="labelled sprites per clip")
    parser.add_argument("--distractors", type=int, default=defaults.distractors, help="unlabelled sprites per clip")
    args = parser.parse_args(argv)
    spec = SyntheticSpec(args.num_train, args.num_val, args.frames, args.size, args.seed, args.max_events,
                         args.distractors)  # fmt: skip
    start = time.perf_counter()
    root = generate_mmit(args.root, spec)
    print(f"wrote {spec.num_train}+{spec.num_val} clips to {root.resolve()} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
