/* SPDX-License-Identifier: MIT */
/* Tests of the runtime: options, environment, userfaultfd origins and limits, stats, errors. */
#define _GNU_SOURCE 1
#include "testutil.h"
#include <dirent.h>
#include <sched.h>

#include <pthread.h>
#include <pwd.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/wait.h>

static void clear_env(void)
{
	unsetenv("LAZYMEM_MODE");
	unsetenv("LAZYMEM_THREADS");
	unsetenv("LAZYMEM_READAHEAD");
	unsetenv("LAZYMEM_IO");
	unsetenv("LAZYMEM_UFFD");
	unsetenv("LAZYMEM_DEBUG");
	unsetenv("LAZYMEM_BUDGET");
	unsetenv("LAZYMEM_BUDGET_MIN");
	unsetenv("LAZYMEM_SWAP_DIR");
	unsetenv("LAZYMEM_SWAP_MAX");
	unsetenv("LAZYMEM_EVICT");
	unsetenv("LAZYMEM_DIRTY");
	unsetenv("LAZYMEM_PIN");
	unsetenv("LAZYMEM_SPIN");
}

START_TEST(options_defaults)
{
	struct lm_options o;
	memset(&o, 0xff, sizeof(o));
	ck_assert_int_eq(lm_options_init(&o), 0);
	ck_assert_uint_eq(o.size, sizeof(o));
	ck_assert_int_eq(o.mode, LM_MODE_DEFAULT);
	ck_assert_int_eq(o.handler_threads, 0);
	ck_assert_ptr_null(o.log);
	ck_assert_int_eq(lm_options_init(NULL), -EINVAL);
}
END_TEST

START_TEST(open_defaults_and_close)
{
	clear_env();
	struct lm_runtime *rt = NULL;
	ck_assert_int_eq(lm_runtime_open(NULL, &rt), 0);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_int_eq(st.mode, LM_MODE_THREAD);	/* the default, see README */
	ck_assert_uint_ge(st.handler_threads, 1);
	ck_assert_uint_le(st.handler_threads, 4);
	ck_assert_uint_ne(st.uffd_origin, LM_UFFD_NONE);
	ck_assert_uint_eq(st.version, LM_STATS_VERSION);
	ck_assert_uint_gt(st.metadata_bytes, 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	ck_assert_int_eq(lm_runtime_close(NULL), -EINVAL);
}
END_TEST

START_TEST(open_rejects_bad_options)
{
	clear_env();
	struct lm_runtime *rt = (void *)0x1;
	struct lm_options o;
	errno = 4242;
	ck_assert_int_eq(lm_runtime_open(NULL, NULL), -EINVAL);
	lm_options_init(&o);
	o.mode = 7;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	lm_options_init(&o);
	o.handler_threads = -1;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	lm_options_init(&o);
	o.readahead_max = 1 << 20;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	lm_options_init(&o);
	o.io = 9;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	lm_options_init(&o);
	o.flags = 0x80;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	lm_options_init(&o);
	o.size = 4;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	lm_options_init(&o);
	o.swap_url = "/tmp/swap";	/* only redis:// URLs */
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	lm_options_init(&o);
	o.swap_url = "redis://127.0.0.1:1";
	o.mode = LM_MODE_SIGNAL;	/* the remote store's client cannot run in a signal handler */
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EOPNOTSUPP);
	lm_options_init(&o);
	o.reserved32 = 1;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	lm_options_init(&o);
	o.evict_policy = 9;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	lm_options_init(&o);
	o.dirty_tracking = 9;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	lm_options_init(&o);
	o.swap_max = 100;	/* less than a page */
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
	ck_assert_ptr_eq(rt, (void *)0x1);	/* untouched on failure */
	ck_assert_int_eq(errno, 4242);		/* errno is never touched */
}
END_TEST

/* A caller built against 0.1's header passes a prefix: everything after log_arg defaults. */
START_TEST(options_prefix_of_older_version)
{
	clear_env();
	struct lm_options o;
	lm_options_init(&o);
	o.size = (uint32_t)offsetof(struct lm_options, budget);
	o.budget = 12345;	/* beyond the prefix: never read */
	struct lm_runtime *rt;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), 0);
	ck_assert_uint_eq(lmt_stats(rt).budget_bytes, 0);
	lm_runtime_close(rt);
	o.size = (uint32_t)offsetof(struct lm_options, budget) - 1;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EINVAL);
}
END_TEST

