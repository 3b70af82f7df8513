#!/bin/sh
# SPDX-License-Identifier: MIT
# Puts lazymemd under load for make check: many clients at once while runtimes report to it.
# LAZYMEM_LOAD_CLIENTS, _RUNTIMES and _SECONDS size the run; lmd-load's 77 (skip) passes through.
set -u
# Under AddressSanitizer freed memory waits in a 256 MiB quarantine, which
# the daemon's RSS bound would count as growth: a small one keeps the bound
# about the daemon (the variable means nothing to a build without ASan).
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=8"
export ASAN_OPTIONS
exec ./tests/lmd-load --daemon ./daemon/lazymemd --clients "${LAZYMEM_LOAD_CLIENTS:-200}" \
	--runtimes "${LAZYMEM_LOAD_RUNTIMES:-10}" --seconds "${LAZYMEM_LOAD_SECONDS:-3}"
