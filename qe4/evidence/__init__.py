"""Evidence on real data: does a method keep model quality, and at what size?

``qe4 evidence`` (or ``python bench/evidence.py``) runs

* GloVe 6B 50d (400,000 x 50): table error, frequency-weighted error and Google-analogy
  accuracy for every method at 2/4/8 bits, plus peers (faiss-cpu, bitsandbytes) if installed;
* MovieLens-100k: a matrix-factorization and a DLRM-style click model trained per seed,
  their embedding tables quantized post-training by every method, paired deltas of RMSE,
  AUC and log loss against float32;
* all-MiniLM-L6-v2 (:mod:`qe4.evidence.minilm`): every embedding table of a real
  transformer quantized by :func:`qe4.torch.quantize_model`, sentence-embedding cosine to
  float32 and top-10 neighbour overlap;
* the size table (bytes per row, % of float32);

writes every number to a JSON cache (``bench/results/evidence.json``), the figures
(:mod:`qe4.plots`) and ``figures/RESULTS.rst``.  ``--quick`` is a tiny smoke run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
import argparse
from typing import Any

from . import common as C
from .sizes import size_table

DEFAULT_RESULTS = os.path.join("bench", "results", "evidence.json")
QUICK_RESULTS = os.path.join("bench", "results", "evidence-quick.json")
DEFAULT_FIGURES = "figures"
PARTS = ("sizes", "glove", "movielens", "minilm")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``qe4 evidence`` options to an argparse (sub)parser."""
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke run (2k GloVe rows, 1 seed, 1 epoch on 3k ratings)")
    parser.add_argument("--engine", choices=("auto", "fast", "reference"), default="auto",
                        help="quantizer implementation; auto = qe4_fast if it is built (printed)")
    parser.add_argument("--n-threads", type=int, default=None, help="threads of the fast engine")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--seeds", type=int, default=3, help="MovieLens seeds (>= 3 for the report)")
    parser.add_argument("--glove-rows", type=int, default=None, help="use the first N GloVe rows")
    parser.add_argument("--minilm-sentences", type=int, default=None,
                        help="MiniLM part: number of sentences (default 1000, with --quick 24)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods (default: every qe4 method and installed peer)")
    parser.add_argument("--no-peers", action="store_true", help="skip faiss-cpu / bitsandbytes")
    parser.add_argument("--out", default=None,
                        help=f"results JSON (default {DEFAULT_RESULTS}, with --quick {QUICK_RESULTS}); "
                             "parts not run are kept from it")
    parser.add_argument("--figures", default=None,
                        help=f"figure directory (default {DEFAULT_FIGURES}, with --quick none); "
                             "'none' to skip figures")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the experiments chosen by ``args`` (from :func:`configure_parser`); returns 0."""
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        raise ValueError(f"--parts: unknown part(s) {bad}; choose from {PARTS}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    # import every module now: editing the sources during a long run must not break its end
    from .. import plots
    from . import glove, movielens
    from .report import write_rst
    engine = C.Engine(args.engine, args.n_threads)
    quiet = args.quiet
    print(f"qe4 evidence: engine {engine.describe()}", file=sys.stderr)
    only = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    C.qe4_methods(only)                       # rejects unknown names before any work
    peers, missing = ({}, {}) if args.no_peers else C.available_peers()
    if only is not None:
        peers = {m: v for m, v in peers.items() if m in only}
    for name, why in missing.items():
        C.log(f"peer {name} skipped: {why}", quiet)
    out = args.out or (QUICK_RESULTS if args.quick else DEFAULT_RESULTS)
    results = _carried_over(out, parts, args.quick, quiet)
    results["meta"] = _meta(args, engine, peers, missing)
    results["meta"]["parts_run"] = parts
    t0 = time.perf_counter()
    if "sizes" in parts:
        results["sizes"] = size_table()
    if "glove" in parts:
        n_rows = args.glove_rows or (2000 if args.quick else None)
        _run_part(results, "glove", out, quiet, lambda: glove.run(
            engine, n_rows=n_rows, peers=peers, quiet=quiet, methods=only,
            curve_rows=100 if args.quick else glove.HEAVY_ROWS))
    if "movielens" in parts:
        def movielens_available():
            movielens.data_dir()
            import torch  # noqa: F401

        kw = dict(seeds=tuple(range(1 if args.quick else args.seeds)), peers=peers, quiet=quiet,
                  methods=only)
        if args.quick:
            kw.update(epochs=1, max_rows=3000, bits=(4,))
        _run_part(results, "movielens", out, quiet, lambda: movielens.run(engine, **kw),
                  available=movielens_available)
    if "minilm" in parts:
        from . import minilm
        n = args.minilm_sentences or (24 if args.quick else 1000)
        variants = minilm.VARIANTS[:1] if args.quick else minilm.VARIANTS
        _run_part(results, "minilm", out, quiet, lambda: minilm.run(
            engine, n_sentences=n, variants=variants, quiet=quiet),
            available=minilm.check_available)
    results["meta"]["seconds"] = time.perf_counter() - t0
    write_json(results, out)
    C.log(f"results: {out} ({results['meta']['seconds']:.0f} s)", quiet)
    fig_dir = args.figures or ("none" if args.quick else DEFAULT_FIGURES)
    if fig_dir.lower() != "none":
        paths = plots.plot_all(results, fig_dir)
        rst = write_rst(results, os.path.join(fig_dir, "RESULTS.rst"), fig_dir)
        C.log("figures: " + ", ".join(paths + [rst]), quiet)
    return 0


def _run_part(results, name, out, quiet, run, available=None):
    """``results[name] = run()`` with its ``seconds``, then the cache at ``out`` written (a
    later failure keeps this part).  ``available()`` raising ImportError skips the part
    (recorded as ``{"skipped": reason}``)."""
    t = time.perf_counter()
    try:
        if available is not None:
            available()
    except ImportError as exc:
        C.log(f"{name} skipped: {exc}", quiet)
        results[name] = {"skipped": str(exc)}
    else:
        results[name] = run()
        results[name]["seconds"] = time.perf_counter() - t
    write_json(results, out)


def _carried_over(path, parts, quick, quiet):
    """The parts of an existing cache at ``path`` that this run does not redo."""
    if not os.path.exists(path):
        return {}
    try:
        old = load_results(path)
    except (OSError, ValueError):
        return {}
    if bool(old.get("meta", {}).get("quick")) != bool(quick):
        return {}
    kept = {k: v for k, v in old.items() if k in PARTS and k not in parts}
    if kept:
        C.log(f"keeping {', '.join(sorted(kept))} from {path} (run {old['meta'].get('date', '?')})", quiet)
        kept["meta_carried"] = {k: old["meta"] for k in kept}
    return kept


def _meta(args, engine, peers, missing):
    import numpy
    import qe4
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "qe4 evidence" + (" --quick" if args.quick else ""),
            "engine": engine.name, "engine_note": engine.notes(),
            "qe4": qe4.__version__,
            "methods": {m: list(b) for m, b in C.qe4_methods().items()},
            "methods_run": args.methods or "all",
            "python": platform.python_version(), "numpy": numpy.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "quick": bool(args.quick),
            "peers": {m: C.peer_version(m) for m in peers}, "peers_missing": missing}
    try:
        import torch
        meta["torch"] = torch.__version__
    except ImportError:
        pass
    return meta


def write_json(results: dict[str, Any], path: str) -> None:
    """Write ``results`` atomically (temporary file, then rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


def load_results(path: str = DEFAULT_RESULTS) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
