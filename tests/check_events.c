/* SPDX-License-Identifier: MIT */
/* Application events on regions (madvise, munmap, mremap, fork, exec) and system calls into lazy pages. */
#define _GNU_SOURCE
#include "testutil.h"

#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#define NPAGES 16

static size_t ps;

/* Loop index to mode: 0 thread, 1 signal. */
static int mode_of(int i)
{
	return i == 0 ? LM_MODE_THREAD : LM_MODE_SIGNAL;
}

static unsigned char *pattern_buf(size_t base, size_t len)
{
	unsigned char *b = malloc(len);
	ck_assert_ptr_nonnull(b);
	lmt_fill_pattern(b, base, len);
	return b;
}

/* Bytes that differ from the pattern everywhere: what the tests write. */
static void fill_inverse(unsigned char *p, size_t base, size_t len)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (unsigned char)~lmt_pattern(base + i);
}

static long check_inverse(const unsigned char *p, size_t base, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != (unsigned char)~lmt_pattern(base + i))
			return (long)i;
	return -1;
}

static long check_byte(const unsigned char *p, unsigned char v, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != v)
			return (long)i;
	return -1;
}

/* True when every page of [p, p + len) is mapped; false when any is not. */
static bool mapped(const void *p, size_t len)
{
	return msync((void *)p, len, MS_ASYNC) == 0;
}

/* True when no page of [p, p + len) is mapped. */
static bool unmapped(const void *p, size_t len)
{
	for (size_t off = 0; off < len; off += ps) {
		errno = 0;
		if (msync((char *)p + off, ps, MS_ASYNC) == 0 || errno != ENOMEM)
			return false;
	}
	return true;
}

static uint64_t stat_at(const struct lm_stats *st, size_t off)
{
	uint64_t v;
	memcpy(&v, (const char *)st + off, sizeof(v));
	return v;
}

/*
 * Events are counted by the thread that reads them, just after the
 * kernel lets the application's call return: wait for the count, and
 * return the last one read, for the caller to assert on.
 */
static uint64_t wait_stat(struct lm_runtime *rt, size_t off, uint64_t want)
{
	struct lm_stats st;
	uint64_t v;
	(void)LMT_WAIT_UNTIL((st = lmt_stats(rt), v = stat_at(&st, off)) >= want, 3);
	return v;
}
#define WAIT_GE(rt, f, v) wait_stat(rt, offsetof(struct lm_stats, f), v)

