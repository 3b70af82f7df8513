#!/bin/sh
# SPDX-License-Identifier: MIT
# Stress mode, outside make check: runs the concurrency-heavy test programs
# over and over (default 50 rounds each, or $1), in both fault modes, and
# stops at the first failure with its log.  Races that show once in a few
# runs (lost wake-ups, event ordering) are what it is for.  check_budget's
# torture test (8 writers on a region 3x its budget) runs for
# $LAZYMEM_TORTURE_SECONDS (default here 30) each round instead of 3.
# check_fork forks amid saves, rollbacks and snapshot reads, round after
# round.  Then lazymemd under 1000 clients and 20 runtimes (tests/lmd-load).
set -eu
cd "$(dirname "$0")/.."
rounds=${1:-50}
build=$(./scripts/build.sh)
make -C "$build" -j"$(nproc)" tests/check_fault tests/check_events tests/check_signal \
	tests/check_region tests/check_budget tests/check_snapshot tests/check_fork tests/lmd-load >&2
export LAZYMEM_TORTURE_SECONDS=${LAZYMEM_TORTURE_SECONDS:-30}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in check_fault check_events check_signal check_region check_budget check_snapshot check_fork; do
	i=0
	while [ "$i" -lt "$rounds" ]; do
		i=$((i + 1))
		if ! timeout 600 "$build/tests/$t" >"$log" 2>&1; then
			echo "stress: $t failed in round $i:"
			cat "$log"
			exit 1
		fi
	done
	echo "stress: $t: $rounds rounds passed"
done
# lazymemd at full size: 1000 clients querying in a loop while 20 runtimes
# report, for LAZYMEM_LOAD_SECONDS (default 30); no error, bounded memory.
(cd "$build" && ./tests/lmd-load --daemon ./daemon/lazymemd --clients 1000 --runtimes 20 \
	--seconds "${LAZYMEM_LOAD_SECONDS:-30}")
