#!/bin/sh
# SPDX-License-Identifier: MIT
# Installs what is missing and builds lazymem: in-tree when the tree is
# already configured there, otherwise in ./build.  Prints the build dir.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
./scripts/install-deps.sh >&2
[ -x configure ] || ./autogen.sh >&2
if [ -f config.status ]; then
	build=$top
else
	build=$top/build
	mkdir -p "$build"
	[ -f "$build/Makefile" ] || (cd "$build" && "$top/configure" -q) >&2
fi
make -C "$build" -j"$(nproc)" >&2
echo "$build"