/* An address range nobody uses, for MREMAP_FIXED. */
static unsigned char *reserve(size_t len)
{
	void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

/* A memfd holding len bytes of 'A'..'Z' starting at letter `first`. */
static int letters_fd(size_t len, int first, unsigned char *copy)
{
	int fd = memfd_create("lazymem-events", MFD_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	for (size_t i = 0; i < len; i++)
		copy[i] = (unsigned char)('A' + (first + i) % 26);
	ck_assert_int_eq(pwrite(fd, copy, len, 0), (ssize_t)len);
	return fd;
}

/*
 * Writes the inverse pattern to every page of a region (source offset
 * base), drops pages [4, 8) with madvise or advice, and checks that they
 * read as the source again and the others keep the writes.
 */
static void write_drop_check(struct lm_runtime *rt, struct lm_region *r, size_t base,
			     bool advise, const char *what)
{
	unsigned char *p = lm_region_addr(r);
	size_t len = NPAGES * ps;
	fill_inverse(p, base, len);
	struct lm_stats before = lmt_stats(rt);
	ck_assert_int_eq(before.resident_pages, NPAGES);
	if (advise)
		ck_assert_int_eq(lm_region_advise(r, 4 * ps, 4 * ps, LM_ADV_DONTNEED), 0);
	else
		ck_assert_int_eq(madvise(p + 4 * ps, 4 * ps, MADV_DONTNEED), 0);

	/* Both ways go through madvise, so both raise a REMOVE event. */
	uint64_t ev = WAIT_GE(rt, events_remove, before.events_remove + 1);
	ck_assert_msg(ev >= before.events_remove + 1, "%s: events_remove %llu -> %llu", what,
		      (unsigned long long)before.events_remove, (unsigned long long)ev);
	uint64_t dn = WAIT_GE(rt, dontneed_pages, before.dontneed_pages + 4);
	ck_assert_msg(dn == before.dontneed_pages + 4, "%s: dontneed_pages %llu -> %llu", what,
		      (unsigned long long)before.dontneed_pages, (unsigned long long)dn);
	struct lm_stats mid = lmt_stats(rt);
	ck_assert_int_eq(mid.resident_pages, NPAGES - 4);

	for (size_t pg = 0; pg < NPAGES; pg++) {
		const unsigned char *q = p + pg * ps;
		size_t off = base + pg * ps;
		long bad = (pg >= 4 && pg < 8) ? lmt_check_pattern(q, off, ps)
					       : check_inverse(q, off, ps);
		ck_assert_msg(bad == -1, "%s: page %zu byte %ld is 0x%02x (%s expected)", what,
			      pg, bad, bad < 0 ? 0 : q[bad],
			      (pg >= 4 && pg < 8) ? "source" : "written");
	}
	struct lm_stats after = lmt_stats(rt);
	uint64_t fills = after.fills_memory + after.fills_file - mid.fills_memory - mid.fills_file;
	ck_assert_msg(fills >= 4, "%s: %llu pages refilled, 4 expected", what,
		      (unsigned long long)fills);
	ck_assert_int_eq(after.resident_pages, NPAGES);
}

/* 1, 2: dropped pages of memory and file regions come back from the source. */
static void dontneed_both_sources(int mode, bool advise)
{
	struct lm_runtime *rt = lmt_open(mode);
	size_t len = NPAGES * ps;
	size_t mbase = 77 * ps;
	unsigned char *src = pattern_buf(mbase, len);
	struct lm_region *rm, *rf;
	ck_assert_int_eq(lm_region_create_memory(rt, src, len, 0, &rm), 0);
	write_drop_check(rt, rm, mbase, advise, "memory");
	ck_assert_int_eq(lm_region_destroy(rm), 0);

	int fd = lmt_pattern_file(len);
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, len, 0, &rf), 0);
	close(fd);
	write_drop_check(rt, rf, 0, advise, "file");
	ck_assert_int_eq(lm_region_destroy(rf), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(src);
}

START_TEST(test_madvise_dontneed)
{
	dontneed_both_sources(mode_of(_i), false);
}
END_TEST

START_TEST(test_advise_dontneed)
{
	dontneed_both_sources(mode_of(_i), true);
}
END_TEST

/*
 * 3: munmap of the middle; the rest works (readahead must not cross the
 * hole); destroy leaves alone a mapping the application placed in the hole.
 */
START_TEST(test_munmap_middle)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	size_t len = NPAGES * ps;
	unsigned char *src = pattern_buf(0, len);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_memory(rt, src, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	ck_assert_int_eq(lmt_check_pattern(p, 0, 2 * ps), -1);
	struct lm_stats before = lmt_stats(rt);

	unsigned char *hole = p + 6 * ps;
	ck_assert_int_eq(munmap(hole, 4 * ps), 0);
	/* Someone else's mapping in the hole. */
	void *m = mmap(hole, 4 * ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	ck_assert_ptr_eq(m, hole);
	memset(hole, 0xA5, 4 * ps);
	uint64_t ev = WAIT_GE(rt, events_unmap, before.events_unmap + 1);
	ck_assert_uint_ge(ev, before.events_unmap + 1);

	/* The rest: untouched pages fill from the source, writes stick. */
	ck_assert_int_eq(lmt_check_pattern(p, 0, 6 * ps), -1);
	ck_assert_int_eq(lmt_check_pattern(p + 10 * ps, 10 * ps, 6 * ps), -1);
	fill_inverse(p + 3 * ps, 3 * ps, ps);
	fill_inverse(p + 12 * ps, 12 * ps, ps);
	ck_assert_int_eq(check_inverse(p + 3 * ps, 3 * ps, ps), -1);
	ck_assert_int_eq(check_inverse(p + 12 * ps, 12 * ps, ps), -1);
	ck_assert_int_eq(lmt_check_pattern(p + 11 * ps, 11 * ps, ps), -1);
	ck_assert_int_eq(check_byte(hole, 0xA5, 4 * ps), -1);

	/* Dont-need advice over the whole region spares the hole's new owner. */
	ck_assert_int_eq(lm_region_advise(r, 0, len, LM_ADV_DONTNEED), 0);
	ck_assert_int_eq(check_byte(hole, 0xA5, 4 * ps), -1);
	ck_assert_int_eq(lmt_check_pattern(p + 3 * ps, 3 * ps, ps), -1);

	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_msg(mapped(hole, 4 * ps), "destroy unmapped a mapping in the hole");
	ck_assert_int_eq(check_byte(hole, 0xA5, 4 * ps), -1);
	ck_assert_msg(unmapped(p, 6 * ps), "destroy left the head mapped");
	ck_assert_msg(unmapped(p + 10 * ps, 6 * ps), "destroy left the tail mapped");
	struct lm_stats st = lmt_stats(rt);
	ck_assert_int_eq(st.regions_live, 0);
	ck_assert_int_eq(st.region_bytes, 0);
	ck_assert_int_eq(munmap(hole, 4 * ps), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(src);
}
END_TEST

/*
 * 4: the application unmaps the whole region; a new mapping at its address
 * survives destroy.  Repeated, since the unmap is only recorded once the
 * handler has processed the event the kernel already let munmap return on.
 */
#define WHOLE_ROUNDS 200

START_TEST(test_munmap_whole)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	size_t len = NPAGES * ps;
	struct lm_stats before = lmt_stats(rt);
	int placed = 0;
	for (int k = 0; k < WHOLE_ROUNDS; k++) {
		struct lm_region *r;
		ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
		unsigned char *p = lm_region_addr(r);
		p[0] = 1;
		p[5 * ps] = 2;
		ck_assert_int_eq(munmap(p, len), 0);

		void *m = mmap(p, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (m == MAP_FAILED && errno == EEXIST) {
			/* Another thread (an allocator) took the range first: not ours to test. */
			ck_assert_int_eq(lm_region_destroy(r), 0);
			continue;
		}
		ck_assert_ptr_eq(m, p);
		memset(p, 0x3C, len);

		ck_assert_int_eq(lm_region_destroy(r), 0);
		ck_assert_msg(mapped(p, len),
			      "round %d: destroy unmapped the application's new mapping", k);
		ck_assert_int_eq(check_byte(p, 0x3C, len), -1);
		ck_assert_int_eq(munmap(p, len), 0);
		placed++;
	}
	ck_assert_int_ge(placed, WHOLE_ROUNDS / 2);
	uint64_t ev = WAIT_GE(rt, events_unmap, before.events_unmap + WHOLE_ROUNDS);
	ck_assert_uint_ge(ev, before.events_unmap + WHOLE_ROUNDS);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_int_eq(st.regions_live, 0);
	ck_assert_int_eq(st.region_bytes, 0);
	ck_assert_int_eq(st.resident_pages, 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* 5a: mremap of a whole untouched region: it moves, and faults there come from the source. */
START_TEST(test_mremap_whole)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	size_t len = NPAGES * ps;
	size_t base = 5 * ps;
	unsigned char *src = pattern_buf(base, len);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_memory(rt, src, len, 0, &r), 0);
	unsigned char *old = lm_region_addr(r);
	unsigned char *dst = reserve(len);
	struct lm_stats before = lmt_stats(rt);

	void *got = mremap(old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ck_assert_ptr_eq(got, dst);
	/* Touched at once, as an application would. */
	long bad = lmt_check_pattern(dst, base, len);
	ck_assert_msg(bad == -1, "moved region: byte %ld (page %ld) is 0x%02x, source 0x%02x", bad,
		      bad / (long)ps, bad < 0 ? 0 : dst[bad],
		      bad < 0 ? 0 : lmt_pattern(base + (size_t)bad));

	ck_assert_uint_ge(WAIT_GE(rt, events_remap, before.events_remap + 1),
			  before.events_remap + 1);
	ck_assert_ptr_eq(lm_region_addr(r), dst);
	ck_assert_uint_eq(lm_region_length(r), len);
	fill_inverse(dst + 2 * ps, base + 2 * ps, ps);
	ck_assert_int_eq(lm_region_advise(r, 2 * ps, ps, LM_ADV_DONTNEED), 0);
	ck_assert_int_eq(lmt_check_pattern(dst + 2 * ps, base + 2 * ps, ps), -1);

	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_msg(unmapped(dst, len), "destroy did not unmap the region at its new address");
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(src);
}
END_TEST

/* 5b: mremap of the second half elsewhere: faults there come from the right source offsets. */
START_TEST(test_mremap_part)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	size_t len = NPAGES * ps, half = len / 2;
	unsigned char *src = pattern_buf(0, len);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_memory(rt, src, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	/* Page 1 read and page 9 written before the move (no readahead: not sequential). */
	ck_assert_int_eq(lmt_check_pattern(p + ps, ps, ps), -1);
	fill_inverse(p + 9 * ps, 9 * ps, ps);
	unsigned char *dst = reserve(half);
	struct lm_stats before = lmt_stats(rt);

	void *got = mremap(p + half, half, half, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ck_assert_ptr_eq(got, dst);
	for (size_t pg = 0; pg < NPAGES / 2; pg++) {
		const unsigned char *q = dst + pg * ps;
		size_t off = half + pg * ps;
		long bad = pg == 1 ? check_inverse(q, off, ps) : lmt_check_pattern(q, off, ps);
		ck_assert_msg(bad == -1, "moved page %zu (region page %zu): byte %ld is 0x%02x", pg,
			      pg + NPAGES / 2, bad, bad < 0 ? 0 : q[bad]);
	}
	ck_assert_uint_ge(WAIT_GE(rt, events_remap, before.events_remap + 1),
			  before.events_remap + 1);
	/* The part that stayed. */
	ck_assert_int_eq(lmt_check_pattern(p, 0, half), -1);
	ck_assert_ptr_eq(lm_region_addr(r), p);
	ck_assert_uint_eq(lm_region_length(r), len);
	/* The moved part is internal: still one region of the same size. */
	struct lm_stats mid = lmt_stats(rt);
	ck_assert_int_eq(mid.regions_live, 1);
	ck_assert_int_eq(mid.region_bytes, len);
	/* Pages keep their states when they move: every page is resident now. */
	ck_assert_uint_eq(mid.resident_pages, NPAGES);

	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert(unmapped(p, half));
	/* The moved part is the application's to unmap (it may already be gone). */
	munmap(dst, half);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_int_eq(st.regions_live, 0);
	ck_assert_int_eq(st.region_bytes, 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(src);
}
END_TEST

/*
 * Regression: a fork child's fault that the handler could not fill
 * because another child thread unmapped the range first (ENOENT) left the
 * faulting thread asleep for ever.  Every error must answer the fault.
 */
static volatile char *cu_p;

static void cu_segv(int sig)
{
	(void)sig;
	_exit(0);
}

static void *cu_toucher(void *arg)
{
	(void)arg;
	(void)cu_p[0];
	return NULL;
}

/* Keeps the one handler thread busy so the child's unmap comes first. */
static struct lm_region *cu_big;
static size_t cu_biglen;
static atomic_bool cu_stop;

/*
 * GCC 12's AddressSanitizer does not lock its allocator around fork():
 * a child forked while another thread was in malloc hangs on its first
 * allocation (seen here: the child's new thread, in pthread_getattr_np,
 * about one run in six).  Under ASan the busy thread pauses, and the
 * events it makes drain, before each fork.
 */
#if defined(__SANITIZE_ADDRESS__)
#define CU_QUIESCE 1
#else
#define CU_QUIESCE 0
#endif
static atomic_bool cu_pause, cu_paused;

static void *cu_busy(void *arg)
{
	(void)arg;
	volatile char *b = lm_region_addr(cu_big);
	while (!atomic_load(&cu_stop)) {
		while (atomic_load(&cu_pause) && !atomic_load(&cu_stop)) {
			atomic_store(&cu_paused, true);
			usleep(100);
		}
		atomic_store(&cu_paused, false);
		for (size_t off = 0; off < cu_biglen; off += ps)
			(void)b[off];
		lm_region_advise(cu_big, 0, cu_biglen, LM_ADV_DONTNEED);
	}
	return NULL;
}

START_TEST(test_child_fault_on_unmapped_range)
{
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.handler_threads = 1;
	o.readahead_max = 1024;
	struct lm_runtime *rt = lmt_open_opts(&o);
	cu_biglen = 32u << 20;
	unsigned char *src = pattern_buf(0, cu_biglen);
	ck_assert_int_eq(lm_region_create_memory(rt, src, cu_biglen, 0, &cu_big), 0);
	ck_assert_int_eq(lm_region_advise(cu_big, 0, cu_biglen, LM_ADV_SEQUENTIAL), 0);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 16 * ps, 0, &r), 0);
	cu_p = lm_region_addr(r);
	atomic_store(&cu_stop, false);
	pthread_t bt;
	pthread_create(&bt, NULL, cu_busy, NULL);
	for (int round = 0; round < 20; round++) {
		if (CU_QUIESCE) {
			atomic_store(&cu_pause, true);
			while (!atomic_load(&cu_paused))
				usleep(100);
			usleep(5000);
		}
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			/* Losing the race to the unmap is a SIGSEGV, and fine. */
			signal(SIGSEGV, cu_segv);
			pthread_t t;
			pthread_create(&t, NULL, cu_toucher, NULL);
			usleep(200);
			munmap((void *)cu_p, 16 * ps);
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 5;
			/*
			 * The toucher either got its page or died with the unmapping
			 * (SIGSEGV; under ASan an exit(1)): never hangs.
			 */
			_exit(pthread_timedjoin_np(t, NULL, &ts) == ETIMEDOUT ? 42 : 0);
		}
		atomic_store(&cu_pause, false);
		int status;
		ck_assert_int_eq(waitpid(pid, &status, 0), pid);
		ck_assert_msg(!(WIFEXITED(status) && WEXITSTATUS(status) == 42),
			      "round %d: a child thread hung on its fault", round);
	}
	atomic_store(&cu_stop, true);
	pthread_join(bt, NULL);
	lm_runtime_close(rt);
	free(src);
}
END_TEST

/*
 * Regression: a region the application unmapped stayed in the lookup
 * table, so a new region that mmap placed at the same address was filled
 * with the old region's data, and destroying the old region unregistered
 * the new one (which then read zeros).
 */
START_TEST(test_new_region_where_one_was_unmapped)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	size_t len = NPAGES * ps;
	unsigned char *a = malloc(len), *b = malloc(len);
	memset(a, 'A', len);
	memset(b, 'B', len);
	struct lm_region *r, *r3;
	int placed = 0;
	for (int round = 0; round < 50 && !placed; round++) {
		ck_assert_int_eq(lm_region_create_memory(rt, a, len, 0, &r), 0);
		unsigned char *p = lm_region_addr(r);
		ck_assert_int_eq(munmap(p, len), 0);
		ck_assert_int_eq(lm_region_create_memory(rt, b, len, 0, &r3), 0);
		if (lm_region_addr(r3) == p) {
			placed = 1;
			ck_assert_int_eq(check_byte(lm_region_addr(r3), 'B', ps), -1);
			ck_assert_int_eq(lm_region_destroy(r), 0);
			/* Still registered and still the new region's: pages fill with 'B'. */
			ck_assert_int_eq(check_byte(lm_region_addr(r3), 'B', len), -1);
		} else {
			ck_assert_int_eq(lm_region_destroy(r), 0);
		}
		ck_assert_int_eq(lm_region_destroy(r3), 0);
	}
	ck_assert_msg(placed, "mmap never reused the address");
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(a);
	free(b);
}
END_TEST

/*
 * Regression: with fork events, the kernel kept a forking thread inside
 * clone() until a handler read the event, while the thread held glibc's
 * allocator locks and the runtime's; a handler that needed either (to
 * apply an munmap event, to allocate) could never read it, and fork()
 * hung after a few hundred rounds.  Forks in a loop, with munmap and
 * create/destroy churn: the test's timeout catches a hang.
 */
static atomic_bool fl_stop;
static struct lm_runtime *fl_rt;

static void *fl_churn(void *arg)
{
	(void)arg;
	while (!atomic_load(&fl_stop)) {
		struct lm_region *r;
		if (lm_region_create_zero(fl_rt, 8 * ps, 0, &r) < 0)
			continue;
		char *p = lm_region_addr(r);
		p[0] = 1;
		munmap(p + 4 * ps, ps);
		lm_region_destroy(r);
	}
	return NULL;
}

START_TEST(test_fork_loop_never_blocks)
{
	fl_rt = lmt_open(mode_of(_i));
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(fl_rt, 1 << 20, 0, &r), 0);
	((char *)lm_region_addr(r))[0] = 1;
	atomic_store(&fl_stop, false);
	pthread_t t;
	pthread_create(&t, NULL, fl_churn, NULL);
	for (int i = 0; i < 3000; i++) {
		pid_t c = fork();
		ck_assert_int_ge(c, 0);
		if (c == 0)
			_exit(((char *)lm_region_addr(r))[1]);	/* an unfilled page: 0 */
		int st;
		ck_assert_int_eq(waitpid(c, &st, 0), c);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "round %d: status 0x%x", i, st);
	}
	atomic_store(&fl_stop, true);
	pthread_join(t, NULL);
	ck_assert_int_eq(lm_runtime_close(fl_rt), 0);
}
END_TEST

