/* SPDX-License-Identifier: MIT */
/* Tests of file sources: contents, io_uring and pread, end of file, truncation, read errors, bad input. */
#define _GNU_SOURCE
#include "testutil.h"

#include <linux/loop.h>
#include <sys/ioctl.h>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/fuse.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mount.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

#define MIB (1024u * 1024u)
#define ERRNO_MARK 12345

static size_t ps(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static int mode_of(int i)
{
	return i ? LM_MODE_SIGNAL : LM_MODE_THREAD;
}

/* A runtime in the given mode and io, ignoring LAZYMEM_* variables. */
static struct lm_runtime *open_io(int mode, int io)
{
	struct lm_options o;
	lm_options_init(&o);
	o.flags = LM_OPT_NO_ENV;
	o.mode = mode;
	o.io = io;
	struct lm_runtime *rt = NULL;
	int rc = lm_runtime_open(&o, &rt);
	ck_assert_msg(rc == 0, "lm_runtime_open(mode %d, io %d): %s", mode, io, lm_strerror(rc));
	return rt;
}

static struct lm_region *file_region(struct lm_runtime *rt, int fd, off_t off, size_t len)
{
	struct lm_region *r = NULL;
	int rc = lm_region_create_file(rt, fd, off, len, 0, &r);
	ck_assert_msg(rc == 0, "lm_region_create_file(off %lld, len %zu): %s", (long long)off, len,
		      lm_strerror(rc));
	ck_assert_ptr_nonnull(r);
	return r;
}

/* Asserts p[0, len) is the pattern at file offset base. */
static void assert_pattern(const unsigned char *p, size_t base, size_t len, const char *what)
{
	long bad = lmt_check_pattern(p, base, len);
	ck_assert_msg(bad < 0, "%s: byte at file offset %zu is %#x, the file has %#x", what,
		      base + (size_t)bad, p[bad], lmt_pattern(base + (size_t)bad));
}

static void assert_zero(const unsigned char *p, size_t len, const char *what)
{
	for (size_t i = 0; i < len; i++)
		ck_assert_msg(p[i] == 0, "%s: byte %zu past the end of the file is %#x, not 0", what,
			      i, p[i]);
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void shuffle(size_t *v, size_t n, uint64_t seed)
{
	uint64_t s = seed | 1;
	for (size_t i = 0; i < n; i++)
		v[i] = i;
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)(rng_next(&s) % i);
		size_t t = v[i - 1];
		v[i - 1] = v[j];
		v[j] = t;
	}
}

/* Asserts that pread of the whole file still gives the pattern. */
static void assert_file_pattern(int fd, size_t len)
{
	unsigned char *buf = malloc(len);
	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(pread(fd, buf, len, 0), (ssize_t)len);
	assert_pattern(buf, 0, len, "file");
	free(buf);
}

/*
 * Counters are taken before the install that releases the faulting
 * thread, so a thread that reads them right after its access (or its
 * SIGBUS) sees it counted: no waiting here.
 */
static uint64_t stat_at(struct lm_runtime *rt, size_t off)
{
	struct lm_stats st = lmt_stats(rt);
	uint64_t v;
	memcpy(&v, (const char *)&st + off, sizeof(v));
	return v;
}

#define STAT_EQ(rt, field, want)                                                                \
	do {                                                                                    \
		uint64_t w_ = (want), v_ = stat_at((rt), offsetof(struct lm_stats, field));    \
		ck_assert_msg(v_ == w_, "stat %s is %llu, want %llu", #field,                   \
			      (unsigned long long)v_, (unsigned long long)w_);                  \
	} while (0)

#define STAT_GE(rt, field, want)                                                                \
	do {                                                                                    \
		uint64_t w_ = (want), v_ = stat_at((rt), offsetof(struct lm_stats, field));    \
		ck_assert_msg(v_ >= w_, "stat %s is %llu, want at least %llu", #field,          \
			      (unsigned long long)v_, (unsigned long long)w_);                  \
	} while (0)

/* ---- contents ------------------------------------------------------- */

START_TEST(contents_sequential)
{
	const size_t PS = ps(), flen = 8 * MIB + 1234, rlen = (flen + PS - 1) / PS * PS;
	int mode = mode_of(_i);
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode);
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, flen);
	ck_assert_uint_eq(lm_region_length(r), rlen);
	const unsigned char *p = lm_region_addr(r);
	assert_pattern(p, 0, flen, "sequential scan");
	assert_zero(p + flen, rlen - flen, "tail of the last page");
	/* Still there on a second pass. */
	assert_pattern(p, 0, flen, "second pass");

	struct lm_stats st = lmt_stats(rt);
	STAT_EQ(rt, fills_file, rlen / PS);	/* each page read from the file once */
	STAT_GE(rt, readahead_pages, 1);
	ck_assert_uint_eq(st.io_errors, 0);
	STAT_EQ(rt, sigbus_raised, 0);
	ck_assert_uint_eq(st.fills_zero + st.fills_memory, 0);
	if (mode == LM_MODE_THREAD) {
		/* Default options read through io_uring. */
		ck_assert_uint_gt(st.io_uring_reads, 0);
		ck_assert_uint_eq(st.pread_reads, 0);
	} else {
		ck_assert_uint_gt(st.io_uring_reads + st.pread_reads, 0);
	}
	ck_assert_int_eq(lm_region_destroy(r), 0);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/*
 * A block device as the source: its st_size is 0, so the region must ask
 * the device for its size (BLKGETSIZE64), or it would read one page per
 * fault with no readahead.  A page past the device's end raises SIGBUS,
 * as past a file's.
 */
