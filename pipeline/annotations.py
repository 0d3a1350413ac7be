"""Annotation readers for the action-recognition datasets TIN trains on, all producing one `Manifest`.

Every reader turns its dataset's own files into `VideoRecord`s (a full video URI plus 0-based class ids) and a class
list, so the training pipeline never needs to know which dataset it is reading. Files are read through
`pipeline.storage`, so a dataset root may be a local path or an s3:// URI.

Error policy: in strict mode (the default) the first malformed row raises `AnnotationError`, whose message names the
file, the 1-based line and the offending field. In lenient mode malformed rows are skipped and counted by reason in
`Manifest.skipped`; well-formed rows are never dropped. Class lists are always strict: skipping a class row would
silently shift or drop a class and mislabel every video after it. File-level problems (missing files, invalid JSON,
an unreadable CSV) always raise.

Formats (what the real samples in ../shared/annotations show):

* MMiT (`read_mmit`): `trainingSet.csv` / `validationSet.csv` rows `relative/path.mp4,144,246` (0-based ids);
  `moments_categories.txt` rows `name,index`. A plain one-name-per-line list is accepted too (the v2 list
  `category_multi_momentsv2.txt` has that form).
* List files (`read_list_file`), two layouts:
  - "tsn": `path num_frames label[,label...]`, as in TSN/TSM and X-Temporal's MMiT lists
    (`trimming/getty-...13.mp4 90 144,246`);
  - "mmaction": `path label [label ...]`, labels space-separated with no frame count, as in mmaction2's
    VideoDataset (`test.mp4 0 2 4` means labels 0, 2 and 4).
  `layout="auto"` picks per file: "tsn" if any label field holds a comma or every row has exactly three fields,
  otherwise "mmaction". A mmaction2 file whose rows all have exactly two labels looks like a TSN file; pass the
  layout explicitly when that can happen. Paths may not contain whitespace in either layout.
* Class lists (`load_class_names`): one name per line (mmaction2 label maps, the MMiT v2 list) or `name,index`
  rows (MMiT `moments_categories.txt`), detected from the first row. Names may contain commas (sth-v2 has
  "Putting something, something and something on the table"); only a row ending in `,<integer>` is indexed.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipeline import storage

__all__ = [
    "AnnotationError",
    "Manifest",
    "VideoRecord",
    "load_class_names",
    "read_hmdb51_split",
    "read_id_label",
    "read_kinetics_csv",
    "read_list_file",
    "read_mmit",
    "read_sthv2",
    "read_ucf101_split",
]


@dataclass(frozen=True)
class VideoRecord:
    uri: str  # full local path or URI of the video (root joined with the relative path)
    labels: tuple[int, ...]  # 0-based class ids; () for unlabelled test files
    num_frames: int | None = None


@dataclass
class Manifest:
    records: list[VideoRecord]
    class_names: list[str]  # index -> name
    multi_label: bool  # True for MMiT-style multi-label data
    skipped: dict[str, int] = field(default_factory=dict)  # lenient mode: reason -> count of skipped rows

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class AnnotationError(ValueError):
    """A malformed annotation file. The message names the file and, for a bad row, its 1-based line and field.

    `uri`, `line` and `detail` (the message without the location) are kept as attributes for callers.
    """

    def __init__(self, uri: str, line: int | None, detail: str):
        super().__init__(f"{uri} line {line}: {detail}" if line is not None else f"{uri}: {detail}")
        self.uri = uri
        self.line = line
        self.detail = detail

    def __reduce__(self):
        # Ray ships exceptions by pickling; the default would call __init__ with the formatted message only.
        return type(self), (self.uri, self.line, self.detail)


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers: reading, line numbering, and the strict/lenient row loop.


class _RowError(Exception):
    """One malformed row. `reason` is the lenient-mode counter key; the message says which field and why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


_T = TypeVar("_T")
_R = TypeVar("_R")


def _collect(
    uri: str,
    rows: Iterable[tuple[int, _T]],
    parse: Callable[[_T], _R | None],
    strict: bool,
    skipped: Counter[str],
) -> list[_R]:
    """Parse numbered rows. A `_RowError` raises AnnotationError (strict) or is counted in `skipped` (lenient).

    `parse` returning None means "well-formed but not selected" (e.g. an HMDB51 row of the other split): not counted.
    """
    out: list[_R] = []
    for line, row in rows:
        try:
            parsed = parse(row)
        except _RowError as err:
            if strict:
                raise AnnotationError(uri, line, str(err)) from None
            skipped[err.reason] += 1
            continue
        if parsed is not None:
            out.append(parsed)
    return out


