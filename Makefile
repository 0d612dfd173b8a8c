# Thin wrapper over CMake for the README's commands:
#   make run    build, then `cflash report`, `cflash check` and `cflash bench` on the default shape
#   make test   build and run every test: ctest, the same C tests under ASan + UBSan, a clang
#               -Werror build, the fuzzer for FUZZ_CI_SECONDS on the kept corpus, Python tests,
#               and the aarch64 build under qemu-user (test-arm)
#   make fuzz   the libFuzzer target over every entry point for FUZZ_SECONDS on FUZZ_JOBS cores
# Both install what is missing first (.ci/deps.sh). BUILD, ASAN_BUILD and JOBS can be overridden.
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= 2
CFLASH := $(BUILD)/cflash
# The sanitizer run: any report fails the test (UBSan aborts; ASan's leak check stays on).
SAN_ENV := ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

.PHONY: all deps build run test test-c test-asan test-clang test-fuzz test-python test-arm fuzz clean

all: build

deps:
	@sh .ci/deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j$(JOBS)

run: build
	$(CFLASH) report
	$(CFLASH) check --bwd
	$(CFLASH) bench

# ctest runs JOBS tests at once, each with up to 2 OpenMP threads: on a 2-core machine an idle
# thread that spins at a barrier takes a core from the other test (measured on Zen 4 under load:
# test_edge_numerics 150 s with libgomp's default spinning, 34 s waiting passively). Tests check
# results, not speed.
TEST_ENV = OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE}

# Every stage runs even when an earlier one fails; the target fails if any did.
# Each stage's wall time is printed at the end (CI must stay under 30 minutes in all).
# test-python (one pytest process: one core) runs beside test-clang and test-fuzz, its output
# printed when it is done; the other stages use every core one after the other. (On an AVX2-only
# Zen 3 the stages one after the other took 33 minutes.)
test: build
	@fail=""; times=""; \
	run_stage() { t0=$$(date +%s); $(MAKE) --no-print-directory $$1 || fail="$$fail $$1"; \
	    times="$$times $$1 $$(( $$(date +%s) - t0 ))s"; }; \
	run_stage test-c; run_stage test-asan; \
	py=$$(mktemp -d); \
	( t0=$$(date +%s); $(MAKE) --no-print-directory test-python > $$py/log 2>&1 || touch $$py/failed; \
	  echo $$(( $$(date +%s) - t0 )) > $$py/secs ) & \
	run_stage test-clang; run_stage test-fuzz; wait; \
	echo "== test-python (ran beside test-clang and test-fuzz):"; cat $$py/log; \
	if [ -f $$py/failed ]; then fail="$$fail test-python"; fi; \
	times="$$times test-python $$(cat $$py/secs)s (beside them)"; rm -rf $$py; \
	run_stage test-arm; \
	echo "make test: stage times:$$times"; \
	if [ -n "$$fail" ]; then echo "make test: FAILED:$$fail"; exit 1; fi; \
	echo "make test: all stages passed"

# MPI is installed for this stage only (the MPI ring example's tests); the build is re-configured so
# that CMake finds it.
test-c: build
	sh .ci/deps.sh mpi
	cmake -S . -B $(BUILD) > /dev/null
	cmake --build $(BUILD) -j$(JOBS)
	cd $(BUILD) && $(TEST_ENV) ctest --output-on-failure -j$(JOBS)

# Left out here: GPU tests (label gpu; the CUDA driver is not built for the sanitizers) and
# test_cuda_nvrtc's two parts, whose minutes go to NVRTC compiling kernels (the same in both
# builds). The grids run reduced (CFLASH_TEST_LEVEL=-1: every code path on fewer, smaller
# shapes; test-c runs the full ones): 700 s -> 260 s on Zen 4, which keeps `make test` under CI's
# 30 minutes.
# Debug information: line tables only (-g1), which the sanitizers' stack traces need; full -g made
# the build 175 s instead of 118 on two Zen 3 cores (349 core-seconds instead of 220).
test-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" -DCFLASH_SANITIZE=ON -DCFLASH_WERROR=ON
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && $(TEST_ENV) CFLASH_TEST_LEVEL=-1 $(SAN_ENV) ctest --output-on-failure -j$(JOBS) -LE 'gpu|path-variant' -E '^test_cuda_nvrtc_'

# The whole tree (library, tool, tests) compiles warning-free with clang too (-Werror); skipped
# with a message where clang is not installed. Unoptimized (nothing runs from this build; clang's
# warnings come from its front end, the same at -O2) but with NDEBUG, as a release build: 74 -> 31
# core-seconds on Zen 3. (test-fuzz compiles the library with clang at -O2.)
CLANG_BUILD ?= build-clang
test-clang: deps
	@if command -v clang >/dev/null 2>&1; then \
	    CC=clang cmake -S . -B $(CLANG_BUILD) -DCMAKE_BUILD_TYPE=None "-DCMAKE_C_FLAGS=-O0 -DNDEBUG" \
	        -DCFLASH_WERROR=ON && \
	    cmake --build $(CLANG_BUILD) -j$(JOBS) && echo "clang build: no warnings"; \
	else echo "test-clang: skipped: clang is not installed"; fi

# The libFuzzer target (tests/fuzz, clang with ASan + UBSan): FUZZ_JOBS jobs of FUZZ_SECONDS each
# over the kept corpus tests/fuzz/corpus; any finding fails, its input in $(FUZZ_BUILD)/artifacts.
# test-fuzz is the short run of `make test`, skipped with a message without clang / libFuzzer.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 1800
FUZZ_CI_SECONDS ?= 30
FUZZ_JOBS ?= 2
fuzz: deps
	sh tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_JOBS) $(FUZZ_BUILD)

test-fuzz: deps
	sh tests/fuzz/run.sh $(FUZZ_CI_SECONDS) $(FUZZ_JOBS) $(FUZZ_BUILD) --skip-if-unavailable

test-python: build
	@if [ -d tests/python ]; then \
	    sh .ci/deps.sh python || exit 1; \
	    echo "python3 -m pytest -q tests/python"; \
	    CFLASH_LIBRARY=$(CURDIR)/$(BUILD)/libcflash.so python3 -m pytest -q tests/python; \
	else echo "(no Python tests yet)"; fi

# AArch64: cross-built with Debian's gcc-aarch64-linux-gnu (cmake/aarch64-linux-gnu.cmake, -Werror)
# and run under qemu-user on each CPU model it offers (tests/qemu_arm.sh says which tests, on which
# model, and which cannot run emulated and why).
ARM_BUILD ?= build-arm
test-arm: deps
	@sh .ci/deps.sh arm
	cmake -S . -B $(ARM_BUILD) -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
	    -DCMAKE_BUILD_TYPE=Release -DCFLASH_WERROR=ON
	cmake --build $(ARM_BUILD) -j$(JOBS)
	sh tests/qemu_arm.sh $(ARM_BUILD) $(JOBS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(CLANG_BUILD) $(FUZZ_BUILD) $(ARM_BUILD)
