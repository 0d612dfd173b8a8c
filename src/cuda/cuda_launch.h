/* Launch plumbing shared by the CUDA op files: temporary device memory (stream-ordered where the
 * device has memory pools), host arrays uploaded for a call, and a checked kernel launch. All run
 * inside cf_cu_enter / cf_cu_leave. */
#ifndef CFLASH_CUDA_LAUNCH_H
#define CFLASH_CUDA_LAUNCH_H

#include <stddef.h>
#include <stdint.h>

#include "cuda/cuda_drv.h"

cflash_status cf_cuda_tmp_alloc(const cf_cu_device* dev, CUstream s, size_t bytes, CUdeviceptr* p);
void cf_cuda_tmp_free(const cf_cu_device* dev, CUstream s, CUdeviceptr p); /* accepts 0 */
/* Allocates and copies bytes of host memory to the device (asynchronously on s). */
cflash_status cf_cuda_upload(const cf_cu_device* dev, CUstream s, const void* host, size_t bytes,
                             CUdeviceptr* p);
/* Launches fn of module m with one by-value argument struct; a grid with a zero dimension is a
 * no-op. smem above 48 KB opts the function in first. */
cflash_status cf_cuda_launch(CUmodule m, const char* fn, int64_t gx, int64_t gy, int64_t gz,
                             unsigned block, size_t smem, CUstream s, void* args);

#endif