/*
 * Regression: the prefetcher retried -EAGAIN (an munmap or mremap under
 * way) inside its read section, while the handler applying the previous
 * event waited for that section to end, and the pending event could then
 * never be read: everything hung.  Prefetch and populate run while other
 * threads munmap and mremap for two seconds.
 */
static atomic_bool pc_stop;
static struct lm_runtime *pc_rt;

static void *pc_churn(void *arg)
{
	(void)arg;
	unsigned char *dst = mmap(NULL, 4 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	while (!atomic_load(&pc_stop)) {
		struct lm_region *r;
		if (lm_region_create_zero(pc_rt, 8 * ps, 0, &r) < 0)
			continue;
		char *p = lm_region_addr(r);
		munmap(p + 7 * ps, ps);
		void *got = mremap(p + 4 * ps, 2 * ps, 2 * ps, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
		if (got == dst)
			(void)((volatile char *)dst)[0];
		lm_region_destroy(r);
		munmap(dst, 4 * ps);
		dst = mmap(dst, 4 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	}
	munmap(dst, 4 * ps);
	return NULL;
}

START_TEST(test_prefetch_during_address_space_changes)
{
	pc_rt = lmt_open(mode_of(_i));
	struct lm_region *big;
	size_t len = 16u << 20;
	ck_assert_int_eq(lm_region_create_zero(pc_rt, len, 0, &big), 0);
	atomic_store(&pc_stop, false);
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, pc_churn, NULL);
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		ck_assert_int_eq(lm_region_advise(big, 0, len, LM_ADV_WILLNEED), 0);
		ck_assert_int_eq(lm_region_advise(big, 0, len / 4, LM_ADV_POPULATE), 0);
		ck_assert_int_eq(lm_region_advise(big, 0, len, LM_ADV_DONTNEED), 0);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec - t0.tv_sec < 2);
	atomic_store(&pc_stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	ck_assert_int_eq(lm_runtime_close(pc_rt), 0);
}
END_TEST

/*
 * 6: fork() without exec.  The child must see every page as the parent
 * would: what the parent filled or wrote before the fork, and the source
 * for everything else.  Its own writes stay its own.
 */
#define FORK_MEMBASE (300 * 4096)

/*
 * Child side, no Check calls.  0 when the view is right, else 10 + page
 * (file), 40 + page (memory), 70 + page (own write lost), 100 + page
 * (dropped page not refilled from the source).
 */
static int child_view(unsigned char *f, unsigned char *m)
{
	for (size_t pg = 0; pg < NPAGES; pg++) {
		long bad = pg == 5 ? check_byte(f + pg * ps, 0x5A, ps)
				   : lmt_check_pattern(f + pg * ps, pg * ps, ps);
		if (bad != -1)
			return 10 + (int)pg;
	}
	for (size_t pg = 0; pg < NPAGES; pg++) {
		long bad = pg == 9 ? check_byte(m + pg * ps, 0x6B, ps)
				   : lmt_check_pattern(m + pg * ps, FORK_MEMBASE + pg * ps, ps);
		if (bad != -1)
			return 40 + (int)pg;
	}
	/* Private writes, to pages the parent filled and to pages it did not. */
	static const size_t wr[] = { 3, 5, 9, 12 };
	for (size_t i = 0; i < sizeof(wr) / sizeof(wr[0]); i++) {
		memset(f + wr[i] * ps, 0xC3, ps);
		memset(m + wr[i] * ps, 0xC3, ps);
	}
	for (size_t i = 0; i < sizeof(wr) / sizeof(wr[0]); i++)
		if (check_byte(f + wr[i] * ps, 0xC3, ps) != -1 ||
		    check_byte(m + wr[i] * ps, 0xC3, ps) != -1)
			return 70 + (int)wr[i];
	/* The child's own madvise: its dropped pages come back from the source too. */
	if (madvise(f + 12 * ps, ps, MADV_DONTNEED) != 0 ||
	    madvise(m + 12 * ps, ps, MADV_DONTNEED) != 0)
		return 99;
	if (lmt_check_pattern(f + 12 * ps, 12 * ps, ps) != -1 ||
	    lmt_check_pattern(m + 12 * ps, FORK_MEMBASE + 12 * ps, ps) != -1)
		return 112;
	return 0;
}

START_TEST(test_fork_child_view)
{
	int mode = mode_of(_i);
	struct lm_runtime *rt = lmt_open(mode);
	size_t len = NPAGES * ps;
	unsigned char *src = pattern_buf(FORK_MEMBASE, len);
	int fd = lmt_pattern_file(len);
	struct lm_region *rf, *rm;
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, len, 0, &rf), 0);
	ck_assert_int_eq(lm_region_create_memory(rt, src, len, 0, &rm), 0);
	close(fd);
	unsigned char *f = lm_region_addr(rf), *m = lm_region_addr(rm);

	/* The parent fills four pages only (no readahead): reads 0, writes 5 and 9. */
	ck_assert_int_eq(lm_region_advise(rf, 0, len, LM_ADV_RANDOM), 0);
	ck_assert_int_eq(lm_region_advise(rm, 0, len, LM_ADV_RANDOM), 0);
	ck_assert_int_eq(lmt_check_pattern(f, 0, ps), -1);
	ck_assert_int_eq(lmt_check_pattern(m, FORK_MEMBASE, ps), -1);
	memset(f + 5 * ps, 0x5A, ps);
	memset(m + 9 * ps, 0x6B, ps);
	struct lm_stats before = lmt_stats(rt);
	ck_assert_uint_eq(before.resident_pages, 4);

	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(child_view(f, m));
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status), "child died of signal %d",
		      WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	ck_assert_msg(WEXITSTATUS(status) == 0,
		      "child saw a wrong page: code %d (see child_view)",
		      WEXITSTATUS(status));

	/* The parent's view is untouched by the child's writes. */
	for (size_t pg = 0; pg < NPAGES; pg++) {
		long bf = pg == 5 ? check_byte(f + pg * ps, 0x5A, ps)
				  : lmt_check_pattern(f + pg * ps, pg * ps, ps);
		long bm = pg == 9 ? check_byte(m + pg * ps, 0x6B, ps)
				  : lmt_check_pattern(m + pg * ps, FORK_MEMBASE + pg * ps, ps);
		ck_assert_msg(bf == -1, "parent file page %zu byte %ld changed", pg, bf);
		ck_assert_msg(bm == -1, "parent memory page %zu byte %ld changed", pg, bm);
	}
	/* The child filled its pages itself; the parent's runtime counted the fork. */
	struct lm_stats after = lmt_stats(rt);
	ck_assert_uint_eq(after.forks_followed, before.forks_followed + 1);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(src);
}
END_TEST

