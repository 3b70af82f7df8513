/* SPDX-License-Identifier: MIT */
/* lazymem run: real programs from Debian on lazy memory, each compared with a plain run of itself. */
#include "config.h"
#include "testutil.h"
#include "run-jobs.h"

#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

/*
 * Every program runs twice, plainly and under `lazymem run` with a budget
 * well below its peak, and must print the same.  Lines starting with '#'
 * are what a program saw of itself (its peak RSS, whether its heap is
 * lazy), compared apart.  --stats shows that the budget was really felt:
 * pages were evicted and came back.
 */

static char dir[64];
static double t_start;
static char lazymem[512], victim[512];

static const char *build(void)
{
	const char *b = getenv("LMT_BUILDDIR");
	return b && *b ? b : ".";
}

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/lm-run.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(lazymem, sizeof(lazymem), "%s/daemon/lazymem", build());
	snprintf(victim, sizeof(victim), "%s/tests/run-victim", build());
	/* The tests' runtimes report to nobody unless a test starts its own lazymemd. */
	setenv("LAZYMEM_SOCKET", "off", 1);
	t_start = lmt_now();
}

static void teardown(void)
{
	/* LMT_TIMES=1: how long each test took, to keep the suite CI-sized. */
	if (getenv("LMT_TIMES"))
		fprintf(stderr, "%s: %.1f s\n", tcase_name(), lmt_now() - t_start);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

/*
 * Runs argv with stdin from in (NULL: /dev/null) and stdout, stderr to
 * files in the test's directory named after tag; waits at most limit
 * seconds (scaled for slow builds), then kills it and fails.  Returns
 * the wait status.
 */
static int run(const char *const *argv, const char *in, const char *tag, double limit)
{
	char out[128], err[128];
	snprintf(out, sizeof(out), "%s/%s.out", dir, tag);
	snprintf(err, sizeof(err), "%s/%s.err", dir, tag);
	fflush(stdout);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int i = open(in ? in : "/dev/null", O_RDONLY);
		int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (i < 0 || o < 0 || e < 0 || dup2(i, 0) < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
			_exit(126);
		setpgid(0, 0);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	limit *= lmt_time_scale();
	int st;
	for (double t0 = lmt_now(); waitpid(pid, &st, WNOHANG) == 0;) {
		if (lmt_now() - t0 > limit) {
			kill(-pid, SIGKILL);
			waitpid(pid, &st, 0);
			ck_abort_msg("%s: %s still running after %.0f s", tag, argv[0], limit);
		}
		usleep(5000);
	}
	return st;
}

static char *slurp(const char *tag, const char *ext)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/%s.%s", dir, tag, ext);
	FILE *f = fopen(path, "r");
	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	size_t k;
	while ((k = fread(buf + n, 1, cap - n - 1, f)) > 0) {
		n += k;
		if (cap - n < 2)
			buf = realloc(buf, cap *= 2);
	}
	buf[n] = 0;
	fclose(f);
	return buf;
}

/* The output without its '#' lines. */
static char *results(const char *tag)
{
	char *s = slurp(tag, "out"), *w = s;
	for (char *line = s; *line;) {
		char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) + 1 : strlen(line);
		if (*line != '#') {
			memmove(w, line, len);
			w += len;
		}
		line += len;
	}
	*w = 0;
	return s;
}

static void expect_ok(int st, const char *tag)
{
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		char *err = slurp(tag, "err");
		ck_abort_msg("%s: status %#x; stderr: %.2000s", tag, st, err);
	}
}

/* A counter from the JSON --stats wrote. */
static long long stat_of(const char *tag, const char *name)
{
	char *s = slurp(tag, "stats"), key[80];
	snprintf(key, sizeof(key), "\"%s\":", name);
	char *p = strstr(s, key);
	ck_assert_msg(p != NULL, "%s: no %s in the stats", tag, name);
	long long v = strtoll(p + strlen(key), NULL, 10);
	free(s);
	return v;
}

