/* Not used by the library: probe kernels that test_cuda_nvrtc compiles to PTX, where each kernel's
 * parameter size and the offset it loads a field from are visible, to compare with the host
 * compiler's sizeof/offsetof. A layout difference between the C launch code and the device
 * compiler then fails a test instead of corrupting a launch. */
#include "cf_ops_args.cuh"

#define CF_PROBE(T, f)                                                                             \
    extern "C" __global__ void cf_probe_##T##_##f(T a, unsigned long long* out) {                  \
        *out = (unsigned long long)a.f;                                                            \
    }

CF_PROBE(cf_attn_args, lse_sb)
CF_PROBE(cf_attn_args, keep_threshold)
CF_PROBE(cf_attn_args, tile)
CF_PROBE(cf_kv_args, opart)
CF_PROBE(cf_kv_args, cs_dt)
CF_PROBE(cf_rotary_args, dt)
CF_PROBE(cf_merge_args, op_dt)
CF_PROBE(cf_norm_args, ws)
CF_PROBE(cf_norm_args, rms)
