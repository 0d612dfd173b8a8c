#!/bin/bash
# Issue 16's checks on a lent NVIDIA GPU, in one call (device tool; see docs/PERF.md "NVIDIA"):
# build, the GPU tests, two `cflash check`s, the SDPA comparison, the memory and race checkers on
# a small call, then the fuller grid. Each step has its own time limit so that one hang costs only
# that step; logs go to $OUT/logs.tgz (else ./gpu_out), a summary is printed last.
#   bash bench/gpu_session.sh [STEPS]    STEPS: a subset of "env build test check py bench grid san",
#                                        plus (not by default) "prof": Nsight Compute on cuda-mma,
#                                        "variants": kernel variants timed and checked (VARIANTS
#                                        overrides the list: "name|cflags|nvrtc options|grid;...")
# DLPack's header must be in third_party/dlpack/ (git-ignored; the device tool's carry).
set -u
R=${OUT:-$PWD/gpu_out}
O=$R/l # step logs; tarred into $R/logs.tgz at the end (the device tool returns 8 files at most)
mkdir -p "$O"
STEPS=${1:-env build test check py bench grid san}
J=$(nproc)
T0=$(date +%s)
SUM=$R/summary.txt
: >"$SUM"
note() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$SUM"; }
# step NAME LIMIT CMD...: runs CMD with output to $O/NAME.log, notes its status and duration.
step() {
    local name=$1 lim=$2
    shift 2
    local t=$(date +%s)
    timeout -k 5 "$lim" "$@" >"$O/$name.log" 2>&1
    local rc=$?
    note "$name: rc $rc in $(($(date +%s) - t)) s"
    return $rc
}
has() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
export PYTHONUNBUFFERED=1 CFLASH_CACHE_DIR=$PWD/.gpu_cache
rm -rf "$CFLASH_CACHE_DIR"

if has env; then
    {
        date -u; nvidia-smi; nvcc --version | tail -2; uname -r; nproc
        python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
        ls -l /usr/local/cuda/lib64/libnvrtc* 2>&1 | head
    } >"$O/env.log" 2>&1
    note "env: $(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1)"
fi
if has build; then
    step cmake 120 cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DDLPACK_INCLUDE_DIR="$PWD/third_party"
    step build 240 cmake --build build -j "$J" || { tail -30 "$O/build.log"; exit 1; }
    step report 60 build/cflash report
    grep -A12 '^\[cuda' "$O/report.log" | head -30 >>"$SUM"
fi
if has test; then
    step ctest 150 sh -c 'cd build && ctest --output-on-failure -R test_cuda -E test_cuda_nvrtc'
    grep -E "tests passed|Failed|Passed|\*\*\*|first use|GPU 0|grid level" "$O/ctest.log" | head -30 >>"$SUM"
fi
if has check; then
    # (the automatic choice: on an arch not yet in src/probe/gpu_probe.c's table it refuses the
    # CUDA backends, saying so; the forced checks below and the ctest step verify such an arch)
    step check_auto 60 build/cflash check --device cuda --dtype bf16 --causal --bwd --seqlen 1025 --head-dim 128
    tail -4 "$O/check_auto.log" >>"$SUM"
    step check_simt 60 build/cflash check --device cuda --backend cuda-simt --dtype fp32 --bwd --seqlen 300 --head-dim 96
    tail -4 "$O/check_simt.log" >>"$SUM"
fi
if has py; then
    # The Python package on CUDA tensors (tests/python/test_torch.py's cuda cases; they skip
    # without a GPU, so only a GPU machine runs them).
    step py 120 env CFLASH_LIBRARY="$PWD/build/libcflash.so" PYTHONPATH="$PWD/python" \
        python3 -m pytest -q -rs tests/python/test_torch.py -k cuda
    tail -3 "$O/py.log" >>"$SUM"
fi
if has bench; then
    step bench 200 python3 bench/cuda_sdpa_compare.py --lib build/libcflash.so
    cat "$O/bench.log" >>"$SUM"
    step bench_d64 120 python3 bench/cuda_sdpa_compare.py --lib build/libcflash.so --head-dim 64 --no-first-use
    cat "$O/bench_d64.log" >>"$SUM"
fi
if has san && command -v compute-sanitizer >/dev/null; then
    # memcheck and racecheck (shared-memory hazards of the cp.async pipeline) on small calls that
    # take both the fast and the masked tile paths, GQA for the dK/dV kernel's head loop.
    for tool in memcheck racecheck; do
        step "san_$tool" 90 compute-sanitizer --tool $tool --error-exitcode 9 build/cflash check \
            --device cuda --backend cuda-mma --dtype bf16 --causal --bwd --batch 1 --heads 4 \
            --heads-kv 2 --seqlen 200 --head-dim 64
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASS|FAIL" "$O/san_$tool.log" | head -5 >>"$SUM"
    done
