"""Choosing the implementation that does the work: the one place for it.

``"reference"`` is this package, :mod:`qe4` (the NumPy specification); ``"fast"``
is the compiled twin ``qe4_fast`` (same functions, plus ``n_threads``, same bytes).
There is no silent fallback: asking for ``"fast"`` when it is not built raises an
ImportError that says how to build it or to pass ``engine="reference"``.

Every entry point that takes ``engine`` and ``n_threads`` (streaming, shards, Dask,
the CLI) builds an :class:`Engine` with :func:`engine`, so they accept the same
values and raise the same errors: ``n_threads`` is for the fast engine; the
reference runs on one thread and accepts only ``None`` or ``1``
(:func:`check_n_threads`, one check, one message).
"""

from __future__ import annotations
from typing import TYPE_CHECKING, Any
from types import ModuleType

if TYPE_CHECKING:
    from .frontend import Request
    from ._typing import Encoded, Float32Array

ENGINES = ("fast", "reference")


def check_engine(name: str) -> str:
    """``name`` if it is an engine name; ValueError otherwise."""
    if not isinstance(name, str) or name not in ENGINES:
        raise ValueError(f"engine must be 'fast' or 'reference', got {name!r}")
    return name


def check_n_threads(engine: str, n_threads: int | None, what: str = "n_threads") -> int | None:
    """``n_threads`` is the fast engine's; the reference runs on one thread (None or 1).

    The value itself is checked by the fast engine (``qe4_fast``) when it runs.
    ``what`` names the argument in the message (the CLI's ``--threads``).
    """
    if engine == "reference" and n_threads is not None and not (
            type(n_threads) is int and n_threads == 1):
        raise ValueError(f"{what}={n_threads!r} applies to engine='fast' only "
                         "(engine='reference' runs on one thread)")
    return n_threads


def get_engine(engine: str) -> ModuleType:
    """The module (``qe4`` or ``qe4_fast``) whose ``quantize``, ``dequantize``,
    ``embedding_bag``, ... do the work for ``engine``."""
    check_engine(engine)
    if engine == "reference":
        import qe4
        return qe4
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


class Engine:
    """An implementation (``"reference"`` or ``"fast"``) and the thread count it runs with.

    Build it with :func:`engine`.  ``call(name, ...)`` calls the engine's public
    function ``name`` with ``n_threads`` added for the fast engine; ``encode``
    runs a checked request's encoder (:mod:`qe4.frontend`).
    """

    __slots__ = ("name", "n_threads", "module")

    def __init__(self, name: str, n_threads: int | None, module: ModuleType) -> None:
        self.name = name
        self.n_threads = n_threads
        self.module = module

    @property
    def kwargs(self) -> dict[str, Any]:
        """``{"n_threads": n}`` for the fast engine, ``{}`` for the reference."""
        return {"n_threads": self.n_threads} if self.name == "fast" else {}

    def function(self, name: str) -> Any:
        return getattr(self.module, name)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, name)(*args, **kwargs, **self.kwargs)

    def encode(self, request: Request, x: Float32Array) -> Encoded:
        """``(data, extras)`` of validated float32 rows ``x`` for a checked request."""
        if self.name == "fast":
            return request.method.compiled_encoder()(request, x, self.n_threads)
        return request.method.encoder()(request, x)

    def __repr__(self):
        return f"Engine({self.name!r}, n_threads={self.n_threads!r})"


def engine(name: str = "fast", n_threads: int | None = None, *, what: str = "n_threads") -> Engine:
    """Check ``name`` and ``n_threads`` together and return the :class:`Engine`
    (ImportError for ``"fast"`` when qe4_fast is not built)."""
    check_engine(name)
    check_n_threads(name, n_threads, what)
    return Engine(name, n_threads, get_engine(name))