/* 7: fork() + exec (system, popen, fork/execl) just works while regions exist. */
START_TEST(test_fork_exec)
{
	int mode = mode_of(_i);
	struct lm_runtime *rt = lmt_open(mode);
	size_t len = NPAGES * ps;
	unsigned char *src = pattern_buf(0, len);
	struct lm_region *rm, *rz;
	ck_assert_int_eq(lm_region_create_memory(rt, src, len, 0, &rm), 0);
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &rz), 0);
	unsigned char *m = lm_region_addr(rm), *z = lm_region_addr(rz);

	ck_assert_int_eq(system("true"), 0);
	ck_assert_int_eq(lmt_check_pattern(m, 0, 2 * ps), -1);
	memset(z + 3 * ps, 0x11, ps);
	ck_assert_int_eq(system("true"), 0);

	FILE *pf = popen("echo hi", "r");
	ck_assert_ptr_nonnull(pf);
	char line[16] = "";
	ck_assert_ptr_nonnull(fgets(line, sizeof(line), pf));
	ck_assert_int_eq(pclose(pf), 0);
	ck_assert_str_eq(line, "hi\n");

	/* fork + execl, the child first touching an unfilled page. */
	for (int k = 0; k < 3; k++) {
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			if (k == 0 && lmt_check_pattern(m + 7 * ps, 7 * ps, ps) != -1)
				_exit(3);
			execl("/bin/true", "true", (char *)NULL);
			_exit(127);
		}
		int status;
		ck_assert_int_eq(waitpid(pid, &status, 0), pid);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			      "fork+exec child %d: status 0x%x", k, status);
	}

	/* The parent still works. */
	ck_assert_int_eq(lmt_check_pattern(m, 0, len), -1);
	ck_assert_int_eq(check_byte(z + 3 * ps, 0x11, ps), -1);
	ck_assert_int_eq(check_byte(z + 4 * ps, 0, ps), -1);

	/* fork() runs the fork handlers; system() and popen() do not fork. */
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_ge(st.forks_followed, 3);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(src);
}
END_TEST

