"""`python -m pipeline check ROOT_OR_URI`: decode every clip of a dataset split before a costly cluster job.

Prints one line per clip (decoded: frames and size, and the backend; or skipped: the reason) and a last line
`checked N clips: D decoded, S skipped`; exits 0 when the skipped fraction is at most --max-bad-fraction, else 1.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor

from pipeline.bars import progress_bar
from pipeline.data.layouts import FORMATS, read_dataset
from pipeline.data.sampling import segment_indices
from pipeline.data.video import DecodeError, decode_clip


def check_clip(uri: str, num_segments: int) -> tuple[bool, str]:
    """(decoded?, description) for one clip, decoded exactly as evaluation would (segment centres)."""
    try:
        frames, info = decode_clip(uri, lambda n: segment_indices(n, num_segments, "val"))
    except DecodeError as e:
        return False, f"skipped {uri}: {e.reason}"
    except Exception as e:  # the check reports anything a training run would skip
        return False, f"skipped {uri}: other ({type(e).__name__}: {e})"
    return True, (
        f"decoded {uri}: {info.num_frames} frames, {info.width}x{info.height}, {info.fps:.2f} fps, "
        f"{len(frames)} sampled ({info.backend})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "root", help="dataset root (see --format) or a frame-shard dataset: local path or s3://bucket/prefix"
    )
    parser.add_argument("--format", choices=FORMATS, default="mmit", help="annotation layout (pipeline.data.layouts)")
    parser.add_argument("--split", choices=("training", "validation"), default="training")
    parser.add_argument("--num-segments", type=int, default=8, help="frames sampled per clip")
    parser.add_argument("--max-bad-fraction", type=float, default=0.05, help="largest acceptable skipped fraction")
    parser.add_argument("--threads", type=int, default=4, help="clips decoded at once")
    args = parser.parse_args(argv)
    try:
        manifest = read_dataset(args.root, args.format, args.split)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    uris = [r.uri for r in manifest.records]
    decoded = 0
    with ThreadPoolExecutor(max_workers=args.threads) as pool, progress_bar(len(uris), "checking", "clip") as bar:
        for ok, line in pool.map(lambda uri: check_clip(uri, args.num_segments), uris):
            decoded += ok
            bar.write(line, file=sys.stdout)  # the clip's line above the bar
            bar.update()
    skipped = len(uris) - decoded
    print(f"checked {len(uris)} clips: {decoded} decoded, {skipped} skipped")
    return 0 if skipped <= args.max_bad_fraction * len(uris) else 1