START_TEST(environment_overrides_defaults)
{
	clear_env();
	setenv("LAZYMEM_MODE", "signal", 1);
	setenv("LAZYMEM_THREADS", "3", 1);
	struct lm_runtime *rt;
	ck_assert_int_eq(lm_runtime_open(NULL, &rt), 0);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_int_eq(st.mode, LM_MODE_SIGNAL);
	lm_runtime_close(rt);

	setenv("LAZYMEM_MODE", "thread", 1);
	ck_assert_int_eq(lm_runtime_open(NULL, &rt), 0);
	st = lmt_stats(rt);
	ck_assert_int_eq(st.mode, LM_MODE_THREAD);
	ck_assert_uint_eq(st.handler_threads, 3);
	lm_runtime_close(rt);

	/* An explicit option wins over the environment. */
	struct lm_options o;
	lm_options_init(&o);
	o.handler_threads = 2;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), 0);
	ck_assert_uint_eq(lmt_stats(rt).handler_threads, 2);
	lm_runtime_close(rt);

	/* LM_OPT_NO_ENV ignores it entirely. */
	setenv("LAZYMEM_MODE", "signal", 1);
	lm_options_init(&o);
	o.flags = LM_OPT_NO_ENV;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), 0);
	ck_assert_int_eq(lmt_stats(rt).mode, LM_MODE_THREAD);
	lm_runtime_close(rt);
	clear_env();
}
END_TEST

/*
 * The least budget lazymemd's policy may set: from the options, else
 * LAZYMEM_BUDGET_MIN, published in the statistics; budget_changes counts
 * each new budget, not each call.
 */
START_TEST(budget_min_and_budget_changes)
{
	clear_env();
	struct lm_options o;
	lm_options_init(&o);
	o.budget_min = 32 << 20;
	struct lm_runtime *rt;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), 0);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.budget_min_bytes, 32 << 20);
	ck_assert_uint_eq(st.budget_changes, 0);
	ck_assert_int_eq(lm_runtime_set_budget(rt, 8 << 20), 0);
	ck_assert_int_eq(lm_runtime_set_budget(rt, 8 << 20), 0);
	ck_assert_int_eq(lm_runtime_set_budget(rt, 0), 0);
	ck_assert_uint_eq(lmt_stats(rt).budget_changes, 2);
	lm_runtime_close(rt);
	setenv("LAZYMEM_BUDGET_MIN", "24M", 1);
	ck_assert_int_eq(lm_runtime_open(NULL, &rt), 0);
	ck_assert_uint_eq(lmt_stats(rt).budget_min_bytes, 24 << 20);
	lm_runtime_close(rt);
	setenv("LAZYMEM_BUDGET_MIN", "lots", 1);
	ck_assert_int_eq(lm_runtime_open(NULL, &rt), -EINVAL);
	clear_env();
}
END_TEST

/* LAZYMEM_DEBUG's lines name the process and the level, as lazymemd's do. */
START_TEST(debug_log_names_the_process)
{
	char path[] = "/tmp/lazymem-log-XXXXXX";
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		dup2(fd, 2);
		clear_env();
		setenv("LAZYMEM_DEBUG", "1", 1);
		struct lm_runtime *rt;
		_exit(lm_runtime_open(NULL, &rt) == 0 && lm_runtime_close(rt) == 0 ? 0 : 1);
	}
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	char buf[4096] = "", want[48];
	ck_assert_int_gt(pread(fd, buf, sizeof(buf) - 1, 0), 0);
	close(fd);
	unlink(path);
	snprintf(want, sizeof(want), "lazymem[%d]: ", (int)pid);
	ck_assert_msg(!strncmp(buf, want, strlen(want)), "%s", buf);
	ck_assert_msg(strstr(buf, ": debug: ") || strstr(buf, ": info: "), "%s", buf);
}
END_TEST

