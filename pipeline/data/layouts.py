"""Where each dataset format keeps its annotations and videos under one `--data ROOT`, and the reader for each:

    mmit      ROOT/{trainingSet,validationSet}.csv, moments_categories.txt, videos/   (or a frame-shard dataset)
    kinetics  ROOT/{train,validate}.csv (the CVDF annotation files), videos/<label>/<youtube_id>_<start>_<end>.mp4
    sthv2     ROOT/labels/{labels,train,validation}.json, videos/<id>.webm
    sthv1     ROOT/something-something-v1-{train,validation,labels}.csv, videos/<id>.webm
    jester    ROOT/jester-v1-{train,validation,labels}.csv, videos/<id>.webm
    ucf101    ROOT/ucfTrainTestlist/{trainlist01,testlist01,classInd}.txt, videos/<Class>/<video>.avi
    hmdb51    ROOT/testTrainMulti_7030_splits/<class>_test_split1.txt, videos/<class>/<video>.avi
    list      ROOT/{train,val}.txt (TSN or mmaction2 list files), classes.txt (one name per line), videos/

Split 1 of UCF101 and HMDB51. Something-Something and Jester classes depend on the direction of motion, so
training never flips their clips horizontally.
"""

from __future__ import annotations

from pipeline.data import annotations as readers
from pipeline.data import storage
from pipeline.data.shards import read_split

FORMATS = ("mmit", "kinetics", "sthv1", "sthv2", "jester", "ucf101", "hmdb51", "list")
DIRECTION_SENSITIVE = ("sthv1", "sthv2", "jester")
SPLITS = ("training", "validation")


def read_dataset(root: str, fmt: str, split: str, class_names: list[str] | None = None) -> readers.Manifest:
    """The manifest of one split of a dataset in `fmt`'s layout under `root`; `class_names` (the training split's)
    keeps the validation split's ids the same where a format derives its classes from the rows (Kinetics)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    train = split == "training"
    at = lambda *parts: storage.join(root, *parts)  # noqa: E731
    videos = at("videos")
    if fmt == "mmit":
        return read_split(root, split)
    if fmt == "kinetics":
        return readers.read_kinetics_csv(at("train.csv" if train else "validate.csv"), videos, class_names)
    if fmt == "sthv2":
        entries = at("labels", "train.json" if train else "validation.json")
        return readers.read_sthv2(at("labels", "labels.json"), entries, videos)
    if fmt in ("sthv1", "jester"):
        prefix = "something-something-v1" if fmt == "sthv1" else "jester-v1"
        part = "train" if train else "validation"
        return readers.read_id_label(at(f"{prefix}-{part}.csv"), at(f"{prefix}-labels.csv"), videos)
    if fmt == "ucf101":
        lists = at("ucfTrainTestlist")
        return readers.read_ucf101_split(storage.join(lists, "trainlist01.txt" if train else "testlist01.txt"),
                                 storage.join(lists, "classInd.txt"), videos)  # fmt: skip
    if fmt == "hmdb51":
        return readers.read_hmdb51_split(at("testTrainMulti_7030_splits"), 1, train, videos)
    names = readers.load_class_names(at("classes.txt"))
    return readers.read_list_file(at("train.txt" if train else "val.txt"), videos, names)
