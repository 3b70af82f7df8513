#!/bin/bash
# SPDX-License-Identifier: MIT
# A/B benchmark of two revisions: builds each in its own clone and runs their
# lazymem-bench interleaved, round by round, then prints medians, NEW/OLD
# ratios and spreads, with how busy the machine was while they ran.
#
# usage: scripts/bench-ab.sh [--rounds N] [--quick] [--only S] [--out FILE]
#                            [--keep] [-- lazymem-bench args] OLD_REV NEW_REV
#
# A revision is anything git rev-parse takes (HEAD~1, a tag, a hash), or
# WORKTREE: the current working tree with its uncommitted changes (tracked
# and untracked files that .gitignore does not exclude).  The two revisions
# may come before "--" or be the last two arguments.
#
# Bash, not sh: the WORKTREE copy reads NUL-separated file names.
set -eu

prog=bench-ab
die() {
	echo "$prog: $*" >&2
	exit 1
}
usage() {
	cat <<'EOF'
usage: scripts/bench-ab.sh [options] [-- lazymem-bench args] OLD_REV NEW_REV
  --rounds N   rounds of OLD then NEW (default 3); each round is one
               lazymem-bench --json run per side, itself a median of its --runs
  --quick      pass --quick to lazymem-bench (64M, 3 runs)
  --only S     pass --only S to lazymem-bench
  --out FILE   also write every run and the summary as JSON to FILE
  --keep       keep the temporary clones, builds and raw JSON lines
  -h, --help   this text
Anything after "--" goes to lazymem-bench as it is (--size, --mode, --runs...).
OLD_REV and NEW_REV are git revisions; either may be WORKTREE, the working
tree with its uncommitted changes.  Both come before "--" or last.
EOF
}
bad_arg() {
	echo "$prog: $*" >&2
	exit 2
}
bad_usage() {
	echo "$prog: $*" >&2
	usage >&2
	exit 2
}

rounds=3
out=
keep=0
bench_args=()
revs=()
while [ $# -gt 0 ]; do
	case $1 in
	--rounds)
		[ $# -ge 2 ] || bad_usage "--rounds needs a number"
		rounds=$2
		shift 2
		;;
	--rounds=*) rounds=${1#--rounds=}; shift ;;
	--quick) bench_args+=(--quick); shift ;;
	--only)
		[ $# -ge 2 ] || bad_usage "--only needs a substring"
		bench_args+=(--only "$2")
		shift 2
		;;
	--only=*) bench_args+=(--only "${1#--only=}"); shift ;;
	--out)
		[ $# -ge 2 ] || bad_usage "--out needs a file name"
		out=$2
		shift 2
		;;
	--out=*) out=${1#--out=}; shift ;;
	--keep) keep=1; shift ;;
	-h|--help) usage; exit 0 ;;
	--)
		shift
		bench_args+=("$@")
		break
		;;
	-*) bad_usage "unknown option: $1" ;;
	*) revs+=("$1"); shift ;;
	esac
