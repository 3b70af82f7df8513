#!/bin/sh
# SPDX-License-Identifier: MIT
# Installs the Debian packages lazymem needs to build, test and benchmark.
# Idempotent: packages already present are left alone, and nothing is done
# (not even an apt-get update) when everything is installed.  systemd is
# for systemd-analyze, which audits the shipped unit; nothing is started.
set -eu

pkgs="build-essential autoconf automake libtool pkg-config
liburing-dev libcap-dev libjemalloc-dev libhiredis-dev check clang libclang-rt-14-dev
util-linux procps prometheus python3
sqlite3 redis-server redis-tools systemd iproute2"

missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
		missing="$missing $p"
	fi
done

if [ -z "$missing" ]; then
	echo "install-deps: all packages present"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing packages:$missing; run as root to install them" >&2
	exit 1
fi

echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
