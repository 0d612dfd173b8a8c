# CUDA kernels, included from the root CMakeLists.txt at CFLASH-EMBED: embeds every
# src/cuda/kernels/*.cu(h) as a C string (no CUDA toolkit needed), and with CFLASH_CUDA_AOT=ON
# also builds cubins with nvcc for CFLASH_CUDA_ARCHS and embeds them, for hosts without NVRTC.
option(CFLASH_CUDA_AOT "Embed nvcc-built cubins for CFLASH_CUDA_ARCHS (needs nvcc at build time)" OFF)
set(CFLASH_CUDA_ARCHS "80;90" CACHE STRING "sm_XY archs (as XY) for CFLASH_CUDA_AOT")

set(CF_GEN ${CMAKE_BINARY_DIR}/generated)
file(MAKE_DIRECTORY ${CF_GEN})
file(GLOB CF_CUDA_KERNELS CONFIGURE_DEPENDS
  ${CMAKE_SOURCE_DIR}/src/cuda/kernels/*.cu ${CMAKE_SOURCE_DIR}/src/cuda/kernels/*.cuh)
list(SORT CF_CUDA_KERNELS)
string(REPLACE ";" "|" CF_CUDA_KERNELS_ARG "${CF_CUDA_KERNELS}")
set(CF_EMBED ${CMAKE_SOURCE_DIR}/src/cuda/embed.cmake)
add_custom_command(OUTPUT ${CF_GEN}/cf_cuda_sources.c
  COMMAND ${CMAKE_COMMAND} -DMODE=sources -DOUT=${CF_GEN}/cf_cuda_sources.c
          -DFILES=${CF_CUDA_KERNELS_ARG} -P ${CF_EMBED}
  DEPENDS ${CF_CUDA_KERNELS} ${CF_EMBED}
  COMMENT "Embedding CUDA kernel sources" VERBATIM)

set(CF_AOT_LIST ${CF_GEN}/cf_cuda_aot.list)
set(CF_AOT_LINES "")
set(CF_AOT_CUBINS "")
if(CFLASH_CUDA_AOT)
  find_program(CFLASH_NVCC nvcc HINTS $ENV{CUDA_HOME}/bin /usr/local/cuda/bin)
  if(NOT CFLASH_NVCC)
    message(FATAL_ERROR "CFLASH_CUDA_AOT=ON needs nvcc (set CFLASH_NVCC or CUDA_HOME)")
  endif()
  # Mirrors cf_cuda_variants() in src/cuda/cuda_rtc.c: (source, dtypes, min arch).
  set(CF_VARIANTS "attn_simt.cu|0 1 2|0" "attn_mma.cu|1 2|80")
  foreach(arch ${CFLASH_CUDA_ARCHS})
    foreach(v ${CF_VARIANTS})
      string(REPLACE "|" ";" vp "${v}")
      list(GET vp 0 src)
      list(GET vp 1 dtypes)
      list(GET vp 2 minarch)
      if(arch LESS minarch)
        continue()
      endif()
      string(REPLACE " " ";" dtypes "${dtypes}")
      foreach(dt ${dtypes})
        foreach(dmax 64 128 256)
          get_filename_component(base ${src} NAME_WE)
          set(out ${CF_GEN}/aot/${base}_t${dt}_d${dmax}_sm${arch}.cubin)
          add_custom_command(OUTPUT ${out}
            COMMAND ${CMAKE_COMMAND} -E make_directory ${CF_GEN}/aot
            COMMAND ${CFLASH_NVCC} -cubin -arch=sm_${arch} -std=c++17
                    -I${CMAKE_SOURCE_DIR}/src/cuda/kernels -DCF_DTYPE=${dt} -DCF_DMAX=${dmax}
                    -o ${out} ${CMAKE_SOURCE_DIR}/src/cuda/kernels/${src}
            DEPENDS ${CF_CUDA_KERNELS}
            COMMENT "nvcc ${src} dtype ${dt} dmax ${dmax} for sm_${arch}" VERBATIM)
          list(APPEND CF_AOT_CUBINS ${out})
          string(APPEND CF_AOT_LINES "${src}|-DCF_DTYPE=${dt} -DCF_DMAX=${dmax}|${arch}|${out}\n")
        endforeach()
      endforeach()
    endforeach()
    set(out ${CF_GEN}/aot/ops_simt_sm${arch}.cubin)
    add_custom_command(OUTPUT ${out}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${CF_GEN}/aot
      COMMAND ${CFLASH_NVCC} -cubin -arch=sm_${arch} -std=c++17
              -I${CMAKE_SOURCE_DIR}/src/cuda/kernels -o ${out}
              ${CMAKE_SOURCE_DIR}/src/cuda/kernels/ops_simt.cu
      DEPENDS ${CF_CUDA_KERNELS}
      COMMENT "nvcc ops_simt.cu for sm_${arch}" VERBATIM)
    list(APPEND CF_AOT_CUBINS ${out})
    string(APPEND CF_AOT_LINES "ops_simt.cu|-|${arch}|${out}\n")
  endforeach()
endif()
file(WRITE ${CF_AOT_LIST}.new "${CF_AOT_LINES}")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different ${CF_AOT_LIST}.new ${CF_AOT_LIST})
add_custom_command(OUTPUT ${CF_GEN}/cf_cuda_aot.c
  COMMAND ${CMAKE_COMMAND} -DMODE=aot -DOUT=${CF_GEN}/cf_cuda_aot.c -DLIST=${CF_AOT_LIST}
          -P ${CF_EMBED}
  DEPENDS ${CF_AOT_CUBINS} ${CF_AOT_LIST} ${CF_EMBED}
  COMMENT "Embedding precompiled CUDA cubins" VERBATIM)
target_sources(cflash_obj PRIVATE ${CF_GEN}/cf_cuda_sources.c ${CF_GEN}/cf_cuda_aot.c)