START_TEST(block_device_source)
{
	const size_t PS = ps(), dlen = 4 * MIB;
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(dlen);
	int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	ck_assert_msg(ctl >= 0, "/dev/loop-control: %s", strerror(errno));
	int n = ioctl(ctl, LOOP_CTL_GET_FREE);
	ck_assert_int_ge(n, 0);
	char dev[64];
	snprintf(dev, sizeof(dev), "/dev/loop%d", n);
	int lfd = open(dev, O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(lfd, 0);
	ck_assert_int_eq(ioctl(lfd, LOOP_SET_FD, fd), 0);
	int bfd = open(dev, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(bfd, 0);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_file(rt, bfd, 0, dlen + 2 * PS, 0, &r), 0);
	const unsigned char *p = lm_region_addr(r);
	assert_pattern(p, 0, dlen, "block device, sequential");
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_ge(st.readahead_pages, dlen / PS / 2);
	ck_assert_int_eq(lmt_touch((volatile char *)p + dlen + PS, 0), 1);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	close(bfd);
	ck_assert_int_eq(ioctl(lfd, LOOP_CLR_FD, 0), 0);
	close(lfd);
	close(ctl);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

START_TEST(contents_random_order)
{
	const size_t PS = ps(), flen = 8 * MIB + 1234, rlen = (flen + PS - 1) / PS * PS;
	const size_t np = rlen / PS;
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, flen);
	const unsigned char *p = lm_region_addr(r);
	size_t *order = malloc(np * sizeof(*order));
	ck_assert_ptr_nonnull(order);
	shuffle(order, np, 0x9e3779b97f4a7c15ull + (uint64_t)_i);
	for (size_t k = 0; k < np; k++) {
		size_t pg = order[k], off = pg * PS;
		size_t n = flen - off < PS ? flen - off : PS;
		assert_pattern(p + off, off, n, "random order");
		if (n < PS)
			assert_zero(p + off + n, PS - n, "tail of the last page");
	}
	assert_pattern(p, 0, flen, "full pass after random access");
	STAT_EQ(rt, fills_file, np);
	STAT_EQ(rt, sigbus_raised, 0);
	free(order);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/*
 * A random fault reads its aligned block of 32 pages, as mmap reads
 * around a fault: in thread mode the whole block (the pages below the
 * fault right after it), in signal mode from the fault to the block's
 * end.  The block's pages then read without a fault.  Random advice
 * reads the faulting page alone.
 */
START_TEST(random_fault_reads_its_block)
{
	const size_t PS = ps(), flen = 1 * MIB, np = flen / PS;
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, flen);
	const unsigned char *p = lm_region_addr(r);
	ck_assert_uint_ge(np, 128);
	assert_pattern(p + 37 * PS, 37 * PS, PS, "fault in block 1");
	uint64_t want = _i ? 64 - 37 : 32;
	/* The pages below are filled after the faulting thread goes on: wait for them. */
	for (int i = 0; i < 1000 && lmt_stats(rt).resident_pages < want; i++)
		usleep(1000);
	STAT_EQ(rt, resident_pages, want);
	STAT_EQ(rt, fills_file, want);
	uint64_t faults = lmt_stats(rt).faults_missing;
	assert_pattern(p + (64 - want) * PS, (64 - want) * PS, want * PS, "the rest of block 1");
	STAT_EQ(rt, faults_missing, faults);
	STAT_EQ(rt, resident_pages, want);
	/* Random advice: one page per fault. */
	ck_assert_int_eq(lm_region_advise(r, 96 * PS, 32 * PS, LM_ADV_RANDOM), 0);
	assert_pattern(p + 100 * PS, 100 * PS, PS, "random advice");
	usleep(20 * 1000);
	STAT_EQ(rt, resident_pages, want + 1);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

START_TEST(contents_with_offset)
{
	const size_t PS = ps(), flen = 8 * MIB + 1234;
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(flen);

	/* 3 pages in, shorter than the rest of the file, length not page aligned. */
	size_t len = 1000 * PS - 100;
	struct lm_region *r = file_region(rt, fd, (off_t)(3 * PS), len);
	ck_assert_uint_eq(lm_region_length(r), 1000 * PS);
	const unsigned char *p = lm_region_addr(r);
	/* The whole rounded-up last page holds file bytes, as with mmap. */
	assert_pattern(p, 3 * PS, 1000 * PS, "offset 3 pages");

	/* The file's last, partial page on its own. */
	struct lm_region *t = file_region(rt, fd, (off_t)(flen / PS * PS), PS);
	const unsigned char *q = lm_region_addr(t);
	assert_pattern(q, flen / PS * PS, flen % PS, "last page");
	assert_zero(q + flen % PS, PS - flen % PS, "last page tail");

	STAT_EQ(rt, fills_file, 1001);
	STAT_EQ(rt, sigbus_raised, 0);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_int_eq(lm_region_destroy(t), 0);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/* The size is checked when a page is filled: a file that grows makes more pages readable. */
START_TEST(file_grows_after_create)
{
	const size_t PS = ps(), flen = PS + PS / 2;
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, 4 * PS);
	unsigned char *p = lm_region_addr(r);
	assert_pattern(p, 0, flen, "before growth");
	assert_zero(p + flen, PS / 2, "tail before growth");
	/* Grow the file to 4 pages of pattern. */
	unsigned char *buf = malloc(4 * PS);
	ck_assert_ptr_nonnull(buf);
	lmt_fill_pattern(buf, 0, 4 * PS);
	ck_assert_int_eq(pwrite(fd, buf + flen, 4 * PS - flen, (off_t)flen), (ssize_t)(4 * PS - flen));
	free(buf);
	/* Pages 2 and 3 were never touched: they are filled from the grown file. */
	ck_assert_int_eq(lmt_touch((volatile char *)p + 2 * PS, 0), 0);
	ck_assert_int_eq(lmt_touch((volatile char *)p + 3 * PS, 0), 0);
	assert_pattern(p + 2 * PS, 2 * PS, 2 * PS, "pages filled after growth");
	/* Page 1 is a copy taken when it was filled. */
	assert_zero(p + flen, PS / 2, "tail of a page filled before growth");
	STAT_EQ(rt, sigbus_raised, 0);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/* ---- io: io_uring, pread, fallback ------------------------------------ */

START_TEST(pread_option)
{
	const size_t PS = ps(), flen = 2 * MIB + 77;
	int mode = mode_of(_i);
	lmt_install_sigbus();
	struct lm_runtime *rt = open_io(mode, LM_IO_PREAD);
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, flen);
	const unsigned char *p = lm_region_addr(r);
	assert_pattern(p, 0, flen, "pread");
	assert_zero(p + flen, PS - flen % PS, "pread tail");
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.pread_reads, 0);
	ck_assert_uint_eq(st.io_uring_reads, 0);
	STAT_EQ(rt, fills_file, (flen + PS - 1) / PS);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/* LAZYMEM_IO=pread selects pread when the caller left io at its default. */
START_TEST(pread_env)
{
	const size_t PS = ps(), flen = MIB + 5;
	ck_assert_int_eq(setenv("LAZYMEM_IO", "pread", 1), 0);
	lmt_install_sigbus();
	struct lm_runtime *rt = NULL;
	int rc;
	if (_i == 0) {
		rc = lm_runtime_open(NULL, &rt);
	} else {
		struct lm_options o;
		lm_options_init(&o);
		o.mode = LM_MODE_SIGNAL;
		rc = lm_runtime_open(&o, &rt);
	}
	ck_assert_msg(rc == 0, "lm_runtime_open: %s", lm_strerror(rc));
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, flen);
	const unsigned char *p = lm_region_addr(r);
	assert_pattern(p, 0, flen, "LAZYMEM_IO=pread");
	assert_zero(p + flen, PS - flen % PS, "tail");
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.pread_reads, 0);
	ck_assert_uint_eq(st.io_uring_reads, 0);
	close(fd);
	lm_runtime_close(rt);
	unsetenv("LAZYMEM_IO");
}
END_TEST

/* An io the caller set explicitly wins over LAZYMEM_IO. */
START_TEST(env_does_not_override_explicit_io)
{
	const size_t flen = MIB;
	ck_assert_int_eq(setenv("LAZYMEM_IO", "pread", 1), 0);
	struct lm_options o;
	lm_options_init(&o);
	o.mode = LM_MODE_THREAD;
	o.io = LM_IO_URING;
	struct lm_runtime *rt = NULL;
	int rc = lm_runtime_open(&o, &rt);
	ck_assert_msg(rc == 0, "lm_runtime_open: %s", lm_strerror(rc));
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, flen);
	assert_pattern(lm_region_addr(r), 0, flen, "explicit io_uring");
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.io_uring_reads, 0);
	ck_assert_uint_eq(st.pread_reads, 0);
	close(fd);
	lm_runtime_close(rt);
	unsetenv("LAZYMEM_IO");
}
END_TEST

