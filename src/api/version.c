/* The version of the library actually loaded, as text and as one number (a program compares the
 * latter with the CFLASH_VERSION_NUMBER it was compiled against, as with ZSTD_versionNumber()). */
#include "cflash.h"

#define CF_STR2(x) #x
#define CF_STR(x) CF_STR2(x)
const char* cflash_version(void) {
    return CF_STR(CFLASH_VERSION_MAJOR) "." CF_STR(CFLASH_VERSION_MINOR) "." CF_STR(
        CFLASH_VERSION_PATCH);
}

unsigned cflash_version_number(void) {
    return CFLASH_VERSION_NUMBER;
}