def _read_text(uri: str) -> str:
    with storage.open_uri(uri, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as err:
        raise AnnotationError(uri, raw.count(b"\n", 0, err.start) + 1, "not valid UTF-8") from None


def _text_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for each non-blank line; \\r\\n and \\r end lines too (UCF101 uses CRLF)."""
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if line.strip():
            yield number, line.strip()


def _csv_rows(uri: str, text: str, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, stripped fields) for each non-blank CSV record.

    csv.reader yields every record, blank ones included, so the previous record's end line + 1 is where this one
    starts, even when a quoted field spans several lines.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    try:
        for row in reader:
            if any(f.strip() for f in row):
                yield start, [f.strip() for f in row]
            start = reader.line_num + 1
    except csv.Error as err:  # e.g. an unterminated quote: the rest of the file cannot be trusted
        raise AnnotationError(uri, reader.line_num, f"unreadable CSV: {err}") from None


_WHITESPACE = re.compile(r"\s*")


def _json_items(uri: str, text: str, container: type) -> Iterator[tuple[int, Any]]:
    """Top-level items of a JSON array (values) or object ((key, value) pairs) with the line each starts on.

    json.loads forgets positions, so this walks the top level with raw_decode to let errors name a line.
    Duplicate object keys are reported to the caller instead of silently keeping the last one.
    """
    decoder = json.JSONDecoder()
    opener, closer, what = ("[", "]", "array") if container is list else ("{", "}", "object")

    def skip_ws(pos: int) -> int:
        return _WHITESPACE.match(text, pos).end()

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def expect(pos: int, chars: str) -> None:
        if text[pos : pos + 1] not in tuple(chars):
            found = repr(text[pos]) if pos < len(text) else "end of file"
            raise AnnotationError(uri, line_of(pos), f"invalid JSON: expected {' or '.join(map(repr, chars))}, "
                                  f"found {found}")

    pos = skip_ws(0)
    if text[pos : pos + 1] != opener:
        raise AnnotationError(uri, line_of(pos), f"expected a JSON {what}")
    pos = skip_ws(pos + 1)
    if text[pos : pos + 1] == closer:
        pos += 1
    else:
        while True:
            start = pos
            try:
                if container is dict:
                    expect(pos, '"')
                    key, pos = decoder.raw_decode(text, pos)
                    pos = skip_ws(pos)
                    expect(pos, ":")
                    pos = skip_ws(pos + 1)
                value, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise AnnotationError(uri, err.lineno, f"invalid JSON: {err.msg}") from None
            yield line_of(start), ((key, value) if container is dict else value)
            pos = skip_ws(pos)
            expect(pos, "," + closer)
            pos += 1
            if text[pos - 1] == closer:
                break
            pos = skip_ws(pos)
    if skip_ws(pos) != len(text):
        raise AnnotationError(uri, line_of(skip_ws(pos)), "invalid JSON: extra data after the top-level " + what)


def _int(value: str, what: str, reason: str) -> int:
    # Plain ASCII digits only: int() would also accept "1_000" or non-ASCII digits, which no annotation file means.
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise _RowError(reason, f"{what} {value!r} is not an integer")
    return int(value)


def _class_id(value: str, num_classes: int | None, what: str = "class id") -> int:
    """A 0-based class id, checked against [0, num_classes) (or only >= 0 when the class count is unknown)."""
    idx = _int(value, what, "bad class id")
    if idx < 0 or (num_classes is not None and idx >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise _RowError("class id out of range", f"{what} {idx} is out of range {bound}")
    return idx


def _manifest(records: list[VideoRecord], class_names: list[str], multi_label: bool, skipped: Counter[str]) -> Manifest:
    return Manifest(records=records, class_names=class_names, multi_label=multi_label, skipped=dict(skipped))


# ---------------------------------------------------------------------------------------------------------------
# Class lists.

_INDEXED_ROW = re.compile(r"(?P<name>.*\S)\s*,\s*(?P<index>[+-]?[0-9]+)")


def load_class_names(uri: str) -> list[str]:
    """Class names, index -> name, from one-name-per-line lists or `name,index` rows (detected from the first row)."""
    lines = list(_text_lines(_read_text(uri)))
    if not lines:
        raise AnnotationError(uri, None, "no class names")
    if _INDEXED_ROW.fullmatch(lines[0][1]):
        return _indexed_class_names(uri, lines)
    return _plain_class_names(uri, lines)


def _plain_class_names(uri: str, lines: list[tuple[int, str]]) -> list[str]:
    # Position is the index; _contiguous still rejects repeated names.
    return _contiguous(uri, {i: (line, name) for i, (line, name) in enumerate(lines)}, first=0)


def _indexed_class_names(uri: str, lines: list[tuple[int, str]]) -> list[str]:
    by_index: dict[int, tuple[int, str]] = {}
    for line, text in lines:
        match = _INDEXED_ROW.fullmatch(text)
        if match is None:
            raise AnnotationError(uri, line, f"expected 'name,index', got {text!r}")
        name, index = match["name"], int(match["index"])
        if index in by_index:
            raise AnnotationError(uri, line, f"class index {index} ({name!r}) repeats line {by_index[index][0]} "
                                  f"({by_index[index][1]!r})")
        by_index[index] = (line, name)
    return _contiguous(uri, by_index, first=0)


def _contiguous(uri: str, by_index: dict[int, tuple[int, str]], first: int) -> list[str]:
    """Names ordered by index. Indices must run first, first+1, ... without gaps so that position == class id, and
    names must be unique so that name -> id lookups are unambiguous."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for expected, (index, (line, name)) in enumerate(sorted(by_index.items()), start=first):
        if index != expected:
            raise AnnotationError(uri, line, f"class index {index} ({name!r}) leaves a gap: index {expected} is "
                                  f"missing (indices must run {first}, {first + 1}, ...)")
        if name in seen:
            raise AnnotationError(uri, line, f"class name {name!r} repeats line {seen[name]}")
        seen[name] = line
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------------------------
# Multi-Moments in Time.

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
            raise _RowError("missing path", "video path is empty")
        if not ids:
            raise _RowError("no labels", f"video {path!r} has no class ids")
        # dict.fromkeys: drop a repeated id but keep the annotators' order.
        labels = tuple(dict.fromkeys(_class_id(i, len(class_names)) for i in ids))
        return VideoRecord(storage.join(videos, path), labels)

    skipped: Counter[str] = Counter()
    records = _collect(csv_uri, _csv_rows(csv_uri, _read_text(csv_uri)), parse, strict, skipped)
    return _manifest(records, class_names, True, skipped)


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
    rows = [(line, text.split()) for line, text in _text_lines(_read_text(list_uri))]
    if layout == "auto":
        layout = _detect_list_layout(rows)
    num_classes = len(class_names) if class_names is not None else None

    def labels_of(values: list[str]) -> tuple[int, ...]:
        return tuple(dict.fromkeys(_class_id(v, num_classes) for v in values))

    def parse(fields: list[str]) -> VideoRecord:
        if layout == "tsn":
            if len(fields) != 3:
                raise _RowError("wrong field count", f"expected 3 fields 'path num_frames labels', got {len(fields)}")
            path, frames, labels = fields
            num_frames = _int(frames, "num_frames", "bad num_frames")
            if num_frames < 0:
                raise _RowError("bad num_frames", f"num_frames {num_frames} is negative")
            return VideoRecord(storage.join(video_root, path), labels_of(labels.split(",")), num_frames)
        if len(fields) < 2:
            raise _RowError("no labels", f"expected 'path label [label ...]', got {len(fields)} field")
        return VideoRecord(storage.join(video_root, fields[0]), labels_of(fields[1:]))

    skipped: Counter[str] = Counter()
    records = _collect(list_uri, rows, parse, strict, skipped)
    if class_names is None:
        top = max((max(r.labels) for r in records), default=-1)
        class_names = [str(i) for i in range(top + 1)]
    return _manifest(records, list(class_names), any(len(r.labels) > 1 for r in records), skipped)


# ---------------------------------------------------------------------------------------------------------------
# Something-Something v2 (JSON).


def _strip_brackets(template: str) -> str:
    # Entries say "Putting [something] on [something]"; the class is the template without the placeholder marks.
    return template.replace("[", "").replace("]", "")


def _sthv2_class_names(labels_json: str) -> list[str]:
    by_index: dict[int, tuple[int, str]] = {}
    for line, (template, value) in _json_items(labels_json, _read_text(labels_json), dict):
        # The release stores indices as strings ("0"); accept JSON integers too.
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not re.fullmatch(r"[0-9]+", str(value)):
            raise AnnotationError(labels_json, line, f"index {value!r} of template {template!r} is not an integer")
        index = int(value)
        if index in by_index:
            raise AnnotationError(labels_json, line, f"index {index} of {template!r} repeats line {by_index[index][0]}")
        by_index[index] = (line, _strip_brackets(template))
    if not by_index:
        raise AnnotationError(labels_json, None, "no templates")
    return _contiguous(labels_json, by_index, first=0)


def read_sthv2(labels_json: str, entries_json: str, video_root: str, strict: bool = True) -> Manifest:
    """Something-Something v2: labels.json (template -> index) and a train/validation/test entry list.

    Each entry's class is its `template` without brackets; test entries have no template and get labels ().
    Videos are `<video_root>/<id>.webm`.
    """
    class_names = _sthv2_class_names(labels_json)
    index = {name: i for i, name in enumerate(class_names)}

    def parse(entry: Any) -> VideoRecord:
        if not isinstance(entry, dict):
            raise _RowError("bad entry", f"entry is a {type(entry).__name__}, not an object")
        video_id = entry.get("id")
        if isinstance(video_id, bool) or not isinstance(video_id, (str, int)) or not str(video_id).strip():
            raise _RowError("missing id", f"id {video_id!r} is missing or not a string/integer")
        uri = storage.join(video_root, f"{str(video_id).strip()}.webm")
        if "template" not in entry:
            return VideoRecord(uri, ())
        template = entry["template"]
        if not isinstance(template, str) or _strip_brackets(template) not in index:
            raise _RowError("unknown template", f"template {template!r} is not in {posixpath.basename(labels_json)}")
        return VideoRecord(uri, (index[_strip_brackets(template)],))

    skipped: Counter[str] = Counter()
    entries = _json_items(entries_json, _read_text(entries_json), list)
    records = _collect(entries_json, entries, parse, strict, skipped)
    return _manifest(records, class_names, False, skipped)


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
            raise _RowError("wrong field count", f"expected 'id;label', got {len(row)} fields")
        video_id = row[0]
        if not video_id:
            raise _RowError("missing id", "id is empty")
        uri = storage.join(video_root, f"{video_id}{ext}")
        if len(row) == 1:
            return VideoRecord(uri, ())
        if row[1] not in index:
            raise _RowError("unknown class", f"label {row[1]!r} is not in {posixpath.basename(labels_txt)}")
        return VideoRecord(uri, (index[row[1]],))

    skipped: Counter[str] = Counter()
    records = _collect(list_uri, _csv_rows(list_uri, _read_text(list_uri), delimiter=";"), parse, strict, skipped)
    return _manifest(records, class_names, False, skipped)


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
    rows = _csv_rows(csv_uri, _read_text(csv_uri))
    header_line, header = next(rows, (1, []))
    missing = [c for c in KINETICS_REQUIRED if c not in header]
    if missing:
        raise AnnotationError(csv_uri, header_line, f"header {header} lacks column(s) {missing}")
    labelled = "label" in header
    index = {name: i for i, name in enumerate(class_names)} if class_names is not None else None

    def parse(row: list[str]) -> tuple[str | None, str]:
        if len(row) != len(header):
            raise _RowError("wrong field count", f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
        values = dict(zip(header, row, strict=True))
        if not values["youtube_id"]:
            raise _RowError("missing youtube_id", "youtube_id is empty")
        start = _int(values["time_start"], "time_start", "bad time")
        end = _int(values["time_end"], "time_end", "bad time")
        if not 0 <= start <= end:
            raise _RowError("bad time", f"time_start {start} / time_end {end} is not a valid segment")
        name = f"{values['youtube_id']}_{start:06d}_{end:06d}.mp4"
        if not labelled:
            return None, name
        label = values["label"]
        if not label:
            raise _RowError("missing label", "label is empty")
        if index is not None and label not in index:
            raise _RowError("unknown class", f"label {label!r} is not in the class list")
        return label, name

    skipped: Counter[str] = Counter()
    parsed = _collect(csv_uri, rows, parse, strict, skipped)
    if class_names is None:
        class_names = sorted({label for label, _ in parsed if label is not None})
        index = {name: i for i, name in enumerate(class_names)}
    records = [
        VideoRecord(storage.join(video_root, name), ())
        if label is None
        else VideoRecord(storage.join(video_root, label, name), (index[label],))
        for label, name in parsed
    ]
    return _manifest(records, list(class_names), False, skipped)


# ---------------------------------------------------------------------------------------------------------------
# UCF101 and HMDB51 official splits.


def _ucf101_class_index(uri: str) -> list[str]:
    """classInd.txt: `1 ApplyEyeMakeup` rows, 1-based."""
    by_index: dict[int, tuple[int, str]] = {}
    for line, text in _text_lines(_read_text(uri)):
        fields = text.split()
        if len(fields) != 2 or not re.fullmatch(r"[0-9]+", fields[0]):
            raise AnnotationError(uri, line, f"expected 'index ClassName', got {text!r}")
        index = int(fields[0])
        if index in by_index:
            raise AnnotationError(uri, line, f"class index {index} repeats line {by_index[index][0]}")
        by_index[index] = (line, fields[1])
    if not by_index:
        raise AnnotationError(uri, None, "no classes")
    return _contiguous(uri, by_index, first=1)


def read_ucf101_split(split_file: str, class_index_file: str, video_root: str, strict: bool = True) -> Manifest:
    """UCF101 `trainlistNN.txt` rows `Class/v_Class_g08_c01.avi 1` (1-based label) or `testlistNN.txt` rows
    without a label (the class then comes from the folder name). Videos are `<video_root>/<Class>/<video>`."""
    class_names = _ucf101_class_index(class_index_file)
    index = {name: i for i, name in enumerate(class_names)}

    def parse(fields: list[str]) -> VideoRecord:
        if len(fields) > 2:
            raise _RowError("wrong field count", f"expected 'Class/video.avi [label]', got {len(fields)} fields")
        path = fields[0]
        folder = path.split("/", 1)[0] if "/" in path else ""
        if folder not in index:
            raise _RowError("unknown class", f"path {path!r}: folder {folder!r} is not a class in classInd")
        if len(fields) == 2:
            label = _int(fields[1], "label", "bad class id")
            if not 1 <= label <= len(class_names):  # 1-based: 0 is out of range, not class -1
                raise _RowError("class id out of range", f"label {label} is out of range [1, {len(class_names)}]")
            # The folder and the label say the same thing twice; disagreement means a corrupted or mixed-up list.
            if label - 1 != index[folder]:
                raise _RowError("label mismatch", f"label {label} ({class_names[label - 1]}) does not match "
                                f"folder {folder!r}")
        return VideoRecord(storage.join(video_root, path), (index[folder],))

    skipped: Counter[str] = Counter()
    rows = ((line, text.split()) for line, text in _text_lines(_read_text(split_file)))
    records = _collect(split_file, rows, parse, strict, skipped)
    return _manifest(records, class_names, False, skipped)


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
            raise _RowError("wrong field count", f"expected 'video.avi flag', got {len(fields)} fields")
        if fields[1] not in HMDB51_FLAGS:
            raise _RowError("bad split flag", f"split flag {fields[1]!r} is not 0 (unused), 1 (train) or 2 (test)")
        if fields[1] != wanted:
            return None  # the other split or unused: well-formed, just not selected
        return VideoRecord(storage.join(video_root, name, fields[0]), (label,))

    skipped: Counter[str] = Counter()
    records: list[VideoRecord] = []
    for label, name in enumerate(class_names):
        uri = storage.join(split_dir, f"{name}{suffix}")
        rows = ((line, text.split()) for line, text in _text_lines(_read_text(uri)))
        records += _collect(uri, rows, functools.partial(parse, name=name, label=label), strict, skipped)
    return _manifest(records, class_names, False, skipped)
