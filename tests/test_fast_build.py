"""What the compiled modules must contain, checked on the built machine code.

Random-row lookups (bags, gathers, codebook bags) prefetch the row QE4_PREFETCH positions
ahead: without it every row of a 1M-row table waits for memory and the bags run 5x slower
(it happened: GCC's IPA pure-const pass deleted the prefetches of a wrapper it had not
inlined, silently; see qe4_fast/_common.h).  No timing can be asserted in a test, but the
instructions can be counted: each lookup module must hold prefetches, in its portable code
and, on x86-64, in its AVX2 code.
"""

import platform
import re
import shutil
import subprocess

import pytest

qe4_fast = pytest.importorskip("qe4_fast", reason="qe4_fast is not built")
from qe4_fast import _bag, _codebook, _lookup  # noqa: E402

OBJDUMP = shutil.which("objdump")
X86 = platform.machine() in ("x86_64", "AMD64")
pytestmark = pytest.mark.skipif(not (OBJDUMP and X86), reason="needs objdump on x86-64")

#: module -> functions (symbol name prefixes) that read random rows and must prefetch
RANDOM_ROW_KERNELS = {
    # the 4-bit blocks of 64 columns are functions of their own (_bag_kernels.h)
    _bag: ("qe4_bag_avx2", "qe4_bag_generic", "qe4_block4x64_avx2", "qe4_bags4x64_avx2"),
    # the rowwise max bag and gather keep 64 columns in registers (_lookup_kernels.h)
    _lookup: ("qe4_bag_avx2", "qe4_bag_max_rowwise_avx2", "qe4_gather_rowwise_avx2",
              "qe4_gather4_avx2", "qe4_block4x64_avx2"),
    _codebook: (),
}


def _prefetches_by_function(path):
    out = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", path], capture_output=True,
                         text=True, check=True).stdout
    counts, fn = {}, None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            fn = m.group(1)
        elif fn and "prefetch" in line:
            counts[fn] = counts.get(fn, 0) + 1
    return counts


@pytest.mark.parametrize("module", list(RANDOM_ROW_KERNELS), ids=lambda m: m.__name__)
def test_lookup_modules_prefetch(module):
    counts = _prefetches_by_function(module.__file__)
    assert sum(counts.values()) >= 2, f"{module.__file__} has no prefetch instruction"
    for prefix in RANDOM_ROW_KERNELS[module]:
        hits = {f: n for f, n in counts.items() if f.split(".")[0] == prefix}
        # inlined copies are fine; a kernel symbol that exists must prefetch
        names = _symbols(module.__file__, prefix)
        if names:
            assert hits, f"{prefix} in {module.__file__} has no prefetch instruction"


def _symbols(path, prefix):
    out = subprocess.run([OBJDUMP, "-t", path], capture_output=True, text=True, check=True).stdout
    return [ln.split()[-1] for ln in out.splitlines()
            if ln.split() and ln.split()[-1].split(".")[0] == prefix]
