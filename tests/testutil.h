/* SPDX-License-Identifier: MIT */
/* Helpers shared by the Check test programs: skipping, waiting, SIGBUS capture, files, runners. */
#ifndef LM_TESTUTIL_H
#define LM_TESTUTIL_H

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lazymem.h"
#include "procutil.h"

#define LMT_SKIP 77

/* xorshift64: the tests' random numbers, repeatable from a non-zero seed. */
static inline uint64_t lmt_rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/*
 * Versioned pages: word w of page p at version v is lmt_word(p, v, w), so
 * a page read back tells whether it is exactly the version last written.
 */
static inline uint64_t lmt_word(size_t p, uint64_t v, size_t w)
{
	return (p * 0x9e3779b97f4a7c15ull) ^ (v << 20) ^ (w * 0x2545f4914f6cdd1dull);
}

static inline void lmt_stamp(unsigned char *base, size_t p, uint64_t v)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	uint64_t *q = (uint64_t *)(base + p * ps);
	for (size_t w = 0; w < ps / 8; w++)
		q[w] = lmt_word(p, v, w);
}

/* The first word of page p that is not version v, or -1. */
static inline long lmt_check_stamp(const unsigned char *base, size_t p, uint64_t v)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	const uint64_t *q = (const uint64_t *)(base + p * ps);
	for (size_t w = 0; w < ps / 8; w++)
		if (q[w] != lmt_word(p, v, w))
			return (long)w;
	return -1;
}

/* Seconds on the monotonic clock. */
static inline double lmt_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * How much longer than usual things may take: CK_TIMEOUT_MULTIPLIER,
 * which stretches Check's timeouts and run-test.sh's (sanitizer builds
 * set it), stretches the tests' own deadlines too.
 */
static inline double lmt_time_scale(void)
{
	const char *m = getenv("CK_TIMEOUT_MULTIPLIER");
	char *end;
	double v = m ? strtod(m, &end) : 0;
	return m && end != m && v > 0 ? v : 1;
}

/*
 * Waits for what a test is about to assert: evaluates cond every
 * millisecond until it holds or secs seconds (times lmt_time_scale)
 * have passed, and yields its last value.  A fixed sleep before the
 * assertion would fail on a slow machine and waste time on a fast one.
 * Only for something that must happen: that something does not happen
 * can only be watched for a bounded time, which the test says.
 */
#define LMT_WAIT_UNTIL(cond, secs)                                                              \
	({                                                                                      \
		double lmt_end_ = lmt_now() + (double)(secs) * lmt_time_scale();                \
		bool lmt_ok_;                                                                   \
		while (!(lmt_ok_ = (cond)) && lmt_now() < lmt_end_)                             \
			usleep(1000);                                                           \
		lmt_ok_;                                                                        \
	})

/* Exit 77 (skip) with a reason when no userfaultfd can be had at all. */
static inline void lmt_require_uffd(void)
{
	struct lm_runtime *rt;
	int rc = lm_runtime_open(NULL, &rt);
	if (rc < 0) {
		printf("SKIP: no userfaultfd here: %s\n", lm_strerror(rc));
		exit(LMT_SKIP);
	}
	lm_runtime_close(rt);
}

/*
 * Exit 77 (skip) with a reason unless what is named can be mounted here:
 * do_mount mounts it on the empty directory it is given and returns 0 or
 * -errno.  For main(), before Check runs: a test that exits 77 itself is
 * reported as an error, not a skip; once this passed, a test that cannot
 * mount fails.  The try runs in a child, so that what do_mount opened (a
 * /dev/fuse descriptor) goes with it, and is unmounted at once.
 */
static inline void lmt_require_mount(const char *what, int (*do_mount)(const char *dir))
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		printf("FAIL: fork: %s\n", strerror(errno));
		exit(EXIT_FAILURE);
	}
	if (pid == 0) {
		char dir[] = "/tmp/lazymem-mount-XXXXXX";
		int rc = mkdtemp(dir) ? do_mount(dir) : -errno;
		if (rc == 0)
			umount2(dir, MNT_DETACH);
		rmdir(dir);
		_exit(-rc);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st)) {
		printf("FAIL: the try to mount %s died (status %#x)\n", what, st);
		exit(EXIT_FAILURE);
	}
	if (WEXITSTATUS(st) == 0)
		return;
	printf("SKIP: cannot mount %s: %s%s\n", what, strerror(WEXITSTATUS(st)),
	       geteuid() ? " (run as root)" : "");
	exit(LMT_SKIP);
}

