#!/bin/sh
# SPDX-License-Identifier: MIT
# Puts lazymemd under load for make check: many clients at once while runtimes report to it.
# LAZYMEM_LOAD_CLIENTS, _RUNTIMES and _SECONDS size the run; lmd-load's 77 (skip) passes through.
set -u
exec ./tests/lmd-load --daemon ./daemon/lazymemd --clients "${LAZYMEM_LOAD_CLIENTS:-200}" \
	--runtimes "${LAZYMEM_LOAD_RUNTIMES:-10}" --seconds "${LAZYMEM_LOAD_SECONDS:-3}"
