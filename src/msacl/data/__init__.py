"""Data: folders of medical images -> decoded, resized tensors (:class:`ImageSet`), with every problem named.

    from msacl.data import load_split, check_folder
    train = load_split("data/kvasir", "train", image_size=256)        # labels 0
    test = load_split("data/kvasir", "test", image_size=256)          # normal (0) then abnormal (1), masks
    print(check_folder("data/kvasir").format())                        # what `msacl check-data` prints
"""

from msacl.data.check import DataReport, SplitReport, check_folder
from msacl.data.layouts import LAYOUTS, SPLITS, Layout, get_layout
from msacl.data.loader import load_split, write_skipped
from msacl.data.problems import DataWarning, Problem
from msacl.data.readers import read_image
from msacl.data.synthetic import write_synthetic
from msacl.data.types import ImageSet

__all__ = [
    "LAYOUTS",
    "SPLITS",
    "DataReport",
    "DataWarning",
    "ImageSet",
    "Layout",
    "Problem",
    "SplitReport",
    "check_folder",
    "get_layout",
    "load_split",
    "read_image",
    "write_skipped",
    "write_synthetic",
]
