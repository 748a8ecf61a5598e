"""Choosing the implementation that does the work: the one place for it.

``"reference"`` is this package, :mod:`qe4` (the NumPy specification); ``"fast"``
is the compiled twin ``qe4_fast`` (same functions, plus ``n_threads``, same bytes).
There is no silent fallback: asking for ``"fast"`` when it is not built raises an
ImportError that says how to build it or to pass ``engine="reference"``.
"""

ENGINES = ("fast", "reference")


def get_engine(engine):
    """The module (``qe4`` or ``qe4_fast``) whose ``quantize``, ``dequantize``,
    ``embedding_bag``, ... do the work for ``engine``."""
    if engine == "reference":
        import qe4
        return qe4
    if engine != "fast":
        raise ValueError(f"engine must be 'fast' or 'reference', got {engine!r}")
    try:
        import qe4_fast
        qe4_fast.quantize        # noqa: B018 -- a half-built package must fail here too
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            f"engine='fast' needs the compiled qe4_fast package, which is not available ({exc}). "
            "Build it with `python setup.py build_ext --inplace` in the source tree (or "
            "`pip install .`), or pass engine='reference' (CLI: --engine reference) to use "
            "the NumPy reference, which is much slower") from None
    return qe4_fast
