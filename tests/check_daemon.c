/* SPDX-License-Identifier: MIT */
/* lazymemd and the lazymem command, for real: a daemon on a temporary socket, runtimes reporting to it. */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <grp.h>
#include <pwd.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>

#define NOBODY 65534

/* A huge page is reserved for the malformed-hello case (main). */
static bool huge_ok;

static char dir[64], sock[96], logpath[128];
static pid_t daemon_pid = -1;
static rlim_t daemon_nofile;
static uint64_t child_swap_max;	/* when not 0: the runtime children's swap file at most */	/* when not 0: the daemon's descriptor limit, soft and hard */

static const char *build(void)
{
	const char *b = getenv("LMT_BUILDDIR");
	return b && *b ? b : ".";
}

static int connect_to(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
		return fd;
	if (fd >= 0)
		close(fd);
	return -1;
}

/* Starts lazymemd in the foreground on the test's socket, with extra arguments; waits until it listens. */
static pid_t start_daemon_args(const char *const *extra)
{
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char bin[256];
		snprintf(bin, sizeof(bin), "%s/daemon/lazymemd", build());
		const char *argv[16] = { bin, "-f", "-s", sock, "-l", logpath, "-v", "-v" };
		int n = 8;
		for (; extra && *extra && n < 15; extra++)
			argv[n++] = *extra;
		argv[n] = NULL;
		struct rlimit rl = { daemon_nofile, daemon_nofile };
		if (daemon_nofile && setrlimit(RLIMIT_NOFILE, &rl) < 0)
			_exit(126);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	for (double t0 = lmt_now(); lmt_now() - t0 < 10;) {
		int fd = connect_to(sock);
		if (fd >= 0) {
			close(fd);
			return pid;
		}
		int st;
		ck_assert_msg(waitpid(pid, &st, WNOHANG) == 0, "lazymemd exited at start (status %d)",
			      st);
		usleep(10000);
	}
	ck_abort_msg("lazymemd did not listen on %s", sock);
	return -1;
}

static void start_daemon(void)
{
	daemon_pid = start_daemon_args(NULL);
}

/* SIGTERM: exits 0 and removes its socket. */
static void stop_daemon(void)
{
	ck_assert_int_eq(kill(daemon_pid, SIGTERM), 0);
	int st;
	ck_assert_int_eq(waitpid(daemon_pid, &st, 0), daemon_pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "lazymemd status %d", st);
	ck_assert_int_ne(access(sock, F_OK), 0);
	daemon_pid = -1;
}

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/lmd-test.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	/*
	 * Other users (the access-control test's) must reach the socket
	 * inside, and the daemon, which leaves root for nobody, must remove it.
	 */
	chmod(dir, 0755);
	ck_assert_int_eq(chown(dir, NOBODY, NOBODY), 0);
	snprintf(sock, sizeof(sock), "%s/lazymemd.sock", dir);
	snprintf(logpath, sizeof(logpath), "%s/lazymemd.log", dir);
	setenv("LAZYMEM_SOCKET", sock, 1);
	/* The command's stderr goes here, for every user the tests run it as. */
	char err[96];
	snprintf(err, sizeof(err), "%s/cli.err", dir);
	int fd = open(err, O_CREAT | O_WRONLY, 0666);
	ck_assert_int_ge(fd, 0);
	fchmod(fd, 0666);
	close(fd);
}

