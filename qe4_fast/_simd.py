"""The SIMD level of every qe4_fast kernel, chosen once per process at import.

Every kernel family (row-wise quantization, bags, codebooks) runs at one level: by default
the widest this CPU runs, or the level named by the environment variable ``QE4_SIMD``
(``portable``, ``avx2`` or ``avx512``), read once when qe4_fast is imported.  A value that
is not a level, or a level this CPU cannot run, makes the import fail with a ValueError
naming the variable and the value (never a silent choice of another level).  The bytes are
the same at every level; forcing a lower one is for testing and for comparing speed.

Levels (``_common.h`` defines them for the kernels):

=========  ===============================================================
portable   plain C (on x86-64, the SSE2 baseline every such CPU has)
avx2       AVX2, FMA and F16C
avx512     AVX-512 F, BW, CD, DQ and VL, plus the avx2 level's features
=========  ===============================================================

The wrappers pass ``LEVEL`` (a code, an index into ``SIMD_LEVELS``) to every kernel call,
reading it at call time; each kernel checks it (an unknown level, or one the CPU does not
run, is a ValueError) and picks its code for the level once per call.
"""

from __future__ import annotations

import os

from ._rowwise import SIMD_LEVELS, cpu_simd_level

ENV = "QE4_SIMD"


def choose_level(value, cpu_level):
    """The level code for ``QE4_SIMD=value``.

    Parameters
    ----------
    value : str or None
        The variable's value; None or "" (unset) chooses the widest level the CPU runs.
    cpu_level : int
        The code of the widest level the CPU runs (``_rowwise.cpu_simd_level()``).

    Returns
    -------
    int
        An index into ``SIMD_LEVELS``.

    Raises
    ------
    ValueError
        ``value`` names no level, or a level wider than ``cpu_level``.
    """
    if value is None or value == "":
        return cpu_level
    if value not in SIMD_LEVELS:
        raise ValueError(f"environment variable {ENV}={value!r} is not a SIMD level: expected "
                         f"one of {', '.join(SIMD_LEVELS)} (or unset: the widest this CPU "
                         f"runs, {SIMD_LEVELS[cpu_level]})")
    level = SIMD_LEVELS.index(value)
    if level > cpu_level:
        raise ValueError(f"environment variable {ENV}={value!r}: this CPU does not run the "
                         f"{value} kernels (the widest level it runs is "
                         f"{SIMD_LEVELS[cpu_level]})")
    return level


LEVEL = choose_level(os.environ.get(ENV), cpu_simd_level())


def simd_level() -> str:
    """The SIMD level qe4_fast's kernels run at.

    Returns
    -------
    str
        ``"portable"``, ``"avx2"`` or ``"avx512"``: the widest level this CPU runs, or the
        one forced by the environment variable ``QE4_SIMD`` when qe4_fast was imported.
        Results are byte-identical at every level.

    Examples
    --------
    >>> import qe4_fast
    >>> qe4_fast.simd_level() in ("portable", "avx2", "avx512")
    True
    """
    return SIMD_LEVELS[LEVEL]


def levels_up_to_chosen():
    """The level codes from portable up to the chosen one (tests run each of them)."""
    return list(range(LEVEL + 1))
