#!/bin/sh
# SPDX-License-Identifier: MIT
# Quick start, second command: the full test suite.
#  1. make check in the normal build;
#  2. make distcheck, configured with AddressSanitizer and UBSan (and
#     warnings as errors), so the same tests run again under the
#     sanitizers from the release tarball, in a separate tree (tests
#     never write into the source tree).
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
# An application finds the library with pkg-config: install into a
# temporary prefix, build the demo against it with nothing but
# pkg-config's flags, and run it (shared and static).
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
make -C "$build" install prefix="$prefix" >/dev/null
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
# The installed lazymem.pc names the prefix it was installed to.
grep -q "^prefix=$prefix\$" "$prefix/lib/pkgconfig/lazymem.pc" ||
	{ echo "lazymem.pc does not name the install prefix $prefix" >&2; exit 1; }
pc="pkg-config"
cc -o "$prefix/demo" demos/lazymem-demo.c $($pc --cflags --libs lazymem) \
	-Wl,-rpath,"$prefix/lib"
"$prefix/demo" --quick >/dev/null
cc -o "$prefix/demo-static" demos/lazymem-demo.c $($pc --cflags lazymem) \
	"$prefix/lib/liblazymem.a" $($pc --libs --static liburing libcap hiredis) -pthread
"$prefix/demo-static" --quick >/dev/null
cc -o "$prefix/snapdemo" demos/lazymem-snapshot-demo.c $($pc --cflags --libs lazymem) \
	-pthread -Wl,-rpath,"$prefix/lib"
"$prefix/snapdemo" --quick >/dev/null
echo "pkg-config lazymem: shared and static builds of the demos run"

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
		DISTCHECK_CONFIGURE_FLAGS="--enable-asan --enable-ubsan --enable-werror"
fi
echo "checks: $summary"