static void teardown(void)
{
	if (daemon_pid > 0) {
		kill(daemon_pid, SIGKILL);
		waitpid(daemon_pid, NULL, 0);
	}
	char cmd[128];
	snprintf(cmd, sizeof(cmd), getenv("LMT_KEEP") ? "echo kept %s" : "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

/* Runs the lazymem command with the test's socket; its stdout in out, its exit status returned. */
static int cli(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int cli(char *out, size_t len, const char *fmt, ...)
{
	char args[512], cmd[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof(cmd), "%s/daemon/lazymem -S %s %s 2>%s/cli.err", build(), sock, args,
		 dir);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	size_t n = fread(out, 1, len - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void cli_err(char *out, size_t len)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/cli.err", dir);
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(out, 1, len - 1, f) : 0;
	out[n] = '\0';
	if (f)
		fclose(f);
}

/* The number after "key": in a JSON text (our flat objects), or -1. */
static long long jnum(const char *json, const char *key)
{
	char k[96];
	snprintf(k, sizeof(k), "\"%s\":", key);
	const char *p = strstr(json, k);
	return p ? strtoll(p + strlen(k), NULL, 10) : -1;
}

/* Waits until lazymem ps shows pid (or, with gone, no longer shows it). */
static bool wait_listed(pid_t pid, bool gone, double secs)
{
	char out[65536], needle[32];
	snprintf(needle, sizeof(needle), "\"pid\":%d,", (int)pid);
	for (double t0 = lmt_now(); lmt_now() - t0 < secs; usleep(20000)) {
		if (cli(out, sizeof(out), "ps --json") != 0)
			continue;
		if (!strstr(out, needle) == gone)
			return true;
	}
	return false;
}

static struct lm_runtime *open_reporting(void)
{
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.daemon_socket = sock;
	return lmt_open_opts(&o);
}

/* A child process with a runtime and `mib` MiB written; it lives until its pipe closes. */
struct child {
	pid_t pid;
	int ctl;	/* write end: closing it ends the child */
};

/*
 * As spawn_runtime; with own_rule, the runtime names no socket and finds
 * one by the default rule, with XDG_RUNTIME_DIR the test's directory
 * (where no daemon is).
 */
static struct child spawn_runtime_rule(size_t mib, uid_t uid, bool own_rule)
{
	int ready[2], ctl[2];
	ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(ctl, O_CLOEXEC), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(ready[0]);
		close(ctl[1]);
		if (uid && (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0))
			_exit(10);
		struct lm_options o;
		lm_options_init(&o);
		o.flags = LM_OPT_NO_ENV;
		o.daemon_socket = own_rule ? NULL : sock;
		o.swap_max = child_swap_max;
		if (own_rule)
			setenv("XDG_RUNTIME_DIR", dir, 1);
		struct lm_runtime *rt;
		struct lm_region *r;
		if (lm_runtime_open(&o, &rt) < 0 || lm_region_create_zero(rt, mib << 20, 0, &r) < 0)
			_exit(11);
		unsigned char *p = lm_region_addr(r);
		for (size_t i = 0; i < mib << 20; i += 4096)
			p[i] = (unsigned char)(i >> 12);
		char c = 1;
		if (write(ready[1], &c, 1) != 1)
			_exit(12);
		/* Until told to go: then every byte must still be what was written. */
		while (read(ctl[0], &c, 1) > 0)
			;
		for (size_t i = 0; i < mib << 20; i += 4096)
			if (p[i] != (unsigned char)(i >> 12))
				_exit(13);
		lm_runtime_close(rt);
		_exit(0);
	}
	close(ready[1]);
	close(ctl[0]);
	char c;
	ck_assert_int_eq(read(ready[0], &c, 1), 1);
	close(ready[0]);
	return (struct child){ pid, ctl[1] };
}

static struct child spawn_runtime(size_t mib, uid_t uid)
{
	return spawn_runtime_rule(mib, uid, false);
}

static void child_finish(struct child c)
{
	close(c.ctl);
	int st;
	ck_assert_int_eq(waitpid(c.pid, &st, 0), c.pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "runtime child status %d", st);
}

/* free, ps and stat --json say what the runtime's own lm_stats_get says. */
START_TEST(cli_matches_runtime)
{
	start_daemon();
	struct lm_runtime *rt = open_reporting();
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 16 << 20, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	for (size_t i = 0; i < (8u << 20); i += 4096)
		(void)*(volatile unsigned char *)(p + i);
	for (size_t i = 0; i < (2u << 20); i += 4096)
		p[i] = 1;
	ck_assert(wait_listed(getpid(), false, 10));
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.resident_pages, 0);
	char out[65536];
	ck_assert_int_eq(cli(out, sizeof(out), "stat %d --json", (int)getpid()), 0);
	ck_assert_int_eq(jnum(out, "pid"), getpid());
	ck_assert_int_eq(jnum(out, "resident_pages"), (long long)st.resident_pages);
	ck_assert_int_eq(jnum(out, "resident_dirty"), (long long)st.resident_dirty);
	ck_assert_int_eq(jnum(out, "resident_clean"), (long long)st.resident_clean);
	ck_assert_int_eq(jnum(out, "fills_zero"), (long long)st.fills_zero);
	ck_assert_int_eq(jnum(out, "faults_missing"), (long long)st.faults_missing);
	ck_assert_int_eq(jnum(out, "regions_live"), 1);
	ck_assert_int_eq(jnum(out, "metadata_bytes"), (long long)st.metadata_bytes);
	ck_assert_int_eq(cli(out, sizeof(out), "ps --json"), 0);
	ck_assert_int_eq(jnum(out, "resident"), (long long)(st.resident_pages * 4096));
	ck_assert_int_eq(jnum(out, "dirty"), (long long)(st.resident_dirty * 4096));
	ck_assert_int_eq(jnum(out, "regions"), 1);
	struct lm_free f;
	ck_assert_int_eq(lm_stats_free(&st, &f), 0);
	ck_assert_int_eq(cli(out, sizeof(out), "free --json"), 0);
	ck_assert_int_eq(jnum(out, "processes"), 1);
	ck_assert_int_eq(jnum(out, "used"), (long long)f.used);
	ck_assert_int_eq(jnum(out, "buff_cache"), (long long)f.buff_cache);
	/* No budget: nothing bounds total, free and available; not 0 free. */
	ck_assert_uint_eq(f.total, LM_UNLIMITED);
	ck_assert_ptr_nonnull(strstr(out, "\"total\":null,"));
	ck_assert_ptr_nonnull(strstr(out, "\"available\":null,"));
	/* The text forms too: stat names every counter, free has its rows. */
	ck_assert_int_eq(cli(out, sizeof(out), "stat %d", (int)getpid()), 0);
	ck_assert_ptr_nonnull(strstr(out, "restore_faults"));
	ck_assert_ptr_nonnull(strstr(out, "fill latency"));
	ck_assert_int_eq(cli(out, sizeof(out), "-h free"), 0);
	ck_assert_ptr_nonnull(strstr(out, "Lazy:"));
	ck_assert_ptr_nonnull(strstr(out, "unlimited"));
	ck_assert_ptr_nonnull(strstr(out, "Swap:"));
	ck_assert_int_eq(cli(out, sizeof(out), "free -s 0.1 -c 3 --json"), 0);
	int lines = 0;
	for (char *q = out; (q = strchr(q, '\n')); q++)
		lines++;
	ck_assert_int_eq(lines, 3);
	ck_assert_int_eq(cli(out, sizeof(out), "top -n 1"), 0);
	ck_assert_ptr_nonnull(strstr(out, "lazymem top"));
	/* Live: a write now shows in the next query, with no round trip to us. */
	for (size_t i = 2u << 20; i < (4u << 20); i += 4096)
		p[i] = 1;
	st = lmt_stats(rt);
	ck_assert_int_eq(cli(out, sizeof(out), "stat %d --json", (int)getpid()), 0);
	ck_assert_int_eq(jnum(out, "resident_dirty"), (long long)st.resident_dirty);
	/* Closing the runtime unregisters it. */
	lm_runtime_close(rt);
	ck_assert(wait_listed(getpid(), true, 5));
	ck_assert_int_eq(cli(out, sizeof(out), "stat %d", (int)getpid()), 1);
	stop_daemon();
}
END_TEST

/* Usage errors, no daemon, no such process: the documented exit codes. */
START_TEST(exit_codes)
{
	char out[4096];
	ck_assert_int_eq(cli(out, sizeof(out), "ps"), 3);
	cli_err(out, sizeof(out));
	ck_assert_ptr_nonnull(strstr(out, "lazymemd running"));
	start_daemon();
	ck_assert_int_eq(cli(out, sizeof(out), "frobnicate"), 2);
	ck_assert_int_eq(cli(out, sizeof(out), "stat notapid"), 2);
	ck_assert_int_eq(cli(out, sizeof(out), "budget 1 lots"), 2);
	ck_assert_int_eq(cli(out, sizeof(out), "budget 1 nan"), 2);
	ck_assert_int_eq(cli(out, sizeof(out), "budget 1 0x10"), 2);
	ck_assert_int_eq(cli(out, sizeof(out), "free -c 0"), 2);
	ck_assert_int_eq(cli(out, sizeof(out), "stat 999999"), 1);
	ck_assert_int_eq(cli(out, sizeof(out), "budget 999999 1M"), 1);
	cli_err(out, sizeof(out));
	ck_assert_ptr_nonnull(strstr(out, "no lazymem runtime"));
	ck_assert_int_eq(cli(out, sizeof(out), "version"), 0);
	ck_assert_ptr_nonnull(strstr(out, "lazymemd "));
	ck_assert_int_eq(cli(out, sizeof(out), "ps"), 0);
	ck_assert_ptr_nonnull(strstr(out, "PID"));
	ck_assert_ptr_nonnull(strstr(out, "USER"));
	/* A fraction of a byte is not 0: it must not lift a budget by rounding. */
	ck_assert_int_eq(cli(out, sizeof(out), "budget 1 0.5"), 2);
	cli_err(out, sizeof(out));
	ck_assert_ptr_nonnull(strstr(out, "less than a byte"));
	ck_assert_int_eq(cli(out, sizeof(out), "budget 1 --min 0.2K"), 1);
	/* A socket that is there but not open to the user: refused (1), not "no daemon" (3). */
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (chmod(sock, 0600) < 0 || chown(sock, 0, 0) < 0 || setgroups(0, NULL) < 0 ||
		    setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
			_exit(20);
		if (cli(out, sizeof(out), "ps") != 1)
			_exit(21);
		cli_err(out, sizeof(out));
		_exit(strstr(out, "not open to you") ? 0 : 22);
	}
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "EACCES: status %#x", st);
	ck_assert_int_eq(chown(sock, NOBODY, 0), 0);
	stop_daemon();
}
END_TEST

/* The daemon restarts under live runtimes: they find it again by themselves. */
START_TEST(restart_reconnects)
{
	start_daemon();
	struct lm_runtime *rt = open_reporting();
	struct child c = spawn_runtime(4, 0);
	ck_assert(wait_listed(getpid(), false, 10));
	ck_assert(wait_listed(c.pid, false, 10));
	stop_daemon();
	char out[4096];
	ck_assert_int_eq(cli(out, sizeof(out), "ps"), 3);
	usleep(300000);
	start_daemon();
	double t0 = lmt_now();
	ck_assert(wait_listed(getpid(), false, 10));
	ck_assert(wait_listed(c.pid, false, 10));
	/* inotify on the directory: found at once, not after a full backoff. */
	ck_assert_msg(lmt_now() - t0 < 3, "reconnected after %.2f s", lmt_now() - t0);
	child_finish(c);
	lm_runtime_close(rt);
	stop_daemon();
}
END_TEST

/* A runtime killed with SIGKILL disappears from the listing. */
START_TEST(killed_runtime_disappears)
{
	start_daemon();
	struct child c = spawn_runtime(2, 0);
	ck_assert(wait_listed(c.pid, false, 10));
	kill(c.pid, SIGKILL);
	waitpid(c.pid, NULL, 0);
	close(c.ctl);
	ck_assert(wait_listed(c.pid, true, 5));
	stop_daemon();
}
END_TEST

/* lazymem budget PID SIZE: the process evicts under it, and loses nothing. */
START_TEST(budget_from_cli)
{
	start_daemon();
	struct child c = spawn_runtime(32, 0);
	ck_assert(wait_listed(c.pid, false, 10));
	char out[65536];
	ck_assert_int_eq(cli(out, sizeof(out), "stat %d --json", (int)c.pid), 0);
	ck_assert_int_ge(jnum(out, "resident_pages"), 8192);
	ck_assert_int_eq(cli(out, sizeof(out), "budget %d 8M", (int)c.pid), 0);
	ck_assert_ptr_nonnull(strstr(out, "budget"));
	/* The budget call returns once the evictor has brought it under. */
	ck_assert_int_eq(cli(out, sizeof(out), "stat %d --json", (int)c.pid), 0);
	ck_assert_int_eq(jnum(out, "budget_bytes"), 8 << 20);
	ck_assert_int_le(jnum(out, "resident_pages") * 4096, 8 << 20);
	ck_assert_int_gt(jnum(out, "swapped_pages"), 0);
	ck_assert_int_eq(cli(out, sizeof(out), "ps --json"), 0);
	ck_assert_int_le(jnum(out, "resident"), 8 << 20);
	ck_assert_int_eq(jnum(out, "budget"), 8 << 20);
	/* Lifted again; the child then checks every page it wrote. */
	ck_assert_int_eq(cli(out, sizeof(out), "budget %d 0", (int)c.pid), 0);
	child_finish(c);
	stop_daemon();
}
END_TEST

/* A budget the process cannot meet (its swap file is full) comes back as the runtime's error. */
START_TEST(budget_refused)
{
	child_swap_max = 1 << 20;
	start_daemon();
	struct child c = spawn_runtime(8, 0);
	ck_assert(wait_listed(c.pid, false, 10));
	char out[65536];
	ck_assert_int_eq(cli(out, sizeof(out), "budget %d 1M", (int)c.pid), 1);
	cli_err(out, sizeof(out));
	ck_assert_msg(strstr(out, "No space") || strstr(out, "space"), "%s", out);
	/* Below the least budget a runtime takes: said in the budget's own words. */
	ck_assert_int_eq(cli(out, sizeof(out), "budget %d 1", (int)c.pid), 1);
	cli_err(out, sizeof(out));
	ck_assert_msg(strstr(out, "below the least a runtime takes: 16 pages"), "%s", out);
	/* Over budget, counted, nothing lost: the child checks every page as it ends. */
	ck_assert_int_eq(cli(out, sizeof(out), "stat %d --json", (int)c.pid), 0);
	ck_assert_int_gt(jnum(out, "over_budget"), 0);
	child_finish(c);
	stop_daemon();
}
END_TEST

/* SO_PEERCRED: another user sees only their own processes, and cannot budget root's. */
START_TEST(access_control)
{
	static const char *const group[] = { "-g", "65534", NULL };
	daemon_pid = start_daemon_args(group);
	struct stat sb;
	ck_assert_int_eq(stat(sock, &sb), 0);
	ck_assert_uint_eq(sb.st_mode & 0777, 0660);
	ck_assert_uint_eq(sb.st_gid, NOBODY);
	struct lm_runtime *rt = open_reporting();
	ck_assert(wait_listed(getpid(), false, 10));
	struct child theirs = spawn_runtime(1, NOBODY);
	ck_assert(wait_listed(theirs.pid, false, 10));
	char out[65536], want[32];
	/* Root sees both. */
	ck_assert_int_eq(cli(out, sizeof(out), "ps --json"), 0);
	snprintf(want, sizeof(want), "\"pid\":%d,", (int)theirs.pid);
	ck_assert_ptr_nonnull(strstr(out, want));
	pid_t other = fork();
	ck_assert_int_ge(other, 0);
	if (other == 0) {
		if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
			_exit(20);
		char mine[32], root[32];
		snprintf(mine, sizeof(mine), "\"pid\":%d,", (int)theirs.pid);
		snprintf(root, sizeof(root), "\"pid\":%d,", (int)getppid());
		if (cli(out, sizeof(out), "ps --json") != 0)
			_exit(21);
		if (!strstr(out, mine) || strstr(out, root))
			_exit(22);
		if (cli(out, sizeof(out), "stat %d", (int)getppid()) != 1)
			_exit(23);
		if (cli(out, sizeof(out), "budget %d 1M", (int)getppid()) != 1)
			_exit(24);
		cli_err(out, sizeof(out));
		if (!strstr(out, "another user"))
			_exit(25);
		if (cli(out, sizeof(out), "metrics") != 0 || strstr(out, root))
			_exit(26);
		/* Their own process they may budget. */
		if (cli(out, sizeof(out), "budget %d 512K", (int)theirs.pid) != 0)
			_exit(27);
		_exit(0);
	}
	int st;
	ck_assert_int_eq(waitpid(other, &st, 0), other);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the other user's checks: %d",
		      WEXITSTATUS(st));
	/* Root's budget was left alone. */
	ck_assert_uint_eq(lmt_stats(rt).budget_bytes, 0);
	child_finish(theirs);
	lm_runtime_close(rt);
	stop_daemon();
}
END_TEST

