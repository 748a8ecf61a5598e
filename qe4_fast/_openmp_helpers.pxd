# OpenMP shim (see _omp_shim.h): these names exist with or without OpenMP.
cdef extern from "_omp_shim.h":
    int QE4_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_num_procs() noexcept nogil