/* 8a: thread mode: system calls into unfilled pages wait for the fill. */
START_TEST(test_syscalls_thread)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	size_t len = 8 * ps;
	unsigned char *src = pattern_buf(0, len);
	struct lm_region *rz, *rm;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &rz), 0);
	ck_assert_int_eq(lm_region_create_memory(rt, src, len, 0, &rm), 0);
	unsigned char *z = lm_region_addr(rz), *m = lm_region_addr(rm);
	struct lm_stats st0 = lmt_stats(rt);
	unsigned char msg[300], data[600], buf[300];
	int p[2];
	ck_assert_int_eq(pipe(p), 0);
	if (st0.uffd_origin == LM_UFFD_SYSCALL_USER) {
		/* Documented: with user-mode-only faults the kernel's access gets EFAULT. */
		errno = 0;
		ck_assert_int_eq(write(p[1], m, 1), -1);
		ck_assert_int_eq(errno, EFAULT);
		ck_assert_int_eq(lm_runtime_close(rt), 0);
		free(src);
		return;
	}

	/* read() from a pipe into an untouched page of the zero region. */
	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (unsigned char)('a' + i % 26);
	ck_assert_int_eq(write(p[1], msg, sizeof(msg)), (ssize_t)sizeof(msg));
	ck_assert_int_eq(read(p[0], z + 3 * ps + 100, sizeof(msg)), (ssize_t)sizeof(msg));
	ck_assert_int_eq(check_byte(z + 3 * ps, 0, 100), -1);
	ck_assert_int_eq(memcmp(z + 3 * ps + 100, msg, sizeof(msg)), 0);
	ck_assert_int_eq(check_byte(z + 3 * ps + 100 + sizeof(msg), 0, ps - 100 - sizeof(msg)), -1);

	/* ... and of the memory region: the rest of the page is the source's. */
	ck_assert_int_eq(write(p[1], msg, sizeof(msg)), (ssize_t)sizeof(msg));
	ck_assert_int_eq(read(p[0], m + 5 * ps + 200, sizeof(msg)), (ssize_t)sizeof(msg));
	ck_assert_int_eq(lmt_check_pattern(m + 5 * ps, 5 * ps, 200), -1);
	ck_assert_int_eq(memcmp(m + 5 * ps + 200, msg, sizeof(msg)), 0);
	ck_assert_int_eq(lmt_check_pattern(m + 5 * ps + 200 + sizeof(msg), 5 * ps + 200 + sizeof(msg),
					   ps - 200 - sizeof(msg)), -1);

	/* pread() across two untouched pages, in both regions. */
	size_t n = sizeof(data);
	int fd = letters_fd(n, 3, data);
	ck_assert_int_eq(pread(fd, m + 2 * ps - 250, n, 0), (ssize_t)n);
	ck_assert_int_eq(lmt_check_pattern(m + ps, ps, ps - 250), -1);
	ck_assert_int_eq(memcmp(m + 2 * ps - 250, data, n), 0);
	ck_assert_int_eq(lmt_check_pattern(m + 2 * ps + 350, 2 * ps + 350, ps - 350), -1);
	ck_assert_int_eq(pread(fd, z + 7 * ps - 250, n, 0), (ssize_t)n);
	ck_assert_int_eq(check_byte(z + 6 * ps, 0, ps - 250), -1);
	ck_assert_int_eq(memcmp(z + 7 * ps - 250, data, n), 0);
	ck_assert_int_eq(check_byte(z + 7 * ps + 350, 0, ps - 350), -1);
	close(fd);

	/* write() from an untouched page: a kernel read fault, served from the source. */
	ck_assert_int_eq(write(p[1], m + 7 * ps + 10, sizeof(buf)), (ssize_t)sizeof(buf));
	ck_assert_int_eq(read(p[0], buf, sizeof(buf)), (ssize_t)sizeof(buf));
	ck_assert_int_eq(lmt_check_pattern(buf, 7 * ps + 10, sizeof(buf)), -1);
	ck_assert_int_eq(lmt_check_pattern(m + 7 * ps, 7 * ps, ps), -1);

	struct lm_stats st = lmt_stats(rt);
	/* At least the first touch of each region was a fault a handler thread served. */
	ck_assert_uint_ge(st.faults_thread, st0.faults_thread + 2);
	ck_assert_uint_eq(st.faults_signal, 0);
	ck_assert_uint_eq(st.sigbus_raised, 0);
	close(p[0]);
	close(p[1]);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(src);
}
END_TEST

