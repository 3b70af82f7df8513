/* SPDX-License-Identifier: MIT */
/* lazymem-bench's run.* measurements: real programs under lazymem run, beside a plain run and the kernel's swap. */
#define _GNU_SOURCE
#include "kswap.h"
#include "swap-bench.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/*
 * Each program runs the same fixed job, its wall time measured:
 *
 *  run.<program>.nobudget   lazymem run without a budget, against the
 *                           plain program: lazymem / plain, lower is better;
 *  run.<program>.budget50   lazymem run --budget of half the plain run's
 *  run.<program>.budget25   peak RSS (a quarter), against the plain program
 *                           in a cgroup-v1 memory cgroup limited to the same
 *                           size, with the kernel's swap file on the same
 *                           disk: lazymem / kernel, lower is better.
 *
 * The cgroup charges everything the program touches (its libraries, the
 * page cache of what it reads) while the budget counts only lazy memory:
 * the kernel's side holds its heap in less.  A kernel run the OOM killer
 * ends is counted, not timed; a run that outlives its cap is killed and
 * counted as the cap.  Runs interleave, so that drift hits both sides.
 */

struct program {
	const char *name;
	const char *argv[8];
	const char *input;	/* file for stdin, or NULL */
};

static char lazymem_cmd[PATH_MAX];
static const char *bench_dir;

bool run_bench_selected(const char *only)
{
	return !only || strstr("run.python.nobudget run.sqlite.nobudget run.sort.nobudget "
			       "run.python.budget50 run.sqlite.budget50 run.sort.budget50 "
			       "run.python.budget25 run.sqlite.budget25 run.sort.budget25", only);
}

/* The lazymem command of this build tree, else the one on PATH. */
static void find_lazymem(void)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = 0;
		static const char *const rel[] = { "/../../daemon/lazymem", "/../../../daemon/lazymem" };
		char *slash = strrchr(exe, '/');
		if (slash)
			*slash = 0;
		for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
			int k = snprintf(lazymem_cmd, sizeof(lazymem_cmd), "%s%s", exe, rel[i]);
			if (k > 0 && (size_t)k < sizeof(lazymem_cmd) && access(lazymem_cmd, X_OK) == 0)
				return;
		}
	}
	snprintf(lazymem_cmd, sizeof(lazymem_cmd), "lazymem");
}

struct outcome {
	double seconds;
	long maxrss_kib;
	bool oom, timeout, failed;
};

/*
 * Runs the program, under lazymem run with the budget (bytes; 0: none)
 * when lazy, in the kernel side's cgroup when k; at most cap seconds.
 */
