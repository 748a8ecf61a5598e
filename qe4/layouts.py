"""The layout registry: how each kind of quantized table lays out its bytes.

A *layout* is the storage format of a :class:`qe4.QuantizedTable`: which bit widths
it allows, how many bytes one row takes for a given ``dim``, where each field sits
in a row, how the b-bit codes are packed, which arrays it stores beside the rows
(``extras``, with their dtype, shape and value rules), and what makes a table of
that layout well-formed.  Every row size in qe4 and qe4_fast is computed here
(:meth:`Layout.row_bytes`) or checked against it; :class:`qe4.QuantizedTable`
validates every table with :meth:`Layout.validate` when it is built, so a
malformed table (a file included) is refused before any kernel sees it.

This module is the bottom layer of qe4: it imports nothing from qe4.

Registered layouts (:data:`LAYOUTS`, by ``name``; ``code`` is the integer the
compiled kernels use):

========== ==== ====== ====================================================
name       code bits   row
========== ==== ====== ====================================================
rowwise    0    2 3 4  ``[codes][scale][bias]``, scale/bias in ``float_dtype``
                5 6 8  (torch's fused rows at 2, 4 and 8 bits)
codebook   1    2 4    ``[codes][c_0 .. c_{K-1}]``, K = 2**bits centroids
two-tier   2    2 4    ``[codes][group id]`` + ``extras["codebooks"]`` [n_groups, K]
mixed      3    8      no row bytes: sub-tables of the others per precision tier, a
                       row map and a tier table, all in ``extras`` (:mod:`qe4.mixed`)
grouped    4    2 3 4  ``[codes][sub-scales, sub-mins][d][m]``: a scale and min per
                5 6 8  group of ``group`` values, quantized to ``sub_bits`` under the
                       row's float16 super-scale ``d`` and super-min ``m``
                       (:mod:`qe4.grouped`; row size from the table's ``params``)
========== ==== ====== ====================================================

Codes come first in every row: ``ceil(dim * bits / 8)`` bytes packed low bits first
(:func:`pack_codes`).  Every multi-byte field is little-endian.

``float_dtype`` is the dtype of the floats a row stores with its codes: the scale
and bias of a rowwise row, the centroids of a codebook row or of the two-tier
codebooks.  ``QuantizedTable`` and ``qe4.quantize`` call it ``scale_dtype`` (the
old name, kept); :attr:`qe4.QuantizedTable.float_dtype` is the same value.

Adding a layout: see CONTRIBUTING.rst ("Adding a layout").
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

if TYPE_CHECKING:
    from ._typing import IntArray, UInt8Array

FLOAT_DTYPES = ("float16", "float32")


# --------------------------------------------------------------------------- codes

def code_bytes(dim: int, bits: int) -> int:
    """Bytes of packed codes in a row: ``ceil(dim * bits / 8)``."""
    return -(-int(dim) * int(bits) // 8)


#: Code widths :func:`pack_codes` handles (a layout stores a subset).
PACK_BITS = tuple(range(1, 9))


def _check_pack_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits not in PACK_BITS:
        raise ValueError(f"pack_codes/unpack_codes handle bit widths 1 to 8, got {bits!r}")
    return int(bits)


def pack_codes(codes: ArrayLike, bits: int) -> UInt8Array:
    """Pack uint8 codes [n_rows, n_cols] into bytes [n_rows, ceil(n_cols * bits / 8)].

    Each row is a bit stream, least significant bit first: element c holds stream bits
    ``c * bits .. c * bits + bits - 1`` (its own low bit first) and byte k holds stream
    bits ``8k .. 8k + 7``.  When ``bits`` divides 8 this is torch's packing: element c in
    byte ``c // (8 // bits)`` at bit offset ``(c % (8 // bits)) * bits`` (4-bit: the even
    element in the LOW nibble).  At 3, 5, 6 and 7 bits a code may straddle two bytes.
    Unused high bits of the last byte are zero.  Codes must be below ``2**bits``.
    """
    bits = _check_pack_bits(bits)
    codes = np.asarray(codes, np.uint8)
    n_rows, n_cols = codes.shape
    planes = (codes[:, :, None] >> np.arange(bits, dtype=np.uint8)) & np.uint8(1)
    return np.packbits(planes.reshape(n_rows, n_cols * bits), axis=1, bitorder="little")


def unpack_codes(packed: ArrayLike, bits: int, n_cols: int) -> UInt8Array:
    """Inverse of :func:`pack_codes`: uint8 bytes [n_rows, nb] -> codes [n_rows, n_cols]."""
    bits = _check_pack_bits(bits)
    packed = np.asarray(packed, np.uint8)
    stream = np.unpackbits(packed, axis=1, count=n_cols * bits, bitorder="little")
    planes = stream.reshape(packed.shape[0], n_cols, bits) << np.arange(bits, dtype=np.uint8)
    return np.bitwise_or.reduce(planes, axis=2, dtype=np.uint8)


# --------------------------------------------------------------------------- fields

@dataclass(frozen=True)
class Field:
    """A field of a row: ``count`` little-endian values of ``dtype`` at byte ``offset``."""
    name: str
    offset: int
    dtype: np.dtype
    count: int = 1

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * self.count

    def read(self, data: UInt8Array, rows: slice | IntArray = slice(None)) -> NDArray[Any]:
        """The field of ``rows`` of uint8 ``data`` as native values [n, count] (a copy)."""
        raw = np.ascontiguousarray(data[rows, self.offset:self.offset + self.nbytes])
        return raw.view(self.dtype).reshape(raw.shape[0], self.count).astype(self.dtype.newbyteorder("="))


@dataclass(frozen=True)
class Extra:
    """An array a layout stores beside the rows (in files: tensor ``extra.<name>``)."""
    name: str
    doc: str


def little(dtype: DTypeLike) -> np.dtype[Any]:
    """``dtype`` as a little-endian numpy dtype."""
    return np.dtype(dtype).newbyteorder("<")


def _bad_float_dtype(value, name="scale_dtype"):
    return ValueError(f"{name} must be one of {FLOAT_DTYPES}, got {value!r}")


# --------------------------------------------------------------------------- layouts

class Layout:
    """One table layout.  Subclasses define the rows; instances are registered in LAYOUTS.

    Attributes
    ----------
    name : str
    code : int
        The layout's number in the compiled kernels (``qe4_fast`` exports the same).
    bits : tuple of int
        The bit widths it stores.
    extras : tuple of Extra
        The arrays stored beside the rows (none for self-contained rows).
    floats : str
        What the ``float_dtype`` values of a row are (for messages and docs).
    """
    name = None
    code = None
    bits = ()
    extras = ()
    floats = ""
    #: True when the row's fields depend on the table's ``params`` (``fields`` takes them)
    uses_params = False

    # -- codes
    def code_bytes(self, dim: int, bits: int) -> int:
        """Bytes of the packed codes of a row (the first field)."""
        return code_bytes(dim, bits)

    def pack_codes(self, codes: ArrayLike, bits: int) -> UInt8Array:
        """uint8 codes [n, dim] -> packed bytes [n, code_bytes] (default: :func:`pack_codes`)."""
        return pack_codes(codes, bits)

    def unpack_codes(self, packed: ArrayLike, bits: int, dim: int) -> UInt8Array:
        """Inverse of :meth:`pack_codes` (default: :func:`unpack_codes`)."""
        return unpack_codes(packed, bits, dim)

    # -- sizes and fields
    def fields(self, dim: int, bits: int, float_dtype: str,
               extras: Mapping[str, Any] | None = None,
               params: Mapping[str, Any] | None = None) -> tuple[Field, ...]:
        """The row's fields in order (codes first); ``extras`` maps name -> array (or shape),
        ``params`` is the table's parameters (read by layouts whose rows depend on a
        method option, e.g. the group size of ``grouped``)."""
        raise NotImplementedError

    def row_fields(self, dim: int, bits: int, float_dtype: str,
                   extras: Mapping[str, Any] | None = None,
                   params: Mapping[str, Any] | None = None) -> tuple[Field, ...]:
        """:meth:`fields`, given ``params`` only when the layout reads them
        (:attr:`uses_params`; a subclass may keep the four-argument ``fields``)."""
        if self.uses_params:
            return self.fields(dim, bits, float_dtype, extras, params)
        return self.fields(dim, bits, float_dtype, extras)

    def row_bytes(self, dim: int, bits: int, float_dtype: str,
                  extras: Mapping[str, Any] | None = None,
                  params: Mapping[str, Any] | None = None) -> int:
        """Bytes of one row (the sum of :meth:`fields`)."""
        last = self.row_fields(dim, bits, float_dtype, extras, params)[-1]
        return last.offset + last.nbytes

    @property
    def self_contained(self) -> bool:
        """True when every byte of a row lives in the row (rows can be cut into shards)."""
        return not self.extras

    # -- float dtype
    def default_float_dtype(self, bits: int) -> str:
        """The float dtype ``scale_dtype=None`` means."""
        return "float16"

    def resolve_float_dtype(self, scale_dtype: DTypeLike | None, bits: int) -> str:
        """``scale_dtype`` argument -> the dtype name stored (None -> the default)."""
        if scale_dtype is None:
            return self.default_float_dtype(bits)
        name = np.dtype(scale_dtype).name if not isinstance(scale_dtype, str) else scale_dtype
        if name not in FLOAT_DTYPES:
            raise ValueError(f"scale_dtype must be one of {FLOAT_DTYPES} or None, got {scale_dtype!r}")
        return name

    # -- validation
    def check_bits(self, bits: int) -> None:
        """ValueError unless this layout stores ``bits`` (an int already)."""
        if bits not in self.bits:
            raise ValueError(f"a {self.name} table must have bits in {self.bits}, got {bits}")

    def validate(self, n_rows: int, row_bytes: int, bits: int, dim: int, float_dtype: str,
                 extras: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
        """Raise ValueError unless rows of ``row_bytes`` and ``extras`` make a valid table.

        Checks are structural (sizes, dtypes, shapes): O(1) in the table's size.  Value
        rules that need the rows (e.g. two-tier group ids) are :meth:`check_rows`.
        """
        self.check_bits(bits)
        if float_dtype not in FLOAT_DTYPES:
            raise _bad_float_dtype(float_dtype)
        declared = {e.name for e in self.extras}
        unknown = sorted(set(extras) - declared)
        if unknown:
            raise ValueError(f"extras {unknown} are not part of a {self.name} table "
                             f"(it stores {sorted(declared) or 'no extras'})")
        missing = sorted(declared - set(extras))
        if missing:
            raise ValueError(f"a {self.name} table needs extras{missing}")
        self.check_extras(bits, float_dtype, extras)
        need = self.row_bytes(dim, bits, float_dtype, extras, params)
        if row_bytes != need:
            raise ValueError(self.row_bytes_message(row_bytes, need, bits, dim, float_dtype))

    def check_extras(self, bits: int, float_dtype: str, extras: Mapping[str, Any]) -> None:
        """Dtype/shape rules of the extras (all present, none unknown)."""

    def check_rows(self, data: UInt8Array, extras: Mapping[str, Any],
                   rows: slice | IntArray = slice(None)) -> NDArray[np.intp] | None:
        """Value rules that read the rows (O(rows)); ValueError if one fails."""

    def row_bytes_message(self, got: int, need: int, bits: int, dim: int, float_dtype: str) -> str:
        return (f"data has {got} bytes per row; a {self.name} table of dim {dim} at {bits} bits "
                f"needs {need}")

    def __repr__(self):
        return f"<layout {self.name!r} (code {self.code}, bits {self.bits})>"


class RowwiseLayout(Layout):
    """Row-wise affine rows ``[codes][scale][bias]`` (torch's fused rows).

    At 2/4 bits with float16 this is torch's ``embedding_bag_{4,2}bit_prepack`` row,
    at 8 bits with float32 torch's ``embedding_bag_byte_prepack`` row.  At 3, 5 and 6
    bits the row has the same fields with the codes as a bit stream (:func:`pack_codes`:
    a code may straddle two bytes) and float16 scale/bias by default, as the 2/4-bit
    rows; torch has no fused op for those widths (:attr:`torch_bits`).
    """
    name = "rowwise"
    code = 0
    bits = (2, 3, 4, 5, 6, 8)
    #: The widths torch's fused ops (``embedding_bag_{2,4}bit_rowwise_offsets``, the byte
    #: ops) and FBGEMM's TBE serve; qe4 and qe4_fast serve every width in :attr:`bits`.
    torch_bits = (2, 4, 8)
    floats = "scale/bias"

    def fields(self, dim: int, bits: int, float_dtype: str,
               extras: Mapping[str, Any] | None = None,
               params: Mapping[str, Any] | None = None) -> tuple[Field, ...]:
        cb = code_bytes(dim, bits)
        dt = little(float_dtype)
        return (Field("codes", 0, np.dtype(np.uint8), cb), Field("scale", cb, dt),
                Field("bias", cb + dt.itemsize, dt))

    def qparam_bytes(self, float_dtype: str) -> int:
        """Bytes of the scale and bias: ``2 * itemsize``."""
        return 2 * np.dtype(float_dtype).itemsize

    def default_float_dtype(self, bits: int) -> str:
        # torch's layouts: the fused N-bit rows keep float16 scale/bias, the byte rows float32
        return "float32" if bits == 8 else "float16"

    def resolve_float_dtype(self, scale_dtype: DTypeLike | None, bits: int) -> str:
        name = super().resolve_float_dtype(scale_dtype, bits)
        if bits == 8 and scale_dtype is not None and name != "float32":
            raise ValueError(
                "scale_dtype='float16' is not available at bits=8: the 8-bit layout is torch's byte "
                "layout with float32 scale and bias (pass scale_dtype=None or 'float32')")
        return name

    def check_bits(self, bits: int) -> None:
        if bits not in self.bits:
            raise ValueError(f"bits must be one of {self.bits}, got {bits!r}")

    def row_bytes_message(self, got: int, need: int, bits: int, dim: int, float_dtype: str) -> str:
        return (f"data has {got} bytes per row; a rowwise {bits}-bit table of dim {dim} with "
                f"{float_dtype} scale/bias needs {need}")


class CodebookLayout(Layout):
    """Per-row codebooks: ``[codes][c_0, ..., c_{K-1}]``, K = 2**bits sorted centroids."""
    name = "codebook"
    code = 1
    bits = (2, 4)
    floats = "centroids"

    def fields(self, dim: int, bits: int, float_dtype: str,
               extras: Mapping[str, Any] | None = None,
               params: Mapping[str, Any] | None = None) -> tuple[Field, ...]:
        cb = code_bytes(dim, bits)
        return (Field("codes", 0, np.dtype(np.uint8), cb),
                Field("centroids", cb, little(float_dtype), 2 ** bits))


MAX_GROUPS = 65536


def id_dtype(n_groups: int) -> np.dtype[Any]:
    """Two-tier group id storage: uint8 for <= 256 groups, else uint16 little-endian."""
    return np.dtype(np.uint8) if n_groups <= 256 else np.dtype("<u2")


class TwoTierLayout(Layout):
    """Shared codebooks: rows ``[codes][group id]`` + ``extras["codebooks"]`` [n_groups, K]."""
    name = "two-tier"
    code = 2
    bits = (2, 4)
    floats = "centroids"
    extras = (Extra("codebooks", "float_dtype [n_groups, 2**bits]: group g's sorted centroids; "
                                 f"1 <= n_groups <= {MAX_GROUPS}"),)

    @staticmethod
    def n_groups(extras: Mapping[str, Any]) -> int:
        books = extras["codebooks"]
        shape = getattr(books, "shape", books)
        return int(shape[0])

    def fields(self, dim: int, bits: int, float_dtype: str,
               extras: Mapping[str, Any] | None = None,
               params: Mapping[str, Any] | None = None) -> tuple[Field, ...]:
        if extras is None or "codebooks" not in extras:
            raise ValueError("a two-tier table needs extras['codebooks']")
        cb = code_bytes(dim, bits)
        return (Field("codes", 0, np.dtype(np.uint8), cb),
                Field("group", cb, id_dtype(self.n_groups(extras))))

    def check_extras(self, bits: int, float_dtype: str, extras: Mapping[str, Any]) -> None:
        books = extras["codebooks"]
        k = 2 ** bits
        if not isinstance(books, np.ndarray):
            raise TypeError(f"extras['codebooks'] must be an ndarray, got {type(books).__name__}")
        if books.ndim != 2 or books.shape[1] != k or not 1 <= books.shape[0] <= MAX_GROUPS:
            raise ValueError(f"extras['codebooks'] must have shape [n_groups, {k}], got {books.shape}")
        if books.dtype != np.dtype(float_dtype):
            raise ValueError(f"extras['codebooks'] must have dtype {float_dtype}, got {books.dtype}")

    def check_rows(self, data: UInt8Array, extras: Mapping[str, Any],
                   rows: slice | IntArray = slice(None)) -> NDArray[np.intp]:
        n_groups = self.n_groups(extras)
        gid = self.group_ids(data, n_groups, rows)
        if gid.size and gid.max() >= n_groups:
            raise ValueError(f"data: a row's group id is out of range for {n_groups} codebooks")
        return gid

    @staticmethod
    def group_ids(data: UInt8Array, n_groups: int,
                  rows: slice | IntArray = slice(None)) -> NDArray[np.intp]:
        """Group ids (intp) of ``rows``: the row's last id-sized bytes."""
        dt = id_dtype(n_groups)
        raw = np.ascontiguousarray(data[rows, data.shape[1] - dt.itemsize:])
        return raw.view(dt).reshape(-1).astype(np.intp)


# mixed-precision tables (qe4.mixed): the format constants and the structural checks
TIER_FIELDS = 4                # columns of extras["tiers"]: kind, bits, float dtype, n_rows
PRUNED = -1                    # tier kinds beside the layout codes
FLOAT = -2
MAX_TIERS = 64
MAX_ROWS = 2 ** 31             # tier sizes are int32, rank entries uint32
WORD = 64                      # rows per tier bit-plane word
SUPER = 256                    # rows per rank directory entry


def tier_bits(n_tiers: int) -> int:
    """Bits of tier code per row of a mixed table: ``ceil(log2(n_tiers))`` (0 for one)."""
    return int(n_tiers - 1).bit_length()


def match_words(planes: NDArray[np.uint64], words: IntArray, tier: IntArray) -> NDArray[np.uint64]:
    """uint64 mask of the rows of ``words`` whose tier is ``tier`` (element-wise arrays)."""
    out = np.full(words.shape, ~np.uint64(0), np.uint64)
    for k in range(planes.shape[1]):
        p = planes[words, k]
        out &= np.where(((tier >> k) & 1).astype(bool), p, ~p)
    return out


class MixedLayout(Layout):
    """Rows grouped by precision into sub-tables of other layouts, plus a row map.

    ``data`` is uint8 [n_rows, 0]; every byte lives in the extras (``tiers``,
    ``tier<t>``, ``planes``, ``ranks``), described in :mod:`qe4.mixed`.  Each tier
    carries its own bit width; the table's ``bits`` is always 8 (the container's: no
    row is wider than 8-bit codes or float values).  A tier's sub-table is a layout
    :meth:`holds` (rowwise, codebook), float16/float32 values, or pruned.
    """
    name = "mixed"
    code = 3
    bits = (8,)
    floats = "(per tier)"

    def __init__(self, others: Mapping[str, Layout]) -> None:
        self.others = dict(others)

    def fields(self, dim: int, bits: int, float_dtype: str,
               extras: Mapping[str, Any] | None = None,
               params: Mapping[str, Any] | None = None) -> tuple[Field, ...]:
        return ()

    def row_bytes(self, dim: int, bits: int, float_dtype: str,
                  extras: Mapping[str, Any] | None = None,
                  params: Mapping[str, Any] | None = None) -> int:
        return 0

    @property
    def self_contained(self) -> bool:
        return False

    def holds(self, layout: Layout) -> bool:
        """True when a tier's sub-table may be in ``layout``.

        A tier records (layout code, bits, float dtype, n_rows) and nothing else, so its
        rows must be self-contained (no extras beside them) and their fields must not
        depend on a table's ``params`` (:attr:`Layout.uses_params`): rowwise and codebook,
        not two-tier (extras) nor grouped (params).
        """
        return (self.others.get(layout.name) is layout and layout.self_contained
                and not layout.uses_params)

    @property
    def tier_layouts(self) -> tuple[str, ...]:
        """The names of the layouts a tier may hold (:meth:`holds`), in code order."""
        return tuple(n for n, lay in self.others.items() if self.holds(lay))

    def tier_layout(self, kind: int) -> Layout:
        """The layout of a quantized tier's sub-table (by its code; ValueError unless
        :meth:`holds` it)."""
        for lay in self.others.values():
            if lay.code == kind and self.holds(lay):
                return lay
        raise ValueError(f"kind {kind} is not the code of a layout a tier holds "
                         f"{ {n: self.others[n].code for n in self.tier_layouts} }, "
                         f"{PRUNED} (pruned) or {FLOAT} (float)")

    def validate(self, n_rows: int, row_bytes: int, bits: int, dim: int, float_dtype: str,
                 extras: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
        """The tier table, every sub-table (by its layout), the tier sizes adding up to
        ``n_rows`` and the row map (tier codes below T, padding bits zero, the rank
        directory equal to the planes' counts): O(n_rows / 64), so a malformed file is
        refused when it is opened."""
        self.check_bits(bits)
        if float_dtype not in FLOAT_DTYPES:
            raise _bad_float_dtype(float_dtype)
        if row_bytes != 0:
            raise ValueError(f"a mixed table's data must have 0 bytes per row, got {row_bytes}")
        tiers = extras.get("tiers")
        if tiers is None:
            raise ValueError("a mixed table needs extras['tiers']")
        if tiers.dtype != np.int32 or tiers.ndim != 2 or tiers.shape[1] != TIER_FIELDS \
                or not 1 <= tiers.shape[0] <= MAX_TIERS:
            raise ValueError(f"extras['tiers'] must be int32 [T, {TIER_FIELDS}] with 1 <= T <= "
                             f"{MAX_TIERS}, got {tiers.dtype} {tiers.shape}")
        n_tiers = tiers.shape[0]
        allowed = {"tiers", "planes", "ranks"} | {f"tier{t}" for t in range(n_tiers)}
        unknown = sorted(set(extras) - allowed)
        if unknown:
            raise ValueError(f"extras {unknown} are not part of a mixed table of {n_tiers} tiers")
        if "planes" in extras and n_tiers > 1:
            self._check_map_shapes(extras, n_rows, n_tiers)
        if not any(tiers.strides):
            return      # qe4.io's check of a file header (zero-stride stand-ins): structure only
        self.check_rows(None, extras, n_rows=n_rows, dim=dim)

    def check_rows(self, data: UInt8Array | None, extras: Mapping[str, Any],
                   rows: slice | IntArray = slice(None), *, n_rows: int | None = None,
                   dim: int | None = None) -> None:
        """The value rules: the tier table, every sub-table (by its layout), the sizes
        adding up, and the row map's consistency (O(n_rows / 64))."""
        tiers = extras["tiers"]
        if n_rows is None:
            n_rows, dim = data.shape[0], None
        expected = {"tiers"}
        for t, (kind, tbits, fdt, n) in enumerate(tiers.tolist()):
            where = f"extras['tiers'][{t}] = {[kind, tbits, fdt, n]}"
            if n < 0 or fdt not in (0, 1):
                raise ValueError(f"{where}: n_rows must be >= 0 and the float dtype 0 or 1")
            if kind == PRUNED:
                continue
            name = f"tier{t}"
            expected.add(name)
            rows = extras.get(name)
            if rows is None:
                raise ValueError(f"a mixed table with {where} needs extras[{name!r}]")
            if kind == FLOAT:
                if (tbits, fdt) not in ((16, 0), (32, 1)):
                    raise ValueError(f"{where}: a float tier has bits 16 (float dtype 0) or 32 (1)")
                if rows.dtype != np.dtype(FLOAT_DTYPES[fdt]) or rows.shape[0] != n or (
                        dim is not None and rows.shape != (n, dim)):
                    raise ValueError(f"extras[{name!r}] must be {FLOAT_DTYPES[fdt]} {(n, dim)}, "
                                     f"got {rows.dtype} {rows.shape}")
                continue
            lay = self.tier_layout(kind)
            if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[0] != n:
                raise ValueError(f"extras[{name!r}] must be uint8 [{n}, row_bytes], got "
                                 f"{rows.dtype} {rows.shape}")
            try:
                if dim is not None:
                    lay.validate(n, rows.shape[1], tbits, dim, FLOAT_DTYPES[fdt], {})
            except ValueError as exc:
                raise ValueError(f"extras[{name!r}] is not a valid tier ({where}): {exc}") from None
        total = int(tiers[:, 3].astype(np.int64).sum())
        if total != n_rows:
            raise ValueError(f"extras['tiers'] holds {total} rows, the table {n_rows}")
        if tiers.shape[0] > 1 and "planes" in extras:
            expected |= {"planes", "ranks"}
            self._check_map(extras, n_rows, tiers)
        unknown = sorted(set(extras) - expected)
        if unknown:
            raise ValueError(f"extras {unknown} are not part of this mixed table "
                             f"(it stores {sorted(expected)})")

    @staticmethod
    def _check_map_shapes(extras, n_rows, n_tiers):
        planes, ranks = extras["planes"], extras.get("ranks")
        n_words, n_super = -(-n_rows // WORD), -(-n_rows // SUPER)
        if planes.dtype != np.uint64 or planes.shape != (n_words, tier_bits(n_tiers)):
            raise ValueError(f"extras['planes'] must be uint64 {(n_words, tier_bits(n_tiers))}, "
                             f"got {planes.dtype} {planes.shape}")
        if ranks is None or ranks.dtype != np.uint32 or ranks.shape != (n_super, n_tiers):
            raise ValueError(f"extras['ranks'] must be uint32 {(n_super, n_tiers)}, got "
                             f"{getattr(ranks, 'dtype', None)} {getattr(ranks, 'shape', None)}")

    def _check_map(self, extras, n_rows, tiers):
        planes, ranks = extras["planes"], extras["ranks"]
        n_tiers = tiers.shape[0]
        self._check_map_shapes(extras, n_rows, n_tiers)
        n_words = planes.shape[0]
        n_super = ranks.shape[0]
        if n_rows % WORD and (planes[-1] >> np.uint64(n_rows % WORD)).any():
            raise ValueError("extras['planes']: bits past the last row are not zero")
        words = np.arange(n_words)
        counts = np.zeros((n_words, n_tiers), np.int64)
        for t in range(n_tiers):
            counts[:, t] = np.bitwise_count(match_words(planes, words, np.full(n_words, t)))
        valid = np.full(n_words, WORD)
        if n_rows % WORD:
            valid[-1] = n_rows % WORD
        counts[-1, 0] -= WORD - valid[-1]          # the zero padding bits read as tier 0
        if (counts.sum(axis=1) != valid).any():
            w = int(np.argmax(counts.sum(axis=1) != valid))
            raise ValueError(f"extras['planes']: a row of word {w} has a tier code >= {n_tiers}")
        per_super = np.add.reduceat(counts, np.arange(0, n_words, SUPER // WORD), axis=0)
        want = np.zeros((n_super, n_tiers), np.int64)
        want[1:] = np.cumsum(per_super, axis=0)[:-1]
        if not np.array_equal(want, ranks.astype(np.int64)):
            raise ValueError("extras['ranks'] does not match the tier codes in extras['planes']")
        if not np.array_equal(per_super.sum(axis=0), tiers[:, 3].astype(np.int64)):
            raise ValueError("extras['tiers'] row counts do not match the tier codes in "
                             "extras['planes']")


# --------------------------------------------------------------------------- grouped
# group-wise scales inside a row (qe4.grouped): GGUF K-format-like rows of any dim

#: Bit widths of the grouped layout's codes.
GROUPED_BITS = (2, 3, 4, 5, 6, 8)
#: Bit widths of a grouped row's quantized sub-scales and sub-mins.
SUB_BITS = tuple(range(2, 9))
MAX_GROUP = 65536


def _grouped_int(params, name, ok, rule):
    value = (params or {}).get(name)
    if value is None:
        raise ValueError(f"a grouped table needs params[{name!r}] ({rule}), got params={params!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not ok(int(value)):
        raise ValueError(f"params[{name!r}] must be {rule}, got {value!r}")
    return int(value)


#: The grouped layout's kinds of group offset (``params["mins"]``): ``"group"``, a sub-min
#: per group under the row's super-min (GGUF's K formats); ``"none"``, none stored (every
#: ``min_j`` is 0: scale-only groups, as GGUF's Q4_0, IQ4_NL and IQ4_XS).
MINS = ("group", "none")


def mins_of(params: Mapping[str, Any] | None) -> str:
    """A grouped table's ``params["mins"]`` (``"group"`` when absent: tables saved before
    the option existed); ValueError naming a bad value."""
    mins = (params or {}).get("mins", "group")
    if not isinstance(mins, str) or mins not in MINS:
        raise ValueError(f"params['mins'] must be one of {MINS}, got {mins!r}")
    return mins


def grouping(params: Mapping[str, Any] | None) -> tuple[int, int]:
    """``(group, sub_bits)`` of a grouped table's ``params`` (ValueError naming a bad one)."""
    group = _grouped_int(params, "group", lambda v: 1 <= v <= MAX_GROUP,
                         f"an integer in [1, {MAX_GROUP}]")
    sub_bits = _grouped_int(params, "sub_bits", lambda v: v in SUB_BITS,
                            f"an integer in [{SUB_BITS[0]}, {SUB_BITS[-1]}]")
    return group, sub_bits


#: The level tables of the grouped layout, by name and bit width: code ``q`` reads back as
#: ``fma(scale_j, level[q], min_j)``.  ``"uniform"`` is ``level[q] = q`` (GGUF's K
#: formats); ``"nl"`` is qe4's non-uniform table, in code units (``level[0] = 0``,
#: ``level[qmax] = qmax``; each value a multiple of 1/1024), fitted to N(0, 1) groups of
#: 32 values by ``bench/fit_levels.py`` (:mod:`qe4.grouped`, "Non-uniform levels").
def _in_1024ths(*numerators: int) -> tuple[float, ...]:
    return tuple(k / 1024 for k in numerators)


LEVELS: dict[str, dict[int, tuple[float, ...]] | None] = {
    "uniform": None,
    "nl": {
        2: _in_1024ths(0, 1085, 1987, 3072),
        3: _in_1024ths(0, 1347, 2331, 3177, 3991, 4837, 5821, 7168),
        4: _in_1024ths(0, 1675, 2919, 3945, 4852, 5695, 6498, 7287, 8073, 8862, 9665, 10508,
                       11415, 12441, 13685, 15360),
        5: _in_1024ths(0, 1994, 3484, 4684, 5723, 6682, 7592, 8474, 9353, 10224, 11096, 11966,
                       12832, 13702, 14571, 15438, 16306, 17173, 18042, 18912, 19778, 20648,
                       21520, 22391, 23270, 24152, 25062, 26021, 27060, 28260, 29750, 31744),
        6: _in_1024ths(0, 2220, 3889, 5220, 6361, 7392, 8373, 9344, 10286, 11231, 12167, 13096,
                       14024, 14958, 15888, 16819, 17750, 18688, 19625, 20559, 21497, 22429, 23363,
                       24302, 25233, 26165, 27098, 28037, 28972, 29909, 30852, 31789, 32723, 33660,
                       34603, 35540, 36475, 37414, 38347, 39279, 40210, 41149, 42083, 43015, 43953,
                       44887, 45824, 46762, 47693, 48624, 49554, 50488, 51416, 52345, 53281, 54226,
                       55168, 56139, 57120, 58151, 59292, 60623, 62292, 64512),
    },
}


#: The level tables of scale-only groups (``params["mins"] == "none"``): code ``q`` reads
#: back as ``fma(scale_j, level[q], 0)``, the table signed, in code units, from
#: ``level[0] = -2**(bits - 1)`` up.  ``"uniform"`` is ``level[q] = q - 2**(bits - 1)``
#: (GGUF's Q4_0 grid); ``"nl"`` is asymmetric (like GGUF's IQ4_NL table), so that a
#: group's signed sub-scale mirrors it to the side of its largest value; fitted to N(0, 1)
#: groups of 32 values by ``bench/fit_levels.py --mins none``.
SIGNED_LEVELS: dict[str, dict[int, tuple[float, ...]] | None] = {
    "uniform": None,
    "nl": {
        2: _in_1024ths(-2048, -719, 285, 1404),
        3: _in_1024ths(-4096, -2580, -1530, -658, 147, 958, 1879, 3140),
        4: _in_1024ths(-8192, -6406, -5048, -3984, -3062, -2211, -1408, -635, 106, 826, 1547,
                       2324, 3194, 4167, 5321, 6801),
        5: _in_1024ths(-16384, -14056, -12690, -11425, -10361, -9409, -8505, -7622,
                       -6739, -5866, -5006, -4146, -3258, -2372, -1499, -640, 201,
                       1022, 1825, 2602, 3395, 4207, 5049, 5902, 6773, 7666, 8591,
                       9560, 10625, 11784, 13135, 14900),
        6: _in_1024ths(-32768, -31733, -30549, -28937, -27492, -26275, -25152,
                       -24133, -23152, -22170, -21199, -20233, -19277, -18325,
                       -17356, -16378, -15434, -14458, -13483, -12516, -11549,
                       -10578, -9595, -8611, -7638, -6647, -5645, -4632, -3614,
                       -2640, -1668, -710, 240, 1182, 2127, 3048, 3949, 4844, 5764,
                       6671, 7599, 8548, 9502, 10445, 11421, 12388, 13350, 14307,
                       15245, 16188, 17150, 18102, 19085, 20084, 21152, 22189,
                       23211, 24212, 25245, 26331, 27429, 28692, 29924, 30991),
    },
}


def level_table(params: Mapping[str, Any] | None, bits: int) -> NDArray[np.float32] | None:
    """The float32 level table of a grouped table's ``params["levels"]`` at ``bits``
    (None for ``"uniform"``, also when ``params`` has no ``"levels"``: tables saved before
    the option existed); ValueError naming a bad name or a width the table lacks.  With
    ``params["mins"] == "none"`` the signed table of :data:`SIGNED_LEVELS` (never None:
    uniform is ``q - 2**(bits - 1)``)."""
    name = (params or {}).get("levels", "uniform")
    if not isinstance(name, str) or name not in LEVELS:
        raise ValueError(f"params['levels'] must be one of {tuple(LEVELS)}, got {name!r}")
    tables = LEVELS[name]
    if mins_of(params) == "none":
        tables = SIGNED_LEVELS[name]
        if tables is None:
            return (np.arange(2 ** bits) - 2 ** (bits - 1)).astype(np.float32)
    if tables is None:
        return None
    if bits not in tables:
        raise ValueError(f"levels={name!r} is defined for bits in {tuple(tables)}, got bits={bits!r}")
    return np.asarray(tables[bits], np.float32)


def n_groups_of(dim: int, group: int) -> int:
    """Groups of a grouped row: ``ceil(dim / group)``; the last holds
    ``dim - (n_groups - 1) * group`` values (``group`` when it divides ``dim``)."""
    return -(-int(dim) // int(group))


class GroupedLayout(Layout):
    """Group-wise scales inside a row: ``[codes][sub-params][d][m]``.

    The row's ``dim`` values are cut into ``n_groups = ceil(dim / group)`` groups of
    ``group`` consecutive values (the last one ragged: ``dim - (n_groups - 1) * group``
    values).  Fields, in order:

    - ``codes``: ``dim`` codes of ``bits`` bits, :func:`pack_codes`;
    - ``subs``: one bit stream (:func:`pack_codes` at ``sub_bits``) of ``2 * n_groups``
      fields, ``sc_0, mn_0, sc_1, mn_1, ...``: group j's sub-scale ``sc_j`` (unsigned)
      and sub-min ``mn_j`` (unsigned, or two's complement when ``d``'s sign bit is set);
    - ``d``, ``m``: the row's float16 super-scale (its magnitude; its sign bit: the
      sub-min mode) and super-min (little-endian).

    ``group`` and ``sub_bits`` are the table's ``params`` (the ``grouped`` method's
    options), so the row size needs them; ``params["levels"]`` names what the codes mean
    (:data:`LEVELS`; the bytes are the same for every table).  The floats are always float16.  With
    bits=4, group=32, sub_bits=6 and dim a multiple of 256 a row costs 4.5 bits per value,
    as GGUF's Q4_K.  With ``params["mins"] == "none"`` (scale-only groups) the rows are
    ``[codes][sc][d]``: ``n_groups`` two's complement sub-scales and no ``m``; with
    sub_bits=6, group=32 and dim a multiple of 256, 4.25 bits per value, as GGUF's IQ4_XS.
    Reconstruction: :mod:`qe4.grouped`.
    """
    name = "grouped"
    code = 4
    bits = GROUPED_BITS
    floats = "super-scale/super-min"
    uses_params = True

    def sub_fields(self, params: Mapping[str, Any] | None) -> int:
        """Sub-parameters per group: 2 (sub-scale, sub-min), or 1 with ``mins="none"``."""
        return 2 if mins_of(params) == "group" else 1

    def sub_bytes(self, dim: int, params: Mapping[str, Any] | None) -> int:
        """Bytes of the sub-parameter stream: ``ceil(sub_fields * n_groups * sub_bits / 8)``."""
        group, sub_bits = grouping(params)
        return code_bytes(self.sub_fields(params) * n_groups_of(dim, group), sub_bits)

    def fields(self, dim: int, bits: int, float_dtype: str,
               extras: Mapping[str, Any] | None = None,
               params: Mapping[str, Any] | None = None) -> tuple[Field, ...]:
        cb = code_bytes(dim, bits)
        sb = self.sub_bytes(dim, params)
        f16 = little("float16")
        fields = (Field("codes", 0, np.dtype(np.uint8), cb), Field("subs", cb, np.dtype(np.uint8), sb),
                  Field("d", cb + sb, f16))
        return fields + ((Field("m", cb + sb + 2, f16),) if self.sub_fields(params) == 2 else ())

    def resolve_float_dtype(self, scale_dtype: DTypeLike | None, bits: int) -> str:
        name = super().resolve_float_dtype(scale_dtype, bits)
        if name != "float16":
            raise ValueError(f"a grouped table stores float16 super-scales, got scale_dtype={scale_dtype!r} "
                             "(pass None or 'float16')")
        return name

    def validate(self, n_rows: int, row_bytes: int, bits: int, dim: int, float_dtype: str,
                 extras: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
        if float_dtype != "float16":
            self.check_bits(bits)
            raise ValueError(f"a grouped table stores float16 super-scales, got scale_dtype={float_dtype!r}")
        super().validate(n_rows, row_bytes, bits, dim, float_dtype, extras, params)
        level_table(params, bits)

    def row_bytes_message(self, got: int, need: int, bits: int, dim: int, float_dtype: str) -> str:
        return (f"data has {got} bytes per row; a grouped {bits}-bit table of dim {dim} with these "
                f"group and sub_bits needs {need}")


def _register(*layouts):
    out = {}
    for lay in layouts:
        if lay.name in out or lay.code in {o.code for o in out.values()}:
            raise RuntimeError(f"layout {lay.name!r} or its code {lay.code} is registered twice")
        out[lay.name] = lay
    return out


#: name -> Layout, in code order.
_PLAIN = (RowwiseLayout(), CodebookLayout(), TwoTierLayout())
LAYOUTS = _register(*_PLAIN, MixedLayout({lay.name: lay for lay in _PLAIN}), GroupedLayout())
#: Every bit width some layout stores, ascending.
BITS = tuple(sorted({b for lay in LAYOUTS.values() for b in lay.bits}))


def get(name: str) -> Layout:
    """The registered layout ``name`` (ValueError naming the choices otherwise)."""
    lay = LAYOUTS.get(name) if isinstance(name, str) else None
    if lay is None:
        raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got {name!r}")
    return lay


def check_dim(dim: int) -> int:
    """``dim`` as an int >= 1: TypeError for a non-integer (``64.9``, ``64.0``, True)."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an integer, got {dim!r}")
    if int(dim) < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return int(dim)