/*
 * 8b: signal mode: the kernel cannot raise SIGBUS for its own access, so a
 * system call that writes into (or reads from) an unfilled page fails with
 * EFAULT, as lazymem(7) documents; LM_ADV_POPULATE first makes it work.
 */
START_TEST(test_syscalls_signal)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_SIGNAL);
	size_t len = 8 * ps;
	unsigned char *src = pattern_buf(0, len);
	struct lm_region *rz, *rm;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &rz), 0);
	ck_assert_int_eq(lm_region_create_memory(rt, src, len, 0, &rm), 0);
	unsigned char *z = lm_region_addr(rz), *m = lm_region_addr(rm);
	unsigned char data[300], buf[300];
	int fd = letters_fd(sizeof(data), 5, data);
	int p[2];
	ck_assert_int_eq(pipe(p), 0);

	struct { unsigned char *at; struct lm_region *r; size_t pg; } dst[] = {
		{ z + 3 * ps + 100, rz, 3 }, { m + 5 * ps + 200, rm, 5 },
	};
	for (size_t k = 0; k < 2; k++) {
		errno = 0;
		ck_assert_int_eq(pread(fd, dst[k].at, sizeof(data), 0), -1);
		ck_assert_int_eq(errno, EFAULT);
		ck_assert_int_eq(lm_region_advise(dst[k].r, dst[k].pg * ps, ps, LM_ADV_POPULATE), 0);
		ck_assert_int_eq(pread(fd, dst[k].at, sizeof(data), 0), (ssize_t)sizeof(data));
		ck_assert_int_eq(memcmp(dst[k].at, data, sizeof(data)), 0);
	}
	ck_assert_int_eq(check_byte(z + 3 * ps, 0, 100), -1);
	ck_assert_int_eq(check_byte(z + 3 * ps + 400, 0, ps - 400), -1);
	ck_assert_int_eq(lmt_check_pattern(m + 5 * ps, 5 * ps, 200), -1);
	ck_assert_int_eq(lmt_check_pattern(m + 5 * ps + 500, 5 * ps + 500, ps - 500), -1);

	/* A kernel read from an unfilled page: EFAULT too, then fine once populated. */
	errno = 0;
	ck_assert_int_eq(write(p[1], m + 7 * ps + 10, sizeof(buf)), -1);
	ck_assert_int_eq(errno, EFAULT);
	ck_assert_int_eq(lm_region_advise(rm, 7 * ps, ps, LM_ADV_POPULATE), 0);
	ck_assert_int_eq(write(p[1], m + 7 * ps + 10, sizeof(buf)), (ssize_t)sizeof(buf));
	ck_assert_int_eq(read(p[0], buf, sizeof(buf)), (ssize_t)sizeof(buf));
	ck_assert_int_eq(lmt_check_pattern(buf, 7 * ps + 10, sizeof(buf)), -1);

	/* A touched page needs nothing. */
	ck_assert_int_eq(lmt_check_pattern(m + ps, ps, 1), -1);
	ck_assert_int_eq(pread(fd, m + ps, sizeof(data), 0), (ssize_t)sizeof(data));
	ck_assert_int_eq(memcmp(m + ps, data, sizeof(data)), 0);

	close(fd);
	close(p[0]);
	close(p[1]);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(src);
}
END_TEST