/* Peak RSS in KiB, from a "# VmHWM: N kB" line. */
static long hwm_of(const char *tag)
{
	char *s = slurp(tag, "out");
	char *p = strstr(s, "# VmHWM:");
	ck_assert_msg(p != NULL, "%s printed no VmHWM", tag);
	long v = strtol(p + 8, NULL, 10);
	free(s);
	return v;
}

/*
 * Runs the program plainly (tag "plain") and under lazymem run with the
 * given options (tag "lazy", --stats to lazy.stats); both must succeed
 * and print the same results.
 */
static void both(const char *const *prog, const char *in, const char *const *opts, double limit)
{
	const char *argv[64];
	int n = 0;
	argv[n++] = lazymem;
	argv[n++] = "run";
	for (; opts && *opts; opts++)
		argv[n++] = *opts;
	char stats[128];
	snprintf(stats, sizeof(stats), "%s/lazy.stats", dir);
	argv[n++] = "--stats";
	argv[n++] = stats;
	argv[n++] = "--";
	for (const char *const *p = prog; *p; p++)
		argv[n++] = *p;
	argv[n] = NULL;
	expect_ok(run(prog, in, "plain", limit), "plain");
	expect_ok(run(argv, in, "lazy", limit), "lazy");
	char *a = results("plain"), *b = results("lazy");
	ck_assert_msg(!strcmp(a, b), "%s: results differ\nplain:\n%.1500s\nlazy:\n%.1500s", prog[0],
		      a, b);
	ck_assert_msg(strlen(a) > 0, "%s printed nothing", prog[0]);
	free(a);
	free(b);
}

static void require(const char *prog)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", prog);
	if (system(cmd) != 0) {
		printf("SKIP: %s is not installed (scripts/install-deps.sh installs it)\n", prog);
		exit(LMT_SKIP);
	}
}

/* ---- our own program: every way of getting memory ---------------------- */

START_TEST(victim_everything)
{
	const char *prog[] = { victim, "48", NULL };
	const char *opts[] = { "--budget", "8M", "--threshold", "1M", NULL };
	both(prog, NULL, opts, 120);
	char *out = slurp("lazy", "out");
	ck_assert_msg(strstr(out, "# heap lazy yes"), "malloc'ed memory is not lazy:\n%s", out);
	ck_assert_msg(strstr(out, "# mmap lazy yes"), "mmap'ed memory is not lazy:\n%s", out);
	ck_assert_msg(strstr(out, "# threads lazy yes"), "threads' heaps are not lazy:\n%s", out);
	ck_assert_msg(strstr(out, "# child lazy yes"), "an exec'ed child is not lazy:\n%s", out);
	free(out);
	/* 48 MiB of heap through an 8 MiB budget: pages went to swap and came back. */
	ck_assert_int_gt(stat_of("lazy", "evicted_pages"), 2048);
	ck_assert_int_gt(stat_of("lazy", "swap_reads"), 0);
	ck_assert_int_eq(stat_of("lazy", "swap_read_errors"), 0);
	ck_assert_int_le(stat_of("lazy", "resident_pages") * 4096, 8 << 20);
}
END_TEST

START_TEST(victim_no_inherit)
{
	const char *prog[] = { victim, "8", NULL };
	const char *opts[] = { "--no-inherit", NULL };
	both(prog, NULL, opts, 60);
	char *out = slurp("lazy", "out");
	ck_assert_msg(strstr(out, "# heap lazy yes"), "no heap on lazy memory:\n%s", out);
	ck_assert_msg(strstr(out, "# child lazy no"), "--no-inherit child is lazy:\n%s", out);
	free(out);
}
END_TEST

/*
 * A thread that exists before the runtime opens (started by another
 * preloaded library's constructor, which glibc runs first) keeps
 * allocating through the start-up, loses nothing, and its arena becomes
 * lazy at its next allocation.
 */
