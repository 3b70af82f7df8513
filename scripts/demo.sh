#!/bin/sh
# SPDX-License-Identifier: MIT
# Quick start, first command: install what is missing, build, run the
# snapshot demo (a key-value store snapshotted under load, saved, restored
# lazily and rolled back).  Pass --quick for a shorter run; --paging runs
# the demand-paging demo instead.
set -eu
cd "$(dirname "$0")/.."
build=$(./scripts/build.sh)
if [ "${1:-}" = --paging ]; then
	shift
	exec "$build/demos/lazymem-demo" "$@"
fi
exec "$build/demos/lazymem-snapshot-demo" "$@"