/*
 * io_uring made unavailable with seccomp in a child process: io_uring_setup
 * (variant 0) or io_uring_register (variant 1) fails with EPERM, as under
 * kernel.io_uring_disabled or a container policy.
 */
static int block_syscall(long nr)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -errno;
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
		return -errno;
	return 0;
}

/* Checks in the child that the blocked call really fails. */
static const char *io_uring_blocked(int variant)
{
	struct io_uring_params par;
	memset(&par, 0, sizeof(par));
	long rfd = syscall(__NR_io_uring_setup, 8, &par);
	if (variant == 0)
		return rfd < 0 && errno == EPERM ? NULL : "io_uring_setup was not blocked";
	if (rfd < 0)
		return "io_uring_setup failed though only register is blocked";
	static char buf[4096];
	struct iovec iov = { buf, sizeof(buf) };
	long rc = syscall(__NR_io_uring_register, (int)rfd, IORING_REGISTER_BUFFERS, &iov, 1);
	close((int)rfd);
	return rc < 0 && errno == EPERM ? NULL : "io_uring_register was not blocked";
}

/* Runs fn in a child; fn returns NULL or a failure message, which the parent asserts on. */
static void run_in_child(const char *(*fn)(int, int), int arg, int fd)
{
	int pfd[2];
	ck_assert_int_eq(pipe(pfd), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(pfd[0]);
		const char *msg = fn(arg, fd);
		if (msg && write(pfd[1], msg, strlen(msg)) < 0)
			_exit(3);
		_exit(msg ? 1 : 0);
	}
	close(pfd[1]);
	char msg[512];
	ssize_t n, got = 0;
	while ((n = read(pfd[0], msg + got, sizeof(msg) - 1 - (size_t)got)) > 0)
		got += n;
	msg[got > 0 ? got : 0] = 0;
	close(pfd[0]);
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(got == 0, "%s", msg);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
}

static char child_msg[256];

static const char *fallback_child(int variant, int fd)
{
	const size_t PS = ps(), flen = MIB + 300;
	if (block_syscall(variant == 0 ? __NR_io_uring_setup : __NR_io_uring_register) < 0)
		return "cannot install the seccomp filter";
	const char *why = io_uring_blocked(variant);
	if (why)
		return why;
	struct lm_options o;
	lm_options_init(&o);
	o.flags = LM_OPT_NO_ENV;
	o.mode = LM_MODE_THREAD;	/* io left at LM_IO_DEFAULT */
	struct lm_runtime *rt;
	int rc = lm_runtime_open(&o, &rt);
	if (rc < 0) {
		snprintf(child_msg, sizeof(child_msg),
			 "lm_runtime_open with io_uring blocked: %s (want a pread fallback)",
			 lm_strerror(rc));
		return child_msg;
	}
	struct lm_region *r;
	rc = lm_region_create_file(rt, fd, 0, flen, 0, &r);
	if (rc < 0)
		return "lm_region_create_file failed";
	const unsigned char *p = lm_region_addr(r);
	long bad = lmt_check_pattern(p, 0, flen);
	if (bad >= 0) {
		snprintf(child_msg, sizeof(child_msg), "fallback: byte %ld differs", bad);
		return child_msg;
	}
	for (size_t i = flen; i < (flen + PS - 1) / PS * PS; i++)
		if (p[i])
			return "fallback: tail not zero";
	struct lm_stats st;
	memset(&st, 0, sizeof(st));
	st.size = sizeof(st);
	lm_stats_get(rt, &st);
	if (st.pread_reads == 0 || st.io_uring_reads != 0) {
		snprintf(child_msg, sizeof(child_msg),
			 "fallback: pread_reads %llu io_uring_reads %llu",
			 (unsigned long long)st.pread_reads, (unsigned long long)st.io_uring_reads);
		return child_msg;
	}
	lm_runtime_close(rt);
	return NULL;
}

START_TEST(pread_fallback_without_io_uring)
{
	int fd = lmt_pattern_file(MIB + 300);
	run_in_child(fallback_child, _i, fd);
	close(fd);
}
END_TEST

static const char *explicit_uring_child(int variant, int fd)
{
	(void)fd;
	(void)variant;
	if (block_syscall(__NR_io_uring_setup) < 0)
		return "cannot install the seccomp filter";
	const char *why = io_uring_blocked(0);
	if (why)
		return why;
	struct lm_options o;
	lm_options_init(&o);
	o.flags = LM_OPT_NO_ENV;
	o.mode = LM_MODE_THREAD;
	o.io = LM_IO_URING;
	struct lm_runtime *rt = NULL;
	int rc = lm_runtime_open(&o, &rt);
	if (rc == 0)
		lm_runtime_close(rt);
	if (rc != -EOPNOTSUPP) {
		snprintf(child_msg, sizeof(child_msg),
			 "lm_runtime_open(io = LM_IO_URING) with io_uring_setup refused returned %d (%s), "
			 "lm_runtime_open(3) documents -EOPNOTSUPP",
			 rc, rc ? lm_strerror(rc) : "success");
		return child_msg;
	}
	return NULL;
}

/* lm_runtime_open(3): EOPNOTSUPP when LM_IO_URING was requested and io_uring could not be set up. */
START_TEST(explicit_io_uring_unavailable)
{
	run_in_child(explicit_uring_child, 0, -1);
}
END_TEST

/* ---- private writes, descriptor ownership ----------------------------- */

START_TEST(writes_stay_private)
{
	const size_t PS = ps(), flen = 8 * PS;
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, flen);
	unsigned char *p = lm_region_addr(r);
	/* Page 0 read first, then written. */
	assert_pattern(p, 0, PS, "page 0");
	p[100] = (unsigned char)~lmt_pattern(100);
	/* Pages 3 and 6 written first: the write fault still fills them from the file. */
	p[3 * PS + 200] = (unsigned char)~lmt_pattern(3 * PS + 200);
	memset(p + 6 * PS, 0xa5, PS / 2);

	assert_file_pattern(fd, flen);

	ck_assert_uint_eq(p[100], (unsigned char)~lmt_pattern(100));
	ck_assert_uint_eq(p[3 * PS + 200], (unsigned char)~lmt_pattern(3 * PS + 200));
	assert_pattern(p, 0, 100, "page 0 before the write");
	assert_pattern(p + 101, 101, PS - 101, "page 0 after the write");
	assert_pattern(p + 3 * PS, 3 * PS, 200, "page 3 before the write");
	assert_pattern(p + 3 * PS + 201, 3 * PS + 201, PS - 201, "page 3 after the write");
	for (size_t i = 0; i < PS / 2; i++)
		ck_assert_uint_eq(p[6 * PS + i], 0xa5);
	assert_pattern(p + 6 * PS + PS / 2, 6 * PS + PS / 2, PS / 2, "page 6 second half");
	assert_pattern(p + PS, PS, 2 * PS, "pages 1-2");

	/* Another region over the same file sees the file, not the writes. */
	struct lm_region *r2 = file_region(rt, fd, 0, flen);
	assert_pattern(lm_region_addr(r2), 0, flen, "second region");
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_int_eq(lm_region_destroy(r2), 0);
	lm_runtime_close(rt);
	/* Nothing is written back on destroy or close either. */
	assert_file_pattern(fd, flen);
	close(fd);
}
END_TEST

