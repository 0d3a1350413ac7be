"""Annotation readers: small fixtures per format, the real samples in ../shared/annotations, malformed rows in strict
and lenient mode, and MMiT/HMDB51 read back from a real (moto) S3 endpoint."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from conftest import free_port

from pipeline.data.annotations import (
    AnnotationError,
    Manifest,
    VideoRecord,
    load_class_names,
    read_hmdb51_split,
    read_id_label,
    read_kinetics_csv,
    read_list_file,
    read_mmit,
    read_sthv2,
    read_ucf101_split,
)

# Same location rule as tests/conftest.py; used only to build fixtures from real names *when present* (the tests
# below fall back to synthetic names instead of skipping). Tests that are about the samples use `shared_annotations`.
_SHARED_ANN = Path(os.environ.get("TIN_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) / "annotations"

# The three clips of X-Temporal's MMiT list example, as MMiT's own CSV rows.
MMIT_ROWS = [
    ("trimming/getty-cutting-meat-cleaver-video-id163936215_13.mp4", (144, 246)),
    ("exercising/meta-935267_68.mp4", (69,)),
    ("cooking/yt-SSLy25MQb9g_307.mp4", (264, 311, 7, 188, 246)),
]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def names_from(sample: str, count: int, stem: str) -> list[str]:
    """The real class list when the shared samples are present, otherwise `count` synthetic names."""
    path = _SHARED_ANN / sample
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [f"{stem}_{i}" for i in range(count)]


def mmit_v1_names() -> list[str]:
    return names_from("mmaction2__label_map_mmit.txt", 313, "moment")


def make_mmit_root(root: Path, annotations_dir: bool, categories: list[str] | None = None) -> Path:
    base = root / "annotations" if annotations_dir else root
    names = mmit_v1_names() if categories is None else categories
    write(base / "moments_categories.txt", "".join(f"{name},{i}\n" for i, name in enumerate(names)))
    write(base / "trainingSet.csv", "".join(f"{path},{','.join(map(str, ids))}\n" for path, ids in MMIT_ROWS))
    write(base / "validationSet.csv", "yoga/clip_1.mp4,5\n\nyoga/clip_2.mp4,6,7\n")
    return root


def expect_error(exc: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(exc.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------------------------
# Manifest / error basics


def test_manifest_num_classes_and_error_pickles():
    manifest = Manifest(
        records=[VideoRecord("/v/a.mp4", (1,))], class_names=["a", "b", "c"], multi_label=False, skipped={}
    )
    assert manifest.num_classes == 3
    err = AnnotationError("s3://b/trainingSet.csv", 7, "class id 'abc' is not an integer")
    assert str(err) == "s3://b/trainingSet.csv line 7: class id 'abc' is not an integer"
    assert isinstance(err, ValueError)
    # Ray ships exceptions between processes by pickling them.
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), str(again), again.uri, again.line) == (AnnotationError, str(err), err.uri, err.line)


# ---------------------------------------------------------------------------------------------------------------
# MMiT


@pytest.mark.parametrize("annotations_dir", [False, True], ids=["files-at-root", "annotations-subdir"])
def test_read_mmit_both_layouts(tmp_path, annotations_dir):
    root = make_mmit_root(tmp_path / "mmit", annotations_dir)
    manifest = read_mmit(str(root))
    assert manifest.multi_label is True
    assert manifest.num_classes == 313
    assert manifest.skipped == {}
    assert manifest.records == [VideoRecord(str(root / "videos" / path), labels) for path, labels in MMIT_ROWS]
    assert manifest.class_names == mmit_v1_names()

    val = read_mmit(str(root), split="validation")
    assert [r.labels for r in val.records] == [(5,), (6, 7)]
    assert val.records[1].uri == str(root / "videos" / "yoga" / "clip_2.mp4")


def test_read_mmit_v1_categories_built_from_real_label_map_match_folders(tmp_path):
    root = make_mmit_root(tmp_path / "mmit", annotations_dir=True)
    manifest = read_mmit(str(root))
    if (_SHARED_ANN / "mmaction2__label_map_mmit.txt").is_file():
        # Each clip's folder is one of its labels under the v1 index.
        for record in manifest.records:
            folder = Path(record.uri).parent.name
            assert folder in [manifest.class_names[i] for i in record.labels]
    assert all(0 <= i < 313 for r in manifest.records for i in r.labels)


def test_read_mmit_missing_files_name_both_places(tmp_path):
    root = tmp_path / "mmit"
    write(root / "moments_categories.txt", "a,0\n")
    with pytest.raises(FileNotFoundError) as exc:
        read_mmit(str(root))
    expect_error(exc, str(root / "trainingSet.csv"), str(root / "annotations" / "trainingSet.csv"))


def test_read_mmit_rejects_unknown_split(tmp_path):
    root = make_mmit_root(tmp_path / "mmit", annotations_dir=False)
    with pytest.raises(ValueError, match="testing"):
        read_mmit(str(root), split="testing")


def test_read_mmit_with_plain_v2_category_list(tmp_path):
    v2 = names_from("moments_models__category_multi_momentsv2.txt", 292, "moment")
    root = tmp_path / "mmit"
    write(root / "moments_categories.txt", "\n".join(v2) + "\n")
    write(root / "trainingSet.csv", "a/x.mp4,291\nb/y.mp4,292\n")
    assert read_mmit(str(root), strict=False).num_classes == 292
    with pytest.raises(AnnotationError) as exc:
        read_mmit(str(root))
    expect_error(exc, "trainingSet.csv line 2", "class id 292", "[0, 292)")


MMIT_BAD_ROWS = [
    ("cut/a.mp4,abc", "class id 'abc' is not an integer", "bad class id"),
    ("cut/a.mp4,313", "class id 313 is out of range [0, 313)", "class id out of range"),
    ("cut/a.mp4,-1", "class id -1 is out of range", "class id out of range"),
    ("cut/a.mp4", "has no class ids", "no labels"),
    ("cut/a.mp4,4,", "class id '' is not an integer", "bad class id"),
    (",4", "video path is empty", "missing path"),
]


@pytest.mark.parametrize(("row", "message", "reason"), MMIT_BAD_ROWS, ids=[r[2] + ":" + r[0] for r in MMIT_BAD_ROWS])
def test_read_mmit_malformed_row_strict_and_lenient(tmp_path, row, message, reason):
    root = make_mmit_root(tmp_path / "mmit", annotations_dir=True)
    csv_path = root / "annotations" / "trainingSet.csv"
    good = csv_path.read_text().splitlines()
    # Blank lines count towards line numbers: the bad row is on physical line 7.
    write(csv_path, "\n".join([good[0], "", good[1], "", "", good[2], row, "ok/b.mp4,1"]) + "\n")
    with pytest.raises(AnnotationError) as exc:
        read_mmit(str(root))
    expect_error(exc, "trainingSet.csv line 7: ", message)
    assert exc.value.line == 7

    lenient = read_mmit(str(root), strict=False)
    assert lenient.skipped == {reason: 1}
    assert [r.labels for r in lenient.records] == [labels for _, labels in MMIT_ROWS] + [(1,)]


def test_read_mmit_lenient_counts_each_reason(tmp_path):
    root = make_mmit_root(tmp_path / "mmit", annotations_dir=False)
    write(root / "trainingSet.csv", "a/1.mp4,1\na/2.mp4,x\na/3.mp4,999\na/4.mp4\na/5.mp4,2,2,3\na/6.mp4,y\n")
    manifest = read_mmit(str(root), strict=False)
    assert manifest.skipped == {"bad class id": 2, "class id out of range": 1, "no labels": 1}
    # A repeated id is not an error: it is dropped, keeping the annotators' order.
    assert [(Path(r.uri).name, r.labels) for r in manifest.records] == [("1.mp4", (1,)), ("5.mp4", (2, 3))]


def test_read_mmit_quoted_path_with_comma(tmp_path):
    root = make_mmit_root(tmp_path / "mmit", annotations_dir=False)
    write(root / "trainingSet.csv", '"odd/a,b.mp4",3,4\n')
    assert read_mmit(str(root)).records == [VideoRecord(str(root / "videos" / "odd" / "a,b.mp4"), (3, 4))]


def test_mmit_categories_duplicate_index_and_gap_are_errors(tmp_path):
    root = make_mmit_root(tmp_path / "mmit", annotations_dir=False)
    write(root / "moments_categories.txt", "crafting,0\npaddling,1\n\nraining,1\n")
    with pytest.raises(AnnotationError) as exc:
        read_mmit(str(root))
    expect_error(exc, "moments_categories.txt line 4", "class index 1", "repeats line 2", "paddling")

    write(root / "moments_categories.txt", "crafting,0\npaddling,2\n")
    with pytest.raises(AnnotationError) as exc:
        load_class_names(str(root / "moments_categories.txt"))
    expect_error(exc, "line 2", "index 1 is missing")

    write(root / "moments_categories.txt", "crafting,0\npaddling\n")
    with pytest.raises(AnnotationError) as exc:
        load_class_names(str(root / "moments_categories.txt"))
    expect_error(exc, "line 2", "expected 'name,index'", "'paddling'")


# ---------------------------------------------------------------------------------------------------------------
# Class lists


def test_load_class_names_indexed_rows_are_ordered_by_index(tmp_path):
    path = write(tmp_path / "cats.txt", "raining,2\ncrafting,0\n\npaddling , 1\n")
    assert load_class_names(str(path)) == ["crafting", "paddling", "raining"]


def test_load_class_names_plain_list_keeps_commas_and_rejects_repeats(tmp_path):
    path = write(tmp_path / "names.txt", "Putting something, something and something on the table\nb\r\nc\n")
    assert load_class_names(str(path)) == ["Putting something, something and something on the table", "b", "c"]
    write(tmp_path / "dup.txt", "a\nb\n\na\n")
    with pytest.raises(AnnotationError) as exc:
        load_class_names(str(tmp_path / "dup.txt"))
    expect_error(exc, "dup.txt line 4", "'a'", "repeats line 1")
    write(tmp_path / "empty.txt", "\n\n")
    with pytest.raises(AnnotationError, match="no class names"):
        load_class_names(str(tmp_path / "empty.txt"))


def test_load_class_names_real_mmit_v1_v2(shared_annotations):
    v1 = load_class_names(str(shared_annotations / "mmaction2__label_map_mmit.txt"))
    v2 = load_class_names(str(shared_annotations / "moments_models__category_multi_momentsv2.txt"))
    assert (len(v1), len(v2)) == (313, 292)
    assert set(v2) <= set(v1)
    dropped = set(v1) - set(v2)
    assert len(dropped) == 21 and {"kissing", "punching", "shooting"} <= dropped
    # Dropping classes shifts indices: the same id means different classes in v1 and v2.
    assert (v1.index("trimming"), v2.index("trimming")) == (144, 133)
    assert (v1[144], v2[144]) == ("trimming", "blowing")
    assert v1[:9] == v2[:9] and v1[9] == "swerving" and v2[9] == "frowning"


@pytest.mark.parametrize(
    ("sample", "count", "first", "last"),
    [
        ("mmaction2__label_map_hmdb51.txt", 51, "brush_hair", "wave"),
        ("mmaction2__label_map_jester.txt", 27, "Swiping Left", "Doing other things"),
        ("mmaction2__label_map_k600.txt", 600, "abseiling", "zumba"),
        (
            "mmaction2__label_map_sthv2.txt",
            174,
            "Approaching something with your camera",
            "Wiping something off of something",
        ),
        ("mmaction2__label_map_ucf101.txt", 101, "ApplyEyeMakeup", "YoYo"),
    ],
)
def test_load_class_names_real_mmaction2_label_maps(shared_annotations, sample, count, first, last):
    names = load_class_names(str(shared_annotations / sample))
    assert (len(names), names[0], names[-1]) == (count, first, last)
    assert len(set(names)) == count


def test_load_class_names_sthv2_commas_are_not_indices(shared_annotations):
    names = load_class_names(str(shared_annotations / "mmaction2__label_map_sthv2.txt"))
    assert names[120] == "Putting something, something and something on the table"
    assert sum("," in n for n in names) == 12


# ---------------------------------------------------------------------------------------------------------------
# List files


def test_read_list_file_real_xtemporal_mmit(shared_annotations):
    v1 = load_class_names(str(shared_annotations / "mmaction2__label_map_mmit.txt"))
    manifest = read_list_file(str(shared_annotations / "xtemporal__mmit_list_example.txt"), "/data/mmit/videos", v1)
    assert [(r.uri, r.num_frames, r.labels) for r in manifest.records] == [
        ("/data/mmit/videos/trimming/getty-cutting-meat-cleaver-video-id163936215_13.mp4", 90, (144, 246)),
        ("/data/mmit/videos/exercising/meta-935267_68.mp4", 92, (69,)),
        ("/data/mmit/videos/cooking/yt-SSLy25MQb9g_307.mp4", 91, (264, 311, 7, 188, 246)),
    ]
    assert manifest.multi_label and manifest.num_classes == 313
    # The ids are v1 ids: each clip's folder is one of its classes in the v1 list ...
    for record in manifest.records:
        assert Path(record.uri).parent.name in [v1[i] for i in record.labels]
    # ... and id 311 does not exist in v2 (292 classes), so reading with the v2 list fails on line 3.
    v2 = load_class_names(str(shared_annotations / "moments_models__category_multi_momentsv2.txt"))
    with pytest.raises(AnnotationError) as exc:
        read_list_file(str(shared_annotations / "xtemporal__mmit_list_example.txt"), "/v", v2)
    expect_error(exc, "xtemporal__mmit_list_example.txt line 3", "class id 311", "[0, 292)")


def test_read_list_file_real_mmaction2_multi_label(shared_annotations):
    sample = str(shared_annotations / "mmaction2__video_test_list_multi_label.txt")
    manifest = read_list_file(sample, "/data/videos")
    # mmaction2's layout is `path label label ...` (no frame count): mmaction2's own test expects [0, 3] and [0, 2, 4].
    assert manifest.records == [
        VideoRecord("/data/videos/test.mp4", (0, 3)),
        VideoRecord("/data/videos/test.mp4", (0, 2, 4)),
    ]
    assert manifest.multi_label and manifest.class_names == ["0", "1", "2", "3", "4"]
    # Read as a TSN list, line 1 would be "0 frames, label 3" and line 2 has one field too many.
    with pytest.raises(AnnotationError) as exc:
        read_list_file(sample, "/data/videos", layout="tsn")
    expect_error(exc, "line 2", "expected 3 fields", "got 4")


def test_read_list_file_layouts_on_fixtures(tmp_path):
    tsn = write(tmp_path / "train.txt", "a/x.mp4 120 3\n\nb/y.mp4 64 0\n")
    manifest = read_list_file(str(tsn), str(tmp_path / "v"), ["c0", "c1", "c2", "c3"])
    assert manifest.records == [
        VideoRecord(str(tmp_path / "v" / "a" / "x.mp4"), (3,), 120),
        VideoRecord(str(tmp_path / "v" / "b" / "y.mp4"), (0,), 64),
    ]
    assert manifest.multi_label is False and manifest.class_names == ["c0", "c1", "c2", "c3"]

    two_col = write(tmp_path / "mm.txt", "a.mp4 1\nb.mp4 2\n")
    manifest = read_list_file(str(two_col), "/v")
    assert [(r.labels, r.num_frames) for r in manifest.records] == [((1,), None), ((2,), None)]
    assert manifest.multi_label is False

    # Three fields without commas is ambiguous; "auto" reads TSN, an explicit layout settles it.
    assert read_list_file(str(tsn), "/v", layout="mmaction").records[0].labels == (120, 3)
    with pytest.raises(ValueError, match="layout"):
        read_list_file(str(tsn), "/v", layout="csv")


LIST_BAD_ROWS = [
    ("c.mp4 many 1", "num_frames 'many' is not an integer", "bad num_frames"),
    ("c.mp4 -5 1", "num_frames -5 is negative", "bad num_frames"),
    ("c.mp4 10 1,x", "class id 'x' is not an integer", "bad class id"),
    ("c.mp4 10 1,9", "class id 9 is out of range [0, 5)", "class id out of range"),
    ("c.mp4 10", "expected 3 fields", "wrong field count"),
]


@pytest.mark.parametrize(("row", "message", "reason"), LIST_BAD_ROWS, ids=[r[2] for r in LIST_BAD_ROWS])
def test_read_list_file_malformed_row(tmp_path, row, message, reason):
    path = write(tmp_path / "list.txt", f"a.mp4 10 1,2\nb.mp4 11 3\n{row}\nd.mp4 12 4\n")
    names = [f"c{i}" for i in range(5)]
    with pytest.raises(AnnotationError) as exc:
        read_list_file(str(path), "/v", names)
    expect_error(exc, "list.txt line 3: ", message)
    lenient = read_list_file(str(path), "/v", names, strict=False)
    assert lenient.skipped == {reason: 1}
    assert [(r.uri, r.labels, r.num_frames) for r in lenient.records] == [
        ("/v/a.mp4", (1, 2), 10),
        ("/v/b.mp4", (3,), 11),
        ("/v/d.mp4", (4,), 12),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Something-Something v2


def sthv2_files(tmp_path: Path, names: list[str], entries: list) -> tuple[str, str]:
    # Keys in a different order from their indices, as in a hand-edited file; the index decides the class id.
    labels = {name: str(i) for i, name in reversed(list(enumerate(names)))}
    labels_json = write(tmp_path / "labels.json", json.dumps(labels, indent=4))
    entries_json = write(tmp_path / "entries.json", json.dumps(entries, indent=4))
    return str(labels_json), str(entries_json)


def test_read_sthv2_train_and_test(tmp_path):
    names = ["Putting something on something", "Pushing something from left to right", "Holding something"]
    entries = [
        {
            "id": "78687",
            "label": "putting a cup on a table",
            "template": "Putting [something] on [something]",
            "placeholders": ["a cup", "a table"],
        },
        {"id": 42326, "label": "holding potato", "template": "Holding [something]", "placeholders": ["potato"]},
    ]
    labels_json, entries_json = sthv2_files(tmp_path, names, entries)
    manifest = read_sthv2(labels_json, entries_json, "/data/sthv2/videos")
    assert manifest.class_names == names
    assert manifest.records == [
        VideoRecord("/data/sthv2/videos/78687.webm", (0,)),
        VideoRecord("/data/sthv2/videos/42326.webm", (2,)),
    ]
    assert manifest.multi_label is False

    test_json = write(tmp_path / "test.json", json.dumps([{"id": "1420"}, {"id": "37017"}]))
    test = read_sthv2(labels_json, str(test_json), "/v")
    assert [(r.uri, r.labels) for r in test.records] == [("/v/1420.webm", ()), ("/v/37017.webm", ())]


def test_read_sthv2_with_real_label_map(tmp_path, shared_annotations):
    names = load_class_names(str(shared_annotations / "mmaction2__label_map_sthv2.txt"))
    entries = [
        {"id": "1", "template": "Putting [something], [something] and [something] on the table"},
        {"id": "2", "template": "Approaching [something] with your camera"},
    ]
    manifest = read_sthv2(*sthv2_files(tmp_path, names, entries), "/v")
    assert manifest.num_classes == 174
    assert [r.labels for r in manifest.records] == [(120,), (0,)]


STHV2_BAD = [
    (
        {"id": "9", "template": "Dancing with [something]"},
        "template 'Dancing with [something]' is not in labels.json",
        "unknown template",
    ),
    ({"template": "Holding [something]"}, "id None is missing", "missing id"),
    ({"id": "9", "template": 7}, "template 7 is not in", "unknown template"),
    (["9"], "entry is a list, not an object", "bad entry"),
]


@pytest.mark.parametrize(("entry", "message", "reason"), STHV2_BAD, ids=[r[2] for r in STHV2_BAD])
def test_read_sthv2_malformed_entry(tmp_path, entry, message, reason):
    good = [{"id": str(i), "template": "Holding [something]"} for i in range(3)]
    labels_json, entries_json = sthv2_files(tmp_path, ["Holding something"], good[:2] + [entry] + good[2:])
    with pytest.raises(AnnotationError) as exc:
        read_sthv2(labels_json, entries_json, "/v")
    # json.dumps(indent=4): "[" is line 1 and each 2-key entry takes 4 lines, so the third entry opens on line 10.
    expect_error(exc, "entries.json line 10: ", message)
    lenient = read_sthv2(labels_json, entries_json, "/v", strict=False)
    assert lenient.skipped == {reason: 1}
    assert [r.uri for r in lenient.records] == ["/v/0.webm", "/v/1.webm", "/v/2.webm"]


def test_read_sthv2_file_level_errors(tmp_path):
    labels = write(tmp_path / "labels.json", '{\n  "Holding something": "0",\n  "Dropping something": "0"\n}')
    entries = write(tmp_path / "entries.json", "[]")
    with pytest.raises(AnnotationError) as exc:
        read_sthv2(str(labels), str(entries), "/v")
    expect_error(exc, "labels.json line 3", "index 0", "repeats line 2")

    write(tmp_path / "labels.json", '{"Holding something": "zero"}')
    with pytest.raises(AnnotationError, match="labels.json line 1: index 'zero'"):
        read_sthv2(str(labels), str(entries), "/v")

    write(tmp_path / "labels.json", '{"Holding something": "0"}')
    write(tmp_path / "entries.json", '[\n {"id": "1"},\n {"id": "2",}\n]')
    with pytest.raises(AnnotationError) as exc:  # invalid JSON raises even in lenient mode
        read_sthv2(str(labels), str(entries), "/v", strict=False)
    expect_error(exc, "entries.json line 3", "invalid JSON")
    assert read_sthv2(str(labels), str(write(tmp_path / "e.json", " [ ] \n")), "/v").records == []


# ---------------------------------------------------------------------------------------------------------------
# Something-Something v1 / Jester


def jester_labels(tmp_path: Path) -> Path:
    return write(
        tmp_path / "jester-v1-labels.csv",
        "\n".join(names_from("mmaction2__label_map_jester.txt", 27, "gesture")) + "\n",
    )


def test_read_id_label_jester(tmp_path):
    labels = jester_labels(tmp_path)
    names = load_class_names(str(labels))
    rows = write(tmp_path / "jester-v1-train.csv", f"34870;{names[5]}\n\n9223;{names[0]}\n")
    manifest = read_id_label(str(rows), str(labels), "/data/jester", ext=".mp4")
    assert manifest.records == [VideoRecord("/data/jester/34870.mp4", (5,)), VideoRecord("/data/jester/9223.mp4", (0,))]
    assert manifest.num_classes == 27 and manifest.multi_label is False

    test = write(tmp_path / "jester-v1-test.csv", "1\n2\n")
    assert [(r.uri, r.labels) for r in read_id_label(str(test), str(labels), "/j").records] == [
        ("/j/1.webm", ()),
        ("/j/2.webm", ()),
    ]


def test_read_id_label_with_real_jester_names(tmp_path, shared_annotations):
    labels = shared_annotations / "mmaction2__label_map_jester.txt"
    rows = write(tmp_path / "val.csv", "9223;Drumming Fingers\n42;Doing other things\n")
    # mmaction2's Jester map keeps jester-v1-labels.csv order: "Drumming Fingers" is line 25, so class 24.
    assert [r.labels for r in read_id_label(str(rows), str(labels), "/j").records] == [(24,), (26,)]


@pytest.mark.parametrize(
    ("row", "message", "reason"),
    [
        ("77;Flying Away", "label 'Flying Away' is not in", "unknown class"),
        (";x", "id is empty", "missing id"),
        ("77;a;b", "expected 'id;label', got 3 fields", "wrong field count"),
    ],
)
def test_read_id_label_malformed(tmp_path, row, message, reason):
    labels = write(tmp_path / "labels.txt", "a\nb\n")
    rows = write(tmp_path / "train.csv", f"1;a\n{row}\n2;b\n")
    with pytest.raises(AnnotationError) as exc:
        read_id_label(str(rows), str(labels), "/v")
    expect_error(exc, "train.csv line 2: ", message)
    lenient = read_id_label(str(rows), str(labels), "/v", strict=False)
    assert lenient.skipped == {reason: 1}
    assert [r.labels for r in lenient.records] == [(0,), (1,)]


# ---------------------------------------------------------------------------------------------------------------
# Kinetics


def test_read_kinetics_csv_labelled(tmp_path):
    csv_path = write(
        tmp_path / "train.csv",
        (
            "label,youtube_id,time_start,time_end,split,is_cc\n"
            "zumba,--07WQ2iBlw,1,11,train,0\n"
            '"passing American football (in game)",-0Jg5rX7T6Q,43,53,train,0\n'
            '"tasting, with commas",abc,0,10,train,1\n'
            "abseiling,zzz,5,15,train,0\n"
        ),
    )
    manifest = read_kinetics_csv(str(csv_path), "/k")
    assert manifest.class_names == ["abseiling", "passing American football (in game)", "tasting, with commas", "zumba"]
    assert [(r.uri, r.labels) for r in manifest.records] == [
        ("/k/zumba/--07WQ2iBlw_000001_000011.mp4", (3,)),
        ("/k/passing American football (in game)/-0Jg5rX7T6Q_000043_000053.mp4", (1,)),
        ("/k/tasting, with commas/abc_000000_000010.mp4", (2,)),
        ("/k/abseiling/zzz_000005_000015.mp4", (0,)),
    ]
    assert manifest.multi_label is False


def test_read_kinetics_csv_test_file_and_real_k600_names(tmp_path):
    test = write(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nabc,3,13,test\n")
    manifest = read_kinetics_csv(str(test), "/k", class_names=["a"])
    assert manifest.records == [VideoRecord("/k/abc_000003_000013.mp4", ())]

    k600 = names_from("mmaction2__label_map_k600.txt", 600, "action")
    labelled = write(tmp_path / "val.csv", f"label,youtube_id,time_start,time_end,split\n{k600[-1]},id,0,10,val\n")
    assert read_kinetics_csv(str(labelled), "/k", class_names=k600).records[0].labels == (599,)


def test_read_kinetics_csv_errors(tmp_path):
    no_id = write(tmp_path / "bad_header.csv", "label,time_start,time_end\nx,1,2\n")
    with pytest.raises(AnnotationError) as exc:
        read_kinetics_csv(str(no_id), "/k")
    expect_error(exc, "bad_header.csv line 1", "youtube_id")

    csv_path = write(
        tmp_path / "train.csv",
        (
            "label,youtube_id,time_start,time_end,split\n"
            '"multi\nline label",a,1,11,train\n'  # a quoted field spanning lines 2-3
            "b,b,x,11,train\n"  # line 4
            "c,c,20,10,train\n"
            "d,d,1,11\n"
            "unknown,e,1,11,train\n"
            "b,f,1,11,train\n"
        ),
    )
    with pytest.raises(AnnotationError) as exc:
        read_kinetics_csv(str(csv_path), "/k")
    expect_error(exc, "train.csv line 4: ", "time_start 'x' is not an integer")

    lenient = read_kinetics_csv(str(csv_path), "/k", class_names=["multi\nline label", "b", "c", "d"], strict=False)
    assert lenient.skipped == {"bad time": 2, "wrong field count": 1, "unknown class": 1}
    assert [(Path(r.uri).name, r.labels) for r in lenient.records] == [
        ("a_000001_000011.mp4", (0,)),
        ("f_000001_000011.mp4", (1,)),
    ]
    with pytest.raises(AnnotationError) as exc:
        read_kinetics_csv(str(csv_path), "/k", class_names=["multi\nline label", "b", "c", "d"])
    expect_error(exc, "line 4")


# ---------------------------------------------------------------------------------------------------------------
# UCF101 / HMDB51


def ucf_class_index(tmp_path: Path) -> Path:
    names = names_from("mmaction2__label_map_ucf101.txt", 101, "Class")
    # The official classInd.txt has CRLF line endings.
    return write(tmp_path / "classInd.txt", "".join(f"{i} {name}\r\n" for i, name in enumerate(names, start=1)))


def test_read_ucf101_train_and_test_lists(tmp_path):
    class_ind = ucf_class_index(tmp_path)
    names = names_from("mmaction2__label_map_ucf101.txt", 101, "Class")
    train = write(
        tmp_path / "trainlist01.txt", f"{names[0]}/v_{names[0]}_g08_c01.avi 1\r\n{names[36]}/v_x_g08_c01.avi 37\r\n"
    )
    manifest = read_ucf101_split(str(train), str(class_ind), "/ucf")
    assert manifest.num_classes == 101 and manifest.multi_label is False
    assert manifest.records == [
        VideoRecord(f"/ucf/{names[0]}/v_{names[0]}_g08_c01.avi", (0,)),
        VideoRecord(f"/ucf/{names[36]}/v_x_g08_c01.avi", (36,)),
    ]
    test = write(tmp_path / "testlist01.txt", f"{names[100]}/v_y_g01_c01.avi\r\n")
    assert read_ucf101_split(str(test), str(class_ind), "/ucf").records[0].labels == (100,)


def test_read_ucf101_real_names(tmp_path, shared_annotations):
    class_ind = ucf_class_index(tmp_path)
    # The UCF101 quirk: folder HandstandPushups holds v_HandStandPushups_* files; the folder is what counts.
    train = write(tmp_path / "trainlist01.txt", "HandstandPushups/v_HandStandPushups_g08_c01.avi 37\n")
    record = read_ucf101_split(str(train), str(class_ind), "/ucf").records[0]
    assert record == VideoRecord("/ucf/HandstandPushups/v_HandStandPushups_g08_c01.avi", (36,))


@pytest.mark.parametrize(
    ("row", "message", "reason"),
    [
        ("B/v_b.avi 1", "label 1 (A) does not match folder 'B'", "label mismatch"),
        ("B/v_b.avi 0", "label 0 is out of range [1, 3]", "class id out of range"),
        ("B/v_b.avi two", "label 'two' is not an integer", "bad class id"),
        ("Z/v_z.avi", "folder 'Z' is not a class", "unknown class"),
        ("v_b.avi 2", "folder '' is not a class", "unknown class"),
        ("B/v_b.avi 2 3", "got 3 fields", "wrong field count"),
    ],
)
def test_read_ucf101_malformed(tmp_path, row, message, reason):
    class_ind = write(tmp_path / "classInd.txt", "1 A\n2 B\n3 C\n")
    split = write(tmp_path / "trainlist01.txt", f"A/v_a.avi 1\nC/v_c.avi 3\n{row}\n")
    with pytest.raises(AnnotationError) as exc:
        read_ucf101_split(str(split), str(class_ind), "/u")
    expect_error(exc, "trainlist01.txt line 3: ", message)
    lenient = read_ucf101_split(str(split), str(class_ind), "/u", strict=False)
    assert lenient.skipped == {reason: 1}
    assert [r.labels for r in lenient.records] == [(0,), (2,)]


def test_ucf101_class_index_must_be_contiguous(tmp_path):
    split = write(tmp_path / "testlist01.txt", "A/v.avi\n")
    with pytest.raises(AnnotationError, match=r"classInd.txt line 2: class index 3 \('C'\) leaves a gap"):
        read_ucf101_split(str(split), str(write(tmp_path / "classInd.txt", "1 A\n3 C\n")), "/u")


def make_hmdb_splits(split_dir: Path, names: list[str]) -> None:
    for name in names:
        for k in (1, 2):
            # Flags rotate per split; the real files end each row with a trailing space.
            rows = [f"{name}_v{i}.avi {(i + k) % 3} \n" for i in range(3)]
            write(split_dir / f"{name}_test_split{k}.txt", "".join(rows))


def test_read_hmdb51_split_train_test_and_numbers(tmp_path):
    split_dir = tmp_path / "splits"
    make_hmdb_splits(split_dir, ["wave", "brush_hair", "cartwheel"])
    write(split_dir / "README.txt", "not a split file\n")
    train = read_hmdb51_split(str(split_dir), 1, True, "/h")
    assert train.class_names == ["brush_hair", "cartwheel", "wave"]
    # split 1: flag (i + 1) % 3 -> v0 train, v1 test, v2 unused.
    assert train.records == [
        VideoRecord("/h/brush_hair/brush_hair_v0.avi", (0,)),
        VideoRecord("/h/cartwheel/cartwheel_v0.avi", (1,)),
        VideoRecord("/h/wave/wave_v0.avi", (2,)),
    ]
    test = read_hmdb51_split(str(split_dir), 1, False, "/h")
    assert [Path(r.uri).name for r in test.records] == ["brush_hair_v1.avi", "cartwheel_v1.avi", "wave_v1.avi"]
    # split 2: flag (i + 2) % 3 -> v2 train.
    split2 = read_hmdb51_split(str(split_dir), 2, True, "/h")
    assert [Path(r.uri).name for r in split2.records] == ["brush_hair_v2.avi", "cartwheel_v2.avi", "wave_v2.avi"]
    with pytest.raises(FileNotFoundError, match="_test_split3.txt"):
        read_hmdb51_split(str(split_dir), 3, True, "/h")


def test_read_hmdb51_class_order_matches_real_label_map(tmp_path, shared_annotations):
    names = load_class_names(str(shared_annotations / "mmaction2__label_map_hmdb51.txt"))
    make_hmdb_splits(tmp_path / "splits", list(reversed(names)))
    manifest = read_hmdb51_split(str(tmp_path / "splits"), 1, True, "/h")
    assert manifest.class_names == names and manifest.num_classes == 51
    assert len(manifest.records) == 51


@pytest.mark.parametrize(
    ("row", "message", "reason"),
    [("x.avi 3", "split flag '3'", "bad split flag"), ("x.avi", "got 1 fields", "wrong field count")],
)
def test_read_hmdb51_malformed(tmp_path, row, message, reason):
    write(tmp_path / "s" / "clap_test_split1.txt", "a.avi 1\n")
    write(tmp_path / "s" / "wave_test_split1.txt", f"b.avi 1\n\n{row}\nc.avi 1\nd.avi 2\n")
    with pytest.raises(AnnotationError) as exc:
        read_hmdb51_split(str(tmp_path / "s"), 1, True, "/h")
    expect_error(exc, "wave_test_split1.txt line 3: ", message)
    lenient = read_hmdb51_split(str(tmp_path / "s"), 1, True, "/h", strict=False)
    assert lenient.skipped == {reason: 1}
    assert [r.uri for r in lenient.records] == ["/h/clap/a.avi", "/h/wave/b.avi", "/h/wave/c.avi"]


# ---------------------------------------------------------------------------------------------------------------
# S3 (moto server)


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()  # ThreadedMotoServer has no "port 0 then report" for the URL
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    import boto3
    import s3fs

    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()  # a cached instance could point at another endpoint
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"tin-annotations-{os.getpid()}-{len(client.list_buckets()['Buckets'])}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    s3fs.S3FileSystem.clear_instance_cache()


def upload_tree(client, bucket: str, prefix: str, local_root: Path) -> None:
    for path in sorted(local_root.rglob("*")):
        if path.is_file():
            client.put_object(
                Bucket=bucket, Key=f"{prefix}/{path.relative_to(local_root).as_posix()}", Body=path.read_bytes()
            )


def test_read_mmit_from_s3(s3_bucket, tmp_path):
    client, bucket = s3_bucket
    local = make_mmit_root(tmp_path / "mmit", annotations_dir=True)
    upload_tree(client, bucket, "datasets/mmit", local)
    manifest = read_mmit(f"s3://{bucket}/datasets/mmit/")
    assert [r.uri for r in manifest.records] == [f"s3://{bucket}/datasets/mmit/videos/{p}" for p, _ in MMIT_ROWS]
    assert [r.labels for r in manifest.records] == [labels for _, labels in MMIT_ROWS]
    assert manifest.num_classes == 313

    with pytest.raises(FileNotFoundError) as exc:
        read_mmit(f"s3://{bucket}/datasets/nothing")
    expect_error(
        exc,
        f"s3://{bucket}/datasets/nothing/moments_categories.txt",
        f"s3://{bucket}/datasets/nothing/annotations/moments_categories.txt",
    )

    client.put_object(Bucket=bucket, Key="datasets/mmit/annotations/validationSet.csv", Body=b"a/b.mp4,1\na/c.mp4,x\n")
    with pytest.raises(AnnotationError) as exc:
        read_mmit(f"s3://{bucket}/datasets/mmit", split="validation")
    expect_error(exc, f"s3://{bucket}/datasets/mmit/annotations/validationSet.csv line 2: ", "class id 'x'")


def test_read_hmdb51_from_s3(s3_bucket, tmp_path):
    client, bucket = s3_bucket
    make_hmdb_splits(tmp_path / "splits", ["wave", "clap"])
    upload_tree(client, bucket, "hmdb/splits", tmp_path / "splits")
    manifest = read_hmdb51_split(f"s3://{bucket}/hmdb/splits", 1, True, f"s3://{bucket}/hmdb/videos")
    assert manifest.class_names == ["clap", "wave"]
    assert [r.uri for r in manifest.records] == [
        f"s3://{bucket}/hmdb/videos/clap/clap_v0.avi",
        f"s3://{bucket}/hmdb/videos/wave/wave_v0.avi",
    ]
