"""Multi-Moments in Time (`read_mmit`): `trainingSet.csv` / `validationSet.csv` rows `relative/path.mp4,144,246`
(0-based ids) and `moments_categories.txt` rows `name,index` (a plain one-name-per-line list, as the v2 list
`category_multi_momentsv2.txt`, is accepted too), at the root or under `annotations/`; videos under `videos/`.
"""

from __future__ import annotations

from collections import Counter

from pipeline.data import storage
from pipeline.data.annotations.rows import (
    Manifest,
    RowError,
    VideoRecord,
    class_id,
    collect,
    csv_rows,
    load_class_names,
    make_manifest,
    read_text,
)

MMIT_SPLITS = {"training": "trainingSet.csv", "validation": "validationSet.csv"}
MMIT_CATEGORIES = "moments_categories.txt"


def _find_mmit_file(root: str, name: str) -> str:
    # The release unpacks with the annotation files at the root; some mirrors move them under annotations/.
    candidates = [storage.join(root, name), storage.join(root, "annotations", name)]
    for uri in candidates:
        if storage.exists(uri):
            return uri
    raise FileNotFoundError(f"MMiT {name} not found: looked at {candidates[0]} and {candidates[1]}")


def read_mmit(root: str, split: str = "training", strict: bool = True) -> Manifest:
    """Multi-Moments in Time: `<root>/[annotations/]{trainingSet,validationSet}.csv` + `moments_categories.txt`.

    Rows are `relative/path.mp4,id[,id...]` with 0-based ids; videos live under `<root>/videos/`.
    """
    if split not in MMIT_SPLITS:
        raise ValueError(f"MMiT split must be one of {sorted(MMIT_SPLITS)}, got {split!r}")
    class_names = load_class_names(_find_mmit_file(root, MMIT_CATEGORIES))
    csv_uri = _find_mmit_file(root, MMIT_SPLITS[split])
    videos = storage.join(root, "videos")

    def parse(row: list[str]) -> VideoRecord:
        path, *ids = row
        if not path:
            raise RowError("missing path", "video path is empty")
        if not ids:
            raise RowError("no labels", f"video {path!r} has no class ids")
        # dict.fromkeys: drop a repeated id but keep the annotators' order.
        labels = tuple(dict.fromkeys(class_id(i, len(class_names)) for i in ids))
        return VideoRecord(storage.join(videos, path), labels)

    skipped: Counter[str] = Counter()
    records = collect(csv_uri, csv_rows(csv_uri, read_text(csv_uri)), parse, strict, skipped)
    return make_manifest(records, class_names, True, skipped)
