"""Compiled row updates: :func:`qe4.update_rows` and :func:`qe4.update_file` with
``qe4_fast.quantize`` doing the quantization (same validation, same bytes)."""

from qe4 import update as U

from ._threads import shares_cores


def _engine(n_threads):
    def quantize(x, bits, method, scale_dtype, options):
        from . import quantize
        return quantize(x, bits, method, scale_dtype=scale_dtype, n_threads=n_threads, **options)
    return quantize


@shares_cores
def update_rows(table, start, x, *, method=None, n_threads=None, **options):
    """Re-quantize rows of ``table`` in place; see :func:`qe4.update_rows`.

    ``n_threads``: None = all usable cores (the new rows are quantized in parallel).
    """
    U._write_rows(table, start, x, method, options, _engine(n_threads))


@shares_cores
def update_file(path, start, x, *, method=None, in_place=False, n_threads=None, **options):
    """Re-quantize rows of the qe4 file at ``path``; see :func:`qe4.update_file`."""
    U._update_file(path, start, x, method, in_place, options, _engine(n_threads))
