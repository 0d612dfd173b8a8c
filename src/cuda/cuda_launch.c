/* Launch plumbing shared by the CUDA op files (see cuda_launch.h). */
#include <stdio.h>

#include "core/status.h"
#include "cuda/cuda_launch.h"

cflash_status cf_cuda_tmp_alloc(const cf_cu_device* dev, CUstream s, size_t bytes, CUdeviceptr* p) {
    const cf_cu_api* cu = cf_cu(NULL, 0);
    CUresult r = dev->memory_pools ? cu->cuMemAllocAsync(p, bytes ? bytes : 4, s)
                                   : cu->cuMemAlloc(p, bytes ? bytes : 4);
    if (r == 2)
        return cf_error(CFLASH_ERR_OUT_OF_MEMORY, "cuda: no device memory for a %zu-byte workspace",
                        bytes);
    CF_CU_TRY(r, "allocating a workspace");
    return CFLASH_OK;
}

void cf_cuda_tmp_free(const cf_cu_device* dev, CUstream s, CUdeviceptr p) {
    const cf_cu_api* cu = cf_cu(NULL, 0);
    if (!p || !cu) return;
    if (dev->memory_pools) {
        cu->cuMemFreeAsync(p, s);
    } else {
        cu->cuStreamSynchronize(s); /* kernels may still read it */
        cu->cuMemFree(p);
    }
}

cflash_status cf_cuda_upload(const cf_cu_device* dev, CUstream s, const void* host, size_t bytes,
                             CUdeviceptr* p) {
    CFLASH_FORWARD_IF_ERROR(cf_cuda_tmp_alloc(dev, s, bytes, p));
    /* From pageable memory this returns once the source has been read: host may go away. */
    CF_CU_TRY(cf_cu(NULL, 0)->cuMemcpyHtoDAsync(*p, host, bytes, s), "cuMemcpyHtoDAsync");
    return CFLASH_OK;
}

cflash_status cf_cuda_launch(CUmodule m, const char* fn, int64_t gx, int64_t gy, int64_t gz,
                             unsigned block, size_t smem, CUstream s, void* args) {
    if (gx <= 0 || gy <= 0 || gz <= 0) return CFLASH_OK; /* nothing to do */
    CFLASH_RETURN_IF(gx > 0x7fffffff || gy > 65535 || gz > 65535, CFLASH_ERR_UNSUPPORTED,
                     "cuda: grid (%lld, %lld, %lld) of %s exceeds the launch limits", (long long)gx,
                     (long long)gy, (long long)gz, fn);
    const cf_cu_api* cu = cf_cu(NULL, 0);
    CUfunction f;
    char what[96];
    snprintf(what, sizeof what, "cuModuleGetFunction(%s)", fn);
    CF_CU_TRY(cu->cuModuleGetFunction(&f, m, fn), what);
    if (smem > 48 * 1024)
        CF_CU_TRY(cu->cuFuncSetAttribute(f, CF_CU_FUNC_ATTR_MAX_DYN_SMEM, (int)smem),
                  "cuFuncSetAttribute(max dynamic shared memory)");
    void* params[] = {args};
    snprintf(what, sizeof what, "cuLaunchKernel(%s)", fn);
    CF_CU_TRY(cu->cuLaunchKernel(f, (unsigned)gx, (unsigned)gy, (unsigned)gz, block, 1, 1,
                                 (unsigned)smem, s, params, NULL),
              what);
    return CFLASH_OK;
}
