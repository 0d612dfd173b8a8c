/* The fast op kernels (rotary, norm, KV cache, merge) built for the baseline ISA: backend
 * cpu-generic, which serves on any CPU. The same bodies are built for AVX2 and AVX-512 in
 * src/cpu/x86/ops_avx2.c and ops_avx512.c. */
#include "cpu/ops_fast_common.h"

#include "cpu/kvcache_fast.h"
#include "cpu/merge_fast.h"
#include "cpu/norm_fast.h"
#include "cpu/rotary_fast.h"

#define CF_OPS_ISA generic
#define CF_OPS_BACKEND "cpu-generic"
#define CF_OPS_AVAILABLE NULL
#include "cpu/ops_fast_impls.h"