/* The runtime reads through its own duplicate: the caller may close or reuse its fd. */
START_TEST(caller_closes_fd)
{
	const size_t flen = 2 * MIB + 999;
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, flen);
	char tmpl[] = "/tmp/lazymem-other-XXXXXX";
	int other = mkstemp(tmpl);
	ck_assert_int_ge(other, 0);
	unlink(tmpl);
	ck_assert_int_eq(ftruncate(other, (off_t)flen), 0);
	ck_assert_int_eq(close(fd), 0);
	/* Put a different file (all zeros) under the same descriptor number. */
	ck_assert_int_eq(dup2(other, fd), fd);
	close(other);
	assert_pattern(lm_region_addr(r), 0, flen, "after the caller closed its fd");
	STAT_EQ(rt, sigbus_raised, 0);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	lm_runtime_close(rt);
	/* The descriptor number the caller reused is still the caller's. */
	struct stat st;
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_int_eq(st.st_size, (off_t)flen);
	close(fd);
}
END_TEST

/* ---- end of file, truncation ------------------------------------------ */

START_TEST(pages_beyond_eof)
{
	const size_t PS = ps(), flen = PS + PS / 2;
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, 4 * PS);
	volatile char *v = lm_region_addr(r);
	const unsigned char *p = lm_region_addr(r);
	assert_pattern(p, 0, PS, "page 0");
	assert_pattern(p + PS, PS, PS / 2, "page 1, first half");
	assert_zero(p + flen, PS / 2, "page 1, second half");
	sig_atomic_t before = lmt_sigbus_count;
	ck_assert_msg(lmt_touch(v + 2 * PS, 0) == 1, "reading page 2 (beyond EOF) did not raise SIGBUS");
	ck_assert_msg(lmt_touch(v + 3 * PS + 5, 1) == 1, "writing page 3 (beyond EOF) did not raise SIGBUS");
	ck_assert_msg(lmt_touch(v + 2 * PS + 7, 1) == 1, "writing page 2 did not raise SIGBUS");
	ck_assert_msg(lmt_touch(v + 3 * PS, 0) == 1, "reading page 3 did not raise SIGBUS");
	ck_assert_msg(lmt_touch(v + 2 * PS, 0) == 1, "touching page 2 again did not raise SIGBUS");
	ck_assert_int_eq(lmt_sigbus_count - before, 5);
	/* Other pages keep working. */
	assert_pattern(p, 0, PS, "page 0 afterwards");
	assert_pattern(p + PS, PS, PS / 2, "page 1 afterwards");
	v[10] = 42;
	ck_assert_int_eq(v[10], 42);
	STAT_EQ(rt, sigbus_raised, 2);	/* two pages could not be filled */
	STAT_EQ(rt, fills_file, 2);

	/* A region that starts beyond the end of the file: every page raises SIGBUS. */
	struct lm_region *far = file_region(rt, fd, (off_t)(16 * PS), 2 * PS);
	volatile char *f = lm_region_addr(far);
	ck_assert_int_eq(lmt_touch(f, 0), 1);
	ck_assert_int_eq(lmt_touch(f + PS, 1), 1);
	STAT_EQ(rt, sigbus_raised, 4);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

START_TEST(truncated_under_region)
{
	const size_t PS = ps(), flen = 16 * PS, tlen = 2 * PS + PS / 2;
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, flen);
	/* One page per fault, so what was filled before the truncation is known. */
	ck_assert_int_eq(lm_region_advise(r, 0, flen, LM_ADV_RANDOM), 0);
	volatile char *v = lm_region_addr(r);
	const unsigned char *p = lm_region_addr(r);
	assert_pattern(p, 0, PS, "page 0");
	assert_pattern(p + 3 * PS, 3 * PS, PS, "page 3");
	ck_assert_int_eq(ftruncate(fd, (off_t)tlen), 0);

	ck_assert_msg(lmt_touch(v + 10 * PS, 0) == 1, "page 10 past the new end did not raise SIGBUS");
	ck_assert_msg(lmt_touch(v + 11 * PS, 1) == 1, "writing page 11 did not raise SIGBUS");
	ck_assert_msg(lmt_touch(v + 10 * PS, 0) == 1, "page 10 a second time did not raise SIGBUS");
	/* Pages still inside the file keep working, and the new last page has a zero tail. */
	assert_pattern(p + PS, PS, PS, "page 1 after truncation");
	assert_pattern(p + 2 * PS, 2 * PS, PS / 2, "page 2 after truncation");
	assert_zero(p + tlen, PS / 2, "page 2 tail after truncation");
	/* Filled before the truncation: a copy, still readable. */
	assert_pattern(p, 0, PS, "page 0 after truncation");
	assert_pattern(p + 3 * PS, 3 * PS, PS, "page 3 (filled before the truncation)");
	STAT_EQ(rt, sigbus_raised, 2);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/* lazymem(7): a poisoned page raises SIGBUS until dropped with LM_ADV_DONTNEED; then it is read again. */
