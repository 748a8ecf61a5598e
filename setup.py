"""Build qe4_fast's Cython extensions (every qe4_fast/_*.pyx), with OpenMP when the compiler has it.

Flags: -O3 -ffp-contract=off (bit-exact twin of the NumPy reference); never -ffast-math or
-march=native.  QE4_DISABLE_OPENMP=1 forces the serial build (CI checks both).
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

BASE_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-std=c11"]


def openmp_flags():
    """Return the OpenMP compile flag if the C compiler accepts it, else None (with a warning)."""
    if os.environ.get("QE4_DISABLE_OPENMP", "") not in ("", "0"):
        warnings.warn("QE4_DISABLE_OPENMP is set: building qe4_fast without OpenMP (serial kernels)")
        return None
    cc = os.environ.get("CC", "cc").split()[0]
    if shutil.which(cc) is None:
        cc = "gcc"
    src = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n>0?0:1;}\n"
    with tempfile.TemporaryDirectory() as d:
        c = os.path.join(d, "t.c")
        with open(c, "w") as f:
            f.write(src)
        r = subprocess.run([cc, "-fopenmp", c, "-o", os.path.join(d, "t")], capture_output=True)
    if r.returncode != 0:
        warnings.warn("the C compiler does not support OpenMP: qe4_fast is built serial "
                      "(qe4_fast.openmp_enabled() returns False)")
        return None
    return "-fopenmp"


omp = openmp_flags()
compile_args = BASE_FLAGS + ([omp] if omp else [])
link_args = [omp] if omp else []
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]

extensions = [
    Extension(
        "qe4_fast." + os.path.splitext(os.path.basename(p))[0],
        [p],
        include_dirs=[np.get_include(), "qe4_fast"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=macros,
        libraries=["m"],
    )
    for p in sorted(glob.glob(os.path.join("qe4_fast", "_*.pyx")))
    # development convenience: QE4_ONLY=_rowwise,_bag builds just those modules
    if not os.environ.get("QE4_ONLY")
    or os.path.splitext(os.path.basename(p))[0] in os.environ["QE4_ONLY"].split(",")
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
        quiet=True,
    ),
)