START_TEST(thread_before_runtime)
{
	/*
	 * Through env(1): LD_PRELOAD in this process's environment would reach
	 * the lazymem command too, which a sanitizer build cannot take.
	 */
	char early[512], pre[600], both_pre[1200];
	snprintf(early, sizeof(early), "%s/tests/.libs/librun-early.so", build());
	ck_assert_msg(access(early, R_OK) == 0, "%s: %s", early, strerror(errno));
	snprintf(pre, sizeof(pre), "LD_PRELOAD=%s", early);
	snprintf(both_pre, sizeof(both_pre), "LD_PRELOAD=%s/lib/.libs/liblazymem-preload.so:%s", build(),
		 early);
	const char *plain[] = { "env", pre, victim, "8", NULL };
	const char *lazy[] = { lazymem, "run", "--", "env", both_pre, victim, "8", NULL };
	expect_ok(run(plain, NULL, "plain", 60), "plain");
	expect_ok(run(lazy, NULL, "lazy", 60), "lazy");
	char *a = results("plain"), *b = results("lazy");
	ck_assert_msg(!strcmp(a, b), "results differ\nplain:\n%.1500s\nlazy:\n%.1500s", a, b);
	char *po = slurp("plain", "out"), *out = slurp("lazy", "out");
	ck_assert_msg(strstr(po, "# early thread: runtime before no, rounds many, lazy no, errors 0"),
		      "plain run:\n%s", po);
	ck_assert_msg(strstr(out, "# early thread: runtime before no, rounds many, lazy yes, errors 0"),
		      "the early thread under lazymem run:\n%s", out);
	free(a);
	free(b);
	free(po);
	free(out);
}
END_TEST

/* A program that lazy memory cannot be had for runs anyway, after one line. */
START_TEST(no_userfaultfd_runs_plain)
{
	char nouffd[512];
	snprintf(nouffd, sizeof(nouffd), "%s/tests/run-nouffd", build());
	const char *prog[] = { nouffd, victim, "8", NULL };
	const char *argv[] = { nouffd, lazymem, "run", "--budget", "4M", "--", victim, "8", NULL };
	expect_ok(run(prog, NULL, "plain", 60), "plain");
	expect_ok(run(argv, NULL, "lazy", 60), "lazy");
	char *a = results("plain"), *b = results("lazy"), *err = slurp("lazy", "err");
	ck_assert_str_eq(a, b);
	char *out = slurp("lazy", "out");
	ck_assert_msg(strstr(out, "# heap lazy no"), "lazy without a userfaultfd?\n%s", out);
	/* One line per process: the program and the child it executes. */
	int lines = 0;
	for (char *p = err; *p; p++)
		lines += *p == '\n';
	ck_assert_msg(lines == 2 && strstr(err, "lazymem: no lazy memory"), "stderr:\n%s", err);
	free(a), free(b), free(err), free(out);
	/* --quiet: not even that. */
	const char *q[] = { nouffd, lazymem, "run", "-q", "--", victim, "8", NULL };
	expect_ok(run(q, NULL, "quiet", 60), "quiet");
	err = slurp("quiet", "err");
	ck_assert_msg(!*err, "--quiet said: %s", err);
	free(err);
}
END_TEST

/* ---- the command itself ------------------------------------------------ */