START_TEST(poisoned_page_refills_after_dontneed)
{
	const size_t PS = ps(), flen = 8 * PS;
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(flen);
	struct lm_region *r = file_region(rt, fd, 0, flen);
	volatile char *v = lm_region_addr(r);
	ck_assert_int_eq(ftruncate(fd, (off_t)PS), 0);
	ck_assert_int_eq(lmt_touch(v + 5 * PS, 0), 1);
	/* The file grows back. */
	unsigned char *buf = malloc(flen);
	ck_assert_ptr_nonnull(buf);
	lmt_fill_pattern(buf, 0, flen);
	ck_assert_int_eq(pwrite(fd, buf, flen, 0), (ssize_t)flen);
	free(buf);
	ck_assert_msg(lmt_touch(v + 5 * PS, 0) == 1, "a poisoned page must raise SIGBUS until dropped");
	ck_assert_int_eq(lm_region_advise(r, 5 * PS, PS, LM_ADV_DONTNEED), 0);
	ck_assert_msg(lmt_touch(v + 5 * PS, 0) == 0, "page 5 still raises SIGBUS after dont-need");
	assert_pattern((const unsigned char *)v + 5 * PS, 5 * PS, PS, "page 5 refilled");
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

struct eof_arg {
	volatile char *base;
	size_t ps;
	pthread_barrier_t *bar;
	int sigbus_missed, sigbus_extra;
};

static void *eof_thread(void *argv)
{
	struct eof_arg *a = argv;
	pthread_barrier_wait(a->bar);
	for (int k = 0; k < 50; k++) {
		if (lmt_touch(a->base + 2 * a->ps + (size_t)k, k & 1) != 1)
			a->sigbus_missed++;
		if (lmt_touch(a->base + (size_t)k * 8, 0) != 0)
			a->sigbus_extra++;
		if (lmt_check_pattern((const unsigned char *)a->base + (size_t)k * 8, (size_t)k * 8, 8) >= 0)
			a->sigbus_extra += 1000;
	}
	return NULL;
}

/* Many threads on a page beyond EOF at once: each gets SIGBUS, none hangs, page 0 keeps working. */
START_TEST(concurrent_sigbus_beyond_eof)
{
	const size_t PS = ps();
	enum { N = 8 };
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(PS + 10);
	struct lm_region *r = file_region(rt, fd, 0, 4 * PS);
	pthread_barrier_t bar;
	pthread_barrier_init(&bar, NULL, N);
	pthread_t th[N];
	struct eof_arg a[N];
	for (int i = 0; i < N; i++) {
		a[i] = (struct eof_arg){ lm_region_addr(r), PS, &bar, 0, 0 };
		ck_assert_int_eq(pthread_create(&th[i], NULL, eof_thread, &a[i]), 0);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		ck_assert_msg(a[i].sigbus_missed == 0, "thread %d: %d touches of page 2 without SIGBUS", i,
			      a[i].sigbus_missed);
		ck_assert_msg(a[i].sigbus_extra == 0, "thread %d: page 0 failed (%d)", i, a[i].sigbus_extra);
	}
	pthread_barrier_destroy(&bar);
	STAT_EQ(rt, sigbus_raised, 1);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/* ---- read errors ------------------------------------------------------ */

/*
 * /proc/self/mem is a regular file (size 0) whose read at an unmapped or
 * guard-page address fails with EIO: a genuine read error.  _i: bit 0 the
 * mode, bit 1 pread instead of io_uring.
 */
START_TEST(read_error_proc_self_mem)
{
	const size_t PS = ps();
	int mode = mode_of(_i & 1), io = _i & 2 ? LM_IO_PREAD : LM_IO_URING;
	int mfd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(mfd, 0);
	char b;
	ck_assert_int_eq(pread(mfd, &b, 1, 0), -1);
	ck_assert_int_eq(errno, EIO);
	lmt_install_sigbus();
	struct lm_runtime *rt = open_io(mode, io);
	struct lm_region *r = NULL;
	int rc = lm_region_create_file(rt, mfd, 0, PS, 0, &r);
	ck_assert_msg(rc == 0, "lm_region_create_file(/proc/self/mem): %s", lm_strerror(rc));
	volatile char *v = lm_region_addr(r);
	ck_assert_msg(lmt_touch(v, 0) == 1, "a page whose read fails did not raise SIGBUS");
	ck_assert_msg(lmt_touch(v + 1, 1) == 1, "touching it again did not raise SIGBUS");
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_ge(st.io_errors, 1);
	STAT_GE(rt, sigbus_raised, 1);
	STAT_EQ(rt, fills_file, 0);
	/* The runtime still serves other regions. */
	struct lm_region *z;
	ck_assert_int_eq(lm_region_create_zero(rt, PS, 0, &z), 0);
	volatile char *zp = lm_region_addr(z);
	zp[1] = 3;
	ck_assert_int_eq(zp[1], 3);
	close(mfd);
	lm_runtime_close(rt);
}
END_TEST

struct touch_arg {
	volatile char *addr;
	int result;
};

static void *touch_thread(void *argv)
{
	struct touch_arg *a = argv;
	a->result = lmt_touch(a->addr, 0);
	return NULL;
}

/*
 * A region of 3 pages over /proc/self/mem at the address of a 3-page
 * mapping whose middle page is a guard page: pages 0 and 2 read fine,
 * page 1 fails with EIO.  Another thread touches page 1 and gets SIGBUS;
 * this thread reads pages 0 and 2 untouched by it.
 */
START_TEST(read_error_touching_thread_only)
{
	const size_t PS = ps();
	int mode = mode_of(_i & 1), io = _i & 2 ? LM_IO_PREAD : LM_IO_URING;
	unsigned char *src = mmap(NULL, 3 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(src, MAP_FAILED);
	lmt_fill_pattern(src, 0, 3 * PS);
	ck_assert_msg(madvise(src + PS, PS, MADV_GUARD_INSTALL) == 0,
		      "MADV_GUARD_INSTALL: %s", strerror(errno));
	int mfd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(mfd, 0);
	unsigned char tmp[16];
	ck_assert_int_eq(pread(mfd, tmp, sizeof(tmp), (off_t)(uintptr_t)(src + PS)), -1);
	ck_assert_int_eq(errno, EIO);
	ck_assert_int_eq(pread(mfd, tmp, sizeof(tmp), (off_t)(uintptr_t)(src + 2 * PS)), (ssize_t)sizeof(tmp));

	lmt_install_sigbus();
	struct lm_runtime *rt = open_io(mode, io);
	struct lm_region *r = file_region(rt, mfd, (off_t)(uintptr_t)src, 3 * PS);
	volatile char *v = lm_region_addr(r);
	struct touch_arg a = { v + PS, -1 };
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, touch_thread, &a), 0);
	ck_assert_int_eq(pthread_join(th, NULL), 0);
	ck_assert_msg(a.result == 1, "the thread touching the unreadable page got no SIGBUS");
	/* Not armed here: a SIGBUS in this thread would abort the test. */
	const unsigned char *p = lm_region_addr(r);
	assert_pattern(p, 0, PS, "page 0");
	assert_pattern(p + 2 * PS, 2 * PS, PS, "page 2");
	ck_assert_int_eq(lmt_touch(v + PS + 9, 0), 1);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_ge(st.io_errors, 1);
	STAT_EQ(rt, sigbus_raised, 1);
	STAT_EQ(rt, fills_file, 2);
	close(mfd);
	lm_runtime_close(rt);
	munmap(src, 3 * PS);
}
END_TEST

/*
 * A read error in the middle of a file with a real size: a tiny FUSE file
 * system (raw /dev/fuse protocol, in a child process) serves a 16-page
 * pattern file with FOPEN_DIRECT_IO, whose page BAD_PAGE fails with EIO.
 * A read that starts before the bad page returns short, like a disk with a
 * bad sector.  Only the bad page may raise SIGBUS, whatever the readahead.
 * Read with pread in both modes: io_uring's own retry of a short read
 * (kernel 6.18) re-reads a FUSE direct-I/O file at the original offset and
 * reports the full length with wrong data, a kernel matter, not lazymem's.
 */
#define FUSE_PAGES 16
#define BAD_PAGE 5

struct fusefs {
	pid_t server;
	int fd;			/* the file, open for reading */
};

static void fuse_reply(int dev, uint64_t unique, int error, const void *data, size_t len)
{
	struct fuse_out_header oh;
	memset(&oh, 0, sizeof(oh));
	oh.len = (uint32_t)(sizeof(oh) + (error ? 0 : len));
	oh.error = error;
	oh.unique = unique;
	struct iovec iov[2] = { { &oh, sizeof(oh) }, { (void *)data, error ? 0 : len } };
	if (writev(dev, iov, 2) < 0) {
		/* The request was interrupted: nothing to do. */
	}
}

static void fuse_attr_of(struct fuse_attr *a, uint64_t ino, size_t size)
{
	memset(a, 0, sizeof(*a));
	a->ino = ino;
	a->blksize = 4096;
	if (ino == FUSE_ROOT_ID) {
		a->mode = S_IFDIR | 0755;
		a->nlink = 2;
	} else {
		a->mode = S_IFREG | 0444;
		a->nlink = 1;
		a->size = size;
		a->blocks = (size + 511) / 512;
	}
}

static void fuse_serve(int dev, size_t size, size_t bad_start, size_t bad_end)
{
	static unsigned char in[1 << 18];
	static unsigned char data[1 << 18];
	for (;;) {
		ssize_t n = read(dev, in, sizeof(in));
		if (n < 0) {
			if (errno == EINTR || errno == ENOENT || errno == EAGAIN)
				continue;
			_exit(0);	/* ENODEV: unmounted */
		}
		if ((size_t)n < sizeof(struct fuse_in_header))
			continue;
		struct fuse_in_header *ih = (void *)in;
		void *arg = ih + 1;
		switch (ih->opcode) {
		case FUSE_INIT: {
			struct fuse_init_in *ii = arg;
			struct fuse_init_out o;
			memset(&o, 0, sizeof(o));
			o.major = FUSE_KERNEL_VERSION;
			o.minor = FUSE_KERNEL_MINOR_VERSION;
			o.max_readahead = ii->max_readahead;
			o.max_write = 4096;
			fuse_reply(dev, ih->unique, 0, &o, sizeof(o));
			break;
		}
		case FUSE_LOOKUP: {
			if (ih->nodeid != FUSE_ROOT_ID || strcmp(arg, "f") != 0) {
				fuse_reply(dev, ih->unique, -ENOENT, NULL, 0);
				break;
			}
			struct fuse_entry_out e;
			memset(&e, 0, sizeof(e));
			e.nodeid = 2;
			e.generation = 1;
			e.entry_valid = 3600;
			e.attr_valid = 3600;
			fuse_attr_of(&e.attr, 2, size);
			fuse_reply(dev, ih->unique, 0, &e, sizeof(e));
			break;
		}
		case FUSE_GETATTR: {
			struct fuse_attr_out a;
			memset(&a, 0, sizeof(a));
			a.attr_valid = 3600;
			fuse_attr_of(&a.attr, ih->nodeid, size);
			fuse_reply(dev, ih->unique, 0, &a, sizeof(a));
			break;
		}
		case FUSE_OPEN:
		case FUSE_OPENDIR: {
			struct fuse_open_out o;
			memset(&o, 0, sizeof(o));
			o.fh = 1;
			o.open_flags = ih->opcode == FUSE_OPEN ? FOPEN_DIRECT_IO : 0;
			fuse_reply(dev, ih->unique, 0, &o, sizeof(o));
			break;
		}
		case FUSE_READ: {
			struct fuse_read_in *ri = arg;
			size_t off = (size_t)ri->offset, len = ri->size;
			if (len > sizeof(data))
				len = sizeof(data);
			if (off >= size)
				len = 0;
			else if (len > size - off)
				len = size - off;
			if (len && off < bad_end && off + len > bad_start) {
				if (off >= bad_start) {
					fuse_reply(dev, ih->unique, -EIO, NULL, 0);
					break;
				}
				len = bad_start - off;	/* short: stops at the bad page */
			}
			lmt_fill_pattern(data, off, len);
			fuse_reply(dev, ih->unique, 0, data, len);
			break;
		}
		case FUSE_FORGET:
		case FUSE_BATCH_FORGET:
		case FUSE_INTERRUPT:
			break;
		case FUSE_FLUSH:
		case FUSE_RELEASE:
		case FUSE_RELEASEDIR:
		case FUSE_DESTROY:
			fuse_reply(dev, ih->unique, 0, NULL, 0);
			break;
		default:
			fuse_reply(dev, ih->unique, -ENOSYS, NULL, 0);
			break;
		}
	}
}

/* Mounts a FUSE file system served through *dev on dir: 0, or -errno. */
static int fuse_mount(const char *dir, int *dev)
{
	*dev = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (*dev < 0)
		return -errno;
	char opts[128];
	snprintf(opts, sizeof(opts), "fd=%d,rootmode=40000,user_id=0,group_id=0", *dev);
	if (mount("lazymem-test", dir, "fuse", MS_NOSUID | MS_NODEV, opts) < 0) {
		int err = errno;
		close(*dev);
		*dev = -1;
		return -err;
	}
	return 0;
}

/* main's try (lmt_require_mount): the descriptor closes as its child exits. */
static int fuse_mount_try(const char *dir)
{
	int dev;
	return fuse_mount(dir, &dev);
}

/* Mounts the file system in a private mount namespace (main made sure FUSE works here). */
static struct fusefs fuse_start(void)
{
	const size_t PS = ps();
	struct fusefs fs = { -1, -1 };
	if (unshare(CLONE_NEWNS) == 0)
		mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
	char dir[] = "/tmp/lazymem-fuse-XXXXXX";
	ck_assert_ptr_nonnull(mkdtemp(dir));
	int dev, rc = fuse_mount(dir, &dev);
	if (rc < 0) {
		rmdir(dir);
		ck_abort_msg("mount a FUSE file system on %s: %s", dir, strerror(-rc));
	}
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		fuse_serve(dev, FUSE_PAGES * PS, BAD_PAGE * PS, (BAD_PAGE + 1) * PS);
		_exit(0);
	}
	close(dev);
	fs.server = pid;
	char path[64];
	snprintf(path, sizeof(path), "%s/f", dir);
	fs.fd = open(path, O_RDONLY | O_CLOEXEC);
	int err = errno;
	umount2(dir, MNT_DETACH);
	rmdir(dir);
	ck_assert_msg(fs.fd >= 0, "open %s: %s", path, strerror(err));

	/* The premise: page BAD_PAGE fails, its neighbours read, a read across it is short. */
	unsigned char *buf = malloc(2 * PS);
	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(pread(fs.fd, buf, PS, (off_t)((BAD_PAGE - 1) * PS)), (ssize_t)PS);
	assert_pattern(buf, (BAD_PAGE - 1) * PS, PS, "FUSE file, page before the bad one");
	ck_assert_int_eq(pread(fs.fd, buf, PS, (off_t)(BAD_PAGE * PS)), -1);
	ck_assert_int_eq(errno, EIO);
	ck_assert_int_eq(pread(fs.fd, buf, 2 * PS, (off_t)((BAD_PAGE - 1) * PS)), (ssize_t)PS);
	free(buf);
	struct stat st;
	ck_assert_int_eq(fstat(fs.fd, &st), 0);
	ck_assert_int_eq(st.st_size, (off_t)(FUSE_PAGES * PS));
	return fs;
}

