#!/bin/sh
# SPDX-License-Identifier: MIT
# Builds the libFuzzer harness of lazymemd's request parser (and its JSON
# string writer) with clang and
# runs it for a bounded time: LAZYMEM_FUZZ_SECONDS (default 20).  Skips (77)
# only where clang or its fuzzer runtime is missing, saying so.
set -eu
src=${srcdir:-.}
secs=${LAZYMEM_FUZZ_SECONDS:-20}
cc=${CLANG:-clang}
if ! command -v "$cc" >/dev/null 2>&1; then
	echo "SKIP: $cc not installed (scripts/install-deps.sh installs it)"
	exit 77
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if ! "$cc" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-I "$src/include" -I "$src/lib" -I "$src/daemon" \
	"$src/tests/fuzz_proto.c" "$src/daemon/proto.c" \
	-o "$out/fuzz" 2>"$out/cc.log"; then
	cat "$out/cc.log"
	if grep -q "libclang_rt.fuzzer\|fuzzer.*not found\|cannot find" "$out/cc.log"; then
		echo "SKIP: the libFuzzer runtime is missing (libclang-rt-14-dev)"
		exit 77
	fi
	exit 1
fi
mkdir "$out/corpus"
for seed in "list" "stats 1" "budget 2 64M" "min 3 16M" "pressure" "metrics" "json" "version" "help" "hello 0.3.0 app" "pid 1
uid 0
name a
faults_missing 3
fill_latency 1 2 3

"; do
	printf '%s' "$seed" >"$out/corpus/$(printf '%s' "$seed" | tr ' ' '_')"
done
status=0
"$out/fuzz" -max_total_time="$secs" -max_len=512 -timeout=10 -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 \
	-artifact_prefix="$out/" "$out/corpus" >"$out/fuzz.log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
	cat "$out/fuzz.log"
	for crash in "$out"/crash-* "$out"/leak-* "$out"/timeout-*; do
		[ -e "$crash" ] && { echo "input:"; od -c "$crash" | head -20; }
	done
	exit "$status"
fi
tail -n 6 "$out/fuzz.log"