/* promtool (Debian's prometheus) accepts the metrics, live runtimes included. */
START_TEST(metrics_promtool)
{
	/* A dependency like Check itself: missing, it is a failure to install, not a skip. */
	ck_assert_msg(system("command -v promtool >/dev/null 2>&1") == 0,
		      "promtool not installed (scripts/install-deps.sh installs prometheus)");
	start_daemon();
	struct lm_runtime *rt = open_reporting();
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 1 << 20, 0, &r), 0);
	memset(lm_region_addr(r), 1, 1 << 20);
	ck_assert(wait_listed(getpid(), false, 10));
	char out[1 << 16];
	ck_assert_int_eq(cli(out, sizeof(out), "metrics >%s/m.txt; promtool check metrics <%s/m.txt",
			     dir, dir), 0);
	ck_assert_int_eq(cli(out, sizeof(out), "metrics"), 0);
	ck_assert_ptr_nonnull(strstr(out, "# TYPE lazymem_faults_missing_total counter"));
	ck_assert_ptr_nonnull(strstr(out, "# TYPE lazymem_resident_bytes gauge"));
	ck_assert_ptr_nonnull(strstr(out, "# TYPE lazymem_fill_latency_seconds histogram"));
	ck_assert_ptr_nonnull(strstr(out, "le=\"+Inf\""));
	ck_assert_int_eq(cli(out, sizeof(out), "metrics --json"), 0);
	ck_assert_ptr_nonnull(strstr(out, "{\"processes\":[{\"pid\":"));
	ck_assert_int_gt(jnum(out, "fills_zero"), 0);
	lm_runtime_close(rt);
	stop_daemon();
}
END_TEST

/*
 * Each user but root has a share of the daemon's tables: connections and
 * runtimes past it are refused, counted and logged, and other users are
 * not locked out.
 */