static void fuse_stop(struct fusefs *fs)
{
	if (fs->fd >= 0)
		close(fs->fd);
	if (fs->server > 0) {
		kill(fs->server, SIGKILL);
		waitpid(fs->server, NULL, 0);
	}
}

/* Touches every page in order; returns a bit mask of the pages that raised SIGBUS. */
static unsigned scan_pages(volatile char *v, size_t PS, unsigned npages)
{
	unsigned mask = 0;
	for (unsigned i = 0; i < npages; i++) {
		if (lmt_touch(v + (size_t)i * PS, 0))
			mask |= 1u << i;
		else
			assert_pattern((const unsigned char *)v + (size_t)i * PS, (size_t)i * PS, PS,
				       "page of the FUSE file");
	}
	return mask;
}

/* A sequential scan with default readahead: only the bad page raises SIGBUS. */
START_TEST(read_error_mid_file_sequential_scan)
{
	const size_t PS = ps();
	struct fusefs fs = fuse_start();
	lmt_install_sigbus();
	struct lm_runtime *rt = open_io(mode_of(_i), LM_IO_PREAD);
	struct lm_region *r = file_region(rt, fs.fd, 0, FUSE_PAGES * PS);
	unsigned mask = scan_pages(lm_region_addr(r), PS, FUSE_PAGES);
	ck_assert_msg(mask == 1u << BAD_PAGE,
		      "pages that raised SIGBUS: mask %#x, want only page %d (%#x)", mask, BAD_PAGE,
		      1u << BAD_PAGE);
	/* A second scan agrees. */
	mask = scan_pages(lm_region_addr(r), PS, FUSE_PAGES);
	ck_assert_msg(mask == 1u << BAD_PAGE, "second scan: SIGBUS mask %#x", mask);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_ge(st.io_errors, 1);
	STAT_EQ(rt, sigbus_raised, 1);
	STAT_EQ(rt, fills_file, FUSE_PAGES - 1);
	lm_runtime_close(rt);
	fuse_stop(&fs);
}
END_TEST

