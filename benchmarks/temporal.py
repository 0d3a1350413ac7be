"""The temporal benchmark: TSN, TSM and TIN trained by `jobs/train_mmit.py` with its defaults on events that differ
only by the direction of time, beside a plain PyTorch loop (plain_loop.py, apart from the project) as the yardstick.

    python -m benchmarks.temporal                      # about 30 minutes on 2 CPUs
    python -m benchmarks.temporal --num-train 48 --num-val 24 --epochs 1 --no-record    # a smoke run
    python -m benchmarks.temporal --seeds 0 1 2        # every run once per seed (default 0 1); rows are the means
    python -m benchmarks.temporal --archs --plain tsn --num-train 2000    # the plain loop alone, on 5x the clips
    python -m benchmarks.temporal --archs tsn --plain --scored-on training --no-record    # TSN on its own clips

The data: 10 events in 5 time-reversed pairs (moving right/left, down/up, growing/shrinking, brightening/darkening,
turning clockwise/counterclockwise), one or two small sprites per clip doing them, up to one distractor wobbling in
place, a dark noisy background, clips of 16-32 frames at 64 px, 400 training and 160 validation clips, multi-label.
Two oracles that guess every direction bound what is learnt without time: the time-blind ceiling knows what single
frames show (a growing or brightening sprite, not which sprite moves or turns), the most that TSN's average over
frames can know; the direction-blind ceiling knows each event's pair. Every model is scored here by the same code on
the same validation clips (centre view; `--scored-on training`: the clips it trained on): samples-mAP, class-mAP,
mean AP of the time-reversed classes, of the classes single frames show and of the others, and direction accuracy
(for each clip and pair with one labelled direction, how often the labelled direction scores above its reverse).
Targets: TIN >= TSM >= TSN + 0.20 samples-mAP; TIN and TSM at least the plain loop's TSM; TSN near its time-blind
ceiling.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.plain_loop import multi_hot, train_plain
from benchmarks.results import record, record_row
from pipeline.data.annotations import read_mmit
from pipeline.data.storage import DEFAULT_CACHE
from pipeline.data.synthetic import SyntheticSpec, generate_mmit, temporal_class_pairs
from tin_core import interlace_trace, map_over_classes, map_over_videos

REPO = Path(__file__).resolve().parents[1]
SPEC = SyntheticSpec(
    num_train=400,
    num_val=160,
    frames=24,
    size=64,
    seed=7,
    max_events=2,
    distractors=1,
    sprite_radius=(0.08, 0.12),
    noise=6.0,
    dark=True,
    appearance=False,
    length_jitter=1 / 3,
)
# The fixed budget every run gets; everything else is the job's default (2 torch threads: this machine's 2 CPUs).
BUDGET = {
    "backbone": "resnet18",
    "frame_size": 64,
    "num_segments": 8,
    "epochs": 6,
    "batch_size": 8,
    "lr": 0.03,
    "threads_per_worker": 2,
}


ALL_PAIRS = tuple(range(len(temporal_class_pairs())))
# The pairs one frame shows (PAIRS order): growing/shrinking (sizes no other sprite has) and brightening/darkening (dim
# sprites). A moving or turning sprite looks, frame by frame, like any other sprite, distractors included.
FRAME_VISIBLE_PAIRS = (2, 3)


def blind_scores(targets: np.ndarray, visible_pairs, rng: np.random.Generator) -> np.ndarray:
    """Scores of an oracle that never knows a direction: it knows which of `visible_pairs` each clip shows and, of the
    other pairs, only whether any is shown (their classes then tie); ties are broken at random.

    All pairs visible: the direction-blind oracle (a model that compares frames but not their order). The pairs one
    frame shows: the time-blind oracle, the most that averaging over single frames (TSN) can know."""
    pair_of = np.arange(targets.shape[1]) // 2
    hidden = ~np.isin(pair_of, visible_pairs)
    present = np.zeros_like(targets)
    for i, row in enumerate(targets):
        for pair in set(pair_of[row > 0]):
            if pair in visible_pairs:
                present[i, pair_of == pair] = 1
            else:
                present[i, hidden] = 0.5
    return present + rng.uniform(0, 1e-3, targets.shape)


def ceiling_report(targets: np.ndarray, visible_pairs=ALL_PAIRS, draws: int = 100, seed: int = 0) -> dict[str, float]:
    """`scores_report` of the blind oracle, averaged over its random tie-breaks."""
    rng = np.random.default_rng(seed)
    reports = [scores_report(blind_scores(targets, visible_pairs, rng), targets) for _ in range(draws)]
    return {k: float(np.mean([r[k] for r in reports])) for k in reports[0]}


def scores_report(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    reversed_classes = sorted(c for pair in temporal_class_pairs() for c in pair)
    visible = np.isin(np.arange(targets.shape[1]) // 2, FRAME_VISIBLE_PAIRS)
    right = total = 0
    for forward, backward in temporal_class_pairs():
        one = targets[:, forward] != targets[:, backward]  # exactly one direction of this pair is labelled
        truth = np.where(targets[one, forward] > 0, forward, backward)
        other = np.where(truth == forward, backward, forward)
        rows = np.nonzero(one)[0]
        right += int((scores[rows, truth] > scores[rows, other]).sum())
        total += len(rows)
    return {
        "samples_map": map_over_videos(scores, targets),
        "class_map": map_over_classes(scores, targets),
        "reversed_map": map_over_classes(scores[:, reversed_classes], targets[:, reversed_classes]),
        "visible_map": map_over_classes(scores[:, visible], targets[:, visible]),
        "hidden_map": map_over_classes(scores[:, ~visible], targets[:, ~visible]),
        "direction_accuracy": right / max(total, 1),
    }


# --- the project's job ------------------------------------------------------------------------------------------


def train_with_job(arch: str, root: Path, workdir: Path, budget: dict, extra: list[str]) -> tuple[str, str]:
    """Run jobs/train_mmit.py for `arch` (flags: the budget, then `extra`); returns (tracking URI, model URI)."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in budget.items()] + extra
    command = [
        sys.executable,
        str(REPO / "jobs" / "train_mmit.py"),
        "--data",
        str(root),
        "--arch",
        arch,
        *flags,
        "--storage",
        str(workdir / "runs"),
        "--mlflow-uri",
        uri,
        "--experiment",
        "temporal-benchmark",
        "--name",
        f"temporal-{arch}-{int(time.time())}",
        "--register-as",
        f"temporal-{arch}",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TIN_CACHE_DIR": str(workdir / "cache")}  # a private cluster
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"the job failed for {arch}:\n{result.stderr[-3000:]}")
    loaded = next(line for line in result.stdout.splitlines() if line.startswith("load it:"))
    model_uri = loaded.split('load_model("', 1)[1].split('")', 1)[0]
    print(f"  job {arch}: {time.perf_counter() - started:.0f} s, {model_uri}", flush=True)
    return uri, model_uri