START_TEST(per_user_shares)
{
	static const char *const args[] = { "-g", "65534", "-o", "user_runtimes=2", "-o",
					    "user_connections=4", NULL };
	daemon_pid = start_daemon_args(args);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
			_exit(20);
		int fds[5];
		for (int i = 0; i < 5; i++) {
			char head[128];
			fds[i] = connect_to(sock);
			/* The one past the share is told so and closed at once: it may not take a request. */
			if (fds[i] < 0 || (send(fds[i], "version\n", 8, MSG_NOSIGNAL) != 8 && i < 4))
				_exit(21);
			struct pollfd p = { fds[i], POLLIN, 0 };
			ssize_t n = poll(&p, 1, 5000) == 1 ? read(fds[i], head, sizeof(head) - 1) : -1;
			if (n <= 0)
				_exit(22);
			head[n] = 0;
			bool refused = strstr(head, "error EMFILE") != NULL;
			if (refused != (i == 4))
				_exit(23 + i);
		}
		_exit(0);
	}
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "nobody's connections: status %d",
		      WEXITSTATUS(st));
	/* Three runtimes of nobody: two are listed, one is refused; root's is not. */
	struct child c[3];
	for (int i = 0; i < 3; i++)
		c[i] = spawn_runtime(1, NOBODY);
	struct lm_runtime *rt = open_reporting();
	ck_assert(wait_listed(getpid(), false, 10));
	char out[1 << 16];
	int listed = 0;
	for (double t0 = lmt_now(); lmt_now() - t0 < 2 * lmt_time_scale();) {
		ck_assert_int_eq(cli(out, sizeof(out), "ps --json"), 0);
		listed = 0;
		for (int i = 0; i < 3; i++) {
			char want[32];
			snprintf(want, sizeof(want), "\"pid\":%d,", (int)c[i].pid);
			listed += strstr(out, want) != NULL;
		}
		if (listed > 2)
			break;
		usleep(50000);
	}
	ck_assert_int_eq(listed, 2);
	/*
	 * The refused one hung up: connections are root's runtime, nobody's
	 * two and this query's, not a fifth held for nothing.
	 */
	ck_assert_msg(LMT_WAIT_UNTIL(cli(out, sizeof(out), "metrics") == 0 &&
					     strstr(out, "\nlazymemd_connections 4\n"),
				     5),
		      "%s", strstr(out, "lazymemd_connections") ?: out);
	ck_assert_int_eq(cli(out, sizeof(out), "metrics"), 0);
	const char *r = strstr(out, "lazymemd_refusals_total{reason=\"user_limit\"} ");
	ck_assert_ptr_nonnull(r);
	ck_assert_int_ge(atoi(r + strlen("lazymemd_refusals_total{reason=\"user_limit\"} ")), 2);
	/* Last first: a child holds the control pipes of those spawned before it. */
	for (int i = 2; i >= 0; i--)
		child_finish(c[i]);
	lm_runtime_close(rt);
	stop_daemon();
	char *log = NULL;
	size_t ll = 0;
	FILE *f = fopen(logpath, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_gt(getdelim(&log, &ll, 0, f), 0);
	fclose(f);
	ck_assert_msg(strstr(log, "uid 65534 has 4 connections, its share"), "%s", log);
	free(log);
}
END_TEST

/*
 * A system-wide daemon sees every user's runtimes: one of nobody's, with
 * no daemon of its own (XDG_RUNTIME_DIR has none), reports to the system
 * socket, and nobody's lazymem command finds it there too.  The daemon is
 * the test's own unless one serves the system socket already.
 */
START_TEST(system_daemon_for_every_user)
{
	static const char sys[] = "/run/lazymem/lazymemd.sock";
	char saved[sizeof(sock)];
	memcpy(saved, sock, sizeof(saved));
	int fd = connect_to(sys);
	bool ours = fd < 0;
	if (fd >= 0)
		close(fd);
	if (ours) {
		snprintf(sock, sizeof(sock), "%s", sys);
		daemon_pid = start_daemon_args(NULL);
	}
	struct stat sb;
	ck_assert_int_eq(stat(sys, &sb), 0);
	ck_assert_uint_eq(sb.st_mode & 0777, 0666);
	struct child ch = spawn_runtime_rule(1, NOBODY, true);
	pid_t pid = ch.pid;
	char want[64], cmd[512], out[1 << 16];
	snprintf(want, sizeof(want), "\"pid\":%d,\"uid\":%d,", (int)pid, NOBODY);
	snprintf(cmd, sizeof(cmd), "%s/daemon/lazymem -S %s --json ps", build(), sys);
	bool seen = false;
	for (double t0 = lmt_now(); !seen && lmt_now() - t0 < 10 * lmt_time_scale(); usleep(20000)) {
		FILE *f = popen(cmd, "r");
		size_t n = fread(out, 1, sizeof(out) - 1, f);
		pclose(f);
		out[n] = 0;
		seen = strstr(out, want) != NULL;
	}
	ck_assert_msg(seen, "nobody's runtime never reached the system daemon: %s", out);
	/* Nobody's command, without -S: its own socket is not there, the system's is. */
	pid_t asker = fork();
	ck_assert_int_ge(asker, 0);
	if (asker == 0) {
		if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
			_exit(20);
		unsetenv("LAZYMEM_SOCKET");
		setenv("XDG_RUNTIME_DIR", dir, 1);
		snprintf(cmd, sizeof(cmd), "%s/daemon/lazymem --json ps", build());
		FILE *f = popen(cmd, "r");
		size_t n = fread(out, 1, sizeof(out) - 1, f);
		int st = pclose(f);
		out[n] = 0;
		_exit(st == 0 && strstr(out, want) ? 0 : 21);
	}
	int st;
	ck_assert_int_eq(waitpid(asker, &st, 0), asker);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "nobody's lazymem ps: status %#x", st);
	child_finish(ch);
	if (ours) {
		/* Not stop_daemon: an older /run/lazymem of root's keeps nobody from removing the socket. */
		kill(daemon_pid, SIGTERM);
		ck_assert_int_eq(waitpid(daemon_pid, &st, 0), daemon_pid);
		daemon_pid = -1;
		unlink(sys);
	}
	memcpy(sock, saved, sizeof(sock));
}
END_TEST

/*
 * The shipped unit runs the daemon with least privilege: systemd's own
 * audit rates its exposure at most 1.0 (the unit it replaced: 8.9).
 */
START_TEST(unit_is_hardened)
{
	ck_assert_msg(system("systemd-analyze --help 2>/dev/null | grep -q -- --offline") == 0,
		      "systemd-analyze with --offline is needed (Debian 12's systemd has it)");
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "systemd-analyze security --offline=yes --threshold=10 "
		 "%s/daemon/lazymemd.service >%s/analyze.txt 2>&1", build(), dir);
	int rc = system(cmd);
	snprintf(cmd, sizeof(cmd), "%s/analyze.txt", dir);
	FILE *f = fopen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	char line[512], overall[512] = "";
	while (fgets(line, sizeof(line), f))
		if (strstr(line, "Overall exposure level"))
			snprintf(overall, sizeof(overall), "%s", line);
	fclose(f);
	ck_assert_msg(overall[0], "no exposure level in systemd-analyze's output");
	ck_assert_msg(rc == 0, "exposure above 1.0: %s", overall);
	printf("lazymemd.service: %s", overall);
}
END_TEST

/* A TCP port on the loopback that nothing listens on at this moment. */
static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	close(fd);
	return ntohs(a.sin_port);
}

