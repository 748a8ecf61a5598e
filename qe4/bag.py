"""Pooled lookups (embedding bags) read straight from packed rows."""

import numpy as np

from . import _validate as V
from .rowwise import fma32, unpack_codes

F32 = np.float32


def embedding_bag(table, indices, offsets=None, *, mode="sum", per_sample_weights=None,
                  include_last_offset=False):
    """Sum or mean of table rows per bag, computed from the packed rows.

    Parameters
    ----------
    table : QuantizedTable
    indices : int32/int64 array, 1-D [n_indices] with ``offsets``, or 2-D
        [n_bags, bag_size] for fixed-length bags (then ``offsets`` is None).
    offsets : int32/int64 array [n_bags] (bag m starts at offsets[m] and ends at the
        next offset, the last at ``len(indices)``), or [n_bags + 1] with
        ``include_last_offset=True``.  Must start at 0 and never decrease.
    mode : {"sum", "mean"}
        ``"mean"`` divides by the bag's length (an empty bag stays zero).
    per_sample_weights : float array shaped like ``indices``, optional (``"sum"`` only).

    Returns
    -------
    float32 ndarray [n_bags, dim]

    Raises
    ------
    TypeError, ValueError, IndexError
        Wrong dtypes; malformed offsets or weights; an index outside ``[0, n_rows)``.

    Notes
    -----
    For each bag, in order of its positions p (torch/FBGEMM ``EmbeddingSpMDMNBit``)::

        acc[:] = 0
        for p in bag:  r = indices[p];  w = weights[p] or 1
            s = w * scale[r];  t = w * bias[r]          # float32 roundings
            acc = fma(s, q[r], acc + t)                 # t added first, then one rounding
        mean: acc *= float32(1 / len(bag))

    Codebook tables use the same loop with ``s = w``, ``q[r]`` the row's centroid
    values and ``t = 0`` (see :mod:`qe4.codebook`).  Bags are processed together:
    step k adds the k-th position of every bag that has one.
    """
    V.check_table(table)
    idx, starts, w = V.check_bag_args(indices, offsets, table.n_rows, per_sample_weights,
                                      include_last_offset, mode)
    if table.layout == "mixed":
        return _mixed_bag(table, idx, starts, w, mode)
    lengths = np.diff(starts)
    out = np.zeros((lengths.size, table.dim), F32)
    for k in range(int(lengths.max(initial=0))):
        bags = np.nonzero(lengths > k)[0]
        pos = starts[bags] + k
        s, v, t = bag_terms(table, idx[pos], None if w is None else w[pos])
        out[bags] = fma32(s[:, None], v, out[bags] + t[:, None])
    if mode == "mean":
        full = lengths > 0
        out[full] *= (F32(1.0) / lengths[full].astype(F32))[:, None]
    return out


def bag_terms(table, rows, weights):
    """The (s, v, t) of ``acc = fma(s, v, acc + t)`` for the given rows and weights."""
    if table.layout != "rowwise":
        from .codebook import bag_terms as codebook_terms
        return codebook_terms(table, rows, weights)
    sub = table.data[rows]
    cb = table.code_bytes
    dt = np.dtype(table.scale_dtype).newbyteorder("<")
    n = dt.itemsize
    scale = np.ascontiguousarray(sub[:, cb:cb + n]).view(dt).reshape(-1).astype(F32)
    bias = np.ascontiguousarray(sub[:, cb + n:cb + 2 * n]).view(dt).reshape(-1).astype(F32)
    if weights is not None:
        scale = weights * scale
        bias = weights * bias
    return scale, unpack_codes(sub[:, :cb], table.bits, table.dim), bias


def _mixed_bag(table, idx, starts, w, mode):
    """Mixed-precision tables: one bag per tier, summed in tier order (:mod:`qe4.mixed`)."""
    from . import mixed

    def tier_bag(sub, rows, sub_starts, weights):
        return embedding_bag(sub, rows, sub_starts, include_last_offset=True,
                             per_sample_weights=weights)

    return mixed.embedding_bag_mixed(table, idx, starts, w, mode, tier_bag, mixed.float_bag,
                                     mixed.locate)
