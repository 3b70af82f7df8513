#!/bin/sh
# SPDX-License-Identifier: MIT
# Runs one test program under a timeout; CK_TIMEOUT_MULTIPLIER stretches it
# (sanitizer builds set it).  Exit 77 means skipped, as automake expects.
set -u
mult=${CK_TIMEOUT_MULTIPLIER:-1}
limit=$(awk -v m="$mult" 'BEGIN { printf "%d", 300 * m }')
exec timeout --kill-after=10 "$limit" "$@"