START_TEST(environment_typos_are_errors)
{
	static const char *const bad[][2] = {
		{ "LAZYMEM_MODE", "fast" },	 { "LAZYMEM_THREADS", "0" },
		{ "LAZYMEM_THREADS", "2x" },	 { "LAZYMEM_READAHEAD", "-1" },
		{ "LAZYMEM_IO", "aio" },	 { "LAZYMEM_UFFD", "magic" },
		{ "LAZYMEM_PIN", "2" },		 { "LAZYMEM_SPIN", "yes" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		clear_env();
		setenv(bad[i][0], bad[i][1], 1);
		struct lm_runtime *rt;
		int rc = lm_runtime_open(NULL, &rt);
		ck_assert_msg(rc == -EINVAL, "%s=%s gave %d", bad[i][0], bad[i][1], rc);
	}
	clear_env();
}
END_TEST

/* Whether this machine has 2-4 CPUs, all allowed: where handlers are pinned and the tests below mean something. */
static bool pinning_machine(void)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	cpu_set_t set;
	ck_assert_int_eq(sched_getaffinity(0, sizeof(set), &set), 0);
	if (ncpu < 2 || ncpu > 4 || CPU_COUNT(&set) != ncpu) {
		printf("skipped: pinned handlers are checked on 2-4 CPUs, all allowed\n");
		return false;
	}
	return true;
}

/* Threads of this process whose affinity is one CPU (Cpus_allowed_list without ',' or '-'). */
static int pinned_threads(void)
{
	DIR *d = opendir("/proc/self/task");
	ck_assert_ptr_nonnull(d);
	int n = 0;
	for (struct dirent *t; (t = readdir(d));) {
		if (t->d_name[0] == '.')
			continue;
		char path[300], line[256];
		snprintf(path, sizeof(path), "/proc/self/task/%s/status", t->d_name);
		FILE *f = fopen(path, "re");
		while (f && fgets(line, sizeof(line), f))
			if (!strncmp(line, "Cpus_allowed_list:", 18))
				n += !strpbrk(line + 18, ",-");
		if (f)
			fclose(f);
	}
	closedir(d);
	return n;
}

/*
 * Thread mode pins one handler per CPU the process may run on (2-4 CPUs
 * here): each on its own CPU.  LM_OPT_NO_PIN and LAZYMEM_PIN=0 leave
 * them free, as does signal mode.
 */
START_TEST(handlers_pinned_one_per_cpu)
{
	clear_env();
	if (!pinning_machine())
		return;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int before = pinned_threads();
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	struct lm_runtime *rt = lmt_open_opts(&o);
	ck_assert_uint_eq(lmt_stats(rt).handler_threads, (uint64_t)ncpu);
	ck_assert_int_eq(pinned_threads() - before, (int)ncpu);
	lm_runtime_close(rt);
	o.flags |= LM_OPT_NO_PIN;
	rt = lmt_open_opts(&o);
	ck_assert_int_eq(pinned_threads() - before, 0);
	lm_runtime_close(rt);
	setenv("LAZYMEM_PIN", "0", 1);
	o = lmt_options(LM_MODE_THREAD);
	o.flags &= ~LM_OPT_NO_ENV;
	rt = lmt_open_opts(&o);
	ck_assert_int_eq(pinned_threads() - before, 0);
	lm_runtime_close(rt);
	clear_env();
}
END_TEST

static void pin_self(int cpu)
{
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	ck_assert_int_eq(sched_setaffinity(0, sizeof(one), &one), 0);
}

static void unpin_self(void)
{
	cpu_set_t all;
	CPU_ZERO(&all);
	for (long c = 0; c < sysconf(_SC_NPROCESSORS_ONLN); c++)
		CPU_SET(c, &all);
	ck_assert_int_eq(sched_setaffinity(0, sizeof(all), &all), 0);
}

/* Random first writes to n pages of a fresh zero region, each checked after. */
static void random_first_writes(struct lm_runtime *rt, size_t n)
{
	const size_t PS = (size_t)sysconf(_SC_PAGESIZE);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, n * PS, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	/* A stride prime to n visits every page once, out of order. */
	for (size_t i = 0, pg = 0; i < n; i++, pg = (pg + 769) % n)
		p[pg * PS + pg % PS] = (unsigned char)(pg | 1);
	for (size_t pg = 0; pg < n; pg++)
		ck_assert_uint_eq(p[pg * PS + pg % PS], (unsigned char)(pg | 1));
	ck_assert_int_eq(lm_region_destroy(r), 0);
}

