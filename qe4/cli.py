"""The ``qe4`` command line: quantize, info, demo, plot, evidence, export.

``main(argv=None)`` returns the exit code: 0 on success, 2 for a user error
(bad arguments or input), which is printed as one line on stderr without a
traceback, 130 when interrupted (Ctrl-C, SIGINT), 143 when terminated (SIGTERM,
which ``main`` handles like SIGINT: the output being written is removed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import argparse
from collections.abc import Sequence

import numpy as np

from . import _validate as V
from . import engines as E
from . import frontend
from . import method_registry as M
from . import preset_registry as P

EXIT_USAGE = 2
GLOVE_CREDIT = ("Data: GloVe 6B 50d, the 20,000 most frequent words (Pennington, Socher and "
                "Manning, EMNLP 2014; PDDL-1.0), bundled with qe4.")
# subcommands implemented elsewhere: name -> (module, help); imported only when used
DELEGATED = {
    "plot": ("qe4.plots", "draw the figures from `qe4 evidence` results, or one row's error grid"),
    "evidence": ("qe4.evidence", "run the real-data experiments (GloVe, MovieLens) and cache results"),
    "export": ("qe4.export", "export a float table to ExecuTorch, GGUF, compressed-tensors or ONNX layouts"),
}


class UserError(Exception):
    """An error to print as one line (exit code 2)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C is (so every cleanup runs)."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the command runs, SIGTERM raises :class:`Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _size(text):
    from .stream import parse_size
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return n


def _budget(text):
    from .allocate import parse_budget
    try:
        parse_budget(text, 1)          # its syntax now; its bytes once the table's size is known
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _default_ladder():
    from .allocate import default_ladder
    return default_ladder()


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


# --------------------------------------------------------------------------- parser

