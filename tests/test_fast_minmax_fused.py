"""qe4_fast's fused minmax pass flags a non-finite value wherever it sits in a row.

The pass reads each row 16 floats at a time with an overlapping last load and works on
blocks of 16 rows, so a NaN or inf is put at every column of widths that end in the
vector body or in a tail, in a row of a partial last block; qe4_fast must raise the
reference's exact error.
"""

import numpy as np
import pytest

import qe4
import qe4_fast

WIDTHS = (15, 16, 17, 31, 33, 47, 64, 65)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("n_cols", WIDTHS)
def test_non_finite_at_every_column_is_flagged(value, n_cols):
    rng = np.random.default_rng(n_cols)
    for col in range(n_cols):
        x = rng.standard_normal((20, n_cols)).astype(np.float32)
        x[17, col] = value                       # rows 16..19: a partial block of 4
        for bits in (4, 8):
            with pytest.raises(ValueError) as ref_err:
                qe4.quantize(x, bits, "minmax")
            with pytest.raises(ValueError) as fast_err:
                qe4_fast.quantize(x, bits, "minmax", n_threads=2)
            assert str(fast_err.value) == str(ref_err.value)
            assert f"x[17, {col}]" in str(fast_err.value)