static double process_cpu_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * A pinned handler woken for another CPU's fault lingers while faults
 * keep coming (handler_linger_ns counts it) and stops when they stop:
 * an idle runtime burns no CPU.  LM_OPT_NO_SPIN and LAZYMEM_SPIN=0
 * turn lingering off.
 */
START_TEST(handlers_linger_only_while_faults_come)
{
	clear_env();
	if (!pinning_machine())
		return;
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	struct lm_runtime *rt = lmt_open_opts(&o);
	random_first_writes(rt, 4096);
	/* Lingered at least once (for how long depends on how busy the machine is). */
	ck_assert_uint_gt(lmt_stats(rt).handler_lingers, 0);
	/* Idle now: half a second with (almost) nothing on the CPU. */
	usleep(100 * 1000);
	double c0 = process_cpu_seconds();
	struct lm_stats s0 = lmt_stats(rt);
	usleep(500 * 1000);
	ck_assert_msg(process_cpu_seconds() - c0 < 0.05, "an idle runtime used %.3f s of CPU",
		      process_cpu_seconds() - c0);
	ck_assert_uint_eq(lmt_stats(rt).handler_linger_ns, s0.handler_linger_ns);
	ck_assert_uint_eq(lmt_stats(rt).handler_lingers, s0.handler_lingers);
	lm_runtime_close(rt);

	o.flags |= LM_OPT_NO_SPIN;
	rt = lmt_open_opts(&o);
	random_first_writes(rt, 4096);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.handler_lingers, 0);
	ck_assert_uint_eq(st.handler_linger_ns, 0);
	ck_assert_uint_eq(st.handler_dormant, 0);
	lm_runtime_close(rt);

	setenv("LAZYMEM_SPIN", "0", 1);
	o = lmt_options(LM_MODE_THREAD);
	o.flags &= ~LM_OPT_NO_ENV;
	rt = lmt_open_opts(&o);
	random_first_writes(rt, 1024);
	ck_assert_uint_eq(lmt_stats(rt).handler_lingers, 0);
	lm_runtime_close(rt);
	clear_env();
}
END_TEST

static atomic_bool spinning;

static void *spin_main(void *arg)
{
	pin_self((int)(intptr_t)arg);
	while (atomic_load_explicit(&spinning, memory_order_relaxed))
		;
	return NULL;
}

/*
 * With another task keeping a CPU busy, that CPU's handler leaves the
 * userfaultfd's waiters for a while (handler_dormant) instead of taking
 * the task's time; faults are all answered all the same, and a fault
 * after the busy task stopped is too.
 */
START_TEST(handler_goes_dormant_on_a_busy_cpu)
{
	clear_env();
	if (!pinning_machine())
		return;
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	struct lm_runtime *rt = lmt_open_opts(&o);
	pin_self(0);
	atomic_store(&spinning, true);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, spin_main, (void *)(intptr_t)1), 0);
	random_first_writes(rt, 8192);
	atomic_store(&spinning, false);
	pthread_join(th, NULL);
	ck_assert_uint_ge(lmt_stats(rt).handler_dormant, 1);
	/* Pinned to the CPU whose handler may be dormant: answered by the other one, or by it later. */
	pin_self(1);
	random_first_writes(rt, 256);
	unpin_self();
	lm_runtime_close(rt);
}
END_TEST

