#!/bin/sh
# Sweep of the CPU attention block shapes (CFLASH_ATTN_BLOCKS=q,k,bq,bk; src/cpu/attn_blocks.c)
# on the issue-3 shape, to choose the per-family defaults in attn_blocks.c. Run it on an otherwise
# idle machine: sh bench/attn_blocks_sweep.sh [BUILD_DIR] [DTYPES] [BACKEND] > sweep.jsonl
# One JSON line per (blocks, dtype, direction) from `cflash bench --json`, with the blocks added
# as "blocks"; each shape runs non-causal and causal. Default build dir `build`, dtypes
# "fp32 bf16", backend auto (cpu-amx is only chosen when forced: pass it as BACKEND).
# Summary per blocks and dtype: python3 bench/attn_blocks_sweep.py sweep.jsonl
set -e
B=${1:-build}
DTYPES=${2:-"fp32 bf16"}
BACKEND=${3:-}
C="--batch 1 --heads 16 --seqlen 4096 --head-dim 128 --threads 2 --warmup 1 --reps 5 --json"
[ -n "$BACKEND" ] && C="$C --backend $BACKEND"
# q,k,bq,bk: today's 128s first, then the neighbours that fit a 1-2 MB L2 per core.
SHAPES=${CFLASH_SWEEP_SHAPES:-"128,128,128,128 64,128,64,128 128,64,128,64 96,96,96,96 \
192,128,128,192 128,256,128,256 256,128,256,128 256,256,128,128 64,256,64,256"}
echo "# $(date -u) $(uptime)" >&2
$B/cflash bench peak --json
for s in $SHAPES; do
    for dt in $DTYPES; do
        for mask in "" "--causal"; do
            CFLASH_ATTN_BLOCKS=$s $B/cflash bench $C --dtype $dt --bwd $mask |
                sed "s/^{/{\"blocks\":\"$s\",/"
        done
    done
done
echo "# $(date -u) $(uptime)" >&2