START_TEST(status_and_signals_pass_through)
{
	const char *exit7[] = { lazymem, "run", "--", "sh", "-c", "exit 7", NULL };
	int st = run(exit7, NULL, "exit7", 30);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 7, "status %#x", st);
	const char *term[] = { lazymem, "run", "--budget", "4M", "--", "sh", "-c", "kill -TERM $$",
			       NULL };
	st = run(term, NULL, "term", 30);
	ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "status %#x", st);
	const char *missing[] = { lazymem, "run", "--", "/nonexistent/program", NULL };
	st = run(missing, NULL, "missing", 30);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 127, "status %#x", st);
	static const char *const bad[][6] = {
		{ "run", "--budget", "lots", "--", "true", NULL },
		{ "run", "--mode", "fast", "--", "true", NULL },
		{ "run", "--threshold", "0", "--", "true", NULL },
		{ "run", "--swap-dir", "/nonexistent", "--", "true", NULL },
		{ "run", NULL },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *argv[8] = { lazymem };
		for (int k = 0; bad[i][k]; k++)
			argv[k + 1] = bad[i][k];
		st = run(argv, NULL, "bad", 30);
		char *err = slurp("bad", "err");
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 2 && strstr(err, "lazymem: run"),
			      "case %zu: status %#x, stderr %s", i, st, err);
		free(err);
	}
}
END_TEST

/*
 * A fork() in a fork() child: a shell's command substitution inside
 * another.  The preload library's fork gate, unlocked rather than made
 * anew in the child, stayed write-locked there, and the grandchild's
 * fork() waited for ever.
 */
START_TEST(fork_in_forked_child)
{
	const char *argv[] = { lazymem, "run", "--", "bash", "-c",
			       "a=$(b=$(echo deep; true); echo \"$b\"; true); echo \"$a\"", NULL };
	int st = run(argv, NULL, "nested", 30);
	char *out = slurp("nested", "out");
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0 && !strcmp(out, "deep\n"),
		      "status %#x, output '%s'", st, out);
	free(out);
}
END_TEST

/* ---- real programs ------------------------------------------------------- */

START_TEST(python_structure)
{
	/* Debian's python3 itself, not a wrapper (pyenv's shims run a dozen processes). */
	require("/usr/bin/python3");
	const char *prog[] = { "/usr/bin/python3", "-c", LMT_PY_STRUCTURE, "150000", NULL };
	const char *opts[] = { "--budget", "24M", NULL };
	both(prog, NULL, opts, 150);
	/* About 80 MiB of objects through 24 MiB: the peak shows it. */
	long plain = hwm_of("plain"), lazy = hwm_of("lazy");
	ck_assert_msg(plain > 64 * 1024, "the plain run peaked at only %ld KiB", plain);
	ck_assert_msg(lazy < plain * 2 / 3, "peak RSS %ld KiB under a 24 MiB budget, %ld plain",
		      lazy, plain);
	ck_assert_int_gt(stat_of("lazy", "evicted_pages"), 10000);
	ck_assert_int_gt(stat_of("lazy", "refaults"), 0);
}
END_TEST

START_TEST(sqlite_memory_database)
{
	require("sqlite3");
	static const char sql[] =
		"create table t(a integer primary key, b text, c integer);\n"
		"with recursive s(x) as (select 1 union all select x + 1 from s where x < 250000)\n"
		"  insert into t select x, printf('%0200d', x * 2654435761 % 1000000007), x % 1000 from s;\n"
		"create index tc on t(c, b);\n"
		"select count(*), sum(length(b)), sum(a * c) % 1000000007 from t;\n"
		"select c, count(*), max(b) from t group by c order by c limit 5;\n"
		"select a, substr(b, 190) from t where c = 7 order by b desc limit 5;\n"
		"update t set b = upper(b) || 'x' where a % 3 = 0;\n"
		"select sum(length(b)), min(b), max(b) from t;\n"
		"select count(*) from t x join t y on x.a = y.c + 1 where y.a < 50000;\n";
	char in[128];
	snprintf(in, sizeof(in), "%s/q.sql", dir);
	FILE *f = fopen(in, "w");
	ck_assert_ptr_nonnull(f);
	fputs(sql, f);
	fclose(f);
	const char *prog[] = { "sqlite3", ":memory:", NULL };
	const char *opts[] = { "--budget", "24M", NULL };
	both(prog, in, opts, 150);
	ck_assert_int_gt(stat_of("lazy", "evicted_pages"), 5000);
}
END_TEST

