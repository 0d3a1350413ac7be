"""Annotation readers for the action-recognition datasets TIN trains on, all producing one `Manifest`: full video
URIs with 0-based class ids, and the class list. Files are read through `pipeline.data.storage` (local or s3://).
"""

from pipeline.data.annotations.formats import (
    read_hmdb51_split,
    read_id_label,
    read_kinetics_csv,
    read_list_file,
    read_sthv2,
    read_ucf101_split,
)
from pipeline.data.annotations.mmit import read_mmit
from pipeline.data.annotations.rows import AnnotationError, Manifest, VideoRecord, load_class_names

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
