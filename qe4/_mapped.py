"""Memory-mapped files that may shrink: an exception instead of SIGBUS.

Reading a page of a mapping that lies past the current end of its file kills the
process with SIGBUS (POSIX), so a file truncated or rewritten in place after
:func:`qe4.load` mapped it would crash the next lookup.  :func:`qe4.io.load`
registers each mapping it makes here, with a file descriptor of the mapped file
and the size the mapping needs; :func:`check_arrays`, called before every kernel
reads a table (``qe4._validate.check_table``), compares the file's current size
(one ``fstat``, about a microsecond) with that and raises ValueError if it shrank.

What remains: a file truncated *while* a kernel runs (after the check) can still
raise SIGBUS; only ``qe4.load(path, mmap=False)``, which reads the file into
memory, rules that out.  This module is at the bottom of the package: it imports
nothing from qe4.
"""

import os
import weakref

import numpy as np

_FILES = weakref.WeakKeyDictionary()      # mmap object -> _File


class _File:
    __slots__ = ("fd", "path", "size", "__weakref__")

    def __init__(self, fd, path, size):
        self.fd, self.path, self.size = fd, path, size


def register(mapping, fd, path, size):
    """Watch ``mapping`` (an ``mmap.mmap``) of the open file ``fd`` (owned from now on:
    closed when the mapping is freed), which must keep at least ``size`` bytes."""
    _FILES[mapping] = _File(fd, path, size)
    weakref.finalize(mapping, os.close, fd)


def _mapping_of(arr):
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return base


def check_arrays(arrays):
    """Raise ValueError if one of ``arrays`` is a view of a registered mapping whose
    file is now shorter than the mapping needs (reading it would raise SIGBUS)."""
    for arr in arrays:
        base = _mapping_of(arr)
        if base is None:
            continue
        try:
            f = _FILES.get(base)
        except TypeError:       # not weak-referenceable: not one of ours
            continue
        if f is None:
            continue
        size = os.fstat(f.fd).st_size
        if size < f.size:
            raise ValueError(
                f"{f.path}: the memory-mapped file now has {size} bytes but this table needs "
                f"{f.size} (it was truncated or rewritten in place after qe4.load); reading it "
                "would crash the process: load it again, or load with mmap=False to keep a copy "
                "in memory")
