"""Presets: named combinations of method, bit width and options, as llama.cpp's users know them.

A preset is one line a user can remember (``qe4.quantize(x, preset="mse-4")``,
``qe4 quantize IN OUT --preset mse-4``) for a choice that has been measured to be useful:
every preset appears in the README's frontier table (``bench/bench_frontier.py`` measures
all of them: bits per element, error, quantize and lookup speed).  A preset fixes the
method, ``bits``, ``scale_dtype`` and the method's options; passing any of those with
``preset=`` is a TypeError (one source of truth per call).  ``n_bins``/``ratio`` stay the
grid defaults.

Names are ``<method or family>-<bits>``; :func:`presets` lists them with their summaries.
Adding a preset: one :class:`Preset` line in ``_ENTRIES`` below (the tests, the CLI's
choices and the frontier bench read this registry).

This module imports only the method registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from . import method_registry as M

DEFAULT_BITS = 4
DEFAULT_METHOD = "greedy"


@dataclass(frozen=True)
class Preset:
    """One named choice.

    Attributes
    ----------
    name : str
    method : str
        A registered method (:mod:`qe4.method_registry`).
    bits : int
    summary : str
        One line: what it is and who serves it.
    options : tuple of (str, value)
        The method's options (checked by the method's own option checks).
    scale_dtype : str or None
        None: the layout's default for ``bits``.
    """
    name: str
    method: str
    bits: int
    summary: str
    options: tuple[tuple[str, Any], ...] = ()
    scale_dtype: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """The method's options as keyword arguments."""
        return dict(self.options)


_ENTRIES = (
    Preset("torch-2", "greedy", 2, "torch's 2-bit rows with the paper's greedy range "
           "(embedding_bag_2bit_prepack's optimized search); torch and FBGEMM serve it"),
    Preset("mse-2", "mse", 2, "torch's 2-bit rows with each row's least-squares range: "
           "the same bytes per row, served by the same ops, much lower error"),
    Preset("codebook-2", "kmeans-optimal", 2, "the optimal 4-centroid float16 codebook of each "
           "row (exact 1-D k-means)"),
    Preset("mse-3", "mse", 3, "3-bit rowwise rows (bit-stream codes, float16 scale and bias) "
           "with each row's least-squares range: the rung between 2 and 4 bits; qe4 and "
           "qe4_fast serve it, torch has no 3-bit op"),
    Preset("torch-4", "greedy", 4, "torch's 4-bit rows with the paper's greedy range "
           "(embedding_bag_4bit_prepack's optimized search); torch and FBGEMM serve it"),
    Preset("mse-4", "mse", 4, "torch's 4-bit rows with each row's least-squares range "
           "(torch's ops serve it unchanged)"),
    Preset("two-tier-4", "two-tier", 4, "16 shared 16-centroid codebooks, one byte of "
           "group id per row: about 4 bits per element plus 1 byte per row",
           options=(("n_groups", 16),)),
    Preset("codebook-4", "kmeans-optimal", 4, "the optimal 16-centroid float16 codebook of each "
           "row (exact 1-D k-means; 32 bytes of centroids per row: for wide rows)"),
    Preset("mse-5", "mse", 5, "5-bit rowwise rows (bit-stream codes) with each row's "
           "least-squares range; qe4 and qe4_fast serve it, torch has no 5-bit op"),
    Preset("mse-6", "mse", 6, "6-bit rowwise rows (bit-stream codes) with each row's "
           "least-squares range; qe4 and qe4_fast serve it, torch has no 6-bit op"),
    Preset("grouped-2", "grouped", 2, "2-bit codes, a 4-bit scale and min per 16 values under "
           "float16 super-scales: 2.625 bits per element at dim 256 (GGUF Q2_K's rate)",
           options=(("group", 16), ("sub_bits", 4))),
    Preset("grouped-3", "grouped", 3, "3-bit codes, a 5-bit scale and min per 32 values: "
           "3.4375 bits per element at dim 256 (GGUF Q3_K's rate)",
           options=(("group", 32), ("sub_bits", 5))),
    Preset("grouped-4-64", "grouped", 4, "4-bit codes, a 4-bit scale and min per 64 values: "
           "4.25 bits per element at dim 256 (GGUF IQ4_XS's rate)",
           options=(("group", 64), ("sub_bits", 4))),
    Preset("grouped-4", "grouped", 4, "4-bit codes, a 6-bit scale and min per 32 values: 4.5 "
           "bits per element at dim 256, GGUF Q4_K's layout (qe4.export writes Q4_K from it)",
           options=(("group", 32), ("sub_bits", 6))),
    Preset("grouped-5", "grouped", 5, "5-bit codes, a 6-bit scale and min per 32 values: 5.5 "
           "bits per element at dim 256 (GGUF Q5_K's rate)",
           options=(("group", 32), ("sub_bits", 6))),
    Preset("grouped-6", "grouped", 6, "6-bit codes, a 6-bit scale and min per 32 values: 6.5 "
           "bits per element at dim 256 (under GGUF Q6_K's 6.5625)",
           options=(("group", 32), ("sub_bits", 6))),
    Preset("nl-2", "grouped", 2, "grouped-2 with qe4's non-uniform levels (levels='nl'): "
           "2.625 bits per element at dim 256", options=(("group", 16), ("sub_bits", 4),
                                                          ("levels", "nl"))),
    Preset("nl-3", "grouped", 3, "grouped-3 with qe4's non-uniform levels: 3.4375 bits per "
           "element at dim 256", options=(("group", 32), ("sub_bits", 5), ("levels", "nl"))),
    Preset("nl-4-64", "grouped", 4, "grouped-4-64 with qe4's non-uniform levels: 4.25 bits "
           "per element at dim 256 (GGUF IQ4_XS's rate)",
           options=(("group", 64), ("sub_bits", 4), ("levels", "nl"))),
    Preset("nl-4", "grouped", 4, "4-bit codes on qe4's non-uniform levels, a 6-bit scale and "
           "min per 32 values: 4.5 bits per element at dim 256 (the rate of GGUF Q4_K and "
           "IQ4_NL)",
           options=(("group", 32), ("sub_bits", 6), ("levels", "nl"))),
    Preset("nl-5", "grouped", 5, "grouped-5 with qe4's non-uniform levels: 5.5 bits per "
           "element at dim 256", options=(("group", 32), ("sub_bits", 6), ("levels", "nl"))),
    Preset("nl-6", "grouped", 6, "grouped-6 with qe4's non-uniform levels: 6.5 bits per "
           "element at dim 256", options=(("group", 32), ("sub_bits", 6), ("levels", "nl"))),
    Preset("nls-3", "grouped", 3, "3-bit codes on qe4's signed non-uniform levels, a 6-bit "
           "signed sub-scale per 16 values (mins='none'): 3.4375 bits per element at dim 256 "
           "(GGUF Q3_K's rate)",
           options=(("group", 16), ("sub_bits", 6), ("levels", "nl"), ("mins", "none"))),
    Preset("nls-4", "grouped", 4, "4-bit codes on qe4's signed non-uniform levels, scale-only "
           "groups of 32 (a 6-bit signed sub-scale each, one float16 per row; mins='none'): "
           "4.25 bits per element at dim 256 (GGUF IQ4_XS's rate), 4.5 at dim 64 (IQ4_NL's)",
           options=(("group", 32), ("sub_bits", 6), ("levels", "nl"), ("mins", "none"))),
    Preset("nls-4-16", "grouped", 4, "nls-4 with groups of 16: 4.4375 bits per element at dim "
           "256; the lowest error per bit at 4 bits",
           options=(("group", 16), ("sub_bits", 6), ("levels", "nl"), ("mins", "none"))),
    Preset("nls-5", "grouped", 5, "5-bit codes on qe4's signed non-uniform levels, a 6-bit "
           "signed sub-scale per 16 values: 5.4375 bits per element at dim 256 (under GGUF "
           "Q5_K's 5.5)",
           options=(("group", 16), ("sub_bits", 6), ("levels", "nl"), ("mins", "none"))),
    Preset("nls-6", "grouped", 6, "6-bit codes on qe4's signed non-uniform levels, an 8-bit "
           "signed sub-scale per 16 values: 6.5625 bits per element at dim 256 (GGUF Q6_K's "
           "layout and rate)",
           options=(("group", 16), ("sub_bits", 8), ("levels", "nl"), ("mins", "none"))),
    Preset("torch-8", "minmax", 8, "torch's byte rows (embedding_bag_byte_prepack: each "
           "row's min and max, float32 scale and bias)"),
)


