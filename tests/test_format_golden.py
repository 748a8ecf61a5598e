"""Format stability: the golden qe4 files in tests/golden/ are read, looked up and
re-written byte for byte by every later qe4 (the numcodecs fixture pattern).

The files were written once (tests/golden/write_once.py, before the registry
refactor; the 3, 5 and 6-bit rowwise ones by the first code that stored those widths)
and are never regenerated: a change that breaks one of these tests
breaks files users already have on disk.
"""

import json
import os
import sys

import numpy as np
import pytest

import qe4
from qe4 import layouts as L

HERE = os.path.join(os.path.dirname(__file__), "golden")
sys.path.insert(0, HERE)
from write_once import build  # noqa: E402  (how each case's table is made)
with open(os.path.join(HERE, "manifest.json")) as _f:
    MANIFEST = json.load(_f)
NAMES = sorted(MANIFEST)

try:
    import qe4_fast
    ENGINES = [qe4, qe4_fast]
except ImportError:            # the reference alone is still checked
    ENGINES = [qe4]


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(HERE, "expected.npz")) as z:
        return {k: z[k] for k in z.files}


def _file(name):
    return os.path.join(HERE, name + ".qe4")


def test_every_layout_and_bit_width_has_a_golden_file():
    """A layout or bit width added to the registry needs its golden file
    (tests/golden/write_once.py writes the missing ones)."""
    have = {(qe4.load(_file(n)).layout, MANIFEST[n]["bits"]) for n in NAMES}
    want = {(lay.name, b) for lay in L.LAYOUTS.values() for b in lay.bits}
    assert want <= have, f"no golden file for {sorted(want - have)}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mmap", (True, False), ids=("mmap", "read"))
def test_golden_file_loads_and_looks_up(name, mmap, expected, same_bytes):
    case = MANIFEST[name]
    table = qe4.load(_file(name), mmap=mmap)
    assert (table.bits, table.method, table.n_rows) == (case["bits"], case["method"], 11)
    idx, off, w = expected["indices"], expected["offsets"], expected["weights"]
    for mod in ENGINES:
        same_bytes(mod.dequantize(table), expected[f"{name}.dequantize"])
        same_bytes(mod.embedding_bag(table, idx, off), expected[f"{name}.sum"])
        same_bytes(mod.embedding_bag(table, idx, off, per_sample_weights=w), expected[f"{name}.wsum"])
        same_bytes(mod.embedding_bag(table, idx, off, mode="mean"), expected[f"{name}.mean"])


@pytest.mark.parametrize("name", NAMES)
def test_golden_file_is_rewritten_byte_for_byte(name, expected, tmp_path):
    """Quantizing the golden input again gives the same table, and saving it the same file."""
    case = MANIFEST[name]
    with open(_file(name), "rb") as f:
        golden = f.read()
    for mod in ENGINES:
        engine = {} if case["method"] != "mixed" else {
            "engine": "reference" if mod is qe4 else "fast"}
        table = build(mod, expected["x"], case["bits"], case["method"], case["kwargs"], **engine)
        assert table == qe4.load(_file(name))
        out = tmp_path / f"{mod.__name__}.qe4"
        qe4.save(table, out)
        assert out.read_bytes() == golden
