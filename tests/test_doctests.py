"""The examples in qe4's docstrings run and print what they say (doctest).

The doctests of every module of the imported ``qe4`` package are collected here rather than
with ``pytest --doctest-modules``, which imports modules from the source tree and would put
the checkout's uncompiled ``qe4_fast`` ahead of the installed one.  Modules whose optional
dependency is absent skip.
"""

import doctest
import importlib
import pkgutil

import pytest

import qe4

MODULES = sorted(m.name for m in pkgutil.walk_packages(qe4.__path__, "qe4."))


def _examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:         # qe4.torch without torch, qe4.dask without dask, ...
        pytest.skip(f"{name} needs an optional dependency: {exc}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module, name) if t.examples]


def test_some_modules_have_examples():
    assert sum(1 for n in MODULES if n in ("qe4.export", "qe4.rowwise", "qe4.evidence.sizes")) == 3


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failed = 0
    for test in _examples(name):
        result = runner.run(test, out=lambda text: print(text, end=""))
        failed += result.failed
    assert failed == 0, f"{failed} docstring example(s) of {name} failed (output above)"