/* With sequential advice the first fault reads ahead across the bad page: the faulting page is fine. */
START_TEST(read_error_in_readahead_only)
{
	const size_t PS = ps();
	struct fusefs fs = fuse_start();
	lmt_install_sigbus();
	struct lm_runtime *rt = open_io(mode_of(_i), LM_IO_PREAD);
	struct lm_region *r = file_region(rt, fs.fd, 0, FUSE_PAGES * PS);
	ck_assert_int_eq(lm_region_advise(r, 0, FUSE_PAGES * PS, LM_ADV_SEQUENTIAL), 0);
	volatile char *v = lm_region_addr(r);
	ck_assert_msg(lmt_touch(v + (BAD_PAGE - 1) * PS, 0) == 0,
		      "page %d reads fine from the file but raised SIGBUS because readahead hit the "
		      "bad page %d", BAD_PAGE - 1, BAD_PAGE);
	assert_pattern((const unsigned char *)v + (BAD_PAGE - 1) * PS, (BAD_PAGE - 1) * PS, PS,
		       "page before the bad one");
	ck_assert_int_eq(lmt_touch(v + BAD_PAGE * PS, 0), 1);
	ck_assert_int_eq(lmt_touch(v + (BAD_PAGE + 1) * PS, 0), 0);
	assert_pattern((const unsigned char *)v + (BAD_PAGE + 1) * PS, (BAD_PAGE + 1) * PS, PS,
		       "page after the bad one");
	lm_runtime_close(rt);
	fuse_stop(&fs);
}
END_TEST

/* ---- bad input ---------------------------------------------------------- */

#define BAD_OUT ((struct lm_region *)(uintptr_t)0x5a5a5a5a)