START_TEST(sort_larger_than_budget)
{
	require("sort");
	/* 4 MiB of lines, sorted in memory (-S; 12 MiB at its peak) through a 3 MiB budget. */
	char in[128], outp[128], outl[128];
	snprintf(in, sizeof(in), "%s/lines", dir);
	FILE *f = fopen(in, "w");
	ck_assert_ptr_nonnull(f);
	uint64_t s = 12345;
	for (size_t bytes = 0; bytes < (4u << 20);) {
		uint64_t r = lmt_rng(&s);
		bytes += (size_t)fprintf(f, "%016llx %.*s\n", (unsigned long long)r, (int)(r % 40),
					 "the quick brown fox jumps over the lazy dog");
	}
	fclose(f);
	snprintf(outp, sizeof(outp), "%s/sorted.plain", dir);
	snprintf(outl, sizeof(outl), "%s/sorted.lazy", dir);
	const char *prog[] = { "sort", "-S", "256M", "-o", outp, in, NULL };
	const char *lazy[] = { lazymem, "run", "--budget", "3M", "--stats", NULL, "--",
			       "sort", "-S", "256M", "-o", outl, in, NULL };
	char stats[128];
	snprintf(stats, sizeof(stats), "%s/lazy.stats", dir);
	lazy[5] = stats;
	expect_ok(run(prog, NULL, "plain", 120), "plain");
	expect_ok(run(lazy, NULL, "lazy", 120), "lazy");
	char cmd[400];
	snprintf(cmd, sizeof(cmd), "cmp -s %s %s", outp, outl);
	ck_assert_msg(system(cmd) == 0, "sort under lazymem run sorted differently");
	ck_assert_int_gt(stat_of("lazy", "evicted_pages"), 2000);
}
END_TEST

/* ---- redis-server, loaded by redis-benchmark --------------------------- */

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

struct server {
	pid_t pid;
	int port;
	char port_s[16], tag[16];
};

static void redis_start(struct server *s, bool lazy, const char *dbfile)
{
	s->port = free_port();
	snprintf(s->port_s, sizeof(s->port_s), "%d", s->port);
	snprintf(s->tag, sizeof(s->tag), "redis%d", s->port);
	char stats[128];
	snprintf(stats, sizeof(stats), "%s/%s.stats", dir, s->tag);
	const char *argv[40];
	int n = 0;
	if (lazy) {
		argv[n++] = lazymem;
		argv[n++] = "run";
		argv[n++] = "--budget";
		argv[n++] = "24M";
		argv[n++] = "--stats";
		argv[n++] = stats;
		argv[n++] = "--";
	}
	const char *conf[] = { "redis-server", "--port", s->port_s, "--bind", "127.0.0.1",
			       "--save", "", "--appendonly", "no", "--enable-debug-command", "local",
			       "--dir", dir, "--dbfilename", dbfile ? dbfile : s->tag,
			       "--daemonize", "no", "--loglevel", "warning", NULL };
	for (int i = 0; conf[i]; i++)
		argv[n++] = conf[i];
	argv[n] = NULL;
	char out[128], err[128];
	snprintf(out, sizeof(out), "%s/%s.out", dir, s->tag);
	snprintf(err, sizeof(err), "%s/%s.err", dir, s->tag);
	s->pid = fork();
	ck_assert_int_ge(s->pid, 0);
	if (s->pid == 0) {
		int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
			_exit(126);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	char ping[256];
	snprintf(ping, sizeof(ping), "redis-cli -p %d ping 2>/dev/null | grep -q PONG", s->port);
	for (double t0 = lmt_now(); system(ping) != 0; usleep(20000)) {
		int st;
		ck_assert_msg(waitpid(s->pid, &st, WNOHANG) == 0, "redis-server died at start: %#x",
			      st);
		ck_assert_msg(lmt_now() - t0 < 20, "redis-server did not answer");
	}
}

static void redis_stop(struct server *s)
{
	kill(s->pid, SIGTERM);
	int st;
	waitpid(s->pid, &st, 0);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s exited with %#x", s->tag, st);
}

/* One line a redis-cli command printed. */
static void redis_cli(const struct server *s, const char *args, char *out, size_t len)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "redis-cli -p %d %s", s->port, args);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	out[0] = 0;
	ck_assert_ptr_nonnull(fgets(out, (int)len, p));
	out[strcspn(out, "\r\n")] = 0;
	pclose(p);
}