def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser; ``command`` (the subcommand about to run) lets ``plot`` and
    ``evidence`` import their modules only when they are used."""
    p = _Parser(prog="qe4", description="Post-training 4-bit quantization of embedding tables "
                "(greedy clipping search, codebooks), byte-compatible with PyTorch/FBGEMM.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"qe4 {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    q = sub.add_parser("quantize", help="quantize a .npy/.safetensors table into a qe4 file (streaming)",
                       description="Quantize a table on disk into a qe4 file, chunk by chunk "
                       "(out of core): the input is memory-mapped, the output written atomically.")
    q.add_argument("input", metavar="IN", help=".npy or .safetensors file holding a 2-D float table")
    q.add_argument("output", metavar="OUT", help="qe4 file to write (safetensors)")
    q.add_argument("--preset", default=None, choices=P.names(), metavar="PRESET",
                   help=f"one of {', '.join(P.names())}: sets --bits, --method, --scale-dtype and "
                   "the method's options (pass none of them with it). " + P.help_text())
    q.add_argument("--bits", type=int, default=None, choices=V.BITS,
                   help="bits per value (default 4)")
    q.add_argument("--method", default=None, choices=M.names(), metavar="METHOD",
                   help=f"one of {', '.join(M.names())} (default greedy). " + M.help_text())
    q.add_argument("--n-bins", type=int, default=None, help="search grid bins (default 200)")
    q.add_argument("--ratio", type=float, default=None, help="greedy ratio (default 0.16)")
    for opt, users in _method_options().items():
        q.add_argument("--" + opt.name.replace("_", "-"), type=opt.value_type, default=None,
                       dest="opt_" + opt.name,
                       help=f"{opt.doc} ({', '.join(users)}; default {opt.default})")
    q.add_argument("--scale-dtype", choices=V.SCALE_DTYPES, default=None,
                   help="dtype of scale/bias or centroids (default: torch's layout, float16 below 8 bits)")
    q.add_argument("--engine", choices=E.ENGINES, default="fast",
                   help="fast = compiled qe4_fast (default), reference = NumPy qe4")
    q.add_argument("--threads", type=_int, default=None, help="threads of the fast engine")
    q.add_argument("--max-memory", type=_size, default=None,
                   help="working-memory budget, e.g. 2G or 512M (default: 1/4 of free RAM, <= 1G)")
    q.add_argument("--tensor", default=None, help="tensor name inside a .safetensors input")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    b = q.add_argument_group(
        "mixed precision under a byte budget",
        "With --budget each row is stored in the rung of --ladder that minimizes the "
        "access-weighted error within the budget (qe4.allocate), every stored byte counted "
        "(rows, row map, tier headers); the output is one mixed-precision qe4 file. "
        "--preset, --bits, --method, --n-bins, --ratio, --scale-dtype and the method options do not "
        "apply: the rungs say what each row may be.")
    b.add_argument("--budget", type=_budget, default=None,
                   help="bits per element (3.0bpw), a size (2.5G, 500M, binary multiples) "
                   "or a number of bytes, for the whole stored table")
    b.add_argument("--weights", metavar="COUNTS.npy", default=None,
                   help="access counts or importance of each row: a 1-D .npy of n_rows "
                   "finite values >= 0 (default: every row 1)")
    b.add_argument("--ladder", default=None, metavar="RUNGS",
                   help="comma-separated rungs: pruned, float16, float32, METHOD/BITS "
                   f"(default {','.join(_default_ladder())})")
    b.add_argument("--row-map", choices=("tiers", "renumber"), default="tiers",
                   help="tiers (default): rows keep their numbers, a compact row map finds "
                   "them (counted in the budget); renumber: no map, rows are renumbered "
                   "tier by tier and the permutation is written to --order")
    b.add_argument("--order", metavar="ORDER.npy", default=None,
                   help="with --row-map renumber: where to write order (int64, "
                   "order[new_row] = original row; look rows up by argsort(order)[row])")
    q.set_defaults(func=cmd_quantize)

    i = sub.add_parser("info", help="describe a qe4 file", description="Print a qe4 file's metadata.")
    i.add_argument("file", metavar="FILE")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="compare every method on the bundled GloVe table",
                       description="Quantize the bundled real table (the 20,000 most frequent "
                       "GloVe 6B 50d rows) with every method and print a comparison.")
    d.add_argument("--engine", choices=E.ENGINES, default="fast",
                   help="fast = compiled qe4_fast (default), reference = NumPy qe4 (slow)")
    d.add_argument("--bits", type=int, nargs="+", default=[2, 4], choices=V.BITS,
                   help="bit widths (default: 2 4)")
    d.add_argument("--methods", nargs="+", default=None, choices=M.names(), metavar="METHOD",
                   help=f"subset of {', '.join(M.names())} (default: all)")
    d.add_argument("--threads", type=_int, default=None, help="threads of the fast engine")
    d.set_defaults(func=cmd_demo)

    for name, (module, help_text) in DELEGATED.items():
        s = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _configure_delegate(s, name, module)
    return p


def _method_options():
    """Every method option of the registry but the search grid's (which have their own
    flags), with the methods that take it: one CLI flag each."""
    out = {}
    for m in M.METHODS.values():
        for opt in m.options:
            if opt not in M.GRID_OPTIONS:
                out.setdefault(opt, []).append(m.name)
    return out


def _options_of(args):
    """The method options given on the command line (flags left at None are not passed)."""
    return {opt.name: getattr(args, "opt_" + opt.name) for opt in _method_options()
            if getattr(args, "opt_" + opt.name) is not None}


def _configure_delegate(parser, name, module):
    try:
        import importlib
        mod = importlib.import_module(module)
        configure, run = mod.configure_parser, mod.run
    except (ImportError, AttributeError) as exc:
        def unavailable(args, exc=exc):
            raise UserError(f"qe4 {name} is not available: {module} could not be loaded ({exc})")
        parser.set_defaults(func=unavailable)
        return
    configure(parser)
    parser.set_defaults(func=lambda args: run(args) or 0)


def _command_of(argv):
    for a in argv:
        if not a.startswith("-"):
            return a
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the qe4 command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_command_of(argv))
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:        # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except UserError as exc:
        print(f"{exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, IndexError, OSError, ImportError) as exc:
        print(f"qe4: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        what, code = ("terminated", 128 + signal.SIGTERM) if isinstance(exc, Terminated) \
            else ("interrupted", 130)
        print(f"qe4: {what} (no output file was written)", file=sys.stderr)
        return code


# --------------------------------------------------------------------------- quantize

# the flags of one method and bit width; --budget takes none of them
_SINGLE = ("preset", "bits", "method", "n_bins", "ratio", "scale_dtype")
_BUDGET_ONLY = ("weights", "ladder", "order")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cmd_quantize(args: argparse.Namespace) -> int:
    from . import stream
    from .io import check_output_path, save
    options = _options_of(args)
    check_output_path(args.output, "OUT")      # before any work, not after it
    if args.budget is not None:
        return _quantize_budget(args, options)
    stray = [_flag(n) for n in _BUDGET_ONLY if getattr(args, n) is not None]
    stray += ["--row-map"] if args.row_map != "tiers" else []
    if stray:
        raise UserError(f"qe4 quantize: {', '.join(stray)} only apply with --budget")
    args.bits, args.method, args.scale_dtype, options = P.resolve(
        args.preset, args.bits, args.method, args.scale_dtype, options)
    args.n_bins = 200 if args.n_bins is None else args.n_bins
    args.ratio = 0.16 if args.ratio is None else args.ratio
    progress = False if args.no_progress else None
    t0 = time.perf_counter()
    if M.get(args.method).per_row:
        info = stream.quantize_file(args.input, args.output, args.bits, args.method,
                                    n_bins=args.n_bins, ratio=args.ratio,
                                    scale_dtype=args.scale_dtype, max_memory=args.max_memory,
                                    engine=args.engine, n_threads=args.threads, progress=progress,
                                    tensor=args.tensor, measure_error=True, **options)
        n_rows, n_cols, dtype = info["n_rows"], info["n_cols"], info["in_dtype"]
        in_bytes, error, how = info["in_bytes"], info["error"], \
            f"{info['n_chunks']} chunk(s) of <= {info['chunk_rows']:,} rows"
    else:
        # a method whose rows depend on the whole table (two-tier): no streaming
        from .metrics import table_error
        request = frontend.check_request(args.bits, args.method, args.n_bins, args.ratio,
                                         args.scale_dtype, options)
        eng = E.engine(args.engine, args.threads)
        print(f"note: method {args.method!r} needs the whole table in memory", file=sys.stderr)
        with stream.Source(args.input, args.tensor) as src:
            x = V.as_float_rows(np.ascontiguousarray(src.read(0, src.n_rows)), finite=False)
            n_rows, n_cols, dtype, in_bytes = src.n_rows, src.n_cols, str(src.dtype), src.file_size
        table = frontend.encode(request, x, eng)
        save(table, args.output)
        error, how = table_error(x, table), "in memory"
    seconds = time.perf_counter() - t0
    out_bytes = os.path.getsize(args.output)
    from .io import read_metadata
    meta = read_metadata(args.output)
    print(f"input   {args.input}: {n_rows:,} x {n_cols} {dtype}, {_fmt_bytes(in_bytes)}")
    print(f"output  {args.output}: {meta['bits']}-bit {meta['method']} {meta['layout']}, "
          f"{meta['row_bytes']} bytes/row, {_fmt_bytes(out_bytes)}")
    print(f"compression  {in_bytes / out_bytes:.2f}x smaller than the input "
          f"({100 * out_bytes / in_bytes:.2f}% of it; {100 * out_bytes / (4 * n_rows * n_cols):.2f}% of float32)")
    print(f"normalized error  {error:.4e}  (sum ||x - x_hat||^2 / sum ||x||^2)")
    print(f"time  {seconds:.2f} s, {n_rows / seconds:,.0f} rows/s, engine {args.engine}, {how}")
    return 0


def _quantize_budget(args, options):
    """``qe4 quantize --budget``: a mixed-precision file (qe4.stream.quantize_file_budget)."""
    from . import allocate as A
    from . import stream
    from .io import check_output_path
    given = [_flag(n) for n in _SINGLE if getattr(args, n) is not None]
    given += [_flag(n) for n in options]
    if given:
        raise UserError(f"qe4 quantize: {', '.join(given)} cannot be combined with --budget, which "
                        "chooses every row's method and bits from --ladder (put the rungs to "
                        "choose from there, e.g. --ladder pruned,mse/2,greedy/4,float16)")
    if (args.row_map == "renumber") != (args.order is not None):
        raise UserError("qe4 quantize: --row-map renumber needs --order ORDER.npy (where the "
                        "permutation of the rows is written), and --order needs --row-map renumber")
    if args.order is not None:
        check_output_path(args.order, "--order")
        if os.path.abspath(args.order) in (os.path.abspath(args.output), os.path.abspath(args.input)):
            raise UserError(f"qe4 quantize: --order {args.order!r} must differ from IN and OUT")
    try:
        rungs = A.ladder(None if args.ladder is None else
                         [r.strip() for r in args.ladder.split(",") if r.strip()])
    except (TypeError, ValueError) as exc:
        raise UserError(f"qe4 quantize: --ladder {args.ladder!r}: {exc}") from None
    with stream.Source(args.input, args.tensor) as src:      # the table's shape, from its header
        n_rows, n_cols = src.n_rows, src.n_cols
    weights = None if args.weights is None else _read_weights(args.weights, n_rows)
    t0 = time.perf_counter()
    info = stream.quantize_file_budget(args.input, args.output, args.budget, weights=weights,
                                       ladder=rungs, row_map=args.row_map,
                                       max_memory=args.max_memory, engine=args.engine,
                                       n_threads=args.threads, tensor=args.tensor,
                                       progress=False if args.no_progress else None)
    alloc = info["allocation"]
    if args.order is not None:
        try:
            _save_npy(args.order, alloc.renumbering())
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(args.output)          # no table without its permutation
            raise
    seconds = time.perf_counter() - t0
    n_el = n_rows * n_cols
    nbytes = info["nbytes"]
    mix = alloc.mix()
    used = [(name, rows, nb) for name, (rows, nb) in mix.items() if rows]
    print(f"input   {args.input}: {n_rows:,} x {n_cols} {info['in_dtype']}, "
          f"{_fmt_bytes(info['in_bytes'])}")
    print(f"output  {args.output}: mixed, {len(used)} tier(s), row map "
          f"{'renumbered rows' if args.row_map == 'renumber' else 'tiers'}, file "
          f"{_fmt_bytes(info['out_bytes'])}")
    print(f"budget  {args.budget} = {alloc.budget:,} bytes ({8 * alloc.budget / n_el:.3f} bits/element)")
    print(f"summary  {nbytes:,} bytes stored, {8 * nbytes / n_el:.3f} bits/element, weighted "
          f"error {alloc.error:.4e}, mix " + ", ".join(f"{name} {100 * rows / n_rows:.2f}%"
                                                     for name, rows, _ in used))
    width = max(len(name) for name in mix)
    for name, (rows, nb) in mix.items():
        print(f"  {name:<{width}}  {rows:>12,} rows  {100 * rows / n_rows:6.2f}%  {nb:>14,} bytes")
    print(f"  {'map':<{width}}  {'':>12}       {'':>7}  {nbytes - sum(nb for _, nb in mix.values()):>14,} "
          "bytes (tier table and row map)")
    print(f"weighted error = sum w ||x - x_hat||^2 / sum w ||x||^2, w = "
          f"{args.weights or 'every row 1'}")
    if args.order is not None:
        print(f"order   {args.order}: int64 [{n_rows:,}], order[new_row] = original row")
    print(f"time  {seconds:.2f} s, {n_rows / seconds:,.0f} rows/s, engine {args.engine}, "
          f"{info['n_chunks']} chunk(s) of <= {info['chunk_rows']:,} rows, 2 passes")
    return 0


def _read_weights(path, n_rows):
    """The --weights file as float64 [n_rows], checked like qe4.allocate's weights."""
    from .allocate import _weights
    try:
        w = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UserError(f"qe4 quantize: --weights {path}: not a readable .npy file ({exc})") from None
    if not isinstance(w, np.ndarray):
        raise UserError(f"qe4 quantize: --weights {path}: expected a .npy array, got a "
                        f"{type(w).__name__} (.npz archives are not read)")
    try:
        return _weights(w, None, [(n_rows, 0)])[0]
    except (TypeError, ValueError) as exc:
        raise UserError(f"qe4 quantize: --weights {path}: {exc} (one value per row of IN)") from None