/* One HTTP request to 127.0.0.1:port; the whole reply, head and body, in out (NUL-terminated). */
static size_t http_get(int port, const char *request, char *out, size_t len)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	ck_assert_msg(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "connect to port %d: %s",
		      port, strerror(errno));
	ck_assert_int_eq(send(fd, request, strlen(request), MSG_NOSIGNAL), (ssize_t)strlen(request));
	size_t n = 0;
	for (;;) {
		struct pollfd p = { fd, POLLIN, 0 };
		ck_assert_int_eq(poll(&p, 1, 10000), 1);
		ssize_t k = read(fd, out + n, len - 1 - n);
		if (k <= 0)
			break;
		n += (size_t)k;
		ck_assert_uint_lt(n, len - 1);
	}
	out[n] = '\0';
	close(fd);
	return n;
}

/*
 * --http: /metrics over HTTP, every runtime's counters and the daemon's
 * own, promtool-clean; errors as HTTP says them; and Debian's real
 * Prometheus scraping it, a series read back through its query API.
 */
START_TEST(prometheus_scrapes_http)
{
	ck_assert_msg(system("command -v prometheus >/dev/null 2>&1") == 0,
		      "prometheus not installed (scripts/install-deps.sh installs it)");
	int port = free_port();
	char addr[32], req[512];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	const char *extra[] = { "--http", addr, NULL };
	daemon_pid = start_daemon_args(extra);
	struct lm_runtime *rt = open_reporting();
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 1 << 20, 0, &r), 0);
	memset(lm_region_addr(r), 1, 1 << 20);
	ck_assert(wait_listed(getpid(), false, 10));
	static char out[1 << 20];
	/* The policy puts the runtime in its scope at its next look: within 100 ms. */
	int scrapes = 0;
	ck_assert(LMT_WAIT_UNTIL((scrapes++, http_get(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n"
						     "Accept: text/plain\r\n\r\n", out, sizeof(out)),
				  strstr(out, "lazymemd_scope_state_info{scope=\"machine\"")), 5));
	ck_assert_msg(!strncmp(out, "HTTP/1.1 200 OK\r\n", 17), "%.200s", out);
	ck_assert_ptr_nonnull(strstr(out, "Content-Type: text/plain; version=0.0.4"));
	char *body = strstr(out, "\r\n\r\n");
	ck_assert_ptr_nonnull(body);
	body += 4;
	char key[96];
	snprintf(key, sizeof(key), "lazymem_resident_bytes{pid=\"%d\",", (int)getpid());
	ck_assert_ptr_nonnull(strstr(body, key));
	ck_assert_ptr_nonnull(strstr(body, "lazymemd_build_info{version=\""));
	ck_assert_ptr_nonnull(strstr(body, "lazymemd_runtimes 1\n"));
	snprintf(key, sizeof(key), "lazymemd_requests_total{kind=\"http\"} %d\n", scrapes);
	ck_assert_ptr_nonnull(strstr(body, key));
	ck_assert_ptr_nonnull(strstr(body, "lazymem_mode_info{pid="));
	ck_assert_ptr_nonnull(strstr(body, "lazymemd_scope_state_info{scope=\"machine\",state="));
	char path[160];
	snprintf(path, sizeof(path), "%s/http.txt", dir);
	FILE *f = fopen(path, "w");
	fputs(body, f);
	fclose(f);
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "promtool check metrics <%s >%s/promtool.out 2>&1", path, dir);
	ck_assert_msg(system(cmd) == 0, "promtool check metrics failed on the HTTP body");
	/* What is not a scrape of /metrics. */
	static const char *const bad[][2] = {
		{ "GET /nothing HTTP/1.1\r\n\r\n", "HTTP/1.1 404 " },
		{ "POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 " },
		{ "HELLO\r\n\r\n", "HTTP/1.1 400 " },
		{ "GET / HTTP/1.0\r\n\r\n", "HTTP/1.1 200 " },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		http_get(port, bad[i][0], out, sizeof(out));
		ck_assert_msg(!strncmp(out, bad[i][1], strlen(bad[i][1])), "%s: %.80s", bad[i][0], out);
	}
	/* HEAD: the length GET would have, no body. */
	size_t n = http_get(port, "HEAD /metrics HTTP/1.1\r\n\r\n", out, sizeof(out));
	ck_assert_ptr_nonnull(strstr(out, "Content-Length: "));
	ck_assert_uint_eq(n, (size_t)(strstr(out, "\r\n\r\n") - out) + 4);
	/* A request line past 256 bytes. */
	memset(req, 'a', sizeof(req));
	memcpy(req, "GET /", 5);
	req[sizeof(req) - 1] = '\0';
	http_get(port, req, out, sizeof(out));
	ck_assert_msg(!strncmp(out, "HTTP/1.1 414 ", 13), "%.80s", out);

	/* The real thing: Prometheus scrapes every 200 ms, then a query for this process. */
	int pport = free_port();
	snprintf(path, sizeof(path), "%s/prometheus.yml", dir);
	f = fopen(path, "w");
	fprintf(f, "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n"
		   "scrape_configs:\n  - job_name: lazymemd\n    static_configs:\n"
		   "      - targets: ['127.0.0.1:%d']\n", port);
	fclose(f);
	pid_t prom = fork();
	ck_assert_int_ge(prom, 0);
	if (prom == 0) {
		char cfg[192], data[192], listen[64], log[192];
		snprintf(cfg, sizeof(cfg), "--config.file=%s", path);
		snprintf(data, sizeof(data), "--storage.tsdb.path=%s/tsdb", dir);
		snprintf(listen, sizeof(listen), "--web.listen-address=127.0.0.1:%d", pport);
		snprintf(log, sizeof(log), "%s/prometheus.log", dir);
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 1);
		dup2(fd, 2);
		execlp("prometheus", "prometheus", cfg, data, listen, (char *)NULL);
		_exit(127);
	}
	snprintf(req, sizeof(req),
		 "GET /api/v1/query?query=lazymem_resident_bytes%%7Bpid%%3D%%22%d%%22%%7D HTTP/1.1\r\n"
		 "Host: 127.0.0.1\r\nConnection: close\r\n\r\n", (int)getpid());
	bool seen = false;
	for (double t0 = lmt_now(); !seen && lmt_now() - t0 < 60 * lmt_time_scale();) {
		usleep(200000);
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)pport),
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		bool up = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
		close(fd);
		if (!up)
			continue;
		http_get(pport, req, out, sizeof(out));
		seen = strstr(out, "\"status\":\"success\"") && strstr(out, "\"value\":[") &&
		       strstr(out, "\"1048576\"");
	}
	kill(prom, SIGTERM);
	int st;
	waitpid(prom, &st, 0);
	if (!seen) {
		snprintf(cmd, sizeof(cmd), "tail -5 %s/prometheus.log >&2", dir);
		ck_assert_int_ge(system(cmd), 0);
	}
	ck_assert_msg(seen, "Prometheus never returned this process's resident bytes: %.300s", out);
	lm_runtime_close(rt);
	stop_daemon();
}
END_TEST

/* One raw request on a fresh connection; the reply's head line in head. */
static void raw(const char *req, size_t len, char *head, size_t hlen)
{
	int fd = connect_to(sock);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(send(fd, req, len, MSG_NOSIGNAL), (ssize_t)len);
	size_t n = 0;
	while (n + 1 < hlen) {
		struct pollfd p = { fd, POLLIN, 0 };
		ck_assert_int_eq(poll(&p, 1, 5000), 1);
		if (read(fd, head + n, 1) != 1)
			break;
		if (head[n++] == '\n')
			break;
	}
	head[n] = '\0';
	close(fd);
}

