"""Readers of the other dataset formats, each producing the same `Manifest` as the MMiT reader.

* List files (`read_list_file`), two layouts:
  - "tsn": `path num_frames label[,label...]`, as in TSN/TSM and X-Temporal's MMiT lists
    (`trimming/getty-...13.mp4 90 144,246`);
  - "mmaction": `path label [label ...]`, labels space-separated with no frame count, as in mmaction2's
    VideoDataset (`test.mp4 0 2 4` means labels 0, 2 and 4).
  `layout="auto"` picks per file: "tsn" if any label field holds a comma or every row has exactly three fields,
  otherwise "mmaction". A mmaction2 file whose rows all have exactly two labels looks like a TSN file; pass the
  layout explicitly when that can happen. Paths may not contain whitespace in either layout.
* Something-Something v2 JSON (`read_sthv2`), Something-Something v1 / Jester `id;label` lists (`read_id_label`),
  Kinetics CSVs (`read_kinetics_csv`), the UCF101 and HMDB51 official splits.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections import Counter
from typing import Any

from pipeline.data import storage
from pipeline.data.annotations.rows import (
    AnnotationError,
    Manifest,
    RowError,
    VideoRecord,
    class_id,
    collect,
    contiguous,
    csv_rows,
    json_items,
    load_class_names,
    make_manifest,
    parse_int,
    read_text,
    text_lines,
)

# ---------------------------------------------------------------------------------------------------------------
# TSN/TSM/X-Temporal and mmaction2 list files.

LIST_LAYOUTS = ("auto", "tsn", "mmaction")


def _detect_list_layout(rows: list[tuple[int, list[str]]]) -> str:
    if any("," in f for _, fields in rows for f in fields[1:]):
        return "tsn"
    if rows and all(len(fields) == 3 for _, fields in rows):
        return "tsn"
    return "mmaction"


def read_list_file(
    list_uri: str,
    video_root: str,
    class_names: list[str] | None = None,
    strict: bool = True,
    layout: str = "auto",
) -> Manifest:
    """A whitespace-separated list file: "tsn" `path num_frames label[,label...]` or "mmaction" `path label ...`.

    Without `class_names`, ids are only checked to be >= 0 and the names are "0".."max id"; pass the real class list
    to get the true class count and range checks.
    """
    if layout not in LIST_LAYOUTS:
        raise ValueError(f"list layout must be one of {LIST_LAYOUTS}, got {layout!r}")
    rows = [(line, text.split()) for line, text in text_lines(read_text(list_uri))]
    if layout == "auto":
        layout = _detect_list_layout(rows)
    num_classes = len(class_names) if class_names is not None else None

    def labels_of(values: list[str]) -> tuple[int, ...]:
        return tuple(dict.fromkeys(class_id(v, num_classes) for v in values))

    def parse(fields: list[str]) -> VideoRecord:
        if layout == "tsn":
            if len(fields) != 3:
                raise RowError("wrong field count", f"expected 3 fields 'path num_frames labels', got {len(fields)}")
            path, frames, labels = fields
            num_frames = parse_int(frames, "num_frames", "bad num_frames")
            if num_frames < 0:
                raise RowError("bad num_frames", f"num_frames {num_frames} is negative")
            return VideoRecord(storage.join(video_root, path), labels_of(labels.split(",")), num_frames)
        if len(fields) < 2:
            raise RowError("no labels", f"expected 'path label [label ...]', got {len(fields)} field")
        return VideoRecord(storage.join(video_root, fields[0]), labels_of(fields[1:]))

    skipped: Counter[str] = Counter()
    records = collect(list_uri, rows, parse, strict, skipped)
    if class_names is None:
        top = max((max(r.labels) for r in records), default=-1)
        class_names = [str(i) for i in range(top + 1)]
    return make_manifest(records, list(class_names), any(len(r.labels) > 1 for r in records), skipped)


# ---------------------------------------------------------------------------------------------------------------
# Something-Something v2 (JSON).


def _strip_brackets(template: str) -> str:
    # Entries say "Putting [something] on [something]"; the class is the template without the placeholder marks.
    return template.replace("[", "").replace("]", "")


def _sthv2_class_names(labels_json: str) -> list[str]:
    by_index: dict[int, tuple[int, str]] = {}
    for line, (template, value) in json_items(labels_json, read_text(labels_json), dict):
        # The release stores indices as strings ("0"); accept JSON integers too.
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not re.fullmatch(r"[0-9]+", str(value)):
            raise AnnotationError(labels_json, line, f"index {value!r} of template {template!r} is not an integer")
        index = int(value)
        if index in by_index:
            raise AnnotationError(labels_json, line, f"index {index} of {template!r} repeats line {by_index[index][0]}")
        by_index[index] = (line, _strip_brackets(template))
    if not by_index:
        raise AnnotationError(labels_json, None, "no templates")
    return contiguous(labels_json, by_index, first=0)


def read_sthv2(labels_json: str, entries_json: str, video_root: str, strict: bool = True) -> Manifest:
    """Something-Something v2: labels.json (template -> index) and a train/validation/test entry list.

    Each entry's class is its `template` without brackets; test entries have no template and get labels ().
    Videos are `<video_root>/<id>.webm`.
    """
    class_names = _sthv2_class_names(labels_json)
    index = {name: i for i, name in enumerate(class_names)}

    def parse(entry: Any) -> VideoRecord:
        if not isinstance(entry, dict):
            raise RowError("bad entry", f"entry is a {type(entry).__name__}, not an object")
        video_id = entry.get("id")
        if isinstance(video_id, bool) or not isinstance(video_id, (str, int)) or not str(video_id).strip():
            raise RowError("missing id", f"id {video_id!r} is missing or not a string/integer")
        uri = storage.join(video_root, f"{str(video_id).strip()}.webm")
        if "template" not in entry:
            return VideoRecord(uri, ())
        template = entry["template"]
        if not isinstance(template, str) or _strip_brackets(template) not in index:
            raise RowError("unknown template", f"template {template!r} is not in {posixpath.basename(labels_json)}")
        return VideoRecord(uri, (index[_strip_brackets(template)],))

    skipped: Counter[str] = Counter()
    entries = json_items(entries_json, read_text(entries_json), list)
    records = collect(entries_json, entries, parse, strict, skipped)
    return make_manifest(records, class_names, False, skipped)


# ---------------------------------------------------------------------------------------------------------------
# Something-Something v1 / Jester (`id;label`).


def read_id_label(list_uri: str, labels_txt: str, video_root: str, ext: str = ".webm", strict: bool = True) -> Manifest:
    """Something-Something v1 / Jester `id;label` rows (test files: `id` only -> labels ()).

    `labels_txt` has one class name per line. The originals ship frame folders; we read `<video_root>/<id><ext>`.
    """
    class_names = load_class_names(labels_txt)
    index = {name: i for i, name in enumerate(class_names)}

    def parse(row: list[str]) -> VideoRecord:
        if len(row) > 2:
            raise RowError("wrong field count", f"expected 'id;label', got {len(row)} fields")
        video_id = row[0]
        if not video_id:
            raise RowError("missing id", "id is empty")
        uri = storage.join(video_root, f"{video_id}{ext}")
        if len(row) == 1:
            return VideoRecord(uri, ())
        if row[1] not in index:
            raise RowError("unknown class", f"label {row[1]!r} is not in {posixpath.basename(labels_txt)}")
        return VideoRecord(uri, (index[row[1]],))

    skipped: Counter[str] = Counter()
    records = collect(list_uri, csv_rows(list_uri, read_text(list_uri), delimiter=";"), parse, strict, skipped)
    return make_manifest(records, class_names, False, skipped)


# ---------------------------------------------------------------------------------------------------------------
# Kinetics CSV.

KINETICS_REQUIRED = ("youtube_id", "time_start", "time_end")


def read_kinetics_csv(
    csv_uri: str, video_root: str, class_names: list[str] | None = None, strict: bool = True
) -> Manifest:
    """Kinetics `label,youtube_id,time_start,time_end,split[,is_cc]` by header name; test files lack `label`.

    Labelled videos are `<video_root>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4` (the ActivityNet downloader
    layout), unlabelled ones `<video_root>/<youtube_id>_<start:06d>_<end:06d>.mp4`. Without `class_names` the
    classes are the sorted unique labels of the rows kept.
    """
    rows = csv_rows(csv_uri, read_text(csv_uri))
    header_line, header = next(rows, (1, []))
    missing = [c for c in KINETICS_REQUIRED if c not in header]
    if missing:
        raise AnnotationError(csv_uri, header_line, f"header {header} lacks column(s) {missing}")
    labelled = "label" in header
    index = {name: i for i, name in enumerate(class_names)} if class_names is not None else None

    def parse(row: list[str]) -> tuple[str | None, str]:
        if len(row) != len(header):
            raise RowError("wrong field count", f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
        values = dict(zip(header, row, strict=True))
        if not values["youtube_id"]:
            raise RowError("missing youtube_id", "youtube_id is empty")
        start = parse_int(values["time_start"], "time_start", "bad time")
        end = parse_int(values["time_end"], "time_end", "bad time")
        if not 0 <= start <= end:
            raise RowError("bad time", f"time_start {start} / time_end {end} is not a valid segment")
        name = f"{values['youtube_id']}_{start:06d}_{end:06d}.mp4"
        if not labelled:
            return None, name
        label = values["label"]
        if not label:
            raise RowError("missing label", "label is empty")
        if index is not None and label not in index:
            raise RowError("unknown class", f"label {label!r} is not in the class list")
        return label, name

    skipped: Counter[str] = Counter()
    parsed = collect(csv_uri, rows, parse, strict, skipped)
    if class_names is None:
        class_names = sorted({label for label, _ in parsed if label is not None})
        index = {name: i for i, name in enumerate(class_names)}
    records = [
        VideoRecord(storage.join(video_root, name), ())
        if label is None
        else VideoRecord(storage.join(video_root, label, name), (index[label],))
        for label, name in parsed
    ]
    return make_manifest(records, list(class_names), False, skipped)


# ---------------------------------------------------------------------------------------------------------------
# UCF101 and HMDB51 official splits.


def _ucf101_class_index(uri: str) -> list[str]:
    """classInd.txt: `1 ApplyEyeMakeup` rows, 1-based."""
    by_index: dict[int, tuple[int, str]] = {}
    for line, text in text_lines(read_text(uri)):
        fields = text.split()
        if len(fields) != 2 or not re.fullmatch(r"[0-9]+", fields[0]):
            raise AnnotationError(uri, line, f"expected 'index ClassName', got {text!r}")
        index = int(fields[0])
        if index in by_index:
            raise AnnotationError(uri, line, f"class index {index} repeats line {by_index[index][0]}")
        by_index[index] = (line, fields[1])
    if not by_index:
        raise AnnotationError(uri, None, "no classes")
    return contiguous(uri, by_index, first=1)


def read_ucf101_split(split_file: str, class_index_file: str, video_root: str, strict: bool = True) -> Manifest:
    """UCF101 `trainlistNN.txt` rows `Class/v_Class_g08_c01.avi 1` (1-based label) or `testlistNN.txt` rows
    without a label (the class then comes from the folder name). Videos are `<video_root>/<Class>/<video>`."""
    class_names = _ucf101_class_index(class_index_file)
    index = {name: i for i, name in enumerate(class_names)}

    def parse(fields: list[str]) -> VideoRecord:
        if len(fields) > 2:
            raise RowError("wrong field count", f"expected 'Class/video.avi [label]', got {len(fields)} fields")
        path = fields[0]
        folder = path.split("/", 1)[0] if "/" in path else ""
        if folder not in index:
            raise RowError("unknown class", f"path {path!r}: folder {folder!r} is not a class in classInd")
        if len(fields) == 2:
            label = parse_int(fields[1], "label", "bad class id")
            if not 1 <= label <= len(class_names):  # 1-based: 0 is out of range, not class -1
                raise RowError("class id out of range", f"label {label} is out of range [1, {len(class_names)}]")
            # The folder and the label say the same thing twice; disagreement means a corrupted or mixed-up list.
            if label - 1 != index[folder]:
                raise RowError(
                    "label mismatch", f"label {label} ({class_names[label - 1]}) does not match folder {folder!r}"
                )
        return VideoRecord(storage.join(video_root, path), (index[folder],))

    skipped: Counter[str] = Counter()
    rows = ((line, text.split()) for line, text in text_lines(read_text(split_file)))
    records = collect(split_file, rows, parse, strict, skipped)
    return make_manifest(records, class_names, False, skipped)


HMDB51_FLAGS = {"0": "unused", "1": "train", "2": "test"}


def read_hmdb51_split(split_dir: str, split_number: int, train: bool, video_root: str, strict: bool = True) -> Manifest:
    """HMDB51 `<class>_test_split<k>.txt` files, rows `video.avi 1` (1 = train, 2 = test, 0 = unused).

    Class names are the sorted class prefixes of the split files; videos are `<video_root>/<class>/<video>`.
    """
    suffix = f"_test_split{split_number}.txt"
    # storage has no listing helper; its filesystem works for s3:// too. refresh: s3fs caches listings per process.
    fs, path = storage.filesystem(split_dir)
    files = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False, refresh=True)]
    class_names = sorted(f[: -len(suffix)] for f in files if f.endswith(suffix) and len(f) > len(suffix))
    if not class_names:
        raise FileNotFoundError(f"no HMDB51 *{suffix} files in {split_dir}")
    wanted = "1" if train else "2"

    def parse(fields: list[str], name: str, label: int) -> VideoRecord | None:
        if len(fields) != 2:
            raise RowError("wrong field count", f"expected 'video.avi flag', got {len(fields)} fields")
        if fields[1] not in HMDB51_FLAGS:
            raise RowError("bad split flag", f"split flag {fields[1]!r} is not 0 (unused), 1 (train) or 2 (test)")
        if fields[1] != wanted:
            return None  # the other split or unused: well-formed, just not selected
        return VideoRecord(storage.join(video_root, name, fields[0]), (label,))

    skipped: Counter[str] = Counter()
    records: list[VideoRecord] = []
    for label, name in enumerate(class_names):
        uri = storage.join(split_dir, f"{name}{suffix}")
        rows = ((line, text.split()) for line, text in text_lines(read_text(uri)))
        records += collect(uri, rows, functools.partial(parse, name=name, label=label), strict, skipped)
    return make_manifest(records, class_names, False, skipped)