fi
if has prof && command -v ncu >/dev/null; then
    # Where cuda-mma's time goes: one launch of each kernel at the target's head dim (S 4096),
    # every section (--set full), clocks left as they are. Per kernel: the report, its details
    # page, the raw metrics (the stall samples by reason) and the SASS with its stall samples.
    for k in fwd bwd_dq bwd_dkdv; do
        step "prof_$k" 150 ncu --clock-control none -k regex:"cf_attn_${k}_mma" -c 1 --set full \
            -o "/tmp/prof_$k" build/cflash bench --device cuda --dtype bf16 --batch 4 --heads 16 \
            --seqlen 4096 --head-dim 128 --bwd --warmup 0 --reps 1
        [ -f "/tmp/prof_$k.ncu-rep" ] || continue
        ncu -i "/tmp/prof_$k.ncu-rep" --page details --print-details all >"$O/prof_${k}_details.txt" 2>&1 ||
            ncu -i "/tmp/prof_$k.ncu-rep" --page details >"$O/prof_${k}_details.txt" 2>&1
        ncu -i "/tmp/prof_$k.ncu-rep" --page raw --csv >"$O/prof_${k}_raw.csv" 2>&1
        ncu -i "/tmp/prof_$k.ncu-rep" --page source --csv --print-source sass >"$O/prof_${k}_sass.csv" 2>&1
        grep -E "Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Issue Slots Busy|Issued Ipc|Warp Cycles Per Issued|Compute \(SM\) Throughput|Memory Throughput|L2 Hit|Shared Memory Configuration Size|Dynamic Shared" \
            "$O/prof_${k}_details.txt" | head -24 | sed "s/^/$k: /" >>"$SUM"
    done
fi
if has variants; then
    # Kernel variants (attn_mma.cu's defines through CFLASH_NVRTC_OPTIONS), each timed against
    # SDPA at the target's shape and checked on two shapes that take the masked tile paths too.
    # A variant spec is "name|host C flags|NVRTC options|grid": host flags (MMA_FWD_STAGES,
    # MMA_BWD_ATOMIC_DQ: shared memory and launches to match the kernels) build their own library;
    # grid 1 also runs the level-0 GPU grid on it.
    # Static counts (nvdisasm of nvcc 13.0's sm_90 cubin, bf16 D 128, the forward loop's path on a
    # full tile): base ~1330 instructions a 64-key tile a warp (128 HMMA; the two tile loads'
    # loops 28 instructions per 16 bytes), LOAD_T + EX2_FTZ 863, + FULL_N 720, + SKIP_RESCALE ~660.
    L="-DCF_LOAD_T=1 -DCF_EX2_FTZ=1 -DCF_FULL_N=1"
    DEF_VARIANTS="base|||0;ltf||$L|0;ltfs||$L -DCF_SKIP_RESCALE=1|1"
    DEF_VARIANTS="$DEF_VARIANTS;s2|-DMMA_FWD_STAGES=2|$L -DCF_SKIP_RESCALE=1 -DCF_FWD_STAGES=2|1"
    DEF_VARIANTS="$DEF_VARIANTS;dqmin3||$L -DCF_SKIP_RESCALE=1 -DCF_BWD_MINB=3|0"
    DEF_VARIANTS="$DEF_VARIANTS;adq|-DMMA_BWD_ATOMIC_DQ=1|$L -DCF_SKIP_RESCALE=1 -DCF_BWD_ATOMIC_DQ=1|1"
    IFS=';' read -ra VLIST <<<"${VARIANTS:-$DEF_VARIANTS}"
    for v in "${VLIST[@]}"; do
        IFS='|' read -r name cflags opts grid <<<"$v"
        dir=build
        if [ -n "$cflags" ]; then
            dir=build_$name
            step "cmake_$name" 120 cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release \
                -DDLPACK_INCLUDE_DIR="$PWD/third_party" -DCMAKE_C_FLAGS="$cflags"
            step "build_$name" 240 cmake --build "$dir" -j "$J" --target cflash cflash_cli \
                test_cuda_attn || continue
        fi
        export CFLASH_NVRTC_OPTIONS="$opts"
        step "var_$name" 90 python3 bench/cuda_sdpa_compare.py --lib "$dir/libcflash.so" --no-first-use
        sed "s/^/$name: /" "$O/var_$name.log" | grep -v "^$name: $" | tail -3 >>"$SUM"
        step "varchk_$name" 60 "$dir/cflash" check --device cuda --backend cuda-mma --dtype bf16 \
            --causal --bwd --seqlen 1025 --head-dim 128
        tail -2 "$O/varchk_$name.log" | sed "s/^/$name: /" >>"$SUM"
        step "varchk2_$name" 60 "$dir/cflash" check --device cuda --backend cuda-mma --dtype fp16 \
            --bwd --batch 2 --heads 4 --heads-kv 2 --seqlen 300 --head-dim 64
        tail -2 "$O/varchk2_$name.log" | sed "s/^/$name: /" >>"$SUM"
        if [ "$grid" = 1 ]; then
            step "vargrid_$name" 150 env CFLASH_GPU_GRID_LEVEL=0 "$dir/tests/test_cuda_attn"
            grep -E "passed|FAIL" "$O/vargrid_$name.log" | head -8 | sed "s/^/$name: /" >>"$SUM"
        fi
        unset CFLASH_NVRTC_OPTIONS
    done
fi
if has grid; then
    step grid1 180 env CFLASH_GPU_GRID_LEVEL=1 build/tests/test_cuda_attn
    grep -E "passed|grid level|^first use" "$O/grid1.log" >>"$SUM"
    grep -E "FAIL|fail" "$O/grid1.log" | head -20 >>"$SUM"
fi
note "done"
tar czf "$R/logs.tgz" -C "$O" . && rm -rf "$O"
echo "==== summary"
cat "$SUM"
