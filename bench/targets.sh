#!/bin/sh
# The issue 3 (CPU attention) and issue 5 (ops) target figures in one go, as quoted in
# docs/PERF.md: sh bench/targets.sh [BUILD_DIR]. Run it on an otherwise idle machine.
set -e
B=${1:-build}
C="--batch 1 --heads 16 --seqlen 4096 --head-dim 128 --threads 2 --warmup 1 --reps 5"
date -u; uptime
$B/cflash bench peak
$B/cflash bench $C --dtype fp32 --bwd
$B/cflash bench $C --dtype fp32 --causal
$B/cflash bench $C --dtype bf16 --bwd
$B/cflash bench $C --dtype bf16 --causal
D="--batch 1 --heads 32 --heads-kv 8 --head-dim 128 --seqlen-q 1 --seqlen-k 131072 --dtype bf16 --reps 9"
$B/cflash bench decode $D
R="--batch 1 --seqlen 65536 --heads 64 --head-dim 128 --dtype bf16 --reps 5"
$B/cflash bench rotary $R
$B/cflash bench rotary $R --inplace
$B/cflash bench rotary $R --inplace --interleaved
N="--batch 1 --seqlen 131072 --heads 32 --head-dim 128 --dtype bf16 --reps 5"
$B/cflash bench norm $N
$B/cflash bench norm $N --layer --residual
date -u; uptime