static void redis_load(const struct server *s, const char *cmds)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "redis-cli -p %d --pipe < %s > %s/pipe.out 2>&1", s->port, cmds,
		 dir);
	ck_assert_msg(system(cmd) == 0, "redis-cli --pipe failed");
}

START_TEST(redis_under_benchmark)
{
	require("redis-server");
	require("redis-benchmark");
	/* The same commands for both: 40000 strings of 1 KiB, hashes and lists. */
	char cmds[128];
	snprintf(cmds, sizeof(cmds), "%s/cmds", dir);
	FILE *f = fopen(cmds, "w");
	ck_assert_ptr_nonnull(f);
	uint64_t r = 99;
	char val[1025];
	for (int i = 0; i < 40000; i++) {
		for (int k = 0; k < 1024; k++)
			val[k] = (char)('a' + lmt_rng(&r) % 26);
		val[1024] = 0;
		char key[32];
		int kl = snprintf(key, sizeof(key), "key:%012d", i);
		fprintf(f, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1024\r\n%s\r\n", kl, key, val);
		if (i % 10 == 0)
			fprintf(f, "*4\r\n$4\r\nHSET\r\n$6\r\nh:%04d\r\n$%d\r\n%s\r\n$3\r\n%03d\r\n",
				i % 1000, kl, key, i % 1000);
		if (i % 7 == 0)
			fprintf(f, "*3\r\n$5\r\nRPUSH\r\n$6\r\nl:%04d\r\n$%d\r\n%s\r\n", i % 500, kl,
				key);
	}
	fclose(f);
	struct server plain, lazy, loaded;
	redis_start(&plain, false, NULL);
	redis_start(&lazy, true, NULL);
	redis_load(&plain, cmds);
	redis_load(&lazy, cmds);
	/* Load: reads over the whole keyspace, from 8 clients, and writes to keys of its own. */
	char bench[512];
	snprintf(bench, sizeof(bench),
		 "redis-benchmark -p %d -q -n 60000 -c 8 -r 40000 -t get,lpush,lrange_100 "
		 ">%s/bench.out 2>&1",
		 lazy.port, dir);
	ck_assert_msg(system(bench) == 0, "redis-benchmark failed");
	snprintf(bench, sizeof(bench),
		 "redis-benchmark -p %d -q -n 60000 -c 8 -r 40000 -t get,lpush,lrange_100 "
		 ">/dev/null 2>&1",
		 plain.port);
	ck_assert_msg(system(bench) == 0, "redis-benchmark failed");
	char dp[128], dl[128], dsave[128];
	redis_cli(&plain, "debug digest", dp, sizeof(dp));
	redis_cli(&lazy, "debug digest", dl, sizeof(dl));
	ck_assert_msg(strlen(dp) == 40, "DEBUG DIGEST said %s", dp);
	ck_assert_str_eq(dp, dl);
	/* BGSAVE forks: the child writes every page, evicted ones too, to the RDB file. */
	char line[256];
	redis_cli(&lazy, "bgsave", line, sizeof(line));
	for (double t0 = lmt_now();; usleep(50000)) {
		char cmd[256];
		snprintf(cmd, sizeof(cmd),
			 "redis-cli -p %d info persistence | grep -q 'rdb_bgsave_in_progress:0'",
			 lazy.port);
		if (system(cmd) == 0)
			break;
		ck_assert_msg(lmt_now() - t0 < 60 * lmt_time_scale(), "BGSAVE did not finish");
	}
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "redis-cli -p %d info persistence | grep -q 'rdb_last_bgsave_status:ok'",
		 lazy.port);
	ck_assert_msg(system(cmd) == 0, "BGSAVE failed");
	/* A plain server loads what the lazy one saved: the same data. */
	redis_start(&loaded, false, lazy.tag);
	redis_cli(&loaded, "debug digest", dsave, sizeof(dsave));
	ck_assert_str_eq(dp, dsave);
	redis_stop(&loaded);
	redis_stop(&plain);
	redis_stop(&lazy);
	char stats[64];
	snprintf(stats, sizeof(stats), "%s", lazy.tag);
	ck_assert_int_gt(stat_of(stats, "evicted_pages"), 5000);
	ck_assert_int_gt(stat_of(stats, "refaults"), 0);
}
END_TEST

