# Declarations shared by qe4_fast's kernel modules (see _common.h), and the one place where
# a kernel's error code becomes a Python exception.

cdef extern from "_common.h" nogil:
    enum:
        QE4_OK
        QE4_ERR_METHOD
        QE4_ERR_BITS
        QE4_ERR_LAYOUT
        QE4_ERR_SIMD
    enum:
        QE4_MINMAX
        QE4_GREEDY
        QE4_EXHAUSTIVE
        QE4_ACIQ_LAPLACE
        QE4_ACIQ_GAUSS
        QE4_KMEANS
        QE4_KMEANS_OPTIMAL
        QE4_TWO_TIER
    enum:
        QE4_LAYOUT_ROWWISE
        QE4_LAYOUT_CODEBOOK
        QE4_LAYOUT_TWO_TIER
    enum:
        QE4_GROUPED
        QE4_LAYOUT_GROUPED
    enum:
        QE4_SIMD_PORTABLE
        QE4_SIMD_AVX2
        QE4_SIMD_AVX512
        QE4_SIMD_LEVELS
    int qe4_cpu_simd_level()
    int qe4_check_simd(int level)


cdef inline str simd_name(int level):
    """The name of SIMD level code ``level`` (qe4_fast.simd_level() returns these)."""
    if level == QE4_SIMD_PORTABLE:
        return "portable"
    if level == QE4_SIMD_AVX2:
        return "avx2"
    if level == QE4_SIMD_AVX512:
        return "avx512"
    return f"<unknown level {level}>"


cdef inline int check(int err, str kernel, object codes, int method, int bits, int layout,
                      int simd) except -1:
    """Raise the ValueError for a kernel's error code ``err`` (QE4_OK: return 0).

    ``kernel`` names the compiled function, ``codes`` is the module's METHOD_CODES (for the
    message); method, bits, layout and simd are the codes the kernel was given (-1: none).
    """
    if err == QE4_OK:
        return 0
    if err == QE4_ERR_METHOD:
        raise ValueError(f"{kernel}: unknown method code {method} (the kernels implement "
                         f"{codes})")
    if err == QE4_ERR_BITS:
        raise ValueError(f"{kernel}: no kernel for bits={bits}")
    if err == QE4_ERR_LAYOUT:
        raise ValueError(f"{kernel}: unknown layout code {layout}")
    if err == QE4_ERR_SIMD:
        raise ValueError(f"{kernel}: SIMD level code {simd} ({simd_name(simd)}) is not one this "
                         f"CPU runs (the widest is {qe4_cpu_simd_level()}, "
                         f"{simd_name(qe4_cpu_simd_level())})")
    raise ValueError(f"{kernel}: unknown error code {err}")
