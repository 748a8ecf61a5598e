"""Shared pieces of the evidence run: engine choice, the methods compared, peers, progress."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

import qe4

if TYPE_CHECKING:
    from ..table import QuantizedTable

from qe4 import method_registry as M
from qe4.engines import get_engine

UNIFORM_BITS = (2, 4, 8)


# --------------------------------------------------------------------------- engine

class Engine:
    """Which implementation quantizes: the NumPy reference ``qe4`` or the compiled ``qe4_fast``.

    Chosen explicitly (``--engine``); "auto" takes ``qe4_fast`` when it imports and says
    so, and an explicit "fast" that does not import is an error, never a quiet fallback.
    """

    def __init__(self, name: str = "auto", n_threads: int | None = None) -> None:
        if name not in ("auto", "fast", "reference"):
            raise ValueError(f"engine must be 'auto', 'fast' or 'reference', got {name!r}")
        self.reason = ""
        self.module = qe4
        if name in ("auto", "fast"):
            try:
                self.module = get_engine("fast")     # ImportError when qe4_fast is not built
                name = "fast"
            except ImportError as exc:
                if name == "fast":
                    raise
                self.module, name, self.reason = qe4, "reference", f"qe4_fast unavailable: {exc}"
        self.name = name
        self.n_threads = n_threads
        self.fast_methods, self.not_fast = set(), {}
        if name == "fast":
            for m in qe4.methods():
                why = self._probe(m)
                if why is None:
                    self.fast_methods.add(m)
                else:
                    self.not_fast[m] = why

    def _probe(self, method):
        """None if qe4_fast quantizes ``method`` (a tiny call succeeds), else the reason."""
        if method not in getattr(self.module, "methods", qe4.methods)():
            return "not offered by qe4_fast"
        probe = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8)
        try:
            self.module.quantize(probe, 4, method)
        except Exception as exc:                # noqa: BLE001  a half-built twin: say so, run the reference
            return f"{type(exc).__name__}: {exc}"
        return None

    def engine_for(self, method: str) -> str:
        """"fast" or "reference": the engine that runs ``method`` (codebooks may be reference-only)."""
        return "fast" if method in self.fast_methods else "reference"

    def quantize(self, x: ArrayLike, bits: int, method: str) -> QuantizedTable:
        if self.engine_for(method) == "fast":
            kw = {} if self.n_threads is None else {"n_threads": self.n_threads}
            return self.module.quantize(x, bits, method, **kw)
        return qe4.quantize(x, bits, method)

    def notes(self) -> str:
        """Why the reference runs where it does ("" when the fast engine runs everything)."""
        out = [self.reason] if self.reason else []
        out += [f"{m} runs on the reference ({why})" for m, why in self.not_fast.items()]
        return "; ".join(out)

    def describe(self) -> str:
        """One line for the log: the engine, and every method it does not run itself."""
        return self.name + (f" ({self.notes()})" if self.notes() else "")


def offered_bits(method: str, candidates: Sequence[int] = UNIFORM_BITS) -> tuple[int, ...]:
    """The bit widths of ``candidates`` (default: the evidence's 2, 4 and 8 bits, the widths
    torch also serves) that ``qe4.quantize`` accepts for ``method`` (the method registry's:
    :attr:`qe4.method_registry.Method.allowed_bits`)."""
    allowed = M.get(method).allowed_bits
    return tuple(b for b in candidates if b in allowed)


def qe4_methods(only: Iterable[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Every qe4 method (or those in ``only``) with the bit widths it offers,
    e.g. {"greedy": (2, 4, 8)}."""
    names = qe4.methods()
    if only is not None:
        unknown = sorted(set(only) - set(names) - set(PEERS))
        if unknown:
            raise ValueError(f"--methods: unknown method(s) {unknown}; qe4 offers {list(names)}")
        names = [m for m in names if m in only]
    return {m: offered_bits(m) for m in names}


# --------------------------------------------------------------------------- peers