def _save_npy(path, array):
    """np.save to ``path`` atomically (a temporary file beside it, then os.replace)."""
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# --------------------------------------------------------------------------- info

def cmd_info(args: argparse.Namespace) -> int:
    from .io import check_rows, load, read_metadata
    m = read_metadata(args.file)
    table = load(args.file)
    check_rows(table, args.file)      # a file that would fail its lookups is not "valid"
    fp32 = 4 * m["dim"]
    per_row = m["data_bytes"] / m["n_rows"] if m["n_rows"] else float(m["row_bytes"])
    mixed = m["layout"] == "mixed"
    lines = [
        ("file", args.file),
        ("format", f"qe4 version {m['format_version']} (safetensors)"),
        ("shape", f"{m['n_rows']:,} x {m['dim']}"),
        ("bits", "per tier (see the mix below)" if mixed else m["bits"]),
        ("method", m["method"]),
        ("layout", m["layout"]),
        ("scale dtype", "per tier" if mixed else m["scale_dtype"]),
        ("params", m["params"] or "-"),
        ("bytes/row", f"{per_row:.2f} (tier rows, row map and tier table)" if mixed else
         f"{m['row_bytes']} packed" + (f", {per_row:.2f} with extras" if m["extras"] else "")),
        ("compression", f"{fp32 / per_row:.2f}x vs float32 ({100 * per_row / fp32:.2f}% of {fp32} "
                        "bytes/row)" if per_row else "-"),
        ("file size", f"{m['file_size']:,} bytes ({_fmt_bytes(m['file_size'])})"),
    ]
    lines.append(("bits/element", f"{table.bits_per_element:.3f} (every stored byte x 8 / "
                                  f"(rows x dim); {table.nbytes:,} bytes)" if table.n_rows else "-"))
    if mixed:
        tier_lines, map_bytes = _mix_lines(table, m)
        lines.append(("row map", f"{m['params'].get('row_map')}, {map_bytes:,} bytes with the "
                                 f"tier table ({8 * map_bytes / max(m['n_rows'], 1):.3f} bits/row)"))
    else:
        for name, (dtype, shape) in m["extras"].items():
            lines.append((f"extra {name}", f"{dtype} {shape}"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    if mixed:
        print("\n".join(tier_lines))
    return 0


def _mix_lines(table, m):
    """The tiers of a mixed table as lines of a table, and the bytes beside their rows."""
    from . import layouts as L
    from . import mixed
    kinds = mixed.tier_kinds(table.extras)
    rungs = m["params"].get("rungs", ["?"] * len(kinds))
    header = ("tier", "rung", "layout", "bits", "dtype", "rows", "share", "bytes", "bits/element")
    rows, row_bytes = [], 0
    for t, (kind, bits, fdt, n) in enumerate(kinds):
        arr = table.extras.get(f"tier{t}")
        nb = 0 if arr is None else int(arr.nbytes)
        row_bytes += nb
        layout = {mixed.PRUNED: "pruned", mixed.FLOAT: "float"}.get(
            int(kind)) or L.LAYOUTS["mixed"].tier_layout(int(kind)).name
        rows.append((str(t), rungs[t], layout, str(bits), "-" if kind == mixed.PRUNED else
                     mixed.FLOAT_DTYPES[fdt], f"{n:,}",
                     f"{100 * n / m['n_rows']:.2f}%" if m["n_rows"] else "-", f"{nb:,}",
                     f"{8 * nb / (n * m['dim']):.3f}" if n else "-"))
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if k < 5 else f"{{:>{w}}}" for k, w in enumerate(widths))
    lines = ["", "mix", fmt.format(*header), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r) for r in rows]
    return lines, m["data_bytes"] - row_bytes