static long status_kib(pid_t pid, const char *key)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	long v = -1;
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)))
			v = strtol(line + strlen(key), NULL, 10);
	if (f)
		fclose(f);
	return v;
}

static int fd_count(pid_t pid)
{
	char cmd[96], out[32];
	snprintf(cmd, sizeof(cmd), "ls /proc/%d/fd | wc -l", (int)pid);
	FILE *p = popen(cmd, "r");
	int n = p && fgets(out, sizeof(out), p) ? atoi(out) : -1;
	if (p)
		pclose(p);
	return n;
}

/* A hello line with a descriptor attached, as a runtime sends its stats page. */
static void send_hello(int fd, const char *line, int passfd)
{
	struct iovec iov = { (void *)line, strlen(line) };
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} ctl = { 0 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			    .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &passfd, sizeof(int));
	ck_assert_int_eq(sendmsg(fd, &m, 0), (ssize_t)iov.iov_len);
}

/* Garbage, overlong and partial lines, fake hellos, clients that never read or leave mid-reply. */
START_TEST(malformed_clients)
{
	start_daemon();
	struct lm_runtime *rt = open_reporting();
	ck_assert(wait_listed(getpid(), false, 10));
	int fds0 = fd_count(daemon_pid);
	char head[512];
	raw("\x01\x02\xff garbage\n", 12, head, sizeof(head));
	ck_assert_msg(!strncmp(head, "error EINVAL", 12), "%s", head);
	raw("stats -1\n", 9, head, sizeof(head));
	ck_assert_msg(!strncmp(head, "error EINVAL", 12), "%s", head);
	raw("budget 1 12Q\n", 13, head, sizeof(head));
	ck_assert_msg(!strncmp(head, "error EINVAL", 12), "%s", head);
	/* Overlong: one error, the rest of the line skipped, the next request served. */
	static char big[70000];
	memset(big, 'x', sizeof(big));
	memcpy(big + sizeof(big) - 9, "\nversion\n", 9);
	int fd = connect_to(sock);
	ck_assert_int_eq(send(fd, big, sizeof(big), MSG_NOSIGNAL), (ssize_t)sizeof(big));
	FILE *f = fdopen(fd, "r");
	ck_assert_ptr_nonnull(fgets(head, sizeof(head), f));
	ck_assert_msg(strstr(head, "too long"), "%s", head);
	ck_assert_ptr_nonnull(fgets(head, sizeof(head), f));
	ck_assert_msg(!strncmp(head, "ok ", 3), "%s", head);
	fclose(f);
	/* Partial lines: a request in pieces. */
	fd = connect_to(sock);
	ck_assert_int_eq(send(fd, "ver", 3, 0), 3);
	usleep(50000);
	ck_assert_int_eq(send(fd, "sion\n", 5, 0), 5);
	f = fdopen(fd, "r");
	ck_assert_ptr_nonnull(fgets(head, sizeof(head), f));
	ck_assert_msg(!strncmp(head, "ok ", 3), "%s", head);
	fclose(f);
	/* Pipelined: every request in one write gets its reply, in order. */
	fd = connect_to(sock);
	ck_assert_int_eq(send(fd, "version\nbogus\nversion\n", 22, 0), 22);
	f = fdopen(fd, "r");
	const char *want[] = { "ok ", "lazymemd", "error EINVAL", "ok ", "lazymemd" };
	for (int i = 0; i < 5; i++) {
		ck_assert_ptr_nonnull(fgets(head, sizeof(head), f));
		ck_assert_msg(!strncmp(head, want[i], strlen(want[i])), "%d: %s", i, head);
	}
	fclose(f);
	/* Hellos that do not carry a sealed memfd are refused. */
	raw("hello 0.3.0 fake\n", 17, head, sizeof(head));
	ck_assert_msg(!strncmp(head, "error EINVAL", 12), "%s", head);
	int pass[2] = { -1, -1 };
	ck_assert_int_eq(pipe(pass), 0);
	int unsealed = memfd_create("x", MFD_CLOEXEC);
	ck_assert_int_eq(ftruncate(unsealed, 4096), 0);
	/*
	 * Sealed as the runtime's, but of hugetlbfs (main reserved a huge
	 * page for it, so that the daemon could map it).
	 */
	int huge = -1, nbad = 2;
	if (huge_ok) {
		huge = memfd_create("h", MFD_CLOEXEC | MFD_HUGETLB | MFD_ALLOW_SEALING);
		ck_assert_msg(huge >= 0, "memfd_create(MFD_HUGETLB): %s", strerror(errno));
		ck_assert_int_eq(ftruncate(huge, (off_t)lmt_huge_page_size()), 0);
		ck_assert_int_eq(fcntl(huge, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
				 0);
		nbad = 3;
	}
	int bad_fds[3] = { pass[0], unsealed, huge };
	for (int i = 0; i < nbad; i++) {
		fd = connect_to(sock);
		send_hello(fd, "hello 0.3.0 fake\n", bad_fds[i]);
		f = fdopen(fd, "r");
		ck_assert_ptr_nonnull(fgets(head, sizeof(head), f));
		ck_assert_msg(!strncmp(head, "error EINVAL", 12), "%s", head);
		fclose(f);
	}
	/* A good hello, then a second one on the same connection: EALREADY, as documented. */
	int page = memfd_create("stats", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	ck_assert_int_eq(ftruncate(page, 4096), 0);
	ck_assert_int_eq(fcntl(page, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), 0);
	fd = connect_to(sock);
	f = fdopen(fd, "r");
	for (int i = 0; i < 2; i++) {
		send_hello(fd, "hello 0.3.0 twice\n", page);
		ck_assert_ptr_nonnull(fgets(head, sizeof(head), f));
		ck_assert_msg(!strncmp(head, i ? "error EALREADY" : "ok 0", i ? 14 : 4), "hello %d: %s",
			      i + 1, head);
	}
	fclose(f);
	close(page);
	close(pass[0]);
	close(pass[1]);
	close(unsealed);
	if (huge >= 0)
		close(huge);
	/* A client that asks and never reads; another that leaves mid-reply, many times. */
	int lazy = connect_to(sock);
	for (int i = 0; i < 2000; i++)
		if (send(lazy, "json\n", 5, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
			break;
	for (int i = 0; i < 200; i++) {
		fd = connect_to(sock);
		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(send(fd, "metrics\nmetrics\n", 16, MSG_NOSIGNAL), 16);
		char b[16];
		if (read(fd, b, sizeof(b)) < 0)
			ck_abort_msg("read");
		close(fd);
	}
	/* Thousands of idle connections; the daemon still answers at once. */
	enum { IDLE = 2000 };
	static int idle[IDLE];
	for (int i = 0; i < IDLE; i++) {
		idle[i] = connect_to(sock);
		ck_assert_msg(idle[i] >= 0, "idle connection %d: %s", i, strerror(errno));
	}
	char out[65536];
	double t0 = lmt_now();
	ck_assert_int_eq(cli(out, sizeof(out), "ps --json"), 0);
	ck_assert_msg(lmt_now() - t0 < 2, "ps took %.2f s", lmt_now() - t0);
	char needle[32];
	snprintf(needle, sizeof(needle), "\"pid\":%d,", (int)getpid());
	ck_assert_ptr_nonnull(strstr(out, needle));
	for (int i = 0; i < IDLE; i++)
		close(idle[i]);
	close(lazy);
	/* Bounded: its memory stays small, and no descriptor leaked. */
	long hwm = status_kib(daemon_pid, "VmHWM:");
	ck_assert_msg(hwm > 0 && hwm < 128 * 1024, "lazymemd peak RSS %ld KiB", hwm);
	(void)LMT_WAIT_UNTIL(fd_count(daemon_pid) <= fds0, 5);
	ck_assert_int_le(fd_count(daemon_pid), fds0);
	lm_runtime_close(rt);
	stop_daemon();
}
END_TEST

/* CPU seconds a process has used (utime + stime). */
static double cpu_seconds(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
	if (f)
		fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	unsigned long ut = 0, st = 0;
	/* After the name: state and 10 fields, then utime and stime. */
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Out of descriptors: connections are refused, the loop does not spin, service resumes. */
START_TEST(descriptor_exhaustion)
{
	daemon_nofile = 48;
	start_daemon();
	enum { N = 100 };
	int fds[N];
	for (int i = 0; i < N; i++)
		fds[i] = connect_to(sock);
	/*
	 * That it does not spin can only be watched for a while: it settles
	 * into being out of descriptors, then has one second in which it must
	 * not use more than 0.3 s of CPU.
	 */
	usleep(200000);
	double c0 = cpu_seconds(daemon_pid);
	usleep(1000000);
	double used = cpu_seconds(daemon_pid) - c0;
	ck_assert_msg(used < 0.3, "lazymemd used %.2f s of CPU in 1 s out of descriptors", used);
	for (int i = 0; i < N; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	char out[4096];
	bool ok = false;
	for (double t0 = lmt_now(); !ok && lmt_now() - t0 < 5; usleep(50000))
		ok = cli(out, sizeof(out), "version") == 0;
	ck_assert(ok);
	/* Idle, it must not spin either: half a second watched, as above. */
	c0 = cpu_seconds(daemon_pid);
	usleep(500000);
	ck_assert_msg(cpu_seconds(daemon_pid) - c0 < 0.2, "lazymemd spins when idle");
	stop_daemon();
}
END_TEST

/* No effective capability, an empty bounding set, no_new_privs: nothing to regain. */
static bool unprivileged(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	bool eff = false, bnd = false, nnp = false;
	while (f && fgets(line, sizeof(line), f)) {
		eff |= !strcmp(line, "CapEff:\t0000000000000000\n");
		bnd |= !strcmp(line, "CapBnd:\t0000000000000000\n");
		nnp |= !strcmp(line, "NoNewPrivs:\t1\n");
	}
	if (f)
		fclose(f);
	return eff && bnd && nnp;
}

/*
 * lazymemd listens before it drops its privileges (it binds as root), so
 * a client may be served a moment before the drop: wait for it.  A
 * loaded ASan distcheck saw uid 0 right after the socket answered.
 */
static void wait_dropped(pid_t pid, long uid)
{
	(void)LMT_WAIT_UNTIL(status_kib(pid, "Uid:") == uid && unprivileged(pid), 5);
}

/* SIGHUP reopens the log; SIGINT stops cleanly; no capabilities left; -u drops the user. */
START_TEST(signals_and_privileges)
{
	start_daemon();
	char path[160], line[256];
	FILE *f;
	struct passwd *pw = getpwnam("lazymem");
	wait_dropped(daemon_pid, pw ? (long)pw->pw_uid : NOBODY);
	ck_assert_msg(unprivileged(daemon_pid), "lazymemd kept capabilities or may regain them");
	/* Started as root without -u, it does not stay root. */
	ck_assert_int_eq(status_kib(daemon_pid, "Uid:"), pw ? (long)pw->pw_uid : NOBODY);
	snprintf(path, sizeof(path), "%s.1", logpath);
	ck_assert_int_eq(rename(logpath, path), 0);
	ck_assert_int_eq(kill(daemon_pid, SIGHUP), 0);
	(void)LMT_WAIT_UNTIL(access(logpath, F_OK) == 0, 5);
	ck_assert_int_eq(access(logpath, F_OK), 0);
	ck_assert_int_eq(kill(daemon_pid, SIGINT), 0);
	int st;
	ck_assert_int_eq(waitpid(daemon_pid, &st, 0), daemon_pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	daemon_pid = -1;
	ck_assert_int_ne(access(sock, F_OK), 0);
	f = fopen(logpath, "r");
	ck_assert_ptr_nonnull(f);
	bool reopened = false;
	while (fgets(line, sizeof(line), f))
		reopened |= strstr(line, "log reopened") != NULL;
	fclose(f);
	ck_assert(reopened);

	/*
	 * -u root keeps uid 0, without a capability all the same: no
	 * CAP_DAC_OVERRIDE either, so its socket goes in a directory of root's.
	 */
	snprintf(sock, sizeof(sock), "%s/root", dir);
	ck_assert_int_eq(mkdir(sock, 0755), 0);
	snprintf(sock, sizeof(sock), "%s/root/lazymemd.sock", dir);
	static const char *const root[] = { "-u", "root", NULL };
	daemon_pid = start_daemon_args(root);
	wait_dropped(daemon_pid, 0);
	ck_assert_int_eq(status_kib(daemon_pid, "Uid:"), 0);
	ck_assert_msg(unprivileged(daemon_pid), "lazymemd -u root kept capabilities");
	stop_daemon();

	/*
	 * As another user, it still serves and still removes its socket,
	 * from the directory it created and gave that user.
	 */
	snprintf(sock, sizeof(sock), "%s/run/lazymemd.sock", dir);
	static const char *const user[] = { "-u", "65534", NULL };
	daemon_pid = start_daemon_args(user);
	wait_dropped(daemon_pid, NOBODY);
	ck_assert_int_eq(status_kib(daemon_pid, "Uid:"), NOBODY);
	ck_assert_msg(unprivileged(daemon_pid), "lazymemd -u kept capabilities or may regain them");
	/* Its log, created by root, is still its own to reopen. */
	ck_assert_int_eq(kill(daemon_pid, SIGHUP), 0);
	char out[4096];
	ck_assert_int_eq(cli(out, sizeof(out), "version"), 0);
	stop_daemon();
	f = fopen(logpath, "r");
	ck_assert_ptr_nonnull(f);
	reopened = false;
	while (fgets(line, sizeof(line), f)) {
		ck_assert_msg(!strstr(line, "cannot reopen"), "%s", line);
		reopened |= strstr(line, "log reopened") != NULL;
	}
	fclose(f);
	ck_assert(reopened);
}
END_TEST

/* systemd's socket activation: the daemon serves the socket it is given, and leaves it. */
START_TEST(socket_activation)
{
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
	ck_assert_int_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(l, 16), 0);
	/* And a TCP socket for /metrics, as lazymemd-http.socket passes it: first, to be sorted out. */
	int port = free_port();
	int h = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in ha = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	ck_assert_int_eq(bind(h, (struct sockaddr *)&ha, sizeof(ha)), 0);
	ck_assert_int_eq(listen(h, 16), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char bin[256], me[16];
		int l2 = dup(l);
		dup2(h, 3);
		dup2(l2, 4);
		snprintf(me, sizeof(me), "%d", (int)getpid());
		setenv("LISTEN_PID", me, 1);
		setenv("LISTEN_FDS", "2", 1);
		snprintf(bin, sizeof(bin), "%s/daemon/lazymemd", build());
		/* -s names another path on purpose: the activated socket wins. */
		execl(bin, bin, "-f", "-l", logpath, "-s", "/nonexistent/x.sock", (char *)NULL);
		_exit(127);
	}
	close(l);
	close(h);
	daemon_pid = pid;
	struct lm_runtime *rt = open_reporting();
	ck_assert(wait_listed(getpid(), false, 10));
	static char out[1 << 20];
	http_get(port, "GET /metrics HTTP/1.0\r\n\r\n", out, sizeof(out));
	ck_assert_msg(!strncmp(out, "HTTP/1.1 200 OK", 15) && strstr(out, "lazymemd_runtimes 1\n"),
		      "%.200s", out);
	ck_assert_int_eq(kill(pid, SIGTERM), 0);
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	daemon_pid = -1;
	ck_assert_int_eq(access(sock, F_OK), 0);
	lm_runtime_close(rt);
}
END_TEST

/* Without -f it detaches, and the command returns only once it listens. */
START_TEST(detaches)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "%s/daemon/lazymemd -s %s -l %s", build(), sock, logpath);
	ck_assert_int_eq(system(cmd), 0);
	int fd = connect_to(sock);
	ck_assert_int_ge(fd, 0);
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	ck_assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl), 0);
	close(fd);
	/* A second one refuses: one daemon per socket. */
	ck_assert_int_ne(system(cmd), 0);
	/* -s naming a regular file: refused, and the file is left alone. */
	char file[160];
	snprintf(file, sizeof(file), "%s/precious", dir);
	FILE *pf = fopen(file, "w");
	ck_assert_ptr_nonnull(pf);
	fputs("data\n", pf);
	fclose(pf);
	snprintf(cmd, sizeof(cmd), "%s/daemon/lazymemd -f -s %s -l %s", build(), file, logpath);
	ck_assert_int_ne(system(cmd), 0);
	ck_assert_int_eq(access(file, F_OK), 0);
	ck_assert_int_eq(kill(cred.pid, SIGTERM), 0);
	(void)LMT_WAIT_UNTIL(access(sock, F_OK) != 0, 5);
	ck_assert_int_ne(access(sock, F_OK), 0);
}
END_TEST

/* A runtime told not to report never connects; a fork() child does not report its copy. */
START_TEST(no_report_and_fork)
{
	start_daemon();
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.daemon_socket = sock;
	o.flags |= LM_OPT_NO_REPORT;
	struct lm_runtime *quiet = lmt_open_opts(&o);
	ck_assert(!wait_listed(getpid(), false, 1));
	lm_runtime_close(quiet);
	struct lm_runtime *rt = open_reporting();
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 1 << 20, 0, &r), 0);
	ck_assert(wait_listed(getpid(), false, 10));
	ck_assert_int_eq(lm_runtime_set_budget(rt, 64 << 20), 0);
	uint64_t before = lmt_stats(rt).fills_zero;
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		/* The child's fills are its own: the parent's page does not move. */
		memset(lm_region_addr(r), 1, 1 << 20);
		_exit(lmt_stats(rt).fills_zero > before ? 0 : 1);
	}
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert_uint_eq(lmt_stats(rt).fills_zero, before);
	/* The child's reset of its own budget did not reach the parent's page. */
	ck_assert_uint_eq(lmt_stats(rt).budget_bytes, 64 << 20);
	ck_assert(!wait_listed(pid, false, 0.5));
	lm_runtime_close(rt);
	stop_daemon();
}
END_TEST