def job_scores(tracking_uri: str, model_uri: str, manifest, num_segments: int) -> tuple[np.ndarray, list, dict]:
    """The registered model's probabilities on `manifest`'s clips, decoded as the job validates (segment centres,
    centre crop), the TIN layers' offsets and weights (empty for TSN/TSM), and the model's config."""
    import mlflow

    from pipeline.data.dataset import ClipDecoder, ClipSpec
    from pipeline.data.transforms import normalize

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    config = model.unwrap_python_model().config
    decoder = ClipDecoder(
        ClipSpec(num_segments, config["short_side"], config["frame_size"]), manifest.num_classes, True, train=False
    )
    clips = np.stack([decoder.decode(r.uri)[0] for r in manifest.records])
    scores = np.concatenate([model.predict(clips[i : i + 32]) for i in range(0, len(clips), 32)])
    network = model.unwrap_python_model().model
    trace = (
        interlace_trace(network, normalize(torch.from_numpy(clips[:32]))) if config["model"]["arch"] == "tin" else []
    )
    return scores, trace, config["model"]


# --- the report -------------------------------------------------------------------------------------------------


def offsets_line(trace: list[dict], initial: float) -> str:
    """Figure 5 in a line: learned offsets per layer (mean over clips and groups) and how weights vary over frames."""
    offsets = [float(t["offsets"].abs().mean()) for t in trace]
    spread = [float(t["weights"].mean(dim=0).std(dim=0).mean()) for t in trace]  # std over frames, mean over groups
    moved = max(abs(o - initial) for o in offsets)
    return (
        f"TIN offsets per layer (|offset|, start {initial:g}): {' '.join(f'{o:.2f}' for o in offsets)}; "
        f"largest move {moved:.2f} frames; weight std over frames per layer {min(spread):.3f}-{max(spread):.3f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=SPEC.num_train, help="training clips")
    parser.add_argument("--num-val", type=int, default=SPEC.num_val, help="validation clips")
    parser.add_argument("--epochs", type=int, default=BUDGET["epochs"], help="epochs of every run")
    parser.add_argument(
        "--archs", nargs="*", default=["tsn", "tsm", "tin"], choices=["tsn", "tsm", "tin"], help="job runs"
    )
    parser.add_argument("--plain", nargs="*", default=["tsm"], choices=["tsn", "tsm"], help="plain-loop runs")
    parser.add_argument(
        "--job-flags", default="", help="extra flags for every job run (an ablation), e.g. '--dropout 0.5'"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1],
        help="seeds of every run; rows are their means (a seed's run repeats exactly; seeds differ by up to 0.15)",
    )
    parser.add_argument(
        "--scored-on",
        choices=["validation", "training"],
        default="validation",
        help="the clips every run is scored on; training shows how closely each model fits the clips it learnt from",
    )
    parser.add_argument("--ablation", default="", help="record the runs as this row of the ablation table instead")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.scored_on == "training" and not (args.ablation or args.no_record):
        parser.error("--scored-on training does not replace the benchmark table: add --ablation NAME or --no-record")
    spec = dataclasses.replace(SPEC, num_train=args.num_train, num_val=args.num_val)
    budget = {**BUDGET, "epochs": args.epochs}
    started = time.perf_counter()
    root = generate_mmit(DEFAULT_CACHE / f"temporal-benchmark-{spec.num_train}-{spec.num_val}-s{spec.seed}", spec)
    train, val = read_mmit(str(root), "training"), read_mmit(str(root), "validation")
    scored = val if args.scored_on == "validation" else train
    targets = multi_hot(scored)
    time_blind = ceiling_report(targets, FRAME_VISIBLE_PAIRS)
    ceilings = {
        "time-blind ceiling (what single frames show)": time_blind,
        "direction-blind ceiling (each event's pair)": ceiling_report(targets),
    }
    print(f"{root}: {len(train.records)} + {len(val.records)} clips", flush=True)
    runs: dict[str, list[dict]] = {}
    notes = []
    with tempfile.TemporaryDirectory(prefix="temporal-benchmark-") as tmp:
        for arch in args.archs:
            for seed in args.seeds:
                extra = [*args.job_flags.split(), f"--seed={seed}"]
                tracking, model_uri = train_with_job(arch, root, Path(tmp), budget, extra)
                scores, trace, model = job_scores(tracking, model_uri, scored, budget["num_segments"])
                runs.setdefault(f"job {arch}", []).append(scores_report(scores, targets))
                if trace and seed == args.seeds[0]:
                    notes.append(offsets_line(trace, initial=model["offset_init"]))
    for arch in args.plain:
        for seed in args.seeds:
            t0 = time.perf_counter()
            runs.setdefault(f"plain {arch}", []).append(
                scores_report(train_plain(arch, train, val, budget, seed, scored), targets)
            )
            print(f"  plain {arch}, seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = {name: {k: float(np.mean([r[k] for r in reports])) for k in reports[0]} for name, reports in runs.items()}
    if len(args.seeds) > 1:
        notes.append(f"Means over seeds {', '.join(map(str, args.seeds))}; samples-mAP per seed:")
        for name, reports in runs.items():
            notes.append(f"- {name}: " + ", ".join(f"{r['samples_map']:.3f}" for r in reports))
    table = [
        "| run | samples-mAP | class-mAP | reversed-classes mAP | frame-visible classes mAP | other classes mAP "
        "| direction accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {name} | {r['samples_map']:.3f} | {r['class_map']:.3f} | {r['reversed_map']:.3f} | "
        f"{r['visible_map']:.3f} | {r['hidden_map']:.3f} | {r['direction_accuracy']:.3f} |"
        for name, r in {**rows, **ceilings}.items()
    ]
    body = "\n".join(
        [
            f"{spec.num_train} + {spec.num_val} clips, budget {budget}"
            + (f", job flags {args.job_flags}" * bool(args.job_flags))
            + (f", scored on the {args.scored_on} clips" * (args.scored_on != "validation")),
            "",
            *table,
            "",
            *notes,
            *(targets_lines(rows, time_blind) if scored is val else []),
            f"({(time.perf_counter() - started) / 60:.0f} minutes)",
        ]
    )
    print(body, flush=True)
    if args.no_record:
        return
    if args.ablation:
        for name, r in rows.items():
            cells = f"{name} | {r['samples_map']:.3f} | {r['class_map']:.3f} | {r['direction_accuracy']:.3f}"
            record_row(
                ABLATIONS, ABLATION_HEADER, args.ablation if len(rows) == 1 else f"{args.ablation} ({name})", cells
            )
    else:
        record("Temporal benchmark (TSN / TSM / TIN through the job)", body)


ABLATIONS = "Temporal benchmark: ablations (one change at a time, through the job)"
ABLATION_HEADER = "| run | arch | samples-mAP | class-mAP | direction accuracy | measured |"


def targets_lines(rows: dict, ceiling: dict) -> list[str]:
    m = {name: r["samples_map"] for name, r in rows.items()}
    lines = []
    if {"job tin", "job tsm", "job tsn"} <= set(m):
        ok = m["job tin"] >= m["job tsm"] >= m["job tsn"] + 0.20
        lines.append(
            f"- TIN >= TSM >= TSN + 0.20: {m['job tin']:.3f} / {m['job tsm']:.3f} / {m['job tsn']:.3f} "
            f"-> {'met' if ok else 'NOT met'}"
        )
    if "plain tsm" in m:
        for arch in ("tin", "tsm"):
            if f"job {arch}" in m:
                ok = m[f"job {arch}"] >= m["plain tsm"]
                lines.append(
                    f"- job {arch.upper()} >= plain TSM: {m[f'job {arch}']:.3f} vs {m['plain tsm']:.3f} -> "
                    f"{'met' if ok else 'NOT met'}"
                )
    if "job tsn" in rows:
        tsn = rows["job tsn"]
        lines.append(
            f"- TSN against its time-blind ceiling: {tsn['samples_map']:.3f} vs {ceiling['samples_map']:.3f} "
            f"(frame-visible classes {tsn['visible_map']:.3f} vs {ceiling['visible_map']:.3f}, other classes "
            f"{tsn['hidden_map']:.3f} vs {ceiling['hidden_map']:.3f})"
        )
    return lines


if __name__ == "__main__":
    main()