/* Each way of getting a userfaultfd works as root and is reported. */
START_TEST(uffd_origins)
{
	clear_env();
	static const int origins[] = { LM_UFFD_DEV, LM_UFFD_SYSCALL, LM_UFFD_SYSCALL_USER };
	int o_i = origins[_i];
	struct lm_options o;
	lm_options_init(&o);
	o.flags = LM_OPT_NO_ENV;
	o.uffd_source = o_i;
	struct lm_runtime *rt;
	int rc = lm_runtime_open(&o, &rt);
	ck_assert_msg(rc == 0, "origin %d: %s", o_i, lm_strerror(rc));
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.uffd_origin, (uint64_t)o_i);
	if (o_i == LM_UFFD_SYSCALL_USER)
		ck_assert(st.uffd_limits & LM_LIMIT_FORCED);
	else
		ck_assert_uint_eq(st.uffd_limits, 0);
	/* Whatever the origin, user-mode faults are served. */
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 1 << 16, 0, &r), 0);
	volatile char *p = lm_region_addr(r);
	p[100] = 5;
	ck_assert_int_eq(p[100], 5);
	ck_assert_int_eq(p[40000], 0);
	lm_runtime_close(rt);
}
END_TEST

/*
 * An unprivileged user with vm.unprivileged_userfaultfd = 0 and no
 * /dev/userfaultfd access gets a user-mode-only userfaultfd, and the
 * stats say why kernel faults are unavailable.
 */
START_TEST(unprivileged_gets_user_only_with_reasons)
{
	clear_env();
	FILE *f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "r");
	int sysctl = 1;
	if (f) {
		if (fscanf(f, "%d", &sysctl) != 1)
			sysctl = 1;
		fclose(f);
	}
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct passwd *pw = getpwnam("nobody");
		uid_t uid = pw ? pw->pw_uid : 65534;
		if (setgid(uid) != 0 || setuid(uid) != 0)
			_exit(10);
		struct lm_runtime *rt;
		int rc = lm_runtime_open(NULL, &rt);
		if (rc < 0)
			_exit(11);
		struct lm_stats st = lmt_stats(rt);
		if (sysctl == 0) {
			if (st.uffd_origin != LM_UFFD_SYSCALL_USER)
				_exit(12);
			if (!(st.uffd_limits & LM_LIMIT_NO_PTRACE) ||
			    !(st.uffd_limits & LM_LIMIT_SYSCTL))
				_exit(13);
		}
		struct lm_region *r;
		if (lm_region_create_zero(rt, 1 << 16, 0, &r) < 0)
			_exit(15);
		volatile char *p = lm_region_addr(r);
		p[0] = 3;
		if (p[0] != 3 || p[5000] != 0)
			_exit(16);
		/*
		 * The runtime follows fork() itself: a child (here one without
		 * CAP_SYS_PTRACE, on a user-mode-only userfaultfd) sees the
		 * source's contents in pages it did not inherit.
		 */
		static unsigned char src[64 * 4096];
		lmt_fill_pattern(src, 0, sizeof(src));
		struct lm_region *m;
		if (lm_region_create_memory(rt, src, sizeof(src), 0, &m) < 0)
			_exit(17);
		unsigned char *q = lm_region_addr(m);
		lm_region_advise(m, 0, sizeof(src), LM_ADV_RANDOM);
		q[0] = 0xfe;
		pid_t kid = fork();
		if (kid == 0) {
			if (q[0] != 0xfe || lmt_check_pattern(q + 1, 1, sizeof(src) - 1) != -1)
				_exit(1);
			q[4096] = 1;	/* private to the child */
			_exit(0);
		}
		int ks;
		if (kid < 0 || waitpid(kid, &ks, 0) != kid || !WIFEXITED(ks) || WEXITSTATUS(ks))
			_exit(18);
		if (lmt_check_pattern(q + 1, 1, sizeof(src) - 1) != -1)
			_exit(19);
		lm_runtime_close(rt);
		_exit(0);
	}
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d",
		      WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
}
END_TEST

START_TEST(stats_get_prefix_and_errors)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	struct lm_stats st;
	ck_assert_int_eq(lm_stats_get(NULL, &st), -EINVAL);
	ck_assert_int_eq(lm_stats_get(rt, NULL), -EINVAL);
	st.size = 8;
	ck_assert_int_eq(lm_stats_get(rt, &st), -EINVAL);
	/* An older, smaller struct gets exactly its prefix. */
	unsigned char buf[sizeof(struct lm_stats) + 64];
	memset(buf, 0xaa, sizeof(buf));
	struct lm_stats *p = (struct lm_stats *)buf;
	size_t small = offsetof(struct lm_stats, faults_thread);
	p->size = (uint32_t)small;
	ck_assert_int_eq(lm_stats_get(rt, p), 0);
	ck_assert_uint_eq(p->size, small);
	for (size_t i = small; i < sizeof(buf); i++)
		ck_assert_msg(buf[i] == 0xaa, "byte %zu past the caller's struct written", i);
	lm_runtime_close(rt);
}
END_TEST

