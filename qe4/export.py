"""Export a float table to the quantized embedding layouts other runtimes serve.

Each runtime stores a 4-bit (or 2/8-bit) embedding its own way; none of them
reads qe4's rows.  An export therefore starts again from the float table and,
for every row (or every block of a row), chooses the best parameters *the
target layout can hold*, judged by the target's own dequantization formula:
it is not a re-encoding of qe4's bytes, which would add a second rounding.

========================  ==========================================================  ==================================
format                    what is written                                             read back (tests) by
========================  ==========================================================  ==================================
``"executorch"``          ``quantized_decomposed::embedding_{2,4}bit`` /              the ExecuTorch CPU kernel
                          ``embedding_byte`` arguments: packed uint8/int8 weight,     (``executorch`` runtime) and its
                          scales and zero points [rows, groups]                       Python reference op
``"gguf"``                a GGUF tensor of type ``Q8_0``, ``Q4_0``, ``Q4_1`` (blocks  ``gguf.GGUFReader`` and
                          of 32) or ``Q4_K`` (super-blocks of 256)                    ``gguf.quants.dequantize``
``"compressed-tensors"``  the ``pack-quantized`` format: ``weight_packed`` (int32),   compressed-tensors'
                          ``weight_scale``, ``weight_zero_point``, ``weight_shape``   ``PackedQuantizationCompressor``
                          and the ``quantization_config``
``"onnx"``                a model whose ``com.microsoft.GatherBlockQuantized`` node   ``onnxruntime``
                          gathers rows from block-quantized initializers
========================  ==========================================================  ==================================

The search
----------
Every layout stores, per group of ``g`` consecutive values of a row, an affine
grid ``x_hat = decode(q)``.  Symmetric grids (one scale, a fixed zero point:
GGUF ``Q8_0``/``Q4_0``, symmetric compressed-tensors, ExecuTorch and ONNX
without zero points) try every clipping magnitude ``|m| * (n_bins - k) / n_bins``
for ``k = 0 .. floor(ratio * n_bins)``, with the group's extreme value ``m``
mapped to either end of the code range, and keep the best (the first, in that
order, on ties).  Asymmetric grids (a scale and a zero point or minimum) run the
greedy clipping search of :func:`qe4.rowwise.greedy_search` (the paper's loop,
``n_bins`` and ``ratio`` as for :func:`qe4.quantize`) whose objective is the
group's L2 error *through the target's decode*; then every zero-centred range
of the symmetric scan (and its mirror image) is tried on the same grid, and a
candidate replaces greedy's choice only when strictly better.  (At 2 bits the
best clipping lies far past greedy's 16% stop; the scan reaches it.)  Either way
the chosen parameters are never worse than min/max on the target's own grid.
``search="minmax"`` skips the search: the group's min and max (asymmetric), or
its largest magnitude mapped to the end of the code range the project's
reference quantizer uses (symmetric; ggml's ``d = max / -8`` for ``Q4_0``).

Given the parameters, each value takes the code whose *decoded* value is
nearest (the rounded candidate and its two neighbours are compared; ties keep
the rounded one), so the codes are the best the grid offers.

Every function returns an :class:`Export`: the arrays under the consumer's own
names and dtypes, :meth:`Export.dequantize` (the consumer's formula, bit for
bit), the bits per weight and the normalized error
``||x - x_hat||^2 / ||x||^2`` (as :func:`qe4.table_error`).

Consumers are optional: computing an export needs only NumPy; writing a
``.gguf`` needs ``gguf``, an ``.onnx`` needs ``onnx`` (``pip install
"qe4[export]"``).  The ``qe4 export`` command wraps :func:`export`.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import tempfile
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    import onnx

    from ._typing import Float32Array

from . import _validate as V
from .rowwise import greedy_search, pack_codes

F32 = np.float32
SEARCHES = ("greedy", "minmax")
GGUF_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K")
QK_K = 256              # values per K-format super-block
GGUF_BLOCK = 32


# --------------------------------------------------------------------------- rounding

def _bf16(v):
    """Round float32 to bfloat16 (nearest-even) and widen back to float32."""
    u = np.ascontiguousarray(v, F32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    rounded = np.where(np.isnan(v), np.uint32(0x7FC00000), rounded)
    return rounded.astype(np.uint32).view(F32)


def _round(v, dtype):
    """``v`` (float32) rounded to ``dtype`` ("float32", "float16", "bfloat16"), widened back."""
    v = np.asarray(v, F32)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            return v.astype(np.float16).astype(F32)
    if dtype == "bfloat16":
        return _bf16(v)
    return v


def _store(v, dtype):
    """float32 values (already representable) as the array stored for ``dtype``
    (bfloat16 as its uint16 bit pattern: NumPy has no bfloat16)."""
    v = np.ascontiguousarray(v, F32)
    if dtype == "bfloat16":
        return (v.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return v.astype(dtype)


# --------------------------------------------------------------------------- grids

class _Grid:
    """A per-group affine code grid, as one target stores and decodes it.

    ``kind`` is the parametrization:

    * ``"float-zp"``: ``x_hat = out(fl32(fl32(q - zp) * s))``, zp a float in
      ``dtype`` (ExecuTorch's kernel);
    * ``"int-zp"``: ``x_hat = out(fl32(q - zp) * s)``, zp an integer code
      (ONNX, compressed-tensors); ``q - zp`` is exact, the product rounds once to
      float32 and then to ``out`` (exact for float32 and, for <= 8-bit codes and
      16-bit scales, a single rounding);
    * ``"min"``: ``x_hat = fl32(fl32(d * q) + m)`` (GGUF ``Q4_1``);
    * ``"fixed-zp"``: ``"int-zp"`` with the zero point fixed at ``zp0``.
    """

    def __init__(self, kind, qmin, qmax, dtype, zp0=0, ref_end=None, out=None):
        self.kind, self.qmin, self.qmax, self.dtype = kind, qmin, qmax, dtype
        self.out = out or dtype       # the output dtype: the scale dtype unless named
        self.zp0 = zp0
        # search="minmax" on a fixed-zero-point grid maps the largest |x| to this code offset
        self.ref_end = ref_end if ref_end is not None else qmax - zp0

    # parameters from a clipping range (asymmetric grids)
    def params(self, lo, hi):
        lo, hi = np.asarray(lo, F32), np.asarray(hi, F32)
        levels = F32(self.qmax - self.qmin)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if self.kind == "min":
                m = _round(lo, self.dtype)
                d = _round(np.maximum(hi - m, F32(0)) / levels, self.dtype)
                return d, m
            s = _round((hi - lo) / levels, self.dtype)
            s = np.where(s == 0, F32(1), s).astype(F32)
            if self.kind == "float-zp":
                zp = _round(F32(self.qmin) - lo / s, self.dtype)
            else:
                zp = np.clip(np.rint(F32(self.qmin) - lo / s), self.qmin, self.qmax).astype(F32)
        return s, zp

    def decode(self, q, a, b):
        """x_hat for codes ``q`` (float32 array of integers) and parameters (a, b)."""
        with np.errstate(over="ignore", invalid="ignore"):
            if self.kind == "min":
                return ((a * q).astype(F32) + b).astype(F32)
            return _round(((q - b).astype(F32) * a).astype(F32), self.out)

    def encode(self, x, a, b):
        """The codes whose decoded values are nearest to ``x`` (float32 array of integers)."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if self.kind == "min":
                t = np.where(a == 0, F32(0), (x - b) / np.where(a == 0, F32(1), a))
            else:
                t = x / a + b
            # + 0: an integer code is never -0.0 (which would flip the sign of a zero x_hat)
            q0 = (np.clip(np.rint(np.nan_to_num(t)), self.qmin, self.qmax) + F32(0)).astype(F32)
        best_q = q0
        best_e = np.abs(x - self.decode(q0, a, b))
        for dq in (-1, 1):
            q = np.clip(q0 + F32(dq), self.qmin, self.qmax).astype(F32)
            e = np.abs(x - self.decode(q, a, b))
            better = e < best_e
            best_q = np.where(better, q, best_q)
            best_e = np.where(better, e, best_e)
        return best_q

    def fixed(self, s):
        """Parameters of a fixed-zero-point grid with scale ``s``."""
        s = _round(s, self.dtype)
        s = np.where(s == 0, F32(1), s).astype(F32)
        return s, np.full(s.shape, self.zp0, F32)


def _loss(grid, x, a, b):
    """Each group's L2 error through ``grid`` (float64; inf where the decode is not finite)."""
    q = grid.encode(x, a[:, None], b[:, None])
    xh = grid.decode(q, a[:, None], b[:, None])
    d = (x - xh).astype(np.float64)
    err = np.sqrt(np.einsum("ij,ij->i", d, d))
    return np.where(np.isfinite(err), err, np.inf)


def _search_asymmetric(grid, x, search, n_bins, ratio):
    """(a, b) per group of ``x`` [n_groups, g] by the greedy search on ``grid``'s error."""
    if search == "minmax":
        return grid.params(x.min(axis=1) + F32(0), x.max(axis=1) + F32(0))

    def loss(xt, lo, hi):
        a, b = grid.params(lo, hi)
        return _loss(grid, xt.T, a, b)

    lo, hi = greedy_search(np.ascontiguousarray(x.T), loss, n_bins, ratio)
    a, b = grid.params(lo, hi)
    # the grid can also hold every symmetric candidate (a range centred on zero that
    # clips the smaller side hard, which greedy's 16% stop never reaches at 2 bits):
    # keep whichever is better, greedy's result on ties
    best = _loss(grid, x, a, b)
    centre = F32((grid.qmin + grid.qmax + 1) // 2)
    for lo_c, hi_c in _symmetric_candidates(x, grid.qmin - centre, grid.qmax - centre,
                                            n_bins, ratio):
        ca, cb = grid.params(lo_c, hi_c)
        err = _loss(grid, x, ca, cb)
        better = err < best
        a, b, best = np.where(better, ca, a), np.where(better, cb, b), np.where(better, err, best)
    return a.astype(F32), b.astype(F32)


def _symmetric_candidates(x, end_lo, end_hi, n_bins, ratio):
    """Clipping ranges (lo, hi) of zero-centred grids with code offsets [end_lo, end_hi]
    and their mirror images: the row's extreme ``m`` shrunk by k bins,
    k = 0 .. floor(ratio * n_bins), mapped to either end of the code range."""
    m = x[np.arange(x.shape[0]), np.abs(x).argmax(axis=1)]
    for k in range(int(math.floor(ratio * n_bins)) + 1):
        mk = (m * F32((n_bins - k) / n_bins)).astype(F32)
        for end in (end_lo, end_hi):
            if end == 0:
                continue
            s = np.abs(mk / F32(end)).astype(F32)
            yield (s * F32(end_lo)).astype(F32), (s * F32(end_hi)).astype(F32)
            yield (-s * F32(end_hi)).astype(F32), (-s * F32(end_lo)).astype(F32)   # mirrored


def _search_symmetric(grid, x, search, n_bins, ratio):
    """The scale per group of ``x`` [n_groups, g] for a fixed-zero-point grid."""
    idx = np.abs(x).argmax(axis=1)
    m = x[np.arange(x.shape[0]), idx]                 # the signed extreme value
    ends = (F32(grid.qmin - grid.zp0), F32(grid.qmax - grid.zp0))
    if search == "minmax":
        return grid.fixed((m / F32(grid.ref_end)).astype(F32))
    best_a = best_b = None
    best = np.full(x.shape[0], np.inf)
    for k in range(int(math.floor(ratio * n_bins)) + 1):
        mk = (m * F32((n_bins - k) / n_bins)).astype(F32)
        for end in ends:
            if end == 0:
                continue
            a, b = grid.fixed((mk / end).astype(F32))
            err = _loss(grid, x, a, b)
            if best_a is None:
                best_a, best_b, best = a, b, err
                continue
            better = err < best
            best_a = np.where(better, a, best_a)
            best_b = np.where(better, b, best_b)
            best = np.where(better, err, best)
    return best_a, best_b


def _fit(grid, x, group, search, n_bins, ratio, symmetric):
    """Parameters [n_rows, n_groups] and codes [n_rows, n_cols] of ``x`` on ``grid``.

    ``group`` columns per group; a last, narrower group takes the remainder.
    """
    n_rows, n_cols = x.shape
    cuts = list(range(0, n_cols, group)) + [n_cols]
    a = np.empty((n_rows, len(cuts) - 1), F32)
    b = np.empty_like(a)
    find = _search_symmetric if symmetric else _search_asymmetric
    full = (n_cols // group) * group
    spans = [(0, full)] if full else []
    if full < n_cols:
        spans.append((full, n_cols))
    for start, stop in spans:
        width = min(group, stop - start)
        xs = np.ascontiguousarray(x[:, start:stop]).reshape(-1, width)
        ga, gb = find(grid, xs, search, n_bins, ratio)
        g0, g1 = start // group, -(-stop // group)
        a[:, g0:g1] = ga.reshape(n_rows, g1 - g0)
        b[:, g0:g1] = gb.reshape(n_rows, g1 - g0)
    if not symmetric and grid.kind == "float-zp":
        # a float16 zero point can overflow for a group far from zero with a tiny range:
        # those groups fall back to the symmetric grid (zero point 0), which always fits
        bad = ~np.isfinite(b)
        if bad.any():
            amax = np.abs(x).max(axis=1, keepdims=True)
            amax = np.repeat(amax, a.shape[1], axis=1)
            a[bad] = grid.fixed((amax[bad] / F32(-grid.qmin)).astype(F32))[0]
            b[bad] = F32(0)
    q = np.empty(x.shape, F32)
    xh = np.empty(x.shape, F32)
    for j in range(a.shape[1]):
        cols = slice(cuts[j], cuts[j + 1])
        q[:, cols] = grid.encode(x[:, cols], a[:, j:j + 1], b[:, j:j + 1])
        xh[:, cols] = grid.decode(q[:, cols], a[:, j:j + 1], b[:, j:j + 1])
    if not np.isfinite(xh).all():
        r, c = np.argwhere(~np.isfinite(xh))[0]
        raise ValueError(f"x[{r}, {c}] = {x[r, c]!r} cannot be represented with "
                         f"{grid.dtype} scales; use a float32 scale dtype")
    return a, b, q.astype(np.int32), xh


# --------------------------------------------------------------------------- packing

def _pack_int32(u, bits):
    """Unsigned codes [n_rows, n_cols] -> int32 words [n_rows, ceil(n_cols * bits / 32)], element
    c at bit (c * bits) % 32 of word (c * bits) // 32: the bytes of :func:`pack_codes` (``bits``
    divides 8), read four at a time as little-endian words."""
    per_word = 32 // bits
    n_rows, n_cols = u.shape
    padded = np.zeros((n_rows, -(-n_cols // per_word) * per_word), np.uint8)
    padded[:, :n_cols] = u
    return np.ascontiguousarray(pack_codes(padded, bits)).view("<i4").astype(np.int32)


# --------------------------------------------------------------------------- result

class Export:
    """One table exported to a target layout.

    Attributes
    ----------
    format : str
        ``"executorch"``, ``"gguf"``, ``"compressed-tensors"`` or ``"onnx"``.
    tensors : dict of str to ndarray
        The stored arrays under the consumer's names (bfloat16 arrays are held as
        their uint16 bit patterns; ``dtypes`` names the consumer dtype of each).
    dtypes : dict of str to str
        The consumer's dtype of each tensor ("uint8", "int32", "bfloat16", ...).
    options : dict
        The layout parameters (bits, group size, scale dtype, ...) and what the
        consumer needs besides the arrays (quant_min/max, the GGUF type, ...).
    shape : tuple of int
        (n_rows, dim) of the table.
    bits_per_weight : float
        Stored bits (codes, scales, zero points) per table value.
    error : float
        Normalized squared error ``||x - x_hat||^2 / ||x||^2`` of :meth:`dequantize`.
    """

    def __init__(self, fmt: str, tensors: dict[str, np.ndarray], dtypes: dict[str, str],
                 options: dict[str, Any], shape: tuple[int, ...], x_hat: np.ndarray,
                 x: np.ndarray) -> None:
        self.format = fmt
        self.tensors = tensors
        self.dtypes = dtypes
        self.options = options
        self.shape = tuple(int(s) for s in shape)
        self._x_hat = x_hat
        stored = sum(a.nbytes for k, a in tensors.items() if k not in _SHAPE_TENSORS)
        self.bits_per_weight = 8.0 * stored / (self.shape[0] * self.shape[1])
        x64 = x.astype(np.float64)
        den = float(np.einsum("ij,ij->", x64, x64))
        d = x64 - x_hat.astype(np.float64)
        self.error = float(np.einsum("ij,ij->", d, d)) / den if den else 0.0

    def dequantize(self) -> np.ndarray:
        """The table as the consumer reconstructs it (float32 [n_rows, dim], bit-exact)."""
        return self._x_hat.copy()

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if k in _SHOWN)
        return (f"Export({self.format!r}, shape={self.shape}, {opts}, "
                f"bits_per_weight={self.bits_per_weight:.3f}, error={self.error:.4e})")

    def save(self, path: str | os.PathLike, *, name: str | None = None) -> None:
        """Write the export to ``path`` in the consumer's file format, atomically.

        ``"gguf"``: a GGUF file holding one tensor (needs the ``gguf`` package);
        ``"onnx"``: an ONNX model ``indices -> embeddings`` (needs ``onnx``);
        ``"executorch"`` and ``"compressed-tensors"``: a safetensors file of the
        tensors (compressed-tensors names prefixed with ``name``, default
        ``"embed_tokens"``; its ``quantization_config`` is in the metadata and in
        :meth:`quantization_config`).
        """
        writer = _WRITERS[self.format]
        _atomic(path, lambda tmp: writer(self, tmp, name))

    def quantization_config(self) -> dict:
        """compressed-tensors only: the ``quantization_config`` block of a model's config.json."""
        if self.format != "compressed-tensors":
            raise ValueError(f"quantization_config exists for compressed-tensors exports, "
                             f"this one is {self.format!r}")
        o = self.options
        weights = {"num_bits": o["bits"], "type": "int", "symmetric": o["symmetric"],
                   "strategy": "group", "group_size": o["group_size"], "dynamic": False,
                   "actorder": None, "block_structure": None, "observer": "minmax"}
        return {"quant_method": "compressed-tensors", "format": "pack-quantized",
                "quantization_status": "compressed", "ignore": [],
                "config_groups": {"group_0": {"targets": ["Embedding"], "weights": weights,
                                              "input_activations": None,
                                              "output_activations": None,
                                              "format": "pack-quantized"}}}


_SHAPE_TENSORS = ("weight_shape",)
_SHOWN = ("bits", "qtype", "group_size", "block_size", "scale_dtype", "zero_point", "symmetric",
          "search")


def _atomic(path, write):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".qe4-export-", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_ST_DTYPES = {"uint8": "U8", "int8": "I8", "int32": "I32", "int64": "I64", "float16": "F16",
              "float32": "F32", "bfloat16": "BF16"}


def _write_safetensors(path, tensors, dtypes, metadata):
    """A safetensors file (8-byte little-endian header size, JSON header, raw data)."""
    header, offset, blobs = {}, 0, []
    for key, arr in tensors.items():
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[key] = {"dtype": _ST_DTYPES[dtypes[key]], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for raw in blobs:
            f.write(raw)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- arguments

def _check_common(x, search, n_bins, ratio):
    if not isinstance(search, str):
        raise TypeError(f"search must be a string, got {search!r}")
    search = _check_choice(search, "search", SEARCHES)
    n_bins = V.check_n_bins(n_bins)
    ratio = V.check_ratio(ratio)
    return V.as_table(x, "x"), search, n_bins, ratio


#: The widths each target's format and kernels hold (the rowwise layout's 3, 5 and 6 bits,
#: a bit stream, have no ExecuTorch op, and compressed-tensors packs 32 // bits values per
#: int32 word rather than a stream).
EXECUTORCH_BITS = (2, 4, 8)
COMPRESSED_TENSORS_BITS = (2, 4, 8)


def _check_target_bits(bits: int, allowed: tuple[int, ...], target: str) -> int:
    """``bits`` as an int of ``allowed``: TypeError for a non-integer, ValueError naming the
    target for a width it cannot hold."""
    try:
        return V.check_bits(bits, allowed)
    except ValueError:
        raise ValueError(f"bits must be one of {allowed} for {target}, got {bits!r}") from None


def _check_choice(value, name, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def _check_group(group_size, n_cols, name, *, divides=True):
    group_size = n_cols if group_size is None else V.check_positive_int(group_size, name)
    if divides and n_cols % group_size:
        raise ValueError(f"{name}={group_size} must divide the table's {n_cols} columns")
    return group_size


# --------------------------------------------------------------------------- targets

def to_executorch(x: ArrayLike, bits: int = 4, *, group_size: int | None = None,
                  scale_dtype: str = "float32", zero_point: bool = True,
                  search: str = "greedy", n_bins: int = 200, ratio: float = 0.16) -> Export:
    """Arguments of ExecuTorch's ``quantized_decomposed::embedding_{2,4}bit`` / ``embedding_byte``.

    Parameters
    ----------
    x : array_like [n_rows, dim], float
    bits : {2, 4, 8}
    group_size : int, optional
        Values per scale along a row (must divide ``dim``); None = one group per row.
    scale_dtype : {"float32", "float16"}
        dtype of the scales and zero points (the CPU kernel takes these two), and
        of the op's output (the kernel requires zero points of the output dtype).
    zero_point : bool
        Store float zero points (asymmetric grid); False stores none (the op then
        uses zero, a symmetric grid).
    search : {"greedy", "minmax"}
    n_bins, ratio : int, float
        The clipping search grid (as :func:`qe4.quantize`).

    Returns
    -------
    Export
        ``tensors``: ``weight`` (uint8 [rows, dim * bits / 8]; int8 [rows, dim] at 8 bits),
        ``weight_scales`` [rows, dim / group_size] and ``weight_zero_points`` (same
        shape, only with ``zero_point``); ``options`` holds ``weight_quant_min`` and
        ``weight_quant_max`` for the op call.

    Notes
    -----
    Codes are signed, ``q`` in ``[-2**(bits-1), 2**(bits-1) - 1]``.  Packing: 4 bits
    stores ``q + 8``, the EVEN element in the HIGH nibble; 2 bits stores ``q + 2``,
    element ``4k + i`` in bits ``2i .. 2i + 1``; 8 bits stores ``q`` as int8.
    The CPU kernel computes ``(float(q) - float(zp)) * float(scale)`` in float32
    and casts it to the output dtype, which :meth:`Export.dequantize` reproduces.  (The op's Python
    reference computes in the scale dtype, so with float16 scales it rounds twice
    and may differ from the kernel in the last float16 ulp.)

    Examples
    --------
    >>> import numpy as np, qe4.export
    >>> x = np.random.default_rng(0).standard_normal((3, 8), dtype=np.float32)
    >>> e = qe4.export.to_executorch(x, 4, group_size=4)
    >>> e.tensors["weight"].shape, e.tensors["weight_scales"].shape, e.bits_per_weight
    ((3, 4), (3, 2), 20.0)
    """
    bits = _check_target_bits(bits, EXECUTORCH_BITS, "ExecuTorch")
    x, search, n_bins, ratio = _check_common(x, search, n_bins, ratio)
    scale_dtype = _check_choice(scale_dtype, "scale_dtype", ("float32", "float16"))
    epb = 8 // bits
    if x.shape[1] % epb:
        raise ValueError(f"{bits}-bit ExecuTorch rows need dim divisible by {epb}, got {x.shape[1]}")
    group_size = _check_group(group_size, x.shape[1], "group_size")
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    grid = _Grid("float-zp" if zero_point else "fixed-zp", qmin, qmax, scale_dtype)
    s, zp, q, xh = _fit(grid, x, group_size, search, n_bins, ratio, symmetric=not zero_point)
    if bits == 8:
        weight = q.astype(np.int8)
    elif bits == 4:
        u = (q + 8).astype(np.uint8)
        weight = ((u[:, 0::2] << np.uint8(4)) | u[:, 1::2]).astype(np.uint8)
    else:
        weight = pack_codes(q + 2, 2)
    tensors = {"weight": weight, "weight_scales": _store(s, scale_dtype)}
    dtypes = {"weight": "int8" if bits == 8 else "uint8", "weight_scales": scale_dtype}
    if zero_point:
        tensors["weight_zero_points"] = _store(zp, scale_dtype)
        dtypes["weight_zero_points"] = scale_dtype
    op = {2: "embedding_2bit", 4: "embedding_4bit", 8: "embedding_byte"}[bits]
    options = {"bits": bits, "group_size": group_size, "scale_dtype": scale_dtype,
               "zero_point": bool(zero_point), "search": search, "op": op,
               "weight_quant_min": qmin, "weight_quant_max": qmax}
    return Export("executorch", tensors, dtypes, options, x.shape, xh, x)


def to_gguf(x: ArrayLike, qtype: str = "Q4_0", *, search: str = "greedy", n_bins: int = 200,
            ratio: float = 0.16) -> Export:
    """A GGUF tensor of type ``Q8_0``, ``Q4_0`` or ``Q4_1`` (llama.cpp's block formats).

    Parameters
    ----------
    x : array_like [n_rows, dim], float; ``dim`` must be a multiple of 32
    qtype : {"Q8_0", "Q4_0", "Q4_1", "Q4_K"}
    search, n_bins, ratio
        As :func:`to_executorch`.

    Returns
    -------
    Export
        ``tensors["blocks"]``: uint8 [n_rows, dim / 32 * block_bytes], the rows of
        blocks exactly as a GGUF file stores the tensor.

    Notes
    -----
    Blocks of 32 values, little-endian float16 fields first:

    * ``Q8_0`` (34 bytes): scale ``d``, then 32 int8 codes; ``x = d * q``.
    * ``Q4_0`` (18 bytes): ``d``, then 16 bytes; byte ``j`` holds value ``j`` in
      its LOW nibble and value ``j + 16`` in its HIGH nibble; ``x = d * (q - 8)``.
    * ``Q4_1`` (20 bytes): ``d``, minimum ``m``, then the nibbles as ``Q4_0``;
      ``x = d * q + m`` (product and sum each rounded to float32, as
      ``gguf.quants`` computes it).
    * ``Q4_K`` (144 bytes per super-block of 256 values; dim must be a multiple of
      256): float16 ``d`` and ``dmin``, 12 bytes of eight 6-bit sub-scales ``sc_j``
      and sub-mins ``mn_j`` (one per 32 values; llama.cpp's ``get_scale_min_k4``
      packing), then 128 bytes of nibbles: in each 64-value chunk, byte ``l`` holds
      value ``l`` in its LOW nibble and value ``l + 32`` in its HIGH nibble;
      ``x = fl32(fl32(d * sc_j) * q) - fl32(dmin * mn_j)`` (as ``gguf.quants``).  The
      parameters come from qe4's ``"grouped"`` search (:mod:`qe4.grouped`, group 32,
      sub_bits 6, its unsigned sub-min mode, which is this parametrization with
      ``dmin = -m``), run on each super-block; ``search="minmax"`` starts it from each
      group's min and max instead of the mse ranges.

    ``Q8_0`` and ``Q4_0`` are symmetric (one scale, possibly negative, so the
    extreme value may take either end of the code range); ``Q4_1`` runs the
    greedy search.

    Examples
    --------
    >>> import numpy as np, qe4.export
    >>> x = np.random.default_rng(0).standard_normal((2, 64), dtype=np.float32)
    >>> e = qe4.export.to_gguf(x, "Q4_0")
    >>> e.tensors["blocks"].shape, e.bits_per_weight
    ((2, 36), 4.5)
    """
    x, search, n_bins, ratio = _check_common(x, search, n_bins, ratio)
    if not isinstance(qtype, str):
        raise TypeError(f"qtype must be a string, got {qtype!r}")
    qtype = _check_choice(qtype.upper(), "qtype", GGUF_TYPES)
    n_rows, n_cols = x.shape
    if qtype == "Q4_K":
        return _to_q4_k(x, search)
    if n_cols % GGUF_BLOCK:
        raise ValueError(f"GGUF block formats need dim divisible by {GGUF_BLOCK}, got {n_cols}")
    if qtype == "Q8_0":
        grid = _Grid("fixed-zp", -128, 127, "float16", zp0=0, out="float32")
    elif qtype == "Q4_0":
        grid = _Grid("fixed-zp", 0, 15, "float16", zp0=8, ref_end=-8,  # ggml: d = max / -8
                     out="float32")
    else:
        grid = _Grid("min", 0, 15, "float16")
    a, b, q, xh = _fit(grid, x, GGUF_BLOCK, search, n_bins, ratio, symmetric=qtype != "Q4_1")
    n_blocks = n_cols // GGUF_BLOCK
    fields = [a.astype("<f2").view(np.uint8).reshape(n_rows, n_blocks, 2)]
    if qtype == "Q4_1":
        fields.append(b.astype("<f2").view(np.uint8).reshape(n_rows, n_blocks, 2))
    qb = q.reshape(n_rows, n_blocks, GGUF_BLOCK)
    if qtype == "Q8_0":
        fields.append(qb.astype(np.int8).view(np.uint8))
    else:
        u = qb.astype(np.uint8)
        fields.append(u[:, :, :16] | (u[:, :, 16:] << np.uint8(4)))
    blocks = np.concatenate(fields, axis=2).reshape(n_rows, -1)
    options = {"qtype": qtype, "search": search, "block_size": GGUF_BLOCK}
    return Export("gguf", {"blocks": np.ascontiguousarray(blocks)}, {"blocks": "uint8"}, options,
                  x.shape, xh, x)


def _to_q4_k(x: Float32Array, search: str) -> Export:
    """``Q4_K`` super-blocks of ``x`` (see :func:`to_gguf`)."""
    from . import grouped as G
    n_rows, n_cols = x.shape
    if n_cols % QK_K:
        raise ValueError(f"GGUF Q4_K needs dim divisible by {QK_K}, got {n_cols}")
    group, sub_bits = GGUF_BLOCK, 6
    xb = np.ascontiguousarray(x.reshape(-1, QK_K))          # one super-block per row
    xg, valid = G.split_groups(xb, group)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # checked below
        if search == "minmax":
            ranges = (((xg.max(axis=2) - xg.min(axis=2)) / F32(15)).astype(F32), xg.min(axis=2))
        else:
            ranges = G.group_ranges(xb, 4, group)
        d, m, sc, mn, q, _ = G.search_mode(xb, xg, valid, ranges, 4, group, sub_bits, False)
    dmin = (-m).astype(F32)
    if not (np.isfinite(d).all() and np.isfinite(dmin).all()):
        r = int(np.argmax(~(np.isfinite(d) & np.isfinite(dmin)))) * QK_K // n_cols
        raise ValueError(f"row {r} of x has a range too wide for Q4_K's float16 super-scales")
    q = q.reshape(-1, QK_K).astype(np.uint8)
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    # llama.cpp's get_scale_min_k4: bytes 0-3 sc_0..3 (+ the top 2 bits of sc_4..7),
    # bytes 4-7 mn_0..3 (+ the top 2 bits of mn_4..7), bytes 8-11 the low nibbles of
    # sc_4..7 and mn_4..7
    scales = np.concatenate([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
                             (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)], axis=1)
    chunks = q.reshape(-1, 4, 2, 32)
    qs = (chunks[:, :, 0] | (chunks[:, :, 1] << np.uint8(4))).reshape(-1, 128)
    blocks = np.concatenate([d.astype("<f2").view(np.uint8).reshape(-1, 2),
                             dmin.astype("<f2").view(np.uint8).reshape(-1, 2), scales, qs], axis=1)
    dl = np.repeat((d[:, None] * sc.astype(F32)).astype(F32), group, axis=1)
    ml = np.repeat((dmin[:, None] * mn.astype(F32)).astype(F32), group, axis=1)
    xh = ((dl * q.astype(F32)).astype(F32) - ml).astype(F32).reshape(n_rows, n_cols)
    options = {"qtype": "Q4_K", "search": search, "block_size": QK_K}
    return Export("gguf", {"blocks": np.ascontiguousarray(blocks.reshape(n_rows, -1))},
                  {"blocks": "uint8"}, options, x.shape, xh, x)


def to_compressed_tensors(x: ArrayLike, bits: int = 4, *, group_size: int | None = None,
                          symmetric: bool = True, scale_dtype: str = "bfloat16",
                          search: str = "greedy", n_bins: int = 200,
                          ratio: float = 0.16) -> Export:
    """compressed-tensors' ``pack-quantized`` embedding weight (the format vLLM's loader reads).

    Parameters
    ----------
    x : array_like [n_rows, dim], float
    bits : {2, 4, 8}
    group_size : int or None
        Values per scale (must divide ``dim``); None = the whole row.
    symmetric : bool
        True: no zero point (``x = q * s``); False: an integer zero point per group.
    scale_dtype : {"bfloat16", "float16", "float32"}
        dtype of ``weight_scale`` (the model's dtype); dequantization computes in it.
    search, n_bins, ratio
        As :func:`to_executorch`.

    Returns
    -------
    Export
        ``tensors``: ``weight_packed`` (int32 [rows, ceil(dim * bits / 32)]),
        ``weight_scale`` [rows, groups], ``weight_shape`` (int64 [2]) and, if not
        symmetric, ``weight_zero_point`` (int32 [ceil(rows * bits / 32), groups]).

    Notes
    -----
    Codes are signed, ``q`` in ``[-2**(bits-1), 2**(bits-1) - 1]``, stored as
    ``q + 2**(bits-1)``: value ``c`` of a row at bit ``(c * bits) % 32`` of int32 word
    ``(c * bits) // 32``.  Zero points are packed the same way down each group's
    column (along the rows).  Dequantization: ``(q - zp) * scale`` in ``scale_dtype``.
    """
    bits = _check_target_bits(bits, COMPRESSED_TENSORS_BITS, "compressed-tensors")
    x, search, n_bins, ratio = _check_common(x, search, n_bins, ratio)
    scale_dtype = _check_choice(scale_dtype, "scale_dtype", ("bfloat16", "float16", "float32"))
    group_size = _check_group(group_size, x.shape[1], "group_size")
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    grid = _Grid("fixed-zp" if symmetric else "int-zp", qmin, qmax, scale_dtype, zp0=0)
    s, zp, q, xh = _fit(grid, x, group_size, search, n_bins, ratio, symmetric=symmetric)
    offset = 1 << (bits - 1)
    tensors = {"weight_packed": _pack_int32((q + offset).astype(np.uint32), bits),
               "weight_scale": _store(s, scale_dtype),
               "weight_shape": np.array(x.shape, np.int64)}
    dtypes = {"weight_packed": "int32", "weight_scale": scale_dtype, "weight_shape": "int64"}
    if not symmetric:
        zpu = (zp.astype(np.int32) + offset).astype(np.uint32)
        tensors["weight_zero_point"] = np.ascontiguousarray(_pack_int32(zpu.T, bits).T)
        dtypes["weight_zero_point"] = "int32"
    options = {"bits": bits, "group_size": group_size, "symmetric": bool(symmetric),
               "scale_dtype": scale_dtype, "search": search}
    return Export("compressed-tensors", tensors, dtypes, options, x.shape, xh, x)


def to_onnx(x: ArrayLike, bits: int = 4, *, block_size: int = 32, scale_dtype: str = "float32",
            zero_point: bool = True, search: str = "greedy", n_bins: int = 200,
            ratio: float = 0.16) -> Export:
    """Initializers of ONNX Runtime's ``com.microsoft.GatherBlockQuantized`` (uint8 data).

    Parameters
    ----------
    x : array_like [n_rows, dim], float (``dim`` even at 4 bits)
    bits : {4, 8}
    block_size : int
        Values per scale along a row: a power of two >= 16 (the operator's rule);
        a last, shorter block takes the remainder of the row.
    scale_dtype : {"float32", "float16"}
        dtype of the scales, which is also the dtype of the operator's output.
    zero_point : bool
        Store an unsigned integer zero point per block (asymmetric); False leaves
        them out and the operator uses ``2**(bits-1)``.
    search, n_bins, ratio
        As :func:`to_executorch`.

    Returns
    -------
    Export
        ``tensors``: ``data`` (uint8 [rows, dim * bits / 8]), ``scales``
        [rows, blocks] and ``zero_points`` (uint8 [rows, ceil(blocks / 2)] at 4 bits,
        [rows, blocks] at 8 bits).

    Notes
    -----
    Codes are unsigned, ``q`` in ``[0, 2**bits - 1]``; at 4 bits the EVEN element is
    the LOW nibble (and so are even-numbered blocks' zero points).  The operator
    computes ``out(float(q - zp) * scale)`` with ``out`` the scale dtype.  Attributes:
    ``gather_axis=0``, ``quantize_axis=1``, ``block_size``, ``bits``.
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an integer, got {bits!r}")
    bits = _check_choice(int(bits), "bits", (4, 8))
    x, search, n_bins, ratio = _check_common(x, search, n_bins, ratio)
    scale_dtype = _check_choice(scale_dtype, "scale_dtype", ("float32", "float16"))
    block_size = V.check_positive_int(block_size, "block_size")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    if bits == 4 and x.shape[1] % 2:
        raise ValueError(f"4-bit GatherBlockQuantized rows need an even dim, got {x.shape[1]}")
    qmax = (1 << bits) - 1
    zp0 = 1 << (bits - 1)
    grid = _Grid("int-zp" if zero_point else "fixed-zp", 0, qmax, scale_dtype, zp0=zp0)
    s, zp, q, xh = _fit(grid, x, block_size, search, n_bins, ratio, symmetric=not zero_point)
    data = pack_codes(q, 4) if bits == 4 else q.astype(np.uint8)
    tensors = {"data": data, "scales": _store(s, scale_dtype)}
    dtypes = {"data": "uint8", "scales": scale_dtype}
    if zero_point:
        zpu = zp.astype(np.uint8)
        if bits == 4:
            if zpu.shape[1] % 2:
                zpu = np.concatenate([zpu, np.zeros((zpu.shape[0], 1), np.uint8)], axis=1)
            zpu = pack_codes(zpu, 4)
        tensors["zero_points"] = np.ascontiguousarray(zpu)
        dtypes["zero_points"] = "uint8"
    options = {"bits": bits, "block_size": block_size, "scale_dtype": scale_dtype,
               "zero_point": bool(zero_point), "search": search}
    return Export("onnx", tensors, dtypes, options, x.shape, xh, x)


class Target:
    """One export target in :data:`FORMATS`: its function, the values each option takes
    (the CLI and the tests are built from these) and the package that reads it back."""

    def __init__(self, function: Callable[..., Export], choices: dict, reader: str) -> None:
        self.function, self.choices, self.reader = function, choices, reader

    def __repr__(self):
        return f"Target({self.function.__name__}, reader={self.reader!r})"


FORMATS: dict[str, Target] = {
    "executorch": Target(to_executorch, {"bits": EXECUTORCH_BITS, "scale_dtype": ("float32", "float16"),
                                         "zero_point": (True, False)}, "executorch"),
    "gguf": Target(to_gguf, {"qtype": GGUF_TYPES}, "gguf"),
    "compressed-tensors": Target(to_compressed_tensors,
                                 {"bits": COMPRESSED_TENSORS_BITS,
                                  "scale_dtype": ("bfloat16", "float16", "float32"),
                                  "symmetric": (True, False)}, "compressed_tensors"),
    "onnx": Target(to_onnx, {"bits": (4, 8), "scale_dtype": ("float32", "float16"),
                             "zero_point": (True, False)}, "onnxruntime"),
}


def export(x: ArrayLike, format: str, **options: Any) -> Export:
    """Export ``x`` to ``format`` (a key of :data:`FORMATS`) with that target's ``options``.

    Examples
    --------
    >>> import numpy as np, qe4.export
    >>> x = np.random.default_rng(0).standard_normal((4, 32), dtype=np.float32)
    >>> qe4.export.export(x, "onnx", bits=4, block_size=16).bits_per_weight
    6.25
    """
    if not isinstance(format, str):
        raise TypeError(f"format must be a string, got {format!r}")
    return FORMATS[_check_choice(format, "format", FORMATS)].function(x, **options)


# --------------------------------------------------------------------------- writers

def _write_tensors(e, path, name):
    prefix = "" if e.format == "executorch" else f"{name or 'embed_tokens'}."
    meta = {"format": f"qe4-export:{e.format}",
            "options": json.dumps(e.options, sort_keys=True)}
    if e.format == "compressed-tensors":
        meta["quantization_config"] = json.dumps(e.quantization_config(), sort_keys=True)
    _write_safetensors(path, {prefix + k: v for k, v in e.tensors.items()},
                       {prefix + k: e.dtypes[k] for k in e.tensors}, meta)


def _write_gguf(e, path, name):
    import gguf
    w = gguf.GGUFWriter(path, arch="qe4")
    qtype = getattr(gguf.GGMLQuantizationType, e.options["qtype"])
    w.add_tensor(name or "token_embd.weight", e.tensors["blocks"], raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def onnx_model(e: Export, *, name: str | None = None) -> onnx.ModelProto:
    """An ``onnx.ModelProto``: int64 ``indices`` [n] -> ``embeddings`` [n, dim] via
    ``com.microsoft.GatherBlockQuantized`` over the export's initializers (needs ``onnx``)."""
    if e.format != "onnx":
        raise ValueError(f"onnx_model needs an onnx export, got {e.format!r}")
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    out_type = TensorProto.FLOAT16 if e.options["scale_dtype"] == "float16" else TensorProto.FLOAT
    inits = [numpy_helper.from_array(e.tensors[k], k) for k in ("data", "scales", "zero_points")
             if k in e.tensors]
    node = helper.make_node("GatherBlockQuantized", [t.name for t in inits[:1]] + ["indices"]
                            + [t.name for t in inits[1:]], ["embeddings"],
                            domain="com.microsoft", gather_axis=0, quantize_axis=1,
                            block_size=e.options["block_size"], bits=e.options["bits"])
    graph = helper.make_graph(
        [node], name or "qe4_embedding",
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("embeddings", out_type, ["n", e.shape[1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def _write_onnx(e, path, name):
    import onnx
    onnx.save(onnx_model(e, name=name), path)


_WRITERS = {"executorch": _write_tensors, "compressed-tensors": _write_tensors,
            "gguf": _write_gguf, "onnx": _write_onnx}


# --------------------------------------------------------------------------- CLI

def configure_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``qe4 export IN OUT --format F``."""
    p.add_argument("input", metavar="IN", help=".npy or .safetensors file holding a 2-D float table")
    p.add_argument("output", metavar="OUT", help="file to write (.gguf, .onnx or .safetensors)")
    p.add_argument("--format", required=True, choices=tuple(FORMATS), help="target layout")
    p.add_argument("--bits", type=int, default=None, help="bits per value (executorch: 2/4/8, "
                   "compressed-tensors: 2/4/8, onnx: 4/8; default 4)")
    p.add_argument("--qtype", default=None, help="gguf: Q8_0, Q4_0 (default) or Q4_1")
    p.add_argument("--group-size", type=int, default=None,
                   help="values per scale (executorch, compressed-tensors, onnx block size)")
    p.add_argument("--scale-dtype", default=None, help="dtype of scales (float32, float16, bfloat16)")
    p.add_argument("--symmetric", action="store_true",
                   help="no zero points (executorch, compressed-tensors, onnx)")
    p.add_argument("--search", choices=SEARCHES, default="greedy", help="greedy (default) or minmax")
    p.add_argument("--n-bins", type=int, default=200, help="search grid bins (default 200)")
    p.add_argument("--ratio", type=float, default=0.16, help="search ratio (default 0.16)")
    p.add_argument("--tensor", default=None, help="tensor name inside a .safetensors input")
    p.add_argument("--name", default=None, help="tensor name in the output")


def _cli_options(args):
    opts = {"search": args.search, "n_bins": args.n_bins, "ratio": args.ratio}
    if args.format == "gguf":
        for flag in ("bits", "group_size", "scale_dtype"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} does not apply to --format gguf "
                                 f"(use --qtype)")
        if args.symmetric:
            raise ValueError("--symmetric does not apply to --format gguf (Q4_0 and Q8_0 are)")
        opts["qtype"] = args.qtype or "Q4_0"
        return opts
    if args.qtype is not None:
        raise ValueError(f"--qtype applies to --format gguf only, not {args.format}")
    if args.bits is not None:
        opts["bits"] = args.bits
    if args.scale_dtype is not None:
        opts["scale_dtype"] = args.scale_dtype
    key = "block_size" if args.format == "onnx" else "group_size"
    if args.group_size is not None:
        opts[key] = args.group_size
    if args.format == "compressed-tensors":
        opts["symmetric"] = args.symmetric
    else:
        opts["zero_point"] = not args.symmetric
    return opts


def run(args: argparse.Namespace) -> int:
    """``qe4 export``: export a float table and print its bits per weight and error."""
    from .stream import Source
    opts = _cli_options(args)
    with Source(args.input, args.tensor) as src:
        x = np.ascontiguousarray(src.read(0, src.n_rows))
    e = export(x, args.format, **opts)
    e.save(args.output, name=args.name)
    print(f"input   {args.input}: {x.shape[0]:,} x {x.shape[1]} {x.dtype}")
    print(f"output  {args.output}: {e!r}")
    print(f"size    {e.bits_per_weight:.3f} bits/weight ({100 * e.bits_per_weight / 32:.2f}% of float32)")
    print(f"normalized error  {e.error:.4e}  (sum ||x - x_hat||^2 / sum ||x||^2, "
          f"as the consumer dequantizes)")
    if e.format == "compressed-tensors":
        print("quantization_config " + json.dumps(e.quantization_config()))
    return 0