/* A do_mount for lmt_require_mount, and the tests: a 64 KiB tmpfs, to fill up. */
static inline int lmt_mount_small_tmpfs(const char *dir)
{
	return mount("tmpfs", dir, "tmpfs", 0, "size=64k") < 0 ? -errno : 0;
}

/* Options for the given mode that ignore LAZYMEM_* variables: tests tweak them, then open. */
static inline struct lm_options lmt_options(int mode)
{
	struct lm_options o;
	lm_options_init(&o);
	o.flags = LM_OPT_NO_ENV;
	o.mode = mode;
	return o;
}

static inline struct lm_runtime *lmt_open_opts(const struct lm_options *o)
{
	struct lm_runtime *rt = NULL;
	int rc = lm_runtime_open(o, &rt);
	ck_assert_msg(rc == 0, "lm_runtime_open(mode %d): %s", o->mode, lm_strerror(rc));
	return rt;
}

/* Opens a runtime in the given mode, ignoring LAZYMEM_* variables. */
static inline struct lm_runtime *lmt_open(int mode)
{
	struct lm_options o = lmt_options(mode);
	return lmt_open_opts(&o);
}


static inline struct lm_stats lmt_stats(struct lm_runtime *rt)
{
	struct lm_stats st;
	memset(&st, 0, sizeof(st));
	st.size = sizeof(st);
	ck_assert_int_eq(lm_stats_get(rt, &st), 0);
	return st;
}

/*
 * SIGBUS capture.  Install before lm_runtime_open so that signal mode
 * chains to it.  lmt_touch returns 1 when the access raised SIGBUS.
 */
static __thread sigjmp_buf lmt_jmp;
static __thread volatile int lmt_armed;
static volatile sig_atomic_t lmt_sigbus_count;

static inline void lmt_on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	lmt_sigbus_count++;
	if (lmt_armed) {
		lmt_armed = 0;
		siglongjmp(lmt_jmp, 1);
	}
	abort();
}

static inline void lmt_install_sigbus(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = lmt_on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
}

static inline int lmt_touch(volatile char *p, int write)
{
	if (sigsetjmp(lmt_jmp, 1)) {
		return 1;
	}
	lmt_armed = 1;
	if (write)
		*p = 1;
	else
		(void)*p;
	lmt_armed = 0;
	return 0;
}

/* The byte pattern test files and buffers use: depends on the offset. */
static inline unsigned char lmt_pattern(size_t off)
{
	return (unsigned char)((off * 2654435761u) >> 13) ^ (unsigned char)(off >> 12);
}

static inline void lmt_fill_pattern(unsigned char *buf, size_t off, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = lmt_pattern(off + i);
}

/* A memory region over a new buffer of len pattern bytes (*buf: free it after). */
static inline struct lm_region *lmt_memory_region(struct lm_runtime *rt, size_t len,
						  unsigned char **buf)
{
	*buf = malloc(len);
	ck_assert_ptr_nonnull(*buf);
	lmt_fill_pattern(*buf, 0, len);
	struct lm_region *r;
	int rc = lm_region_create_memory(rt, *buf, len, 0, &r);
	ck_assert_msg(rc == 0, "lm_region_create_memory: %s", lm_strerror(rc));
	return r;
}

/* Creates an unlinked temporary file of len pattern bytes; returns an O_RDWR fd. */
static inline int lmt_pattern_file(size_t len)
{
	const char *dir = getenv("TMPDIR");
	char buf[4096];
	char tmpl[4096];
	snprintf(tmpl, sizeof(tmpl), "%s/lazymem-test-XXXXXX", dir && *dir ? dir : "/tmp");
	int fd = mkstemp(tmpl);
	ck_assert_msg(fd >= 0, "mkstemp: %s", strerror(errno));
	unlink(tmpl);
	for (size_t off = 0; off < len;) {
		size_t n = len - off < sizeof(buf) ? len - off : sizeof(buf);
		lmt_fill_pattern((unsigned char *)buf, off, n);
		ck_assert_int_eq(pwrite(fd, buf, n, (off_t)off), (ssize_t)n);
		off += n;
	}
	return fd;
}

