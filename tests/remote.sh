#!/bin/sh
# SPDX-License-Identifier: MIT
# Runs check_remote against a Redis Cluster of three masters and three
# replicas, each in a network namespace of its own (scripts/redis-cluster.sh),
# from the hub namespace that joins them; stops the cluster after.
set -eu
prog=$(cd "${builddir:-.}/tests" && pwd)/check_remote
. "${srcdir:-$(dirname "$0")/..}/tests/cluster-env.sh"

# An unmodified program (python3) whose heap is four times its budget,
# evicted to the cluster through the preload library (lazymem run --swap):
# the same answer as a plain run, pages sent and read back, none lost.
# Before check_remote, whose last test kills a master.
lazymem=${builddir:-.}/daemon/lazymem
# Debian's python3: a python3 earlier in PATH may be a shell shim that runs a dozen programs.
py=/usr/bin/python3
export LAZYMEM_PRELOAD="$(cd "${builddir:-.}/lib/.libs" && pwd)/liblazymem-preload.so"
job='import hashlib
d = {i: bytes([i % 251]) * 500 for i in range(200000)}
h = hashlib.sha256()
for i in range(200000):
    h.update(d[i])
print(h.hexdigest())'
want=$("$py" -c "$job")
got=$(hub "$lazymem" run --budget 32M --swap "redis://$seed" --stats "$dir/stats.json" \
	--no-report -- "$py" -c "$job")
[ "$got" = "$want" ] || { echo "FAIL: python3 under lazymem run --swap: $got, want $want"; exit 1; }
python3 - "$dir/stats.json" <<'PY' || exit 1
import json, sys
s = json.load(open(sys.argv[1]))
s = s.get("stats", s)
bad = [k for k, ok in (("remote_bytes_out", s["remote_bytes_out"] > 64 << 20),
                       ("remote_bytes_in", s["remote_bytes_in"] > 0),
                       ("swap_read_errors", s["swap_read_errors"] == 0),
                       ("swap_write_errors", s["swap_write_errors"] == 0)) if not ok]
if bad:
    print("FAIL: lazymem run --swap stats:", {k: s[k] for k in bad})
    sys.exit(1)
print("python3 on far memory: %d MiB out, %d MiB in, %d round trips" %
      (s["remote_bytes_out"] >> 20, s["remote_bytes_in"] >> 20, s["remote_requests"]))
PY
# The program's runtime is never closed (the preload library's never is):
# lazymem run deletes its keys once it is done, and passes its status on.
left=0
for i in 1 2 3 4 5 6; do
	n=$(hub redis-cli -h "10.251.0.1$i" -p 7000 --scan --pattern 'lm:swap:*' | wc -l)
	left=$((left + n))
done
[ "$left" -eq 0 ] || { echo "FAIL: lazymem run --swap left $left keys in the cluster"; exit 1; }
rc=0
hub "$lazymem" run --budget 32M --swap "redis://$seed" --no-report -- sh -c 'exit 3' || rc=$?
[ "$rc" -eq 3 ] || { echo "FAIL: lazymem run --swap: status $rc, want 3"; exit 1; }
rc=0
hub "$lazymem" run --budget 32M --swap "redis://$seed" --no-report -- sh -c 'kill -TERM $$' || rc=$?
[ "$rc" -eq 143 ] || { echo "FAIL: lazymem run --swap, killed: status $rc, want 143"; exit 1; }

# --swap takes a redis:// URL only: anything else is a usage error, nothing run.
rc=0
"$lazymem" run --swap /tmp -- true 2>"$dir/err" || rc=$?
[ "$rc" -eq 2 ] && grep -q 'not a redis:// URL' "$dir/err" ||
	{ echo "FAIL: lazymem run --swap /tmp: status $rc"; cat "$dir/err"; exit 1; }

# A cluster nobody answers for: the program runs unchanged, after one line on stderr.
got=$(hub "$lazymem" run --budget 32M --swap "redis://10.251.0.99:7000?timeout=200" --no-report \
	-- "$py" -c "$job" 2>"$dir/err")
[ "$got" = "$want" ] || { echo "FAIL: python3 with an unreachable cluster: $got"; exit 1; }
[ "$(wc -l <"$dir/err")" -eq 1 ] || { echo "FAIL: want one line on stderr:"; cat "$dir/err"; exit 1; }

# The migration demo: saved under load on machine A, restored lazily on
# machine B (namespaces of their own on the same bridge), same checksum.
demo=${builddir:-.}/demos/lazymem-migrate-demo
ip netns exec lmrc-a env LAZYMEM_SOCKET=off "$demo" save "redis://$seed/migrate-test" 16 >"$dir/a"
ip netns exec lmrc-b env LAZYMEM_SOCKET=off "$demo" restore "redis://$seed/migrate-test" 500 >"$dir/b"
a=$(sed -n 's/^checksum //p' "$dir/a")
b=$(sed -n 's/^checksum //p' "$dir/b")
[ -n "$a" ] && [ "$a" = "$b" ] || { echo "FAIL: migration: A $a, B $b"; cat "$dir/a" "$dir/b"; exit 1; }
grep -q ' 0 bad' "$dir/b" || { echo "FAIL: migration lookups:"; cat "$dir/b"; exit 1; }
echo "migration demo: checksums equal"

rc=0
hub env LM_TEST_CLUSTER="$seed" LM_TEST_CLUSTER_DIR="$dir/c" "$prog" || rc=$?
exit $rc