/* Socket descriptors of this process (the runtime's connection to the daemon among them). */
static int count_sockets(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;
	for (struct dirent *e; d && (e = readdir(d));) {
		struct stat st;
		if (e->d_name[0] != '.' && fstatat(dirfd(d), e->d_name, &st, 0) == 0 &&
		    S_ISSOCK(st.st_mode))
			n++;
	}
	if (d)
		closedir(d);
	return n;
}

/*
 * A daemon of the test's own: takes the hello, hangs up and binds again,
 * so the reporter reconnects in a loop.  Each socket listens before it is
 * renamed into place: the rename wakes the reporter (inotify), and no
 * connect finds a socket not yet listening.
 */
static void hang_up_daemon(_Atomic int *accepts)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	char tmp[sizeof(sock) + 8];
	snprintf(tmp, sizeof(tmp), "%s.new", sock);
	for (;;) {
		int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		snprintf(a.sun_path, sizeof(a.sun_path), "%s", tmp);
		unlink(tmp);
		if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 8) < 0 ||
		    rename(tmp, sock) < 0)
			_exit(1);
		int c = accept(l, NULL, NULL);
		char buf[256];
		if (c >= 0 && read(c, buf, sizeof(buf)) > 0)
			atomic_fetch_add(accepts, 1);
		if (c >= 0)
			close(c);
		close(l);
	}
}