static struct outcome run_once(const struct program *p, bool lazy, uint64_t budget,
			       struct kswap *k, double cap)
{
	struct outcome o = { 0 };
	const char *argv[24];
	char bud[32];
	int n = 0;
	if (lazy) {
		argv[n++] = lazymem_cmd;
		argv[n++] = "run";
		argv[n++] = "--no-report";
		argv[n++] = "--swap-dir";
		argv[n++] = bench_dir;
		if (budget) {
			snprintf(bud, sizeof(bud), "%llu", (unsigned long long)budget);
			argv[n++] = "--budget";
			argv[n++] = bud;
		}
		argv[n++] = "--";
	}
	for (int i = 0; p->argv[i]; i++)
		argv[n++] = p->argv[i];
	argv[n] = NULL;
	uint64_t t0 = now_ns();
	pid_t pid = fork();
	if (pid < 0) {
		o.failed = true;
		return o;
	}
	if (pid == 0) {
		int in = open(p->input ? p->input : "/dev/null", O_RDONLY);
		int out = open("/dev/null", O_WRONLY);
		if (in < 0 || out < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0)
			_exit(126);
		if (k && kswap_enter(k) < 0)
			_exit(125);
		setpgid(0, 0);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	if (k)
		k->child = pid;
	int st = 0;
	struct rusage ru;
	for (;;) {
		pid_t w = wait4(pid, &st, WNOHANG, &ru);
		if (w == pid)
			break;
		if ((double)(now_ns() - t0) / 1e9 > cap) {
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			wait4(pid, &st, 0, &ru);
			o.timeout = true;
			break;
		}
		nanosleep(&(struct timespec){ 0, 2000000 }, NULL);
	}
	if (k)
		k->child = 0;
	o.seconds = o.timeout ? cap : (double)(now_ns() - t0) / 1e9;
	o.maxrss_kib = ru.ru_maxrss;
	if (!o.timeout && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
		o.oom = k && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && kswap_oom_killed(k);
		o.failed = !o.oom;
	}
	return o;
}

static void report(const struct swap_bench_config *c, const char *name, const char *versus,
		   double l, double v, int oom, int timeouts, int failed, uint64_t limit, long peak)
{
	double ratio = v > 0 ? l / v : 0;
	if (c->json) {
		printf("{\"name\":\"%s\",\"unit\":\"s\",\"lazymem\":%.3f,\"%s\":%.3f,\"ratio\":%.3f,"
		       "\"better\":\"lower\",\"limit_bytes\":%llu,\"peak_rss_bytes\":%ld,"
		       "\"kernel_oom_kills\":%d,\"lazymem_timeouts\":%d,\"failures\":%d}\n",
		       name, l, versus, v, ratio, (unsigned long long)limit, peak * 1024, oom, timeouts,
		       failed);
	} else {
		char extra[96] = "";
		if (oom || timeouts || failed)
			snprintf(extra, sizeof(extra), " (kernel OOM-killed %d, lazymem over cap %d, failed %d)",
				 oom, timeouts, failed);
		printf("%-34s %12.3f %12.3f %8.2f  %-9s%s\n", name, l, v, ratio, "s", extra);
	}
	fflush(stdout);
}

static void measure(const struct swap_bench_config *c, const struct program *p, struct kswap *k,
		    bool kernel_ok)
{
	char name[64];
	/* The plain run's peak, and a warm page cache for every run after. */
	struct outcome base = run_once(p, false, 0, NULL, 600);
	if (base.failed || base.timeout) {
		fprintf(stderr, "lazymem-bench: %s does not run plainly here; skipped\n", p->name);
		return;
	}
	long peak = base.maxrss_kib;
	double cap = base.seconds * 60 > 60 ? base.seconds * 60 : 60;
	int runs = c->runs;
	double lv[runs], vv[runs];
	snprintf(name, sizeof(name), "run.%s.nobudget", p->name);
	if (!c->only || strstr(name, c->only)) {
		int failed = 0;
		for (int r = 0; r < runs; r++) {
			struct outcome a = run_once(p, false, 0, NULL, cap);
			struct outcome b = run_once(p, true, 0, NULL, cap);
			vv[r] = a.seconds;
			lv[r] = b.seconds;
			failed += a.failed + b.failed;
		}
		report(c, name, "plain", median(lv, runs), median(vv, runs), 0, 0, failed, 0, peak);
	}
	static const int fracs[] = { 50, 25 };
	for (size_t f = 0; f < sizeof(fracs) / sizeof(fracs[0]); f++) {
		snprintf(name, sizeof(name), "run.%s.budget%d", p->name, fracs[f]);
		if (c->only && !strstr(name, c->only))
			continue;
		uint64_t limit = ((uint64_t)peak * 1024 * (uint64_t)fracs[f] / 100) & ~(uint64_t)4095;
		int oom = 0, timeouts = 0, failed = 0, nk = 0;
		if (kernel_ok && kswap_set_limit(k, limit) < 0)
			kernel_ok = false;
		kswap_oom_killed(k);
		double kv[runs];
		for (int r = 0; r < runs; r++) {
			if (kernel_ok) {
				struct outcome a = run_once(p, false, 0, k, cap);
				oom += a.oom;
				failed += a.failed;
				if (!a.oom && !a.failed)
					kv[nk++] = a.seconds;
			}
			struct outcome b = run_once(p, true, limit, NULL, cap);
			lv[r] = b.seconds;
			timeouts += b.timeout;
			failed += b.failed;
		}
		report(c, name, "kernel", median(lv, runs), nk ? median(kv, nk) : 0, oom, timeouts,
		       failed, limit, peak);
	}
}

static const char py_job[] =
	"import hashlib, sys\n"
	"n = int(sys.argv[1])\n"
	"d = {}\n"
	"for i in range(n):\n"
	"    d['k%07d' % i] = [i, str(i * 7919) * 3, (i % 97, 'v' * (i % 50))]\n"
	"h = hashlib.sha256()\n"
	"for rnd in range(2):\n"
	"    for k, v in d.items():\n"
	"        h.update(k.encode()); h.update(repr(v).encode())\n"
	"print(len(d), h.hexdigest(), sorted(d, key=lambda k: d[k][1])[:5])\n";

int run_bench_run(const struct swap_bench_config *c, bool quick)
{
	if (!run_bench_selected(c->only))
		return 0;
	bench_dir = c->dir;
	find_lazymem();
	/* The inputs: an SQL script and a file of lines, in the benchmark's directory. */
	char sql[PATH_MAX], lines[PATH_MAX];
	snprintf(sql, sizeof(sql), "%s/lazymem-bench-%d.sql", c->dir, getpid());
	snprintf(lines, sizeof(lines), "%s/lazymem-bench-%d.lines", c->dir, getpid());
	FILE *f = fopen(sql, "w");
	if (!f)
		return -errno;
	fprintf(f,
		"create table t(a integer primary key, b text, c integer);\n"
		"with recursive s(x) as (select 1 union all select x + 1 from s where x < %d)\n"
		"  insert into t select x, printf('%%0200d', x * 2654435761 %% 1000000007), x %% 1000 from s;\n"
		"create index tc on t(c, b);\n"
		"select count(*), sum(length(b)) from t;\n"
		"update t set b = upper(b) || 'x' where a %% 3 = 0;\n"
		"select c, count(*), max(b) from t group by c order by c limit 5;\n",
		quick ? 100000 : 300000);
	fclose(f);
	f = fopen(lines, "w");
	if (!f)
		return -errno;
	uint64_t s = 12345;
	for (size_t bytes = 0; bytes < (quick ? 4u << 20 : 16u << 20);) {
		uint64_t r = xorshift(&s);
		bytes += (size_t)fprintf(f, "%016llx %.*s\n", (unsigned long long)r, (int)(r % 40),
					 "the quick brown fox jumps over the lazy dog");
	}
	fclose(f);
	const struct program progs[] = {
		{ "python", { "/usr/bin/python3", "-c", py_job, quick ? "100000" : "300000", NULL }, NULL },
		{ "sqlite", { "sqlite3", ":memory:", NULL }, sql },
		{ "sort", { "sort", "-S", "1G", "-o", "/dev/null", lines, NULL }, NULL },
	};
	struct kswap k;
	bool kernel_ok = kswap_setup(&k, c->dir, 2ull << 30, "run");
	if (!c->json) {
		double load[3] = { 0 };
		getloadavg(load, 3);
		printf("\nrun: real programs, %d runs each, medians of wall time; load average %.2f; "
		       "kernel: %s\n", c->runs, load[0],
		       kernel_ok ? "the plain program in a cgroup-v1 memory cgroup at the budget, "
				   "swap file on the same disk" :
				   "unavailable (see above)");
		printf("%-34s %12s %12s %8s  %-9s\n", "measurement", "lazymem", "plain/kernel", "ratio",
		       "unit");
	}
	for (size_t i = 0; i < sizeof(progs) / sizeof(progs[0]); i++)
		measure(c, &progs[i], &k, kernel_ok);
	kswap_teardown(&k);
	unlink(sql);
	unlink(lines);
	return 0;
}
