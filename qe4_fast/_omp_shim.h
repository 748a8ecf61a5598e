/* OpenMP shim: the same kernels build with or without OpenMP (then serial).  qe4_fast uses
 * OpenMP only for its default team size; parallel loops run on qe4_fast's pool (_pool.h). */
#ifndef QE4_OMP_SHIM_H
#define QE4_OMP_SHIM_H
#ifdef _OPENMP
#include <omp.h>
#define QE4_OPENMP 1
#else
#define QE4_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_num_procs(void) { return 1; }
#endif
#endif
