"""``QuantizedTable``: packed rows plus the metadata needed to read them.

Guarantees: a ``QuantizedTable`` is valid for its layout when it exists (its rows
have the size :mod:`qe4.layouts` gives for its bits, dim and float dtype; its extras
are exactly those the layout declares, with their dtypes and shapes), and it stays
so: its fields are read-only, ``data`` and the extras are handed out as fresh views
(reshaping or resizing one does not reach the table), so no kernel ever sees sizes
that disagree.  The bytes themselves may be written in place when the caller's
array is writable (a memory-mapped file's rows are not).
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from collections.abc import Mapping
    from ._typing import Float32Array, StrPath, UInt8Array

from . import _mapped
from . import _validate as V
from . import layouts as L

LAYOUTS = tuple(L.LAYOUTS)
FORMAT_VERSION = 1

_FIELDS = ("_data", "_bits", "_dim", "_method", "_float_dtype", "_layout", "_extras", "_params")


class QuantizedTable:
    """A quantized embedding table.

    Parameters
    ----------
    data : uint8 ndarray [n_rows, row_bytes]
        The packed rows (kept without a copy; the table holds its own view).  For
        ``layout="rowwise"`` each row is ``[codes][scale][bias]``: ``ceil(dim * bits / 8)``
        bytes of codes packed low bits first (see :func:`qe4.layouts.pack_codes`), then
        the scale and bias, little-endian, in ``scale_dtype``.  At 2/4 bits with float16
        this is torch's ``embedding_bag_{4,2}bit_prepack`` layout, at 8 bits with float32
        torch's ``embedding_bag_byte_prepack`` layout.  Other layouts: :mod:`qe4.layouts`.
    bits : int
    dim : int
        Number of columns (needed for odd dims, where the last nibble is padding).
    method : str
        How the table was made (informational: ``"minmax"``, ``"greedy"``, ...,
        ``"fused"`` for bytes imported from elsewhere).
    scale_dtype : {"float16", "float32"}
        The dtype of the floats stored with the codes: the per-row scale and bias
        (rowwise) or the centroids (codebook, two-tier).  Also :attr:`float_dtype`.
    layout : {"rowwise", "codebook", "two-tier"}
        A layout of :data:`qe4.layouts.LAYOUTS`.
    extras : dict of str -> ndarray, optional
        The arrays the layout stores beside ``data`` (two-tier: ``"codebooks"``);
        none for the other layouts.
    params : dict, optional
        JSON-serialisable parameters of the method (n_bins, ratio, ...), kept in files.

    Raises
    ------
    TypeError, ValueError
        A field has the wrong type or value, or the rows and extras do not make a
        valid table of ``layout`` (wrong row size, missing/unknown/misshapen extras,
        a bit width the layout does not store).
    """

    __slots__ = _FIELDS

    def __init__(self, data: ArrayLike, *, bits: int, dim: int, method: str = "fused",
                 scale_dtype: str = "float16", layout: str = "rowwise",
                 extras: Mapping[str, ArrayLike] | None = None,
                 params: Mapping[str, Any] | None = None) -> None:
        data = V.check_uint8_table(data, "data")
        bits = V.check_bits(bits)
        lay = L.get(layout)
        if scale_dtype not in L.FLOAT_DTYPES:
            raise ValueError(f"scale_dtype must be one of {L.FLOAT_DTYPES}, got {scale_dtype!r}")
        dim = L.check_dim(dim)
        extras = {str(k): _frozen_view(np.asarray(v)) for k, v in dict(extras or {}).items()}
        params = dict(params or {})
        lay.validate(data.shape[0], data.shape[1], bits, dim, scale_dtype, extras, params)
        init = object.__setattr__
        init(self, "_data", _frozen_view(data))
        init(self, "_bits", bits)
        init(self, "_dim", dim)
        init(self, "_method", str(method))
        init(self, "_float_dtype", scale_dtype)
        init(self, "_layout", lay.name)
        init(self, "_extras", extras)
        init(self, "_params", params)

    def __setattr__(self, name, value):
        raise AttributeError(f"QuantizedTable is read-only (cannot set {name!r}); build a new table")

    __delattr__ = __setattr__

    def __reduce__(self):       # pickling (Dask, multiprocessing) rebuilds and re-validates
        return (_rebuild, (np.asarray(self._data), self._bits, self._dim, self._method,
                           self._float_dtype, self._layout, dict(self._extras), self._params))

    # ----------------------------------------------------------------- fields
    @property
    def data(self) -> UInt8Array:
        """The packed rows, uint8 [n_rows, row_bytes] (a new view of the table's array)."""
        return self._data.view()

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def method(self) -> str:
        return self._method

    @property
    def layout(self) -> str:
        return self._layout

    @property
    def float_dtype(self) -> str:
        """dtype name of the floats stored with the codes: scale/bias (rowwise) or centroids."""
        return self._float_dtype

    @property
    def scale_dtype(self) -> str:
        """The old name of :attr:`float_dtype` (scale/bias or centroid dtype)."""
        return self._float_dtype

    @property
    def extras(self) -> Mapping[str, NDArray[Any]]:
        """Read-only mapping name -> array (new views) of the layout's extra arrays."""
        return types.MappingProxyType({k: v.view() for k, v in self._extras.items()})

    @property
    def params(self) -> dict[str, Any]:
        """The method's parameters (a copy: editing it does not change the table)."""
        return dict(self._params)

    @property
    def layout_entry(self) -> L.Layout:
        """The :class:`qe4.layouts.Layout` of this table."""
        return L.LAYOUTS[self._layout]

    def fields(self) -> tuple[L.Field, ...]:
        """The row's fields (:class:`qe4.layouts.Field`: name, offset, dtype, count)."""
        return self.layout_entry.row_fields(self._dim, self._bits, self._float_dtype, self._extras,
                                            self._params)

    # ----------------------------------------------------------------- sizes
    @property
    def n_rows(self) -> int:
        return self._data.shape[0]

    @property
    def row_bytes(self) -> int:
        return self._data.shape[1]

    @property
    def code_bytes(self) -> int:
        """Bytes of packed codes per row: ceil(dim * bits / 8)."""
        return self.layout_entry.code_bytes(self._dim, self._bits)

    @property
    def qparam_itemsize(self) -> int:
        """Bytes of one stored float (scale, bias or centroid)."""
        return np.dtype(self._float_dtype).itemsize

    @property
    def nbytes(self) -> int:
        """Total stored bytes: the rows plus every layout-specific array."""
        return int(self._data.nbytes + sum(a.nbytes for a in self._extras.values()))

    @property
    def bits_per_element(self) -> float:
        """Every stored bit per table element: ``nbytes * 8 / (n_rows * dim)``.

        The honest rate of the table: codes, scales and biases, centroids, shared
        codebooks, a mixed table's row map and tier tables all count (what a file holds
        beyond the table, its header, does not).  NaN for a table of no rows.
        """
        n = self.n_rows * self._dim
        return self.nbytes * 8 / n if n else float("nan")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self._dim)

    def __len__(self):
        return self.n_rows

    def __repr__(self):
        return (f"QuantizedTable(n_rows={self.n_rows}, dim={self.dim}, bits={self.bits}, "
                f"method={self.method!r}, layout={self.layout!r}, scale_dtype={self.scale_dtype!r}, "
                f"nbytes={self.nbytes}, bits_per_element={self.bits_per_element:.4g})")

    # ----------------------------------------------------------------- row fields
    def field(self, name: str, rows: slice | ArrayLike = slice(None)) -> NDArray[Any]:
        """Field ``name`` of ``rows`` as native values [n, count] (see :meth:`fields`)."""
        for f in self.fields():
            if f.name == name:
                return f.read(self._data, rows)
        raise ValueError(f"a {self._layout} row has no field {name!r} "
                         f"(it has {[f.name for f in self.fields()]})")

    def _qparam(self, name):
        self._require_rowwise("scales/biases")
        return self.field(name).reshape(-1).astype(np.float32)

    @property
    def scales(self) -> Float32Array:
        """Per-row scale as float32 [n_rows] (exactly the stored value, widened)."""
        return self._qparam("scale")

    @property
    def biases(self) -> Float32Array:
        """Per-row bias as float32 [n_rows] (exactly the stored value, widened)."""
        return self._qparam("bias")

    def codes(self) -> UInt8Array:
        """Unpacked codes, uint8 [n_rows, dim]."""
        return self.layout_entry.unpack_codes(self._data[:, :self.code_bytes], self._bits, self._dim)

    def _require_rowwise(self, what):
        if self._layout != "rowwise":
            raise ValueError(f"{what} exist only for rowwise tables, this one is {self._layout!r}")

    # ----------------------------------------------------------------- conversions
    def dequantize(self) -> Float32Array:
        """float32 [n_rows, dim]; see :func:`qe4.dequantize`."""
        from .api import dequantize
        return dequantize(self)

    def to_tbe(self, row_alignment: int = 1) -> UInt8Array:
        """Rows in the TBE inference layout (scale/bias first); see :func:`qe4.to_tbe`."""
        from .api import to_tbe
        return to_tbe(self, row_alignment)

    @classmethod
    def from_tbe(cls, data: ArrayLike, bits: int, dim: int | None = None, *,
                 scale_dtype: str = "float16", row_alignment: int = 1) -> QuantizedTable:
        from .api import from_tbe
        return from_tbe(data, bits, dim, scale_dtype=scale_dtype, row_alignment=row_alignment)

    @classmethod
    def from_fused(cls, data: ArrayLike, bits: int, dim: int | None = None, *,
                   scale_dtype: str | None = None) -> QuantizedTable:
        """Wrap existing scale/bias-last rows, e.g. torch's prepack output.

        ``data`` may be a uint8 ndarray or anything ``np.asarray`` takes (a CPU
        torch tensor included).  ``dim`` defaults to every code slot of the row,
        ``(row_bytes - 2 * itemsize) * 8 // bits``, which is what torch infers; pass
        it for odd dims.  The bytes are copied (the table owns its memory).
        """
        bits = V.check_rowwise_bits(bits)
        scale_dtype = V.check_scale_dtype(scale_dtype, bits)
        data = V.check_uint8_table(np.asarray(data), "data")
        slots = (data.shape[1] - L.LAYOUTS["rowwise"].qparam_bytes(scale_dtype)) * 8 // bits
        if dim is None:
            if slots < 1:
                raise ValueError(f"data rows of {data.shape[1]} bytes are too short for {bits}-bit rows")
            dim = slots
        else:
            dim = L.check_dim(dim)
            if L.code_bytes(dim, bits) != data.shape[1] - L.LAYOUTS["rowwise"].qparam_bytes(scale_dtype):
                raise ValueError(f"dim={dim} does not fit rows of {data.shape[1]} bytes at {bits} bits")
        return cls(np.array(data, dtype=np.uint8, order="C"), bits=bits, dim=dim,
                   method="fused", scale_dtype=scale_dtype)

    # ----------------------------------------------------------------- files
    def save(self, path: StrPath) -> None:
        """Write the table to ``path`` (safetensors, atomic); see :func:`qe4.save`."""
        from .io import save
        save(self, path)

    @classmethod
    def load(cls, path: StrPath, *, mmap: bool = True) -> QuantizedTable:
        """Read a table written by :meth:`save`; see :func:`qe4.load`."""
        from .io import load
        return load(path, mmap=mmap)

    def __eq__(self, other):
        if not isinstance(other, QuantizedTable):
            return NotImplemented
        a, b = self._extras, other._extras
        return (self.bits == other.bits and self.dim == other.dim and self.layout == other.layout
                and self.scale_dtype == other.scale_dtype and self._data.shape == other._data.shape
                and np.array_equal(self._data, other._data)
                and a.keys() == b.keys()
                and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                        and np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)) for k in a))

    __hash__ = None


def _frozen_view(arr):
    """A view of ``arr`` the caller holds no reference to (its shape cannot be changed
    from outside); the bytes stay shared and keep their writability."""
    return arr.view()


def _rebuild(data, bits, dim, method, scale_dtype, layout, extras, params):
    return QuantizedTable(data, bits=bits, dim=dim, method=method, scale_dtype=scale_dtype,
                          layout=layout, extras=extras, params=params)


def check_table(table: object) -> QuantizedTable:
    """``table`` must be a :class:`QuantizedTable` (TypeError otherwise).

    A table cannot be edited after it is built, so its sizes are those it was
    validated with; a memory-mapped table's file must still have its size
    (:mod:`qe4._mapped`: ValueError, not SIGBUS).
    """
    if not isinstance(table, QuantizedTable):
        raise TypeError(f"table must be a QuantizedTable, got {type(table).__name__}")
    _mapped.check_arrays((table.data, *table.extras.values()))
    return table
