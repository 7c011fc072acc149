"""Run records: run directories, atomic file writes and explicit random generators.

Every command that computes something writes a run directory holding what is needed to understand
and repeat it: the resolved config, the command line, the package version and git SHA, the seed and,
where there are metrics, ``metrics.json``.

* ``atomic_io.py``: writes through a temporary file and ``os.replace`` (JSON, text, ``torch.save``), and
  ``torch.load(weights_only=True)`` that names the file and the problem;
* ``rundir.py``: :class:`RunDir` (``config.yaml``, ``command.txt``, ``meta.json``) and the git SHA;
* ``fitted.py``: :class:`FitRun`, a fitted detector's run (written by ``fit``; opened by ``test``, ``predict``,
  ``serve`` and ``export``) and its typed config, :class:`FitConfig`;
* ``seeding.py``: seeded generators (one helper, :func:`make_generator`), derived seeds, and :func:`seeded`
  for the layer initialisers that draw from torch's global generator.
"""

from msacl.runs.atomic_io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    read_torch_file,
    write_json,
)
from msacl.runs.rundir import RunDir, git_sha
from msacl.runs.seeding import as_generator, child_generator, child_seed, derive_seed, make_generator, seeded

__all__ = [
    "RunDir",
    "as_generator",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "child_generator",
    "child_seed",
    "derive_seed",
    "git_sha",
    "make_generator",
    "read_torch_file",
    "seeded",
    "write_json",
]
