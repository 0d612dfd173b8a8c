#!/bin/sh
# `cflash check` end to end: a passing shape with every feature (text and --json), the exit codes
# (0 pass, 1 library error, 2 bad flags) and messages that name the flag or the library's reason.
# Usage: cli_check.sh PATH_TO_CFLASH
cflash=$1
pass=0 fail=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# expect CODE REGEX -- ARGS...: exit code CODE and output (stdout+stderr) matching REGEX.
expect() {
    code=$1 re=$2
    shift 3
    # CFLASH_TEST_RUNNER: the emulator of a cross build (tests/CMakeLists.txt), else empty.
    # shellcheck disable=SC2086
    ${CFLASH_TEST_RUNNER:-} "$cflash" "$@" >"$out" 2>&1
    got=$?
    if [ "$got" = "$code" ] && grep -Eq -- "$re" "$out"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL: cflash $* -> exit $got (expected $code), output:"
        cat "$out"
        echo "(expected to match: $re)"
    fi
}

expect 0 '^PASS$' -- check --batch 2 --heads 4 --heads-kv 2 --seqlen-q 97 --seqlen-k 130 \
    --head-dim 33 --head-dim-v 20 --dtype bf16 --causal --window 16,-1 --softcap 3 --alibi \
    --dropout 0.1 --bwd
# Issue 13's flags: sinks, bias + dbias, mask, block-sparse lists, chunks (with causal and GQA).
expect 0 '^PASS$' -- check --batch 2 --heads 4 --heads-kv 2 --seqlen-q 97 --seqlen-k 130 \
    --head-dim 24 --dtype bf16 --causal --sinks --dbias --mask 0.5 --bwd
expect 0 '^PASS$' -- check --seqlen-q 97 --seqlen-k 300 --heads 2 --head-dim 16 --dtype bf16 \
    --bias-dtype bf16 --dbias --bwd
expect 2 "--bias-dtype: fp16, expected fp32 or the --dtype \(bf16\)" -- check --dtype bf16 \
    --bias-dtype fp16
expect 0 'bias\(dtype\)' -- bench --seqlen 64 --heads 2 --head-dim 16 --reps 1 --warmup 0 \
    --dtype fp16 --bias-dtype fp16
expect 0 'blocks\[11\]\(32,32,10%\) chunk48' -- check --seqlen 100 --heads 2 --head-dim 16 \
    --block-sparse 0.1 --block-size 32 --chunk 48 --causal --bwd
expect 0 '"pairs":' -- bench --seqlen 64 --heads 2 --head-dim 16 --reps 1 --warmup 0 \
    --block-sparse 0.1 --block-size 16 --sinks --bias --json
expect 2 "--mask: '0', expected a fraction in \(0, 1\]" -- check --mask 0
expect 2 '--chunk: 0, expected >= 1' -- check --chunk 0
expect 0 'backend: cpu-ref \(forward' -- check --seqlen 17 --heads 2 --head-dim 8 --backend cpu-ref
expect 0 '"pass":true' -- check --seqlen=64 --heads=6 --heads-kv=1 --head-dim=80 --dtype=fp16 \
    --bwd --json
expect 0 '"backend_bwd":"cpu-' -- check --seqlen 33 --heads 2 --head-dim 16 --bwd --json
expect 0 'usage: cflash check' -- check --help
expect 2 '--heads-kv: 3 does not divide --heads 8' -- check --heads-kv 3
expect 2 "--dtype: 'fp64', expected fp32, fp16 or bf16" -- check --dtype fp64
expect 2 "--window: '5', expected L,R" -- check --window 5
expect 2 "--dropout: '1', expected a probability in \[0, 1\)" -- check --dropout 1
expect 2 "--seqlen: 'x' is not an integer" -- check --seqlen x
expect 2 '--batch: 0, expected >= 1' -- check --batch 0
expect 2 "unknown flag '--frobnicate'" -- check --frobnicate
expect 2 '--heads: missing value' -- check --heads
expect 2 "--device: 'tpu', expected cpu or cuda" -- check --device tpu
expect 1 "backend: unknown name 'cpu-nope'" -- check --seqlen 8 --backend cpu-nope
expect 1 'CFLASH_ERR_UNSUPPORTED: attn_fwd: .*cuda-simt' -- check --seqlen 8 --heads 1 --head-dim 8 \
    --backend cuda-simt