# --------------------------------------------------------------------------- demo

def cmd_demo(args: argparse.Namespace) -> int:
    from . import datasets
    from .metrics import table_error, zipf_weights
    eng = E.engine(args.engine, args.threads)
    mod = eng.module
    x, _ = datasets.load_glove_top20k()
    weights = zipf_weights(x.shape[0])
    methods = args.methods or list(M.names())
    kw = eng.kwargs
    fp32 = 4 * x.shape[1]
    header = ("method", "bits", "bytes/row", "bits/elem", "vs fp32", "error", "zipf error", "time s")
    rows, missing = [], {}
    print(f"qe4 demo: {x.shape[0]:,} x {x.shape[1]} GloVe rows, engine {args.engine}"
          + (f" ({mod.__name__})" if args.engine == "fast" else ""), flush=True)
    t_all = time.perf_counter()
    for bits in sorted(set(args.bits)):
        for method in methods:
            t = time.perf_counter()
            try:
                table = mod.quantize(x, bits, method, **kw)
            except ImportError as exc:       # e.g. a method the fast engine does not have yet
                missing[method] = str(exc)
                rows.append((method, str(bits)) + ("n/a",) * 6)
                continue
            seconds = time.perf_counter() - t
            per_row = table.nbytes / table.n_rows
            rows.append((method, str(bits), f"{per_row:.2f}", f"{table.bits_per_element:.3f}",
                         f"{fp32 / per_row:.2f}x",
                         f"{table_error(x, table):.3e}", f"{table_error(x, table, weights):.3e}",
                         f"{seconds:.2f}"))
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if k == 0 else f"{{:>{w}}}" for k, w in enumerate(widths))
    print(fmt.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt.format(*r))
    print(f"\nbits/elem counts every stored byte (codes, scales, codebooks) x 8 / (rows x dim). "
          f"error = sum ||x - x_hat||^2 / sum ||x||^2; zipf error weights row r by 1/(r+1) "
          f"(rows are in frequency order). fp32 = {fp32} bytes/row. "
          f"Total {time.perf_counter() - t_all:.1f} s.")
    for method, why in missing.items():
        print(f"n/a: {method!r} is not available in engine {args.engine}: {why}")
    print(GLOVE_CREDIT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
