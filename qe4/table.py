"""``QuantizedTable``: packed rows plus the metadata needed to read them."""

import numpy as np

from . import _validate as V

LAYOUTS = ("rowwise", "codebook", "two-tier", "mixed")
FORMAT_VERSION = 1


class QuantizedTable:
    """A quantized embedding table.

    Parameters
    ----------
    data : uint8 ndarray [n_rows, row_bytes]
        The packed rows.  For ``layout="rowwise"`` each row is
        ``[codes][scale][bias]``: ``ceil(dim * bits / 8)`` bytes of codes packed
        low bits first (see :func:`qe4.rowwise.pack_codes`), then the scale and
        bias, little-endian, in ``scale_dtype``.  At 2/4 bits with float16 this
        is torch's ``embedding_bag_{4,2}bit_prepack`` layout, at 8 bits with
        float32 torch's ``embedding_bag_byte_prepack`` layout.
    bits : int
    dim : int
        Number of columns (needed for odd dims, where the last nibble is padding).
    method : str
        How the table was made (informational: ``"minmax"``, ``"greedy"``, ...,
        ``"fused"`` for bytes imported from elsewhere).
    scale_dtype : {"float16", "float32"}
        dtype of the stored per-row scale and bias (rowwise) or of the centroids.
    layout : {"rowwise", "codebook", "two-tier"}
    extras : dict of str -> ndarray, optional
        Layout-specific arrays stored beside ``data`` (e.g. shared codebooks).
    params : dict, optional
        JSON-serialisable parameters of the method (n_bins, ratio, ...), kept in files.
    """

    def __init__(self, data, *, bits, dim, method="fused", scale_dtype="float16",
                 layout="rowwise", extras=None, params=None):
        data = V.check_uint8_table(data, "data")
        self.bits = V.check_bits(bits)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if scale_dtype not in V.SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {V.SCALE_DTYPES}, got {scale_dtype!r}")
        dim = int(dim)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.layout = layout
        self.scale_dtype = scale_dtype
        self.dim = dim
        self.method = str(method)
        self.extras = dict(extras or {})
        self.params = dict(params or {})
        if layout == "rowwise":
            expected = self.code_bytes + 2 * self.qparam_itemsize
            if data.shape[1] != expected:
                raise ValueError(
                    f"data has {data.shape[1]} bytes per row; a rowwise {self.bits}-bit table of "
                    f"dim {dim} with {scale_dtype} scale/bias needs {expected}")
        if layout == "mixed":
            from .mixed import check_mixed
            check_mixed(data.shape[0], data.shape[1], dim, self.extras)
        self.data = data

    # ----------------------------------------------------------------- sizes
    @property
    def n_rows(self):
        return self.data.shape[0]

    @property
    def row_bytes(self):
        return self.data.shape[1]

    @property
    def code_bytes(self):
        """Bytes of packed codes per row: ceil(dim * bits / 8)."""
        return -(-self.dim * self.bits // 8)

    @property
    def qparam_itemsize(self):
        return np.dtype(self.scale_dtype).itemsize

    @property
    def nbytes(self):
        """Total stored bytes: the rows plus every layout-specific array."""
        return int(self.data.nbytes + sum(a.nbytes for a in self.extras.values()))

    @property
    def shape(self):
        return (self.n_rows, self.dim)

    def __len__(self):
        return self.n_rows

    def __repr__(self):
        return (f"QuantizedTable(n_rows={self.n_rows}, dim={self.dim}, bits={self.bits}, "
                f"method={self.method!r}, layout={self.layout!r}, scale_dtype={self.scale_dtype!r}, "
                f"nbytes={self.nbytes})")

    # ----------------------------------------------------------------- fields
    def _qparam(self, k):
        self._require_rowwise("scales/biases")
        n = self.qparam_itemsize
        start = self.code_bytes + k * n
        raw = np.ascontiguousarray(self.data[:, start:start + n])
        return raw.view(np.dtype(self.scale_dtype).newbyteorder("<")).reshape(-1).astype(np.float32)

    @property
    def scales(self):
        """Per-row scale as float32 [n_rows] (exactly the stored value, widened)."""
        return self._qparam(0)

    @property
    def biases(self):
        """Per-row bias as float32 [n_rows] (exactly the stored value, widened)."""
        return self._qparam(1)

    def codes(self):
        """Unpacked codes, uint8 [n_rows, dim]."""
        from .rowwise import unpack_codes
        return unpack_codes(self.data[:, :self.code_bytes], self.bits, self.dim)

    def _require_rowwise(self, what):
        if self.layout != "rowwise":
            raise ValueError(f"{what} exist only for rowwise tables, this one is {self.layout!r}")

    # ----------------------------------------------------------------- conversions
    def dequantize(self):
        """float32 [n_rows, dim]; see :func:`qe4.dequantize`."""
        from .uniform import dequantize
        return dequantize(self)

    def to_tbe(self, row_alignment=1):
        """Rows in the TBE inference layout (scale/bias first); see :func:`qe4.to_tbe`."""
        from .uniform import to_tbe
        return to_tbe(self, row_alignment)

    @classmethod
    def from_tbe(cls, data, bits, dim=None, *, scale_dtype="float16", row_alignment=1):
        from .uniform import from_tbe
        return from_tbe(data, bits, dim, scale_dtype=scale_dtype, row_alignment=row_alignment)

    @classmethod
    def from_fused(cls, data, bits, dim=None, *, scale_dtype=None):
        """Wrap existing scale/bias-last rows, e.g. torch's prepack output.

        ``data`` may be a uint8 ndarray or anything ``np.asarray`` takes (a CPU
        torch tensor included).  ``dim`` defaults to every code slot of the row,
        ``(row_bytes - 2 * itemsize) * 8 // bits``, which is what torch infers; pass
        it for odd dims.  The bytes are copied (the table owns its memory).
        """
        bits = V.check_bits(bits)
        scale_dtype = V.check_scale_dtype(scale_dtype, bits)
        data = V.check_uint8_table(np.asarray(data), "data")
        itemsize = np.dtype(scale_dtype).itemsize
        slots = (data.shape[1] - 2 * itemsize) * 8 // bits
        if dim is None:
            if slots < 1:
                raise ValueError(f"data rows of {data.shape[1]} bytes are too short for {bits}-bit rows")
            dim = slots
        elif not (slots - 8 // bits < int(dim) <= slots):
            raise ValueError(f"dim={dim} does not fit rows of {data.shape[1]} bytes at {bits} bits")
        return cls(np.array(data, dtype=np.uint8, order="C"), bits=bits, dim=int(dim),
                   method="fused", scale_dtype=scale_dtype)

    # ----------------------------------------------------------------- files
    def save(self, path):
        """Write the table to ``path`` (safetensors, atomic); see :func:`qe4.save`."""
        from .io import save
        save(self, path)

    @classmethod
    def load(cls, path, *, mmap=True):
        """Read a table written by :meth:`save`; see :func:`qe4.load`."""
        from .io import load
        return load(path, mmap=mmap)

    def __eq__(self, other):
        if not isinstance(other, QuantizedTable):
            return NotImplemented
        return (self.bits == other.bits and self.dim == other.dim and self.layout == other.layout
                and self.scale_dtype == other.scale_dtype and self.data.shape == other.data.shape
                and np.array_equal(self.data, other.data)
                and self.extras.keys() == other.extras.keys()
                and all(self.extras[k].dtype == other.extras[k].dtype
                        and self.extras[k].shape == other.extras[k].shape
                        and np.array_equal(self.extras[k].view(np.uint8), other.extras[k].view(np.uint8))
                        for k in self.extras))

    __hash__ = None