def _register(entries):
    out = {}
    for p in entries:
        if p.name in out:
            raise RuntimeError(f"preset {p.name!r} is registered twice")
        m = M.get(p.method)
        if p.bits not in m.allowed_bits:
            raise RuntimeError(f"preset {p.name!r}: method {p.method!r} does not store {p.bits} bits")
        m.check_options(p.kwargs())
        out[p.name] = p
    return out


#: name -> Preset, in registry order.
PRESETS = _register(_ENTRIES)


def names() -> tuple[str, ...]:
    """Every preset name, in registry order."""
    return tuple(PRESETS)


def get(name: str) -> Preset:
    """The preset ``name``: TypeError for a non-string, ValueError naming the choices."""
    if not isinstance(name, str):
        raise TypeError(f"preset must be a string, got {name!r}")
    p = PRESETS.get(name)
    if p is None:
        raise ValueError(f"preset must be one of {names()}, got {name!r}")
    return p


def resolve(preset: str | None, bits: int | None, method: str | None, scale_dtype: str | None,
            kwargs: Mapping[str, Any] | None) -> tuple[int, str, str | None, dict[str, Any]]:
    """``(bits, method, scale_dtype, kwargs)`` of a call.

    Without a preset: ``bits`` None means 4, ``method`` None means "greedy".  With one,
    the preset's values, and a TypeError if the call also passed any of them.
    """
    kwargs = dict(kwargs or {})
    if preset is None:
        return (DEFAULT_BITS if bits is None else bits, DEFAULT_METHOD if method is None else method,
                scale_dtype, kwargs)
    p = get(preset)
    given = [n for n, v in (("bits", bits), ("method", method), ("scale_dtype", scale_dtype))
             if v is not None] + sorted(kwargs)
    if given:
        raise TypeError(f"preset={preset!r} sets bits, method, scale_dtype and the method's "
                        f"options; do not pass {given} with it")
    return p.bits, p.method, p.scale_dtype, p.kwargs()


def help_text() -> str:
    """``name: summary`` of every preset (the CLI's ``--preset`` help)."""
    return "; ".join(f"{p.name} ({p.method}, {p.bits} bits): {p.summary}" for p in PRESETS.values())