/* Calls expr with errno set to a marker; asserts its result, that errno and *out are unchanged. */
#define EXPECT_ERR(expr, want)                                                                  \
	do {                                                                                    \
		out = BAD_OUT;                                                                  \
		errno = ERRNO_MARK;                                                             \
		int rc_ = (expr);                                                               \
		int e_ = errno;                                                                 \
		ck_assert_msg(rc_ == (want), "%s returned %d (%s), want %d (%s)", #expr, rc_,   \
			      lm_strerror(rc_), (want), lm_strerror(want));                     \
		ck_assert_msg(e_ == ERRNO_MARK, "%s changed errno to %d (%s)", #expr, e_,       \
			      strerror(e_));                                                    \
		ck_assert_msg(out == BAD_OUT, "%s changed *out on failure", #expr);             \
	} while (0)

START_TEST(bad_file_arguments)
{
	const size_t PS = ps();
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	int fd = lmt_pattern_file(4 * PS);
	struct lm_region *out;

	EXPECT_ERR(lm_region_create_file(NULL, fd, 0, PS, 0, &out), -EINVAL);
	errno = ERRNO_MARK;
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, PS, 0, NULL), -EINVAL);
	ck_assert_int_eq(errno, ERRNO_MARK);
	EXPECT_ERR(lm_region_create_file(rt, fd, 0, 0, 0, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_file(rt, fd, -(off_t)PS, PS, 0, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_file(rt, fd, 1, PS, 0, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_file(rt, fd, (off_t)PS / 2, PS, 0, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_file(rt, fd, 0, PS, 1u << 7, &out), -EINVAL);
	/* Shared needs a descriptor open for writing too; zero and memory regions cannot be shared. */
	char ropath[64];
	snprintf(ropath, sizeof(ropath), "/proc/self/fd/%d", fd);
	int ro = open(ropath, O_RDONLY);
	ck_assert_int_ge(ro, 0);
	EXPECT_ERR(lm_region_create_file(rt, ro, 0, PS, LM_REGION_SHARED, &out), -EACCES);
	close(ro);
	EXPECT_ERR(lm_region_create_zero(rt, PS, LM_REGION_SHARED, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_file(rt, fd, 0, SIZE_MAX, 0, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_file(rt, -1, 0, PS, 0, &out), -EBADF);

	/* Not open for reading. */
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int wr = open(path, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(wr, 0);
	EXPECT_ERR(lm_region_create_file(rt, wr, 0, PS, 0, &out), -EACCES);
	close(wr);
	int opath = open("/etc/passwd", O_PATH | O_CLOEXEC);
	ck_assert_int_ge(opath, 0);
	EXPECT_ERR(lm_region_create_file(rt, opath, 0, PS, 0, &out), -EACCES);
	close(opath);

	/* Not a regular file or block device: region.c returns -ENODEV. */
	int dir = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ck_assert_int_ge(dir, 0);
	EXPECT_ERR(lm_region_create_file(rt, dir, 0, PS, 0, &out), -ENODEV);
	close(dir);
	int pfd[2];
	ck_assert_int_eq(pipe(pfd), 0);
	EXPECT_ERR(lm_region_create_file(rt, pfd[0], 0, PS, 0, &out), -ENODEV);
	EXPECT_ERR(lm_region_create_file(rt, pfd[1], 0, PS, 0, &out), -EACCES);	/* write end */
	close(pfd[0]);
	close(pfd[1]);
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	EXPECT_ERR(lm_region_create_file(rt, sv[0], 0, PS, 0, &out), -ENODEV);
	close(sv[0]);
	close(sv[1]);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(null, 0);
	EXPECT_ERR(lm_region_create_file(rt, null, 0, PS, 0, &out), -ENODEV);
	close(null);

	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.regions_created, 0);
	ck_assert_uint_eq(st.regions_live, 0);

	/* Success leaves errno alone too; a file shorter than the region is allowed (mmap semantics). */
	errno = ERRNO_MARK;
	struct lm_region *r = NULL;
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, 64 * PS, 0, &r), 0);
	ck_assert_int_eq(errno, ERRNO_MARK);
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(lm_region_destroy(r), 0);

	/* A closed descriptor (last: it is the case that reaches a failing system call). */
	int closed = dup(fd);
	ck_assert_int_ge(closed, 0);
	close(closed);
	EXPECT_ERR(lm_region_create_file(rt, closed, 0, PS, 0, &out), -EBADF);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

START_TEST(bad_memory_arguments)
{
	const size_t PS = ps();
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	static unsigned char buf[8192];
	struct lm_region *out;
	EXPECT_ERR(lm_region_create_memory(rt, NULL, PS, 0, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_memory(rt, buf, sizeof(buf), 1, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_memory(rt, buf, sizeof(buf), 0x80000000u, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_memory(rt, buf, 0, 0, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_memory(NULL, buf, sizeof(buf), 0, &out), -EINVAL);
	ck_assert_uint_eq(lmt_stats(rt).regions_created, 0);
	lm_runtime_close(rt);
}
END_TEST

/* The handler never faults on registered memory: a region's memory is no memory source. */
START_TEST(memory_source_inside_region_refused)
{
	const size_t PS = ps();
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(8 * PS);
	struct lm_region *fr = file_region(rt, fd, 0, 8 * PS);
	struct lm_region *zr;
	ck_assert_int_eq(lm_region_create_zero(rt, 8 * PS, 0, &zr), 0);
	const unsigned char *fa = lm_region_addr(fr), *za = lm_region_addr(zr);
	struct lm_region *out;
	EXPECT_ERR(lm_region_create_memory(rt, fa, 8 * PS, 0, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_memory(rt, fa + PS, PS, 0, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_memory(rt, za + 7 * PS, 4 * PS, 0, &out), -EINVAL);
	EXPECT_ERR(lm_region_create_memory(rt, fa + 3, 100, 0, &out), -EINVAL);
	/* A buffer that starts before the region and ends inside it. */
	EXPECT_ERR(lm_region_create_memory(rt, fa - PS, 2 * PS, 0, &out), -EINVAL);
	ck_assert_uint_eq(lmt_stats(rt).regions_live, 2);
	/* The refused attempts left the regions intact. */
	assert_pattern(fa, 0, 8 * PS, "file region");
	assert_zero(za, 8 * PS, "zero region");
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/* ---- concurrency ------------------------------------------------------ */

struct hammer_arg {
	const unsigned char *base;
	size_t ps, npages;
	int id;
	pthread_barrier_t *bar;
	long bad_page;
};

static void *hammer_thread(void *argv)
{
	struct hammer_arg *a = argv;
	size_t *order = malloc(a->npages * sizeof(*order));
	if (!order) {
		a->bad_page = -2;
		return NULL;
	}
	if (a->id == 0) {
		for (size_t i = 0; i < a->npages; i++)
			order[i] = i;
	} else if (a->id == 1) {
		for (size_t i = 0; i < a->npages; i++)
			order[i] = a->npages - 1 - i;
	} else if (a->id == 2) {
		/* Strided: every 7th page, wrapping. */
		for (size_t i = 0; i < a->npages; i++)
			order[i] = i * 7 % a->npages;
	} else {
		shuffle(order, a->npages, 0x1234567ull * (uint64_t)a->id);
	}
	pthread_barrier_wait(a->bar);
	a->bad_page = -1;
	for (size_t k = 0; k < a->npages && a->bad_page < 0; k++) {
		size_t off = order[k] * a->ps;
		if (lmt_check_pattern(a->base + off, off, a->ps) >= 0)
			a->bad_page = (long)order[k];
	}
	free(order);
	return NULL;
}

START_TEST(threads_hammer_same_pages)
{
	const size_t PS = ps(), len = 4 * MIB, np = len / PS;
	enum { N = 8 };
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = lmt_pattern_file(len);
	for (int round = 0; round < 3; round++) {
		struct lm_region *r = file_region(rt, fd, 0, len);
		pthread_barrier_t bar;
		pthread_barrier_init(&bar, NULL, N);
		pthread_t th[N];
		struct hammer_arg a[N];
		for (int i = 0; i < N; i++) {
			a[i] = (struct hammer_arg){ lm_region_addr(r), PS, np, i, &bar, -1 };
			ck_assert_int_eq(pthread_create(&th[i], NULL, hammer_thread, &a[i]), 0);
		}
		for (int i = 0; i < N; i++) {
			pthread_join(th[i], NULL);
			ck_assert_msg(a[i].bad_page == -1, "round %d thread %d: page %ld is wrong", round,
				      i, a[i].bad_page);
		}
		pthread_barrier_destroy(&bar);
		ck_assert_int_eq(lm_region_destroy(r), 0);
	}
	struct lm_stats st = lmt_stats(rt);
	STAT_EQ(rt, fills_file, 3 * np);	/* every page installed once per region */
	STAT_EQ(rt, sigbus_raised, 0);
	ck_assert_uint_eq(st.io_errors, 0);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

static Suite *file_suite(void)
{
	Suite *s = suite_create("file");
	TCase *tc;

	tc = tcase_create("contents");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, contents_sequential, 0, 2);
	tcase_add_loop_test(tc, block_device_source, 0, 2);
	tcase_add_loop_test(tc, contents_random_order, 0, 2);
	tcase_add_loop_test(tc, random_fault_reads_its_block, 0, 2);
	tcase_add_loop_test(tc, contents_with_offset, 0, 2);
	tcase_add_loop_test(tc, file_grows_after_create, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("io");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, pread_option, 0, 2);
	tcase_add_loop_test(tc, pread_env, 0, 2);
	tcase_add_test(tc, env_does_not_override_explicit_io);
	tcase_add_loop_test(tc, pread_fallback_without_io_uring, 0, 2);
	tcase_add_test(tc, explicit_io_uring_unavailable);
	suite_add_tcase(s, tc);

	tc = tcase_create("private");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, writes_stay_private, 0, 2);
	tcase_add_loop_test(tc, caller_closes_fd, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("eof");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, pages_beyond_eof, 0, 2);
	tcase_add_loop_test(tc, truncated_under_region, 0, 2);
	tcase_add_loop_test(tc, poisoned_page_refills_after_dontneed, 0, 2);
	tcase_add_loop_test(tc, concurrent_sigbus_beyond_eof, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("read_errors");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, read_error_proc_self_mem, 0, 4);
	tcase_add_loop_test(tc, read_error_touching_thread_only, 0, 4);
	tcase_add_loop_test(tc, read_error_mid_file_sequential_scan, 0, 2);
	tcase_add_loop_test(tc, read_error_in_readahead_only, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("arguments");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, bad_file_arguments);
	tcase_add_test(tc, bad_memory_arguments);
	tcase_add_loop_test(tc, memory_source_inside_region_refused, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("threads");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, threads_hammer_same_pages, 0, 2);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	lmt_require_uffd();
	/* The read-error tests serve a file of their own through FUSE. */
	lmt_require_mount("a FUSE file system through /dev/fuse", fuse_mount_try);
	return lmt_run(file_suite());
}
