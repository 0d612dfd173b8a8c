/* `cflash report [--json]`: prints cflash_report(), the environment as the library sees it (CPU,
 * CUDA driver and devices, NVRTC, cuFile, kernel cache, op x backend table). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cf_cmd_report(int argc, char** argv) {
    int json = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strncmp(argv[i], "--library-dir=", 14)) {
            if (cflash_add_library_dir(argv[i] + 14) != CFLASH_OK) {
                fprintf(stderr, "cflash report: %s\n", cflash_last_error());
                return 2;
            }
        } else {
            fprintf(stderr,
                    "cflash report: unknown flag '%s'\nusage: cflash report [--json] "
                    "[--library-dir=DIR]...\n",
                    argv[i]);
            return 2;
        }
    }
    size_t need = cflash_report(NULL, 0, json);
    char* buf = malloc(need + 1);
    if (!buf) {
        fprintf(stderr, "cflash report: out of memory (%zu bytes)\n", need + 1);
        return 1;
    }
    cflash_report(buf, need + 1, json);
    fputs(buf, stdout);
    free(buf);
    return 0;
}