START_TEST(stats_format_text_and_json)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 1 << 20, 0, &r), 0);
	volatile char *p = lm_region_addr(r);
	for (int i = 0; i < (1 << 20); i += 4096)
		p[i] = 1;
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.fills_zero, 0);
	int need = lm_stats_format(&st, LM_FORMAT_TEXT, NULL, 0);
	ck_assert_int_gt(need, 100);
	char *txt = malloc((size_t)need + 1);
	ck_assert_int_eq(lm_stats_format(&st, LM_FORMAT_TEXT, txt, (size_t)need + 1), need);
	ck_assert_uint_eq(strlen(txt), (size_t)need);
	char line[128];
	snprintf(line, sizeof(line), "fills_zero         %llu\n",
		 (unsigned long long)st.fills_zero);
	ck_assert_msg(strstr(txt, line), "text lacks '%s'", line);
	ck_assert_ptr_nonnull(strstr(txt, "fill_latency_lt_"));
	/* Enums say their names beside their numbers. */
	ck_assert_ptr_nonnull(strstr(txt, "mode               1 (thread)\n"));
	ck_assert_ptr_nonnull(strstr(txt, "uffd_origin        "));
	ck_assert_ptr_null(strstr(txt, "(unknown)"));
	free(txt);
	/* No budget: free has nothing bounding it, not 0 free; no swap file yet. */
	struct lm_free f;
	ck_assert_int_eq(lm_stats_free(&st, &f), 0);
	ck_assert_uint_eq(f.total, LM_UNLIMITED);
	ck_assert_uint_eq(f.free, LM_UNLIMITED);
	ck_assert_uint_eq(f.available, LM_UNLIMITED);
	ck_assert_uint_eq(f.used + f.buff_cache, st.resident_pages * 4096);
	ck_assert_uint_eq(f.swap_total, 0);
	char fr[512];
	ck_assert_int_gt(lm_stats_format(&st, LM_FORMAT_FREE, fr, sizeof(fr)), 0);
	ck_assert_ptr_nonnull(strstr(fr, "unlimited"));

	char json[8192];
	need = lm_stats_format(&st, LM_FORMAT_JSON, json, sizeof(json));
	ck_assert_int_gt(need, 0);
	ck_assert_int_lt(need, (int)sizeof(json));
	ck_assert_int_eq(json[0], '{');
	ck_assert_int_eq(json[need - 1], '}');
	snprintf(line, sizeof(line), "\"fills_zero\":%llu,", (unsigned long long)st.fills_zero);
	ck_assert_ptr_nonnull(strstr(json, line));
	ck_assert_ptr_nonnull(strstr(json, "\"fill_latency\":["));
	/* Truncation: always terminated, returns the full length. */
	char tiny[10];
	ck_assert_int_eq(lm_stats_format(&st, LM_FORMAT_JSON, tiny, sizeof(tiny)), need);
	ck_assert_uint_eq(strlen(tiny), sizeof(tiny) - 1);
	ck_assert_int_eq(lm_stats_format(&st, 99, json, sizeof(json)), -EINVAL);
	/* An older caller's smaller struct formats as far as it goes. */
	struct lm_stats old = st;
	old.size = (uint32_t)offsetof(struct lm_stats, readahead_pages);
	ck_assert_int_gt(lm_stats_format(&old, LM_FORMAT_TEXT, json, sizeof(json)), 0);
	ck_assert_ptr_nonnull(strstr(json, "fills_zero"));
	ck_assert_ptr_null(strstr(json, "readahead_pages"));
	ck_assert_int_eq(lm_stats_format(NULL, LM_FORMAT_TEXT, json, sizeof(json)), -EINVAL);
	lm_runtime_close(rt);
}
END_TEST

