#!/bin/sh
# SPDX-License-Identifier: MIT
# Quick start, first command: install what is missing, build, run the demo.
# Pass --quick for a shorter run.
set -eu
cd "$(dirname "$0")/.."
build=$(./scripts/build.sh)
"$build/demos/lazymem-demo" "$@"