/* 9: 8 threads read while the application drops the pages in a loop. */
#define NREADERS 8
#define STRESS_PAGES 64

struct stress {
	const unsigned char *base;
	const unsigned char *src;	/* NULL: zero region */
	atomic_bool stop;
	atomic_long bad, reads;
	atomic_uint seed;
};

static void *stress_reader(void *arg)
{
	struct stress *s = arg;
	unsigned seed = atomic_fetch_add(&s->seed, 7919);
	while (!atomic_load(&s->stop)) {
		size_t pg = (size_t)rand_r(&seed) % STRESS_PAGES;
		const volatile unsigned char *q = s->base + pg * ps;
		for (size_t i = 0; i < ps; i += 64) {
			unsigned char want = s->src ? s->src[pg * ps + i] : 0;
			if (q[i] != want)
				atomic_fetch_add(&s->bad, 1);
		}
		atomic_fetch_add(&s->reads, 1);
	}
	return NULL;
}

START_TEST(test_stress_dontneed)
{
	int mode = mode_of(_i & 1);
	bool memsrc = _i & 2;
	struct lm_runtime *rt = lmt_open(mode);
	size_t len = STRESS_PAGES * ps;
	unsigned char *src = pattern_buf(0, len);
	struct lm_region *r;
	if (memsrc)
		ck_assert_int_eq(lm_region_create_memory(rt, src, len, 0, &r), 0);
	else
		ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	struct stress s = { .base = p, .src = memsrc ? src : NULL };
	atomic_init(&s.seed, 1);
	atomic_init(&s.stop, false);
	atomic_init(&s.bad, 0);
	atomic_init(&s.reads, 0);
	struct lm_stats before = lmt_stats(rt);

	pthread_t th[NREADERS];
	for (int i = 0; i < NREADERS; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, stress_reader, &s), 0);
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	unsigned seed = 42;
	long rounds = 0;
	do {
		size_t first = (size_t)rand_r(&seed) % STRESS_PAGES;
		size_t count = 1 + (size_t)rand_r(&seed) % (STRESS_PAGES - first);
		ck_assert_int_eq(madvise(p + first * ps, count * ps, MADV_DONTNEED), 0);
		rounds++;
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 1000000000L);
	atomic_store(&s.stop, true);
	for (int i = 0; i < NREADERS; i++)
		ck_assert_int_eq(pthread_join(th[i], NULL), 0);

	ck_assert_msg(atomic_load(&s.bad) == 0, "%ld wrong bytes read (%s source, mode %d)",
		      atomic_load(&s.bad), memsrc ? "memory" : "zero", mode);
	ck_assert_int_gt(atomic_load(&s.reads), 0);
	ck_assert_int_gt(rounds, 0);
	if (memsrc)
		ck_assert_int_eq(lmt_check_pattern(p, 0, len), -1);
	else
		ck_assert_int_eq(check_byte(p, 0, len), -1);
	uint64_t ev = WAIT_GE(rt, events_remove, before.events_remove + (uint64_t)rounds);
	ck_assert_uint_ge(ev, before.events_remove + (uint64_t)rounds);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(src);
}
END_TEST