/* ---- seen and steered by lazymemd ------------------------------------------ */

static long rss_kib(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	long v = -1;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

/* lazymem ps lists a program lazymem run started; lazymem budget shrinks it while it runs. */
/* A counter's value in lazymem stat's output ("  name   value" lines); -1 if absent. */
static long long stat_value(const char *text, const char *name)
{
	size_t n = strlen(name);
	for (const char *l = text; l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		l += strspn(l, " ");
		if (!strncmp(l, name, n) && l[n] == ' ')
			return strtoll(l + n, NULL, 10);
	}
	return -1;
}

START_TEST(ps_and_budget_from_outside)
{
	require("/usr/bin/python3");
	char sock[128], log[128], bin[512];
	snprintf(sock, sizeof(sock), "%s/lazymemd.sock", dir);
	snprintf(log, sizeof(log), "%s/lazymemd.log", dir);
	snprintf(bin, sizeof(bin), "%s/daemon/lazymemd", build());
	const char *daemon[] = { bin, "-f", "-s", sock, "-l", log, NULL };
	pid_t d = fork();
	ck_assert_int_ge(d, 0);
	if (d == 0) {
		execv(bin, (char *const *)daemon);
		_exit(127);
	}
	for (double t0 = lmt_now(); access(sock, F_OK) != 0; usleep(10000))
		ck_assert_msg(lmt_now() - t0 < 10, "lazymemd did not start");
	setenv("LAZYMEM_SOCKET", sock, 1);
	/* 64 MiB touched, then it waits: no budget until one comes from outside. */
	static const char py[] = "import sys, time\n"
				 "b = bytearray(64 << 20)\n"
				 "for i in range(0, len(b), 4096): b[i] = 1\n"
				 "print('ready', flush=True)\n"
				 "time.sleep(120)\n";
	char out[128];
	snprintf(out, sizeof(out), "%s/prog.out", dir);
	close(open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644));
	pid_t p = fork();
	ck_assert_int_ge(p, 0);
	if (p == 0) {
		int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (o < 0 || dup2(o, 1) < 0)
			_exit(126);
		execl(lazymem, lazymem, "run", "--", "/usr/bin/python3", "-c", py, (char *)NULL);
		_exit(127);
	}
	char cmd[1024], pidword[32];
	snprintf(pidword, sizeof(pidword), " %d ", (int)p);
	for (double t0 = lmt_now();; usleep(20000)) {
		char *o = slurp("prog", "out");
		bool ready = strstr(o, "ready") != NULL;
		free(o);
		if (ready)
			break;
		ck_assert_msg(lmt_now() - t0 < 30 * lmt_time_scale(), "the program never got ready");
	}
	/* The exec'ed python is the process lazymem run was: the same pid, in the listing. */
	snprintf(cmd, sizeof(cmd), "%s -S %s ps > %s/ps.out 2>&1", lazymem, sock, dir);
	bool listed = false;
	for (double t0 = lmt_now(); !listed && lmt_now() - t0 < 10; usleep(50000)) {
		ck_assert_int_eq(system(cmd), 0);
		char *o = slurp("ps", "out");
		char *line = strstr(o, pidword);
		listed = line != NULL || !strncmp(o, pidword + 1, strlen(pidword) - 1);
		free(o);
	}
	ck_assert_msg(listed, "lazymem ps does not list pid %d", (int)p);
	/*
	 * Its stats, from outside: the 64 MiB scan was lazy memory, filled a
	 * window ahead per fault, never by a stream (the preload library
	 * turns streams off: memory filled ahead of a heap would count
	 * against the program before any budget holds it).
	 */
	snprintf(cmd, sizeof(cmd), "%s -S %s stat %d > %s/stat.out 2>&1", lazymem, sock, (int)p, dir);
	ck_assert_int_eq(system(cmd), 0);
	char *stat = slurp("stat", "out");
	ck_assert_msg(stat_value(stat, "readahead_pages") > 8192, "no readahead in: %.3000s", stat);
	ck_assert_msg(stat_value(stat, "stream_pages") == 0, "streams under lazymem run: %.3000s",
		      stat);
	free(stat);
	long before = rss_kib(p);
	ck_assert_msg(before > 64 * 1024, "RSS %ld KiB before the budget", before);
	snprintf(cmd, sizeof(cmd), "%s -S %s budget %d 8M > %s/budget.out 2>&1", lazymem, sock, (int)p,
		 dir);
	int st = system(cmd);
	char *o = slurp("budget", "out");
	ck_assert_msg(st == 0, "lazymem budget: status %d: %s", st, o);
	free(o);
	long after = rss_kib(p);
	ck_assert_msg(after < before - 48 * 1024, "RSS %ld KiB before the budget, %ld after", before,
		      after);
	kill(p, SIGTERM);
	waitpid(p, &st, 0);
	ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "status %#x", st);
	kill(d, SIGTERM);
	waitpid(d, NULL, 0);
}
END_TEST