def _faiss_sq(x, bits):
    """faiss-cpu ScalarQuantizer (per-dimension min/max trained on the table)."""
    import faiss
    qtype = {4: faiss.ScalarQuantizer.QT_4bit, 8: faiss.ScalarQuantizer.QT_8bit}[bits]
    x = np.ascontiguousarray(x, np.float32)
    sq = faiss.ScalarQuantizer(x.shape[1], qtype)
    sq.train(x)
    codes = sq.compute_codes(x)
    x_hat = sq.decode(codes)
    # codes plus the trained per-dimension (vmin, vdiff), shared by the table
    return x_hat, codes.nbytes + 2 * 4 * x.shape[1]


def _bnb_nf4(x, bits):
    """bitsandbytes NF4 with one block per row (rows zero-padded to a supported block size)."""
    import bitsandbytes.functional as F
    import torch
    n_rows, dim = x.shape
    block = next(b for b in (64, 128, 256, 512, 1024, 2048, 4096) if b >= dim)
    padded = np.zeros((n_rows, block), np.float32)
    padded[:, :dim] = x                       # zeros never change a block's absmax
    q, state = F.quantize_4bit(torch.from_numpy(padded), blocksize=block, quant_type="nf4")
    x_hat = F.dequantize_4bit(q, state).numpy().reshape(n_rows, block)[:, :dim]
    # per row: dim 4-bit codes + one float32 absmax (padding is not stored in a real layout)
    return np.ascontiguousarray(x_hat), n_rows * (-(-dim // 2) + 4)


PEERS = {
    "faiss-sq": ("faiss", (4, 8), _faiss_sq),
    "bnb-nf4": ("bitsandbytes.functional", (4,), _bnb_nf4),
}


def available_peers() -> tuple[dict[str, Any], dict[str, str]]:
    """{name: (bits, fn)} of the peers that import here, and {name: reason} of those that do not."""
    ok, missing = {}, {}
    for name, (module, bits, fn) in PEERS.items():
        try:
            import logging
            logging.disable(logging.WARNING)    # bitsandbytes logs about optional GPU kernels
            try:
                importlib.import_module(module)
            finally:
                logging.disable(logging.NOTSET)
        except Exception as exc:                # noqa: BLE001  (a broken optional install is "absent")
            missing[name] = f"{type(exc).__name__}: {exc}"
            continue
        ok[name] = (bits, fn)
    return ok, missing


def peer_version(name: str) -> str | None:
    module = {"faiss-sq": "faiss", "bnb-nf4": "bitsandbytes"}[name]
    try:
        return importlib.import_module(module).__version__
    except Exception:                           # noqa: BLE001
        return None


# --------------------------------------------------------------------------- running

def reconstruct(engine: Engine, x: ArrayLike, bits: int, method: str,
                peers: dict[str, Any] | None = None) -> tuple[NDArray[np.float32], int, float]:
    """(x_hat float32, stored bytes, seconds) of ``method`` at ``bits`` on table ``x``."""
    t0 = time.perf_counter()
    if peers and method in peers:
        x_hat, nbytes = peers[method][1](x, bits)
    else:
        table = engine.quantize(x, bits, method)
        x_hat, nbytes = table.dequantize(), table.nbytes
    return np.asarray(x_hat, np.float32), int(nbytes), time.perf_counter() - t0


def same_bytes_as_reference(engine: Engine, x: ArrayLike, bits: int, method: str) -> bool:
    """True if ``engine`` and the reference produce byte-identical tables for ``x``."""
    a, b = engine.quantize(x, bits, method), qe4.quantize(x, bits, method)
    return a == b


def jobs(methods: Mapping[str, Sequence[int]], peers: dict[str, Any],
         bits_wanted: Sequence[int]) -> list[tuple[str, int, str]]:
    """The (method, bits, family) pairs to run: qe4 methods at every offered width, then peers."""
    out = []
    for m, offered in methods.items():
        out += [(m, b, "qe4") for b in bits_wanted if b in offered]
    for m, (offered, _) in peers.items():
        out += [(m, b, "peer") for b in bits_wanted if b in offered]
    return out


def progress(iterable: Iterable[Any], desc: str, total: int | None = None,
             quiet: bool = False) -> Iterable[Any]:
    """tqdm progress on stderr (silent when ``quiet``)."""
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, disable=quiet, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)