static Suite *events_suite(void)
{
	Suite *s = suite_create("events");
	TCase *tc;

	tc = tcase_create("madvise");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_madvise_dontneed, 0, 2);
	tcase_add_loop_test(tc, test_advise_dontneed, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("munmap");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_munmap_middle, 0, 2);
	tcase_add_loop_test(tc, test_munmap_whole, 0, 2);
	tcase_add_loop_test(tc, test_new_region_where_one_was_unmapped, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("mremap");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_mremap_whole, 0, 2);
	tcase_add_loop_test(tc, test_mremap_part, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("fork");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_fork_child_view, 0, 2);
	tcase_add_loop_test(tc, test_fork_exec, 0, 2);
	tcase_add_test(tc, test_child_fault_on_unmapped_range);
	tcase_add_loop_test(tc, test_fork_loop_never_blocks, 0, 2);
	tcase_add_loop_test(tc, test_prefetch_during_address_space_changes, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("syscalls");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_syscalls_thread);
	tcase_add_test(tc, test_syscalls_signal);
	suite_add_tcase(s, tc);

	tc = tcase_create("stress");
	tcase_set_timeout(tc, 30);
	/* _i: bit 0 the mode, bit 1 a memory (else zero) source. */
	tcase_add_loop_test(tc, test_stress_dontneed, 0, 4);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	ps = (size_t)sysconf(_SC_PAGESIZE);
	lmt_require_uffd();
	return lmt_run(events_suite());
}
