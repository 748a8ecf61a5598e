"""Long kernel calls split into row blocks, so that signals are noticed.

A compiled kernel runs without the GIL and Python runs signal handlers (Ctrl-C's
KeyboardInterrupt, ``qe4 quantize``'s SIGTERM handler) only between bytecodes, so
one call over a whole table would make Ctrl-C wait for all of it.  The wrappers
call the kernel once per block of rows sized to about :data:`WORK_PER_CALL` value
visits per thread (tens of milliseconds), and a signal stops the computation within
one block.  Rows are independent, so the bytes do not depend on the blocks.
"""

WORK_PER_CALL = 1 << 25


def row_blocks(n_rows, cost_per_row, n_threads, multiple=1):
    """``(start, stop)`` blocks covering ``[0, n_rows)`` in order: each about
    ``WORK_PER_CALL * n_threads`` units of ``cost_per_row``, at least ``multiple *
    n_threads`` rows, and a multiple of ``multiple`` rows (the kernels' row group)."""
    rows = max(multiple * n_threads, WORK_PER_CALL * n_threads // max(1, cost_per_row))
    rows = -(-rows // multiple) * multiple
    for start in range(0, n_rows, rows):
        yield start, min(n_rows, start + rows)