# `bench decode --against`: both caches timed in one run, their ratio (issue 13's figure); not
# under an emulator (the bandwidth reference copies 512 MB a call).
if [ -z "${CFLASH_TEST_RUNNER:-}" ]; then
    expect 0 'against the bfloat16 cache on cpu-.*: [0-9.]+ ms \(median\): [0-9.]+x its speed' -- \
        bench decode --heads 4 --heads-kv 2 --head-dim 64 --seqlen-q 1 --seqlen-k 300 --dtype bf16 \
        --kv-quant int8 --against none --reps 2 --warmup 0
    expect 0 '"against":"e4m3 cache","against_backend":"cpu-[a-z0-9]+","against_ms":[0-9.]+,"speedup":' \
        -- bench decode --heads 4 --heads-kv 1 --head-dim 64 --seqlen-q 1 --seqlen-k 100 \
        --dtype fp16 --page 16 --against e4m3 --reps 1 --warmup 0 --json
    # --huge-pages: the inputs on 2 MB pages, and the report says how much the process got
    got_pages='the process has [0-9]+ MB on them, of [0-9]+ MB of inputs'
    expect 0 "inputs asked for 2 MB pages: ($got_pages|how many it got is not known here)" \
        -- bench decode --heads 4 --heads-kv 2 --head-dim 64 --seqlen-q 1 --seqlen-k 3000 \
        --dtype bf16 --kv-quant int8 --huge-pages --reps 1 --warmup 0
    expect 0 '"huge_pages_mb":-?[0-9]+\}' -- bench norm --batch 1 --seqlen 64 --heads 4 \
        --head-dim 64 --huge-pages --reps 1 --warmup 0 --json
    # --cache-seqlens: a batch of caches of those lengths (the batch their count, the cache the
    # longest), the keys of all in the shape
    expect 0 'decode +B4 H4/2 D64 Sq1 Sk<=300 \(303 keys\) bfloat16 ' -- bench decode --heads 4 \
        --heads-kv 2 --head-dim 64 --cache-seqlens 300,0,1,2 --dtype bf16 --reps 1 --warmup 0
    expect 0 'Sq1 Sk<=40 \(50 keys\) cache-int8 paged16 ' -- bench decode --heads 4 \
        --heads-kv 2 --head-dim 64 --cache-seqlens 40,10 --page 16 --kv-quant int8 --reps 1 \
        --warmup 0
fi
# A decode step is one query row unless --seqlen-q says otherwise (--seqlen: the cache's length).
expect 0 'decode +B1 H4/2 D64 Sq1 Sk200 ' -- bench decode --batch 1 --heads 4 --heads-kv 2 \
    --head-dim 64 --seqlen 200 --dtype bf16 --reps 1 --warmup 0
expect 0 'decode +B1 H4/2 D64 Sq3 Sk200 ' -- bench decode --batch 1 --heads 4 --heads-kv 2 \
    --head-dim 64 --seqlen-q 3 --seqlen-k 200 --dtype bf16 --reps 1 --warmup 0
expect 2 "--against 'fp4', expected none, e4m3, e5m2 or int8" -- bench decode --against fp4
# --cache-seqlens: a bad list is refused, naming the flag.
for bad in '3,' ',3' '3,,4' '3,x' '-1' '2147483648' ''; do
    expect 2 "--cache-seqlens '$bad', expected 1 to 65536 lengths in \[0, 2147483647\]" -- \
        bench decode --cache-seqlens "$bad"
done
expect 2 "unknown flag '--cache-seqlens'" -- bench norm --cache-seqlens 3
expect 2 "unknown flag '--against'" -- bench norm --against int8
# A paged cache names its page size before the mask (it read "paged causal16").
expect 0 'Sq40 Sk300 paged16 causal ' -- bench decode --batch 1 --heads 4 --heads-kv 2 \
    --head-dim 64 --seqlen-q 40 --seqlen-k 300 --page 16 --causal --dtype bf16 --reps 1 --warmup 0
# Sizes from flags are int64s: a product past INT64_MAX is refused before anything is allocated.
expect 1 'a tensor of shape \(1, 4611686018427387904, 4, 1\) is too large' -- bench decode \
    --batch 1 --heads 4 --heads-kv 4 --head-dim 1 --seqlen-q 1 --seqlen-k 4611686018427387904
expect 1 'a tensor of shape \(1, 4611686018427387904, 4, 1\) is too large' -- bench --batch 1 \
    --heads 4 --head-dim 1 --seqlen-q 1 --seqlen-k 4611686018427387904
expect 1 '3 sequences of 9223372036854775807 pages is too many' -- bench decode --batch 3 \
    --heads 4 --heads-kv 4 --head-dim 1 --seqlen-q 1 --seqlen-k 9223372036854775807 --page 1

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