static int log_calls;
static void count_log(int level, const char *msg, void *arg)
{
	(void)level;
	ck_assert_ptr_nonnull(msg);
	ck_assert_ptr_eq(arg, &log_calls);
	log_calls++;
}

START_TEST(log_callback_is_used)
{
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.log = count_log;
	o.log_arg = &log_calls;
	struct lm_runtime *rt = lmt_open_opts(&o);
	ck_assert_int_gt(log_calls, 0);
	lm_runtime_close(rt);
}
END_TEST

START_TEST(strerror_and_version)
{
	ck_assert_str_eq(lm_strerror(0), "Success");
	ck_assert_ptr_nonnull(strstr(lm_strerror(-EINVAL), "Invalid"));
	ck_assert_ptr_nonnull(lm_strerror(-EIO));
	ck_assert_str_ne(lm_strerror(-EIO), "Unknown error");
	ck_assert_str_eq(lm_strerror(123456), "Unknown error");
	ck_assert_str_eq(lm_strerror(-99999), "Unknown error");
	char v[32];
	snprintf(v, sizeof(v), "%d.%d.%d", LM_VERSION_MAJOR, LM_VERSION_MINOR, LM_VERSION_PATCH);
	ck_assert_str_eq(lm_version(), v);
}
END_TEST

/* Several runtimes, of both modes, live side by side. */
START_TEST(several_runtimes)
{
	struct lm_runtime *a = lmt_open(LM_MODE_THREAD), *b = lmt_open(LM_MODE_SIGNAL),
			  *c = lmt_open(LM_MODE_SIGNAL);
	struct lm_region *ra, *rb, *rc;
	static unsigned char src[3 * 4096];
	lmt_fill_pattern(src, 0, sizeof(src));
	ck_assert_int_eq(lm_region_create_memory(a, src, sizeof(src), 0, &ra), 0);
	ck_assert_int_eq(lm_region_create_memory(b, src, sizeof(src), 0, &rb), 0);
	ck_assert_int_eq(lm_region_create_memory(c, src, sizeof(src), 0, &rc), 0);
	ck_assert_int_eq(lmt_check_pattern(lm_region_addr(rc), 0, sizeof(src)), -1);
	lm_runtime_close(c);
	ck_assert_int_eq(lmt_check_pattern(lm_region_addr(ra), 0, sizeof(src)), -1);
	ck_assert_int_eq(lmt_check_pattern(lm_region_addr(rb), 0, sizeof(src)), -1);
	ck_assert_uint_eq(lmt_stats(b).faults_signal, lmt_stats(b).faults_missing);
	ck_assert_uint_gt(lmt_stats(b).faults_signal, 0);
	ck_assert_uint_eq(lmt_stats(a).faults_signal, 0);
	lm_runtime_close(a);
	lm_runtime_close(b);
}
END_TEST

int main(void)
{
	lmt_require_uffd();
	Suite *s = suite_create("runtime");
	TCase *tc = tcase_create("options");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, options_defaults);
	tcase_add_test(tc, open_defaults_and_close);
	tcase_add_test(tc, open_rejects_bad_options);
	tcase_add_test(tc, options_prefix_of_older_version);
	tcase_add_test(tc, environment_overrides_defaults);
	tcase_add_test(tc, environment_typos_are_errors);
	tcase_add_test(tc, budget_min_and_budget_changes);
	tcase_add_test(tc, debug_log_names_the_process);
	tcase_add_test(tc, handlers_pinned_one_per_cpu);
	tcase_add_test(tc, handlers_linger_only_while_faults_come);
	tcase_add_test(tc, handler_goes_dormant_on_a_busy_cpu);
	tcase_add_test(tc, log_callback_is_used);
	suite_add_tcase(s, tc);
	tc = tcase_create("uffd");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, uffd_origins, 0, 3);
	tcase_add_test(tc, unprivileged_gets_user_only_with_reasons);
	tcase_add_test(tc, several_runtimes);
	suite_add_tcase(s, tc);
	tc = tcase_create("stats");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, stats_get_prefix_and_errors);
	tcase_add_test(tc, stats_format_text_and_json);
	tcase_add_test(tc, strerror_and_version);
	suite_add_tcase(s, tc);
	return lmt_run(s);
}
