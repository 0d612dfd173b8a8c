/* `cflash`: the command-line tool. Each subcommand is a row below and a tools/cmd_*.c file; a row
 * with a second word (e.g. "bench" "peak") matches before the plain one. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

int cf_cmd_version(int argc, char** argv);
int cf_cmd_check(int argc, char** argv);
int cf_cmd_bench(int argc, char** argv);
int cf_cmd_bench_peak(int argc, char** argv);
int cf_cmd_bench_rotary(int argc, char** argv);
int cf_cmd_bench_norm(int argc, char** argv);
int cf_cmd_bench_decode(int argc, char** argv);
int cf_cmd_bench_merge(int argc, char** argv);
int cf_cmd_report(int argc, char** argv);

static const struct {
    const char* name;
    const char* sub; /* NULL: any */
    cf_cmd_fn fn;
    const char* help;
} commands[] = {
    /* CFLASH-COMMANDS: rows go here */
    {"check", NULL, cf_cmd_check,
     "attention on a shape vs the fp64 oracle: errors, bounds, PASS/FAIL"},
    {"report", NULL, cf_cmd_report, "environment, libraries and op x backend table [--json]"},
    {"bench", "peak", cf_cmd_bench_peak, "this machine's FMA, BF16, AMX and memory peaks"},
    {"bench", "rotary", cf_cmd_bench_rotary, "time rotary (GB/s vs memory bandwidth)"},
    {"bench", "norm", cf_cmd_bench_norm, "time RMSNorm/LayerNorm (GB/s vs memory bandwidth)"},
    {"bench", "decode", cf_cmd_bench_decode, "time KV-cache decode (GB/s vs memory bandwidth)"},
    {"bench", "merge", cf_cmd_bench_merge, "time the LSE merge (GB/s vs memory bandwidth)"},
    {"bench", NULL, cf_cmd_bench, "time attention (problem flags; --bwd, --json)"},
    {"version", NULL, cf_cmd_version, "print the library version"},
};

static void usage(FILE* f) {
    fprintf(f, "usage: cflash COMMAND [flags]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-8s %-8s %s\n", commands[i].name, commands[i].sub ? commands[i].sub : "",
                commands[i].help);
    fprintf(f, "\nproblem flags (check, bench):\n%s", cf_problem_usage());
}

int cf_cmd_version(int argc, char** argv) {
    (void)argc, (void)argv;
    printf("cflash %s\n", cflash_version());
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
            const char* sub = commands[i].sub;
            if ((pass == 0) != (sub != NULL) || strcmp(commands[i].name, argv[1])) continue;
            if (sub && (argc < 3 || strcmp(sub, argv[2]))) continue;
            return commands[i].fn(argc, argv);
        }
    fprintf(stderr, "cflash: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