/*
 * A fork() while the reporter (re)connects: the child must not keep a
 * copy of the connection (the daemon would list the parent for as long
 * as the child lives).  The reporter reconnects in a loop here, and
 * every child counts its sockets.
 */
START_TEST(fork_while_reconnecting)
{
	int base = count_sockets();
	_Atomic int *accepts = mmap(NULL, sizeof(*accepts), PROT_READ | PROT_WRITE,
				    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(accepts, MAP_FAILED);
	pid_t fake = fork();
	ck_assert_int_ge(fake, 0);
	if (fake == 0)
		hang_up_daemon(accepts);
	struct lm_runtime *rt = open_reporting();
	/*
	 * 4000 forks, or 4 s of them, and on until the reporter has
	 * connected 100 times (the premise: it reconnects all along).
	 */
	int forks = 0, stale = 0;
	for (double t0 = lmt_now(), end = t0 + 30 * lmt_time_scale();
	     (forks < 4000 && lmt_now() - t0 < 4) || (atomic_load(accepts) < 100 && lmt_now() < end);
	     forks++) {
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0)
			_exit(count_sockets() == base ? 0 : 1);
		int st;
		ck_assert_int_eq(waitpid(pid, &st, 0), pid);
		stale += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
	}
	lm_runtime_close(rt);
	kill(fake, SIGKILL);
	waitpid(fake, NULL, 0);
	int n = atomic_load(accepts);
	munmap((void *)accepts, sizeof(*accepts));
	ck_assert_msg(n >= 100, "the reporter connected only %d times", n);
	ck_assert_msg(!stale, "%d of %d fork() children kept a connection to the daemon", stale,
		      forks);
}
END_TEST

int main(void)
{
	lmt_require_uffd();
	if (geteuid() != 0) {
		printf("SKIP: the daemon tests switch users and read other processes' status: run as root\n");
		return LMT_SKIP;
	}
	char why[256];
	huge_ok = lmt_reserve_hugetlb(lmt_huge_page_size(), why, sizeof(why));
	if (!huge_ok)
		printf("note: the hello with a hugetlb memfd is not tried: %s\n", why);
	Suite *s = suite_create("daemon");
	TCase *tc = tcase_create("daemon");
	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, cli_matches_runtime);
	tcase_add_test(tc, exit_codes);
	tcase_add_test(tc, restart_reconnects);
	tcase_add_test(tc, killed_runtime_disappears);
	tcase_add_test(tc, budget_from_cli);
	tcase_add_test(tc, budget_refused);
	tcase_add_test(tc, access_control);
	tcase_add_test(tc, per_user_shares);
	tcase_add_test(tc, system_daemon_for_every_user);
	tcase_add_test(tc, unit_is_hardened);
	tcase_add_test(tc, metrics_promtool);
	tcase_add_test(tc, prometheus_scrapes_http);
	tcase_add_test(tc, malformed_clients);
	tcase_add_test(tc, descriptor_exhaustion);
	tcase_add_test(tc, signals_and_privileges);
	tcase_add_test(tc, socket_activation);
	tcase_add_test(tc, detaches);
	tcase_add_test(tc, no_report_and_fork);
	tcase_add_test(tc, fork_while_reconnecting);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
