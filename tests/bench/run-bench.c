/* SPDX-License-Identifier: MIT */
/* lazymem-bench's run.* measurements: real programs under lazymem run, beside a plain run and the kernel's swap. */
#define _GNU_SOURCE
#include "kswap.h"
#include "swap-bench.h"
#include "../run-jobs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
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
			       "run.python.budget25 run.sqlite.budget25 run.sort.budget25 "
			       "run.redis.nobudget run.redis.budget50 run.redis.budget25", only);
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

/* "lazymem run [--budget B] --" and its options, in front of a program's argv; returns the count. */
static int lazy_prefix(const char **argv, uint64_t budget, char *bud, size_t budlen)
{
	int n = 0;
	argv[n++] = lazymem_cmd;
	argv[n++] = "run";
	argv[n++] = "--no-report";
	argv[n++] = "--swap-dir";
	argv[n++] = bench_dir;
	if (budget) {
		snprintf(bud, budlen, "%llu", (unsigned long long)budget);
		argv[n++] = "--budget";
		argv[n++] = bud;
	}
	argv[n++] = "--";
	return n;
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
	if (lazy)
		n = lazy_prefix(argv, budget, bud, sizeof(bud));
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

/* ---- redis-server: throughput under redis-benchmark ------------------------ */

/*
 * redis-server is a service: its figure is the GET throughput
 * redis-benchmark gets from it over its whole keyspace (requests per
 * second; the ratio is lazymem / the other side, higher is better), after
 * the same SETs loaded it.  The client runs outside the cgroup.
 */
static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int port = -1;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

static long vm_hwm_kib(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "re");
	long v = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmHWM: %ld", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

struct redis_result {
	double rps;
	long hwm_kib;
	bool oom, failed;
};

static struct redis_result redis_session(const char *cmds, int keys, bool quick, bool lazy,
					 uint64_t budget, struct kswap *k)
{
	struct redis_result res = { 0 };
	int port = free_port();
	char port_s[16], bud[32];
	snprintf(port_s, sizeof(port_s), "%d", port);
	const char *argv[32];
	int n = 0;
	if (lazy)
		n = lazy_prefix(argv, budget, bud, sizeof(bud));
	const char *conf[] = { "redis-server", "--port", port_s, "--bind", "127.0.0.1", "--save", "",
			       "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
			       NULL };
	for (int i = 0; conf[i]; i++)
		argv[n++] = conf[i];
	argv[n] = NULL;
	pid_t pid = fork();
	if (pid < 0) {
		res.failed = true;
		return res;
	}
	if (pid == 0) {
		int out = open("/dev/null", O_WRONLY);
		if (out < 0 || dup2(out, 1) < 0)
			_exit(126);
		if (k && kswap_enter(k) < 0)
			_exit(125);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	if (k)
		k->child = pid;
	char cmd[PATH_MAX + 256];
	snprintf(cmd, sizeof(cmd), "redis-cli -p %d ping 2>/dev/null | grep -q PONG", port);
	uint64_t t0 = now_ns();
	while (system(cmd) != 0) {
		if (waitpid(pid, NULL, WNOHANG) == pid || now_ns() - t0 > 20000000000ull) {
			res.failed = true;
			goto out;
		}
		nanosleep(&(struct timespec){ 0, 20000000 }, NULL);
	}
	snprintf(cmd, sizeof(cmd), "redis-cli -p %d --pipe < %s > /dev/null 2>&1", port, cmds);
	if (system(cmd) != 0) {
		res.failed = true;
		goto out;
	}
	snprintf(cmd, sizeof(cmd),
		 "timeout 600 redis-benchmark -p %d -q -n %d -c 8 -r %d -d 1024 -t get --csv 2>/dev/null",
		 port, quick ? 100000 : 300000, keys);
	FILE *p = popen(cmd, "r");
	char line[512];
	while (p && fgets(line, sizeof(line), p))
		if (!strncmp(line, "\"GET\",\"", 7))
			res.rps = strtod(line + 7, NULL);
	if (p)
		pclose(p);
	res.hwm_kib = vm_hwm_kib(pid);
	if (!res.rps)
		res.failed = true;
out:
	kill(pid, SIGTERM);
	int st = 0;
	waitpid(pid, &st, 0);
	if (k) {
		k->child = 0;
		if (res.failed && kswap_oom_killed(k)) {
			res.oom = true;
			res.failed = false;
		}
	}
	return res;
}

static void report_rps(const struct swap_bench_config *c, const char *name, const char *versus,
		       double l, double v, int oom, int failed, uint64_t limit, long peak)
{
	double ratio = v > 0 ? l / v : 0;
	if (c->json)
		printf("{\"name\":\"%s\",\"unit\":\"requests_per_s\",\"lazymem\":%.0f,\"%s\":%.0f,"
		       "\"ratio\":%.3f,\"better\":\"higher\",\"limit_bytes\":%llu,"
		       "\"peak_rss_bytes\":%ld,\"kernel_oom_kills\":%d,\"failures\":%d}\n",
		       name, l, versus, v, ratio, (unsigned long long)limit, peak * 1024, oom, failed);
	else
		printf("%-34s %12.0f %12.0f %8.2f  %-9s%s\n", name, l, v, ratio, "req/s",
		       oom || failed ? " (kernel OOM-killed or failed runs: see JSON)" : "");
	fflush(stdout);
}

static void measure_redis(const struct swap_bench_config *c, bool quick, struct kswap *k,
			  bool kernel_ok)
{
	if (system("command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null") != 0) {
		fprintf(stderr, "lazymem-bench: redis-server or redis-benchmark missing; run.redis skipped\n");
		return;
	}
	int keys = quick ? 30000 : 100000;
	char cmds[PATH_MAX];
	snprintf(cmds, sizeof(cmds), "%s/lazymem-bench-%d.redis", c->dir, getpid());
	FILE *f = fopen(cmds, "w");
	if (!f)
		return;
	uint64_t s = 99;
	char val[1025];
	for (int i = 0; i < keys; i++) {
		for (int j = 0; j < 1024; j++)
			val[j] = (char)('a' + xorshift(&s) % 26);
		val[1024] = 0;
		/* redis-benchmark -r names its keys key:%012d. */
		fprintf(f, "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$1024\r\n%s\r\n", i, val);
	}
	fclose(f);
	struct redis_result base = redis_session(cmds, keys, quick, false, 0, NULL);
	if (base.failed) {
		fprintf(stderr, "lazymem-bench: redis-server does not run plainly here; skipped\n");
		unlink(cmds);
		return;
	}
	long peak = base.hwm_kib;
	int runs = c->runs;
	double lv[runs], vv[runs];
	int nv = 0, failed = 0, oom = 0;
	if (!c->only || strstr("run.redis.nobudget", c->only)) {
		for (int r = 0; r < runs; r++) {
			struct redis_result a = redis_session(cmds, keys, quick, false, 0, NULL);
			struct redis_result b = redis_session(cmds, keys, quick, true, 0, NULL);
			vv[r] = a.rps;
			lv[r] = b.rps;
			failed += a.failed + b.failed;
		}
		report_rps(c, "run.redis.nobudget", "plain", median(lv, runs), median(vv, runs), 0,
			   failed, 0, peak);
	}
	static const int fracs[] = { 50, 25 };
	for (size_t fi = 0; fi < 2; fi++) {
		char name[64];
		snprintf(name, sizeof(name), "run.redis.budget%d", fracs[fi]);
		if (c->only && !strstr(name, c->only))
			continue;
		uint64_t limit = ((uint64_t)peak * 1024 * (uint64_t)fracs[fi] / 100) & ~(uint64_t)4095;
		bool kok = kernel_ok && kswap_set_limit(k, limit) == 0;
		kswap_oom_killed(k);
		nv = failed = oom = 0;
		for (int r = 0; r < runs; r++) {
			if (kok) {
				struct redis_result a = redis_session(cmds, keys, quick, false, 0, k);
				oom += a.oom;
				failed += a.failed;
				if (!a.oom && !a.failed)
					vv[nv++] = a.rps;
			}
			struct redis_result b = redis_session(cmds, keys, quick, true, limit, NULL);
			lv[r] = b.rps;
			failed += b.failed;
		}
		report_rps(c, name, "kernel", median(lv, runs), nv ? median(vv, nv) : 0, oom, failed,
			   limit, peak);
	}
	unlink(cmds);
}

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
		{ "python", { "/usr/bin/python3", "-c", LMT_PY_STRUCTURE, quick ? "100000" : "300000", NULL }, NULL },
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
	measure_redis(c, quick, &k, kernel_ok);
	kswap_teardown(&k);
	unlink(sql);
	unlink(lines);
	return 0;
}