/* First offset in [0, len) where p differs from the pattern at base, or -1. */
static inline long lmt_check_pattern(const unsigned char *p, size_t base, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != lmt_pattern(base + i))
			return (long)i;
	return -1;
}

/*
 * A scratch directory per test (checked fixtures run in the test's own
 * process): lmt_dir_setup makes it, lmt_dir_teardown removes it, with
 * whatever is mounted on it, lmt_path names a file in it.
 */
static char lmt_dir[64];

static inline void lmt_dir_setup(void)
{
	snprintf(lmt_dir, sizeof(lmt_dir), "/tmp/lazymem-test-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(lmt_dir));
}

static inline void lmt_dir_teardown(void)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "for m in $(awk '$2 ~ \"^%s/\" {print $2}' /proc/mounts); "
		 "do umount -q \"$m\"; done; rm -rf '%s'", lmt_dir, lmt_dir);
	if (system(cmd) != 0) {
		/* Leftovers in /tmp only. */
	}
}

static inline const char *lmt_path(const char *name)
{
	static __thread char p[sizeof(lmt_dir) + 256];
	snprintf(p, sizeof(p), "%s/%s", lmt_dir, name);
	return p;
}

/*
 * Hugetlb pages.  lmt_require_hugetlb makes sure bytes of
 * them are there for the program: as root it grows the pool by as many
 * (and shrinks it back at exit), otherwise they must be free already;
 * or it exits 77 saying why not.  Test programs run in parallel: a lock
 * serializes the changes.
 */
static long lmt_hugetlb_added;
static pid_t lmt_hugetlb_pid;

static inline int lmt_hugetlb_lock(void)
{
	int fd = open("/tmp/lazymem-test-hugetlb.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd >= 0)
		while (lockf(fd, F_LOCK, 0) < 0 && errno == EINTR)
			;
	return fd;
}

static inline void lmt_hugetlb_restore(void)
{
	/* Check's test processes are forks of this one: only it gives the pages back. */
	if (!lmt_hugetlb_added || getpid() != lmt_hugetlb_pid)
		return;
	int fd = lmt_hugetlb_lock();
	long nr = lmt_sysctl_read(LMT_NR_HUGEPAGES);
	if (nr >= lmt_hugetlb_added)
		lmt_sysctl_write(LMT_NR_HUGEPAGES, nr - lmt_hugetlb_added);
	lmt_hugetlb_added = 0;
	if (fd >= 0)
		close(fd);
}

/* lmt_require_hugetlb without the exit: false, and why in why, when the pages cannot be had. */
static inline bool lmt_reserve_hugetlb(size_t bytes, char *why, size_t whylen)
{
	size_t hps = lmt_huge_page_size();
	if (!hps) {
		snprintf(why, whylen, "this kernel has no hugetlb pages");
		return false;
	}
	long need = (long)((bytes + hps - 1) / hps);
	int fd = lmt_hugetlb_lock();
	long nr = lmt_sysctl_read(LMT_NR_HUGEPAGES), free_now = lmt_meminfo("HugePages_Free");
	/*
	 * As root, always its own pages: what is free now may be another
	 * test program's, about to be used.
	 */
	if (geteuid() == 0 && nr >= 0) {
		free_now = 0;
		lmt_sysctl_write(LMT_NR_HUGEPAGES, nr + need);
		long got = lmt_sysctl_read(LMT_NR_HUGEPAGES) - nr;
		if (got > 0) {
			if (!lmt_hugetlb_added) {
				lmt_hugetlb_pid = getpid();
				atexit(lmt_hugetlb_restore);
			}
			lmt_hugetlb_added += got;
			free_now = got;
		}
	}
	if (fd >= 0)
		close(fd);
	if (free_now < need) {
		lmt_hugetlb_restore();
		snprintf(why, whylen, "%ld free hugetlb pages of %zu KiB needed, %ld free%s", need,
			 hps >> 10, free_now,
			 geteuid() ? " (run as root to reserve them)" : " (the kernel found no more)");
		return false;
	}
	return true;
}

static inline void lmt_require_hugetlb(size_t bytes)
{
	char why[256];
	if (!lmt_reserve_hugetlb(bytes, why, sizeof(why))) {
		printf("SKIP: %s\n", why);
		exit(LMT_SKIP);
	}
}

static inline int lmt_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif /* LM_TESTUTIL_H */
