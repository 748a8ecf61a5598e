"""Every public function, method and property of qe4 and qe4_fast is fully annotated.

The public API is walked, not listed: every module of the packages whose name has no
part starting with ``_`` (the API reference's modules, ``docs/api.rst``), and in each the
names of its ``__all__`` or, without one, the public functions and classes it defines
(what autosummary documents).  A class contributes its ``__init__`` and every public
method, static/class method and property it defines.  Each parameter (``self``/``cls``
aside) and the return must carry an annotation.  Whether the annotations are right is
the type checker's part (mypy, configured in setup.cfg and run by ``.ci/run``).
"""

import functools
import importlib
import inspect
import pkgutil

import pytest

import qe4

PACKAGES = ("qe4", "qe4_fast")


def _public_modules():
    out = []
    for name in PACKAGES:
        out.append(name)
        try:
            pkg = importlib.import_module(name)
        except ImportError:               # qe4_fast not built: its modules skip below
            continue
        out += [m.name for m in pkgutil.walk_packages(pkg.__path__, name + ".")
                if not any(p.startswith("_") for p in m.name.split("."))]
    return sorted(out)


MODULES = _public_modules()


def _import(name):
    try:
        return importlib.import_module(name)
    except ImportError as exc:         # qe4.torch without torch, qe4_fast not built, ...
        pytest.skip(f"{name} needs an optional dependency or a build: {exc}")


def public_names(module):
    """The module's ``__all__``, else the public functions and classes it defines."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, obj in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", None) == module.__name__]


def _members(cls):
    """(name, function) of the class's own ``__init__``, methods and properties."""
    for name, attr in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(attr, property):
            yield name, attr.fget
        elif isinstance(attr, functools.cached_property):
            yield name, attr.func
        elif isinstance(attr, (staticmethod, classmethod)):
            yield name, attr.__func__
        elif inspect.isfunction(attr):
            yield name, attr


def callables(module):
    """(qualified name, function) of every public callable reachable from ``module``."""
    for name in public_names(module):
        obj = getattr(module, name)
        if inspect.isclass(obj):
            if obj.__module__.split(".")[0] not in PACKAGES:
                continue                   # a re-exported foreign class
            for member, fn in _members(obj):
                yield f"{name}.{member}", fn
        elif callable(obj):
            yield name, obj


def missing_annotations(fn):
    """Names of the parameters (and ``"return"``) of ``fn`` that have no annotation."""
    fn = inspect.unwrap(fn)
    sig = inspect.signature(fn)
    missing = [p for p, par in sig.parameters.items()
               if par.annotation is inspect.Parameter.empty and p not in ("self", "cls")]
    if sig.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def test_the_walk_finds_the_api():
    found = dict(callables(qe4))
    assert {"quantize", "embedding_bags", "QuantizedTable.__init__", "QuantizedTable.scales",
            "QuantizedTable.from_tbe"} <= set(found)
    assert {"qe4.allocate", "qe4.export", "qe4.stream", "qe4.table", "qe4_fast"} <= set(MODULES)
    assert not any(part.startswith("_") for m in MODULES for part in m.split("."))


def test_the_check_sees_a_missing_annotation():
    def f(a: int, b, *args: int, c=1, **kw) -> None: ...

    def g(a: int) -> int: ...

    assert missing_annotations(f) == ["b", "c", "kw"]
    assert missing_annotations(lambda: 0) == ["return"]
    assert missing_annotations(g) == []


@pytest.mark.parametrize("name", MODULES)
def test_public_api_is_annotated(name):
    module = _import(name)
    bad = {}
    for qual, fn in callables(module):
        fn = inspect.unwrap(fn)
        if not inspect.isfunction(fn):          # a compiled (Cython) function: no signature
            continue
        miss = missing_annotations(fn)
        if miss:
            bad[f"{fn.__module__}.{fn.__qualname__}"] = miss
    assert not bad, f"public callables of {name} without annotations: {bad}"
