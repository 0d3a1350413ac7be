"""What every annotation reader shares: the record and manifest types, the error that names file, line and field,
the strict/lenient row loop, text/CSV/JSON readers that keep line numbers, and class lists.

Error policy: in strict mode (the default) the first malformed row raises `AnnotationError`, whose message names the
file, the 1-based line and the offending field. In lenient mode malformed rows are skipped and counted by reason in
`Manifest.skipped`; well-formed rows are never dropped. Class lists are always strict: skipping a class row would
silently shift or drop a class and mislabel every video after it. File-level problems (missing files, invalid JSON,
an unreadable CSV) always raise.

Class lists (`load_class_names`): one name per line (mmaction2 label maps, the MMiT v2 list) or `name,index` rows
(MMiT `moments_categories.txt`), detected from the first row. Names may contain commas (sth-v2 has "Putting
something, something and something on the table"); only a row ending in `,<integer>` is indexed.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipeline.data import storage


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


class RowError(Exception):
    """One malformed row. `reason` is the lenient-mode counter key; the message says which field and why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


_T = TypeVar("_T")
_R = TypeVar("_R")


def collect(
    uri: str,
    rows: Iterable[tuple[int, _T]],
    parse: Callable[[_T], _R | None],
    strict: bool,
    skipped: Counter[str],
) -> list[_R]:
    """Parse numbered rows. A `RowError` raises AnnotationError (strict) or is counted in `skipped` (lenient).

    `parse` returning None means "well-formed but not selected" (e.g. an HMDB51 row of the other split): not counted.
    """
    out: list[_R] = []
    for line, row in rows:
        try:
            parsed = parse(row)
        except RowError as err:
            if strict:
                raise AnnotationError(uri, line, str(err)) from None
            skipped[err.reason] += 1
            continue
        if parsed is not None:
            out.append(parsed)
    return out


def read_text(uri: str) -> str:
    with storage.open_uri(uri, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as err:
        raise AnnotationError(uri, raw.count(b"\n", 0, err.start) + 1, "not valid UTF-8") from None


def text_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for each non-blank line; \\r\\n and \\r end lines too (UCF101 uses CRLF)."""
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if line.strip():
            yield number, line.strip()


def csv_rows(uri: str, text: str, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
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


def json_items(uri: str, text: str, container: type) -> Iterator[tuple[int, Any]]:
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
            raise AnnotationError(
                uri, line_of(pos), f"invalid JSON: expected {' or '.join(map(repr, chars))}, found {found}"
            )

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


def parse_int(value: str, what: str, reason: str) -> int:
    # Plain ASCII digits only: int() would also accept "1_000" or non-ASCII digits, which no annotation file means.
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise RowError(reason, f"{what} {value!r} is not an integer")
    return int(value)


def class_id(value: str, num_classes: int | None, what: str = "class id") -> int:
    """A 0-based class id, checked against [0, num_classes) (or only >= 0 when the class count is unknown)."""
    idx = parse_int(value, what, "bad class id")
    if idx < 0 or (num_classes is not None and idx >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise RowError("class id out of range", f"{what} {idx} is out of range {bound}")
    return idx


def make_manifest(
    records: list[VideoRecord], class_names: list[str], multi_label: bool, skipped: Counter[str]
) -> Manifest:
    return Manifest(records=records, class_names=class_names, multi_label=multi_label, skipped=dict(skipped))


# ---------------------------------------------------------------------------------------------------------------
_INDEXED_ROW = re.compile(r"(?P<name>.*\S)\s*,\s*(?P<index>[+-]?[0-9]+)")


def load_class_names(uri: str) -> list[str]:
    """Class names, index -> name, from one-name-per-line lists or `name,index` rows (detected from the first row)."""
    lines = list(text_lines(read_text(uri)))
    if not lines:
        raise AnnotationError(uri, None, "no class names")
    if _INDEXED_ROW.fullmatch(lines[0][1]):
        return _indexed_class_names(uri, lines)
    return _plain_class_names(uri, lines)


def _plain_class_names(uri: str, lines: list[tuple[int, str]]) -> list[str]:
    # Position is the index; contiguous still rejects repeated names.
    return contiguous(uri, {i: (line, name) for i, (line, name) in enumerate(lines)}, first=0)


def _indexed_class_names(uri: str, lines: list[tuple[int, str]]) -> list[str]:
    by_index: dict[int, tuple[int, str]] = {}
    for line, text in lines:
        match = _INDEXED_ROW.fullmatch(text)
        if match is None:
            raise AnnotationError(uri, line, f"expected 'name,index', got {text!r}")
        name, index = match["name"], int(match["index"])
        if index in by_index:
            raise AnnotationError(
                uri, line, f"class index {index} ({name!r}) repeats line {by_index[index][0]} ({by_index[index][1]!r})"
            )
        by_index[index] = (line, name)
    return contiguous(uri, by_index, first=0)


def contiguous(uri: str, by_index: dict[int, tuple[int, str]], first: int) -> list[str]:
    """Names ordered by index. Indices must run first, first+1, ... without gaps so that position == class id, and
    names must be unique so that name -> id lookups are unambiguous."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for expected, (index, (line, name)) in enumerate(sorted(by_index.items()), start=first):
        if index != expected:
            raise AnnotationError(
                uri,
                line,
                f"class index {index} ({name!r}) leaves a gap: index {expected} is "
                f"missing (indices must run {first}, {first + 1}, ...)",
            )
        if name in seen:
            raise AnnotationError(uri, line, f"class name {name!r} repeats line {seen[name]}")
        seen[name] = line
        names.append(name)
    return names