/* ---- when memory is short -------------------------------------------------- */

/* A budget far below the working set: slower, never wrong. */
START_TEST(budget_below_working_set)
{
	const char *prog[] = { victim, "24", NULL };
	const char *opts[] = { "--budget", "4M", "--threshold", "1M", NULL };
	both(prog, NULL, opts, 150);
	ck_assert_int_gt(stat_of("lazy", "refaults"), 1000);
}
END_TEST

/* The swap directory fills up: pages stay resident, nothing is lost. */
START_TEST(swap_directory_full)
{
	char mnt[128];
	snprintf(mnt, sizeof(mnt), "%s/swap", dir);
	ck_assert_int_eq(mkdir(mnt, 0700), 0);
	ck_assert_msg(mount("tmpfs", mnt, "tmpfs", 0, "size=2m") == 0, "mount tmpfs: %s",
		      strerror(errno));
	const char *prog[] = { victim, "24", NULL };
	const char *opts[] = { "--budget", "4M", "--threshold", "1M", "--swap-dir", mnt, NULL };
	both(prog, NULL, opts, 150);
	umount2(mnt, MNT_DETACH);
	ck_assert_int_gt(stat_of("lazy", "over_budget") + stat_of("lazy", "swap_write_errors"), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("run");
	TCase *tc = tcase_create("run");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 400);
	tcase_add_test(tc, victim_everything);
	tcase_add_test(tc, victim_no_inherit);
	tcase_add_test(tc, thread_before_runtime);
	tcase_add_test(tc, no_userfaultfd_runs_plain);
	tcase_add_test(tc, status_and_signals_pass_through);
	tcase_add_test(tc, fork_in_forked_child);
	tcase_add_test(tc, python_structure);
	tcase_add_test(tc, sqlite_memory_database);
	tcase_add_test(tc, sort_larger_than_budget);
	tcase_add_test(tc, redis_under_benchmark);
	tcase_add_test(tc, ps_and_budget_from_outside);
	tcase_add_test(tc, budget_below_working_set);
	tcase_add_test(tc, swap_directory_full);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
