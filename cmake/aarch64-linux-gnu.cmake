# Cross build for 64-bit ARM Linux with Debian's cross compiler (gcc-aarch64-linux-gnu), run under
# qemu-user: `make test-arm` (or cmake -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake). ctest
# runs each test binary through CMAKE_CROSSCOMPILING_EMULATOR; QEMU_CPU picks the CPU model.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CFLASH_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${CFLASH_CROSS_TRIPLE}-gcc)
set(CFLASH_CROSS_SYSROOT /usr/${CFLASH_CROSS_TRIPLE}) # where the cross libc and libgomp live

# Libraries and headers from the cross sysroot only; DLPack is header-only and arch-independent,
# so the host's /usr/include/dlpack serves (see DLPACK_INCLUDE_DIR in the top CMakeLists.txt).
set(CMAKE_FIND_ROOT_PATH ${CFLASH_CROSS_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# qemu-aarch64 loads the cross dynamic loader, libc and libgomp from the sysroot (-L).
find_program(CFLASH_QEMU_AARCH64 qemu-aarch64)
if(CFLASH_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${CFLASH_QEMU_AARCH64} -L ${CFLASH_CROSS_SYSROOT})
endif()
