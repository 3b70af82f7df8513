/* SPDX-License-Identifier: MIT */
/* Jobs for real programs, shared by check_run (results compared) and lazymem-bench's run.* (timed). */
#ifndef LM_RUN_JOBS_H
#define LM_RUN_JOBS_H

/*
 * python3 -c LMT_PY_STRUCTURE N: a dict of N entries of lists, strings
 * and tuples (about 550 bytes of objects each), hashed twice in
 * insertion order, sorted by a key; prints what it computed, then its
 * peak RSS on a line of its own starting with '#'.
 */
#define LMT_PY_STRUCTURE \
	"import hashlib, sys\n" \
	"n = int(sys.argv[1])\n" \
	"d = {}\n" \
	"for i in range(n):\n" \
	"    d['k%07d' % i] = [i, str(i * 7919) * 3, (i % 97, 'v' * (i % 50))]\n" \
	"h = hashlib.sha256()\n" \
	"for rnd in range(2):\n" \
	"    for k, v in d.items():\n" \
	"        h.update(k.encode()); h.update(repr(v).encode())\n" \
	"first = sorted(d, key=lambda k: d[k][1])[:5]\n" \
	"print(len(d), h.hexdigest(), first)\n" \
	"print(sum(v[0] for v in d.values()), sum(len(v[1]) for v in d.values()))\n" \
	"for line in open('/proc/self/status'):\n" \
	"    if line.startswith('VmHWM'):\n" \
	"        print('#', line.strip())\n"

#endif
