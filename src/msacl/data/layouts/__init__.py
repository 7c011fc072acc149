"""Named layouts: how a data set's own folder tree maps to the train / val / test splits.

``folder`` is the layout of every set in the shared data folder (train/normal, test/normal, test/abnormal,
optional test/masks and val/). The others read the papers' data sets as distributed; where a data set has no
official split, the split is drawn from a seeded permutation whose sizes default to the papers' numbers.
A layout is named by a string with optional parameters, e.g. ``"hyper-kvasir:n_train=1000,seed=1"``.

One file per layout (``folder.py`` holds ``folder`` and ``liu``), their base class in ``base.py`` and the
table of names with :func:`get_layout` in ``registry.py``.

>>> get_layout("hyper-kvasir:n_train=1000").n_train
1000
"""

from msacl.data.layouts.base import SPLITS, Layout
from msacl.data.layouts.covidx import CovidxLayout
from msacl.data.layouts.folder import FolderLayout, LiuLayout
from msacl.data.layouts.hyper_kvasir import HyperKvasirLayout
from msacl.data.layouts.lag import LagLayout
from msacl.data.layouts.registry import LAYOUTS, get_layout

__all__ = [
    "LAYOUTS",
    "SPLITS",
    "CovidxLayout",
    "FolderLayout",
    "HyperKvasirLayout",
    "LagLayout",
    "Layout",
    "LiuLayout",
    "get_layout",
]