done
# Revisions not given before "--" are the last two words after it, so that
# the documented order (extra arguments, then the revisions) works too.
if [ ${#revs[@]} -eq 0 ] && [ ${#bench_args[@]} -ge 2 ]; then
	n=${#bench_args[@]}
	revs=("${bench_args[n - 2]}" "${bench_args[n - 1]}")
	bench_args=("${bench_args[@]:0:n-2}")
fi
[ ${#revs[@]} -eq 2 ] || bad_usage "need exactly two revisions, OLD_REV and NEW_REV (got ${#revs[@]})"
case $rounds in
'' | *[!0-9]*) bad_usage "--rounds wants a positive integer, not '$rounds'" ;;
esac
[ "$rounds" -ge 1 ] || bad_usage "--rounds wants a positive integer, not '$rounds'"
[ "${revs[0]}" != WORKTREE ] || [ "${revs[1]}" != WORKTREE ] ||
	bad_usage "OLD_REV and NEW_REV cannot both be WORKTREE"
for a in "${bench_args[@]+"${bench_args[@]}"}"; do
	case $a in
	--help) bad_usage "--help is not a benchmark argument; run lazymem-bench --help" ;;
	esac
done
if [ -n "$out" ]; then
	# Checked now, not after the runs: a typo must not cost a whole benchmark.
	outdir=$(dirname -- "$out")
	if ! [ -d "$outdir" ] || ! [ -w "$outdir" ]; then
		bad_arg "--out: cannot write in directory $outdir"
	fi
	out=$(cd "$outdir" && pwd)/$(basename -- "$out")
fi
command -v python3 >/dev/null || die "python3 is needed for the statistics"

top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel) ||
	die "$(dirname "$0") is not inside a git repository"
# Others may be working in this tree: no git command here may take the
# index lock or rewrite the index (git's opportunistic stat refresh).
export GIT_OPTIONAL_LOCKS=0

# Resolves each revision now, in the source repository, so a bad name fails
# before any build; the clones then check out the exact commit.
shas=()
commits=()
descs=()
for rev in "${revs[@]}"; do
	if [ "$rev" = WORKTREE ]; then
		base=$(git -C "$top" rev-parse --short HEAD)
		if git -C "$top" diff --quiet HEAD -- &&
			[ -z "$(git -C "$top" ls-files -o --exclude-standard | head -n 1)" ]; then
			state="no uncommitted changes"
		else
			state="with uncommitted changes"
		fi
		shas+=(WORKTREE)
		commits+=("$(git -C "$top" rev-parse HEAD)")
		descs+=("working tree of $top (HEAD $base, $state)")
	else
		sha=$(git -C "$top" rev-parse --verify --quiet "$rev^{commit}") ||
			bad_arg "not a commit in $top: '$rev'"
		shas+=("$sha")
		commits+=("$sha")
		descs+=("$(git -C "$top" log -1 --format='%h %s' "$sha")")
	fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-ab.XXXXXX")
cleanup() {
	if [ "$keep" = 1 ]; then
		echo "$prog: kept $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
# A signal must still run the EXIT trap, which an untrapped one skips.
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# Copies the working tree as git sees it: tracked files (minus deleted ones)
# and untracked files not ignored, so build products of the tree stay out.
copy_worktree() {
	local dst=$1 f
	mkdir -p "$dst"
	(
		cd "$top"
		git ls-files -z -c -o --exclude-standard | while IFS= read -r -d '' f; do
			if [ -e "$f" ] || [ -L "$f" ]; then
				printf '%s\0' "$f"
			fi
		done | tar --null --no-recursion -T - -cf -
	) | tar -xf - -C "$dst"
}

# Prints the tail of a failed step's log, since the log itself is removed
# with the temporary directory.
build_failed() {
	local side=$1 step=$2 log=$3
	echo "$prog: building $side (${revs[$4]}) failed in: $step" >&2
	echo "$prog: last lines of its log ($log, removed on exit unless --keep):" >&2
	tail -n 30 "$log" | sed 's/^/    /' >&2
	exit 1
}

# Clones (or copies) and builds one side, out of tree, into $work/$side.
prepare() {
	local side=$1 i=$2 dir=$work/$1 log=$work/$1/build.log
	mkdir -p "$dir"
	echo "$prog: $side = ${revs[i]}: ${descs[i]}" >&2
	if [ "${shas[i]}" = WORKTREE ]; then
		copy_worktree "$dir/src"
	else
		# --shared borrows the source's object store: no copy, and commits
		# that no branch reaches (a detached HEAD's) are still there.
		git clone --quiet --shared --no-checkout "$top" "$dir/src" >"$log" 2>&1 ||
			build_failed "$side" "git clone" "$log" "$i"
		git -C "$dir/src" -c advice.detachedHead=false checkout --quiet --detach \
			"${shas[i]}" >>"$log" 2>&1 || build_failed "$side" "git checkout" "$log" "$i"
	fi
	[ -x "$dir/src/autogen.sh" ] || die "$side (${revs[i]}) has no autogen.sh"
	(cd "$dir/src" && ./autogen.sh) >>"$log" 2>&1 ||
		build_failed "$side" "./autogen.sh" "$log" "$i"
	mkdir -p "$dir/build"
	(cd "$dir/build" && "$dir/src/configure" -q) >>"$log" 2>&1 ||
		build_failed "$side" "configure" "$log" "$i"
	# Only the benchmark and the library it links: the rest (daemon, demos,
	# man pages) is not measured, and the machine is shared.
	make -C "$dir/build" -j"$(nproc)" tests/bench/lazymem-bench >>"$log" 2>&1 ||
		build_failed "$side" "make" "$log" "$i"
	[ -x "$dir/build/tests/bench/lazymem-bench" ] ||
		build_failed "$side" "make (no tests/bench/lazymem-bench was built)" "$log" "$i"
}

prepare OLD 0
prepare NEW 1

python3 - "$work" "$rounds" "$out" \
	"${revs[0]}" "${commits[0]}" "${descs[0]}" "$work/OLD/build/tests/bench/lazymem-bench" \
	"${revs[1]}" "${commits[1]}" "${descs[1]}" "$work/NEW/build/tests/bench/lazymem-bench" \
	"${bench_args[@]+"${bench_args[@]}"}" <<'PYTHON'
import json, math, os, resource, statistics, subprocess, sys, time

work, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# "commit" is the revision's commit, or for WORKTREE the HEAD it was based on.
sides = {side: {"rev": sys.argv[i], "commit": sys.argv[i + 1], "desc": sys.argv[i + 2],
                "worktree": sys.argv[i] == "WORKTREE", "bin": sys.argv[i + 3]}
         for side, i in (("OLD", 4), ("NEW", 8))}
bench_args = sys.argv[12:]
cpus = os.cpu_count() or 1
hz = os.sysconf("SC_CLK_TCK")


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_times():
    # The aggregate "cpu" line: user nice system idle iowait irq softirq steal.
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    v += [0] * (8 - len(v))
    return {"busy": v[0] + v[1] + v[2] + v[5] + v[6], "steal": v[7]}


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


runs = []
warned = set()
for rnd in range(1, rounds + 1):
    # OLD then NEW in every round, so slow drift of the machine shows on
    # both sides instead of on whichever ran last.
    for side in ("OLD", "NEW"):
        s = sides[side]
        path = os.path.join(work, "%s.round%d.jsonl" % (side, rnd))
        la0, ct0, cc0, t0 = loadavg(), cpu_times(), children_cpu(), time.monotonic()
        with open(path, "w") as f:
            p = subprocess.run([s["bin"], "--json"] + bench_args, stdin=subprocess.DEVNULL,
                               stdout=f, stderr=subprocess.PIPE, text=True)
        t1, cc1, ct1, la1 = time.monotonic(), children_cpu(), cpu_times(), loadavg()
        if p.returncode != 0:
            sys.stderr.write(p.stderr)
            sys.exit("bench-ab: lazymem-bench of %s (%s) failed with status %d in round %d "
                     "(arguments: --json %s)" % (side, s["rev"], p.returncode, rnd,
                                                 " ".join(bench_args)))
        # Warnings (file.cold not cold, hugetlb skipped) once each, not once a round.
        for line in p.stderr.splitlines():
            if line and (side, line) not in warned:
                warned.add((side, line))
                print("bench-ab: %s: %s" % (side, line), file=sys.stderr)
        results = []
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    results.append(json.loads(line))
                except ValueError:
                    print("bench-ab: %s: not JSON, ignored: %s" % (side, line), file=sys.stderr)
        if not results:
            sys.exit("bench-ab: lazymem-bench of %s (%s) printed no measurement" % (side, s["rev"]))
        wall = t1 - t0
        own = cc1 - cc0
        # What the rest of the machine used while this run ran: all busy CPU
        # time minus the benchmark's own, as a share of all CPUs' time.
        busy = (ct1["busy"] - ct0["busy"]) / hz
        others = max(0.0, busy - own) / (wall * cpus) if wall > 0 else 0.0
        steal = (ct1["steal"] - ct0["steal"]) / hz / (wall * cpus) if wall > 0 else 0.0
        runs.append({"side": side, "round": rnd, "seconds": round(wall, 3),
                     "loadavg_before": la0, "loadavg_after": la1,
                     "bench_cpu_seconds": round(own, 3), "others_cpu_share": round(others, 4),
                     "steal_share": round(steal, 4), "results": results})
        print("bench-ab: round %d/%d %s: %.1f s, load %.2f -> %.2f, others used %.0f %% of "
              "the CPUs" % (rnd, rounds, side, wall, la0[0], la1[0], 100 * others),
              file=sys.stderr)

# Values per measurement, field and side, in the order the benchmark prints.
FIELDS = ("lazymem", "kernel", "ratio")
order, units, values = [], {}, {}
for r in runs:
    for m in r["results"]:
        name = m.get("name")
        if name is None:
            continue
        if name not in units:
            order.append(name)
            units[name] = m.get("unit", "")
        for fld in FIELDS:
            if isinstance(m.get(fld), (int, float)):
                values.setdefault((name, fld, r["side"]), []).append(float(m[fld]))


def higher_is_better(unit):
    # Throughputs are better high; times, sizes and costs are better low.
    return unit.endswith("_per_s")


def stats(v):
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "values": v}


def fmt(x):
    if x is None:
        return "-"
    a = abs(x)
    if a >= 10000:
        return "%.4g" % x if a >= 1e7 else "%.0f" % x
    if a >= 100:
        return "%.1f" % x
    if a >= 1:
        return "%.2f" % x
    return "%.3f" % x


def spread(st):
    return "-" if st is None else "%s-%s" % (fmt(st["min"]), fmt(st["max"]))


# Two sets of n rounds from identical code fall apart, one wholly above the
# other, with probability 2 / C(2n, n): 1 in 3 rows for 2 rounds, 1 in 10
# for 3, 1 in 35 for 4.  Verdicts that chance makes common are marked.
chance = 2 / math.comb(2 * rounds, rounds)
weak = "?" if chance > 0.05 else ""
summary, rows = [], []
for name in order:
    unit = units[name]
    up = higher_is_better(unit)
    rows.append(("%s  (%s, %s is better)" % (name, unit, "higher" if up else "lower"),))
    for fld in FIELDS:
        o, n = stats(values.get((name, fld, "OLD"), [])), stats(values.get((name, fld, "NEW"), []))
        if o is None and n is None:
            continue
        r = n["median"] / o["median"] if o and n and o["median"] else None
        # Better or worse only when the two sides' ranges do not overlap; the
        # kernel row is the same code on both sides, so it measures the machine.
        if not (o and n):
            verdict = "only one side"
        elif fld == "kernel":
            verdict = "control" if o["max"] >= n["min"] and n["max"] >= o["min"] \
                else "control moved: machine drift"
        elif n["max"] < o["min"]:
            verdict = ("NEW better" if not up else "NEW worse") + weak
        elif n["min"] > o["max"]:
            verdict = ("NEW worse" if not up else "NEW better") + weak
        else:
            verdict = "within noise"
        label = {"lazymem": "lazymem", "kernel": "kernel", "ratio": "lazymem/kernel"}[fld]
        rows.append(("  " + label, fmt(o and o["median"]), fmt(n and n["median"]),
                     "-" if r is None else "%.3f" % r, spread(o), spread(n), verdict))
        summary.append({"name": name, "unit": unit, "field": fld, "old": o, "new": n,
                        "new_over_old": r, "verdict": verdict})

print()
for side in ("OLD", "NEW"):
    print("%s = %s: %s" % (side, sides[side]["rev"], sides[side]["desc"]))
print("lazymem-bench --json %s; %d round%s per side, interleaved OLD NEW; each value is "
      "the benchmark's own median of its runs" % (" ".join(bench_args), rounds,
                                                  "s" if rounds > 1 else ""))
print()
head = ("measurement / field", "OLD med", "NEW med", "NEW/OLD", "OLD min-max", "NEW min-max",
        "verdict")
w = [max(len(head[0]), max(len(r[0]) for r in rows if len(r) > 1)), 10, 10, 8, 19, 19, 0]
line = lambda r: "%-*s %*s %*s %*s  %-*s %-*s %s" % (
    w[0], r[0], w[1], r[1], w[2], r[2], w[3], r[3], w[4], r[4], w[5], r[5], r[6])
print(line(head))
for r in rows:
    print(r[0] if len(r) == 1 else line(r))

print()
print("verdict: \"NEW better/worse\" when the two sides' ranges do not overlap, which "
      "identical code does by chance in %.0f %% of rows with %d round%s per side%s; the "
      "kernel row runs the same code on both sides and shows the machine's drift."
      % (100 * chance, rounds, "s" if rounds > 1 else "",
         " (hence the ?: use --rounds 5 or more)" if weak else ""))

la = [x for r in runs for x in (r["loadavg_before"][0], r["loadavg_after"][0])]
oth = [r["others_cpu_share"] for r in runs]
stl = [r["steal_share"] for r in runs]
mo = statistics.mean(oth)
if mo < 0.1:
    word = "quiet"
elif mo < 0.3:
    word = "somewhat busy: differences under ~10 % may be noise"
else:
    word = "busy: expect noise beyond the spreads shown"
print()
print("machine: %d CPUs; 1-min load average %.2f-%.2f around the runs (the benchmark's own "
      "threads included); other processes used %.0f %% of the CPUs on average (%.0f-%.0f %% "
      "per run), steal %.0f %%: %s" % (cpus, min(la), max(la), 100 * mo, 100 * min(oth),
                                      100 * max(oth), 100 * statistics.mean(stl), word))

if out:
    doc = {"old": sides["OLD"], "new": sides["NEW"], "bench_args": bench_args,
           "rounds": rounds, "cpus": cpus, "runs": runs, "summary": summary}
    for s in (doc["old"], doc["new"]):
        s.pop("bin", None)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("results written to %s" % out)
PYTHON
