#!/bin/sh
# SPDX-License-Identifier: MIT
# Quick start, second command: the full test suite.
#  1. make check in the normal build;
#  2. make distcheck, configured with AddressSanitizer and UBSan, so the
#     same tests run again under the sanitizers from the release tarball,
#     in a separate tree (tests never write into the source tree).
# LAZYMEM_TEST_FAST=1 skips step 2.
set -eu
cd "$(dirname "$0")/.."
build=$(./scripts/build.sh)
status=0
make -C "$build" -j"$(nproc)" check || status=$?
if [ $status -ne 0 ]; then
	for log in "$build"/tests/*.log; do
		grep -q '^FAIL\|^ERROR' "$log" 2>/dev/null && { echo "== $log"; cat "$log"; }
	done
	exit $status
fi
# One closing line a CI reader can count: Check's per-program totals, summed.
summary=$(cat "$build"/tests/check_*.log | awk '
	/Checks: [0-9]+, Failures: [0-9]+, Errors: [0-9]+/ {
		gsub(/[^0-9 ]/, " "); n = split($0, f, " ");
		checks += f[n - 2]; failed += f[n - 1] + f[n]
	}
	END { printf "%d passed, %d failed", checks - failed, failed }')
if [ "${LAZYMEM_TEST_FAST:-0}" != 1 ]; then
	CK_TIMEOUT_MULTIPLIER=${CK_TIMEOUT_MULTIPLIER:-4} \
	make -C "$build" -j"$(nproc)" distcheck \
		DISTCHECK_CONFIGURE_FLAGS="--enable-asan --enable-ubsan"
fi
echo "checks: $summary"
