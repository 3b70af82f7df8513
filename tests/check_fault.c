/* SPDX-License-Identifier: MIT */
/* Tests of the fault path under concurrency: many threads on the same pages, in both modes. */
#define _GNU_SOURCE
#include "testutil.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <sys/mman.h>

#define PS 4096u
#define NTHREADS 12

static int mode_of(int i)
{
	return i ? LM_MODE_SIGNAL : LM_MODE_THREAD;
}

struct hammer {
	unsigned char *p;
	size_t pages;
	int id;
	pthread_barrier_t *go;
	long bad;
	int kind;	/* 0: zero source, 1: memory source */
};

/*
 * Each thread walks every page in its own order (forward, backward, or a
 * stride), checks what it reads, and writes its id into its own byte of
 * each page; the barrier lines them up so they collide on first touches.
 */
static void *hammer_main(void *arg)
{
	struct hammer *h = arg;
	size_t n = h->pages;
	pthread_barrier_wait(h->go);
	for (size_t k = 0; k < n; k++) {
		size_t pg;
		switch (h->id % 3) {
		case 0:
			pg = k;
			break;
		case 1:
			pg = n - 1 - k;
			break;
		default:
			pg = (k * 7919) % n;
			break;
		}
		unsigned char *page = h->p + pg * PS;
		/* Read a byte no thread writes: it must be the source's. */
		size_t off = PS - 1 - 64;
		unsigned char want = h->kind ? lmt_pattern(pg * PS + off) : 0;
		if (page[off] != want)
			h->bad++;
		page[h->id] = (unsigned char)(h->id + 1);
	}
	return NULL;
}

static void run_hammer(int mode, int kind, size_t pages)
{
	struct lm_runtime *rt = lmt_open(mode);
	unsigned char *buf = NULL;
	struct lm_region *r;
	if (kind) {
		buf = malloc(pages * PS);
		lmt_fill_pattern(buf, 0, pages * PS);
		ck_assert_int_eq(lm_region_create_memory(rt, buf, pages * PS, 0, &r), 0);
	} else {
		ck_assert_int_eq(lm_region_create_zero(rt, pages * PS, 0, &r), 0);
	}
	pthread_barrier_t go;
	pthread_barrier_init(&go, NULL, NTHREADS);
	struct hammer h[NTHREADS];
	pthread_t t[NTHREADS];
	for (int i = 0; i < NTHREADS; i++) {
		h[i] = (struct hammer){ lm_region_addr(r), pages, i, &go, 0, kind };
		ck_assert_int_eq(pthread_create(&t[i], NULL, hammer_main, &h[i]), 0);
	}
	for (int i = 0; i < NTHREADS; i++) {
		pthread_join(t[i], NULL);
		ck_assert_msg(h[i].bad == 0, "thread %d read %ld wrong bytes", i, h[i].bad);
	}
	/* Every thread's write survived every other thread's fill. */
	unsigned char *p = lm_region_addr(r);
	for (size_t pg = 0; pg < pages; pg++) {
		for (int i = 0; i < NTHREADS; i++)
			ck_assert_msg(p[pg * PS + (size_t)i] == i + 1, "page %zu byte %d lost", pg, i);
		size_t rest = PS - NTHREADS;
		if (kind)
			ck_assert_int_eq(lmt_check_pattern(p + pg * PS + NTHREADS,
							   pg * PS + NTHREADS, rest), -1);
	}
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.resident_pages, pages);
	if (mode == LM_MODE_THREAD)
		ck_assert_uint_gt(st.faults_thread, 0);
	else
		ck_assert_uint_gt(st.faults_signal, 0);
	ck_assert_uint_eq(st.sigbus_raised, 0);
	pthread_barrier_destroy(&go);
	lm_runtime_close(rt);
	free(buf);
}

START_TEST(threads_hammer_zero)
{
	for (int round = 0; round < 5; round++)
		run_hammer(mode_of(_i), 0, 512);
}
END_TEST

START_TEST(threads_hammer_memory)
{
	for (int round = 0; round < 5; round++)
		run_hammer(mode_of(_i), 1, 512);
}
END_TEST

/* All threads on one page at once: exactly one fill, nobody hangs. */
struct one {
	volatile unsigned char *p;
	pthread_barrier_t *go;
	int id;
};

static void *one_main(void *arg)
{
	struct one *o = arg;
	pthread_barrier_wait(o->go);
	o->p[o->id] = (unsigned char)(o->id + 1);
	return NULL;
}

START_TEST(threads_hammer_one_page)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	for (int round = 0; round < 200; round++) {
		struct lm_region *r;
		ck_assert_int_eq(lm_region_create_zero(rt, PS, 0, &r), 0);
		pthread_barrier_t go;
		pthread_barrier_init(&go, NULL, NTHREADS);
		struct one o[NTHREADS];
		pthread_t t[NTHREADS];
		for (int i = 0; i < NTHREADS; i++) {
			o[i] = (struct one){ lm_region_addr(r), &go, i };
			pthread_create(&t[i], NULL, one_main, &o[i]);
		}
		for (int i = 0; i < NTHREADS; i++)
			pthread_join(t[i], NULL);
		unsigned char *p = lm_region_addr(r);
		for (int i = 0; i < NTHREADS; i++)
			ck_assert_uint_eq(p[i], i + 1);
		ck_assert_int_eq(lm_region_destroy(r), 0);
	}
	struct lm_stats st = lmt_stats(rt);
	/* One page filled per round, however many threads faulted on it. */
	ck_assert_uint_eq(st.fills_zero, 200);
	lm_runtime_close(rt);
}
END_TEST

/*
 * Regression: a fault parked on a readahead page whose owner then put it
 * back to MISSING (its window crossed a hole, so the install failed) was
 * dropped, and its thread slept forever.  Two threads race on pages 6
 * and 7 of windows that always cross the hole at page 9.
 */
static volatile char *park_p;
static long park_ps;
static pthread_barrier_t park_bar;
static atomic_long park_done;
static atomic_bool park_stop;

static void *park_toucher(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_barrier_wait(&park_bar);
		if (atomic_load(&park_stop))
			return NULL;
		(void)park_p[7 * park_ps];
		atomic_fetch_add(&park_done, 1);
		pthread_barrier_wait(&park_bar);
	}
}

START_TEST(parked_fault_survives_failed_owner)
{
	park_ps = PS;
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.handler_threads = 2;
	struct lm_runtime *rt = lmt_open_opts(&o);
	static unsigned char src[64 * PS];
	memset(src, 'S', sizeof(src));
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_memory(rt, src, sizeof(src), 0, &r), 0);
	char *p = lm_region_addr(r);
	park_p = p;
	ck_assert_int_eq(munmap(p + 9 * PS, PS), 0);
	ck_assert_int_eq(lm_region_advise(r, 0, 64 * PS, LM_ADV_SEQUENTIAL), 0);
	pthread_barrier_init(&park_bar, NULL, 2);
	atomic_store(&park_done, 0);
	atomic_store(&park_stop, false);
	pthread_t t;
	pthread_create(&t, NULL, park_toucher, NULL);
	for (long i = 0; i < 20000; i++) {
		pthread_barrier_wait(&park_bar);
		ck_assert_int_eq(p[6 * PS], 'S');
		/* A lost wake-up shows as this wait never ending: the test times out. */
		while (atomic_load(&park_done) != i + 1)
			sched_yield();
		pthread_barrier_wait(&park_bar);
		ck_assert_int_eq(lm_region_advise(r, 0, 9 * PS, LM_ADV_DONTNEED), 0);
	}
	atomic_store(&park_stop, true);
	pthread_barrier_wait(&park_bar);
	pthread_join(t, NULL);
	lm_runtime_close(rt);
}
END_TEST

static uint64_t latency_entries(struct lm_stats st)
{
	uint64_t sum = 0;
	for (int i = 0; i < LM_LAT_BUCKETS; i++)
		sum += st.fill_latency[i];
	return sum;
}

/* Fill latencies land in the histogram, one entry per fill. */
START_TEST(latency_histogram_counts_fills)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 64 * PS, 0, &r), 0);
	ck_assert_int_eq(lm_region_advise(r, 0, 64 * PS, LM_ADV_RANDOM), 0);
	volatile unsigned char *p = lm_region_addr(r);
	for (int i = 0; i < 64; i++)
		p[i * PS] = 1;
	/*
	 * A fill's latency includes its install, which wakes the faulting
	 * thread, so the last entry may land a moment after the access.
	 */
	struct lm_stats st;
	(void)LMT_WAIT_UNTIL(latency_entries(st = lmt_stats(rt)) >= 64, 1);
	ck_assert_uint_eq(latency_entries(st), 64);
	ck_assert_uint_gt(st.fill_ns_total, 0);
	lm_runtime_close(rt);
}
END_TEST

/* Handler thread count is honoured; one thread still serves many faulting threads. */
START_TEST(single_handler_thread)
{
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.handler_threads = 1;
	struct lm_runtime *rt = lmt_open_opts(&o);
	ck_assert_uint_eq(lmt_stats(rt).handler_threads, 1);
	lm_runtime_close(rt);
	for (int round = 0; round < 2; round++)
		run_hammer(LM_MODE_THREAD, round, 256);
}
END_TEST

/* Thread mode with windows of win pages and two handlers, as streams need (on one CPU too). */
static struct lm_options stream_options(int win)
{
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.readahead_max = win;
	o.handler_threads = 2;
	return o;
}

static size_t resident_pages(const unsigned char *p, size_t pages)
{
	static unsigned char vec[8192];
	ck_assert_uint_le(pages, sizeof(vec));
	ck_assert_int_eq(mincore((void *)p, pages * PS, vec), 0);
	size_t n = 0;
	for (size_t i = 0; i < pages; i++)
		n += vec[i] & 1;
	return n;
}

/*
 * A sequential scan at full window becomes a stream (thread mode): the
 * handlers fill windows ahead of it, up to two 2 MiB units past the last
 * fault, without faults of their own to wait for.  Before streams a
 * scan had one window filled ahead, whatever it did next.  The stream's
 * pages hold the source's contents and take the scan's writes.
 */
START_TEST(sequential_scan_streams_ahead)
{
	enum { PAGES = 8192, WIN = 16, TOUCHED = 64, UNIT = (2u << 20) / PS };
	struct lm_options o = stream_options(WIN);
	struct lm_runtime *rt = lmt_open_opts(&o);
	unsigned char *buf = NULL;
	struct lm_region *r;
	if (_i) {
		buf = malloc((size_t)PAGES * PS);
		lmt_fill_pattern(buf, 0, (size_t)PAGES * PS);
		ck_assert_int_eq(lm_region_create_memory(rt, buf, (size_t)PAGES * PS, 0, &r), 0);
	} else {
		ck_assert_int_eq(lm_region_create_zero(rt, (size_t)PAGES * PS, 0, &r), 0);
	}
	unsigned char *p = lm_region_addr(r);
	for (size_t pg = 0; pg < TOUCHED; pg++)
		((volatile unsigned char *)p)[pg * PS] = 0xa5;
	size_t res = 0;
	(void)LMT_WAIT_UNTIL((res = resident_pages(p, PAGES)) >= TOUCHED + UNIT, 5);
	ck_assert_uint_ge(res, TOUCHED + UNIT);
	/* Bounded: two units past the last fault, the unit in progress, a window. */
	ck_assert_uint_le(res, TOUCHED + 3 * UNIT + WIN);
	ck_assert_uint_ge(lmt_stats(rt).stream_pages, UNIT);
	for (size_t pg = TOUCHED; pg < PAGES; pg++)
		p[pg * PS] = 0xa5;
	for (size_t pg = 0; pg < PAGES; pg++) {
		ck_assert_uint_eq(p[pg * PS], 0xa5);
		unsigned char *page = p + pg * PS;
		if (_i)
			ck_assert_int_eq(lmt_check_pattern(page + 1, pg * PS + 1, PS - 1), -1);
		else
			for (size_t i = 1; i < PS; i += 511)
				ck_assert_uint_eq(page[i], 0);
	}
	/* Dropped and scanned again: a stream again (the old one's cursor is forgotten). */
	ck_assert_int_eq(madvise(p, (size_t)PAGES * PS, MADV_DONTNEED), 0);
	(void)LMT_WAIT_UNTIL(resident_pages(p, PAGES) == 0, 5);
	ck_assert_uint_eq(resident_pages(p, PAGES), 0);
	for (size_t pg = 0; pg < TOUCHED; pg++)
		((volatile unsigned char *)p)[pg * PS] = 0x5a;
	(void)LMT_WAIT_UNTIL((res = resident_pages(p, PAGES)) >= TOUCHED + UNIT, 5);
	ck_assert_uint_ge(res, TOUCHED + UNIT);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	lm_runtime_close(rt);
	free(buf);
}
END_TEST

/*
 * A scan that writes while writes are tracked (a budget): the stream
 * installs its pages writable, as the fault's own window is, so the
 * writes take no write-protect faults.  Filled write-protected, every
 * page took one (found by review: 10x slower).
 */
START_TEST(tracked_write_scan_streams_writable)
{
	enum { PAGES = 8192 };
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.handler_threads = 2;
	o.budget = 1ull << 30;
	struct lm_runtime *rt = lmt_open_opts(&o);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, (size_t)PAGES * PS, 0, &r), 0);
	volatile unsigned char *p = lm_region_addr(r);
	struct lm_stats a = lmt_stats(rt);
	for (size_t pg = 0; pg < PAGES; pg++)
		p[pg * PS] = 1;
	struct lm_stats b = lmt_stats(rt);
	ck_assert_uint_gt(b.stream_pages - a.stream_pages, PAGES / 2);
	ck_assert_uint_lt(b.faults_wp - a.faults_wp, PAGES / 16);
	lm_runtime_close(rt);
}
END_TEST

/*
 * LM_OPT_NO_STREAM (0) and LAZYMEM_STREAM=0 (1): a scan gets a window
 * ahead, never a stream.  LAZYMEM_STREAM=1 over the flag (2), as under
 * the preload library, which sets it: streams again.
 */
START_TEST(stream_option_and_variable)
{
	enum { PAGES = 8192, WIN = 16, TOUCHED = 64, UNIT = (2u << 20) / PS };
	static const char *const env[] = { NULL, "0", "1" };
	struct lm_options o = stream_options(WIN);
	if (_i != 1)
		o.flags |= LM_OPT_NO_STREAM;
	if (env[_i]) {
		o.flags &= ~LM_OPT_NO_ENV;
		setenv("LAZYMEM_STREAM", env[_i], 1);
	}
	struct lm_runtime *rt = lmt_open_opts(&o);
	unsetenv("LAZYMEM_STREAM");
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, (size_t)PAGES * PS, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	for (size_t pg = 0; pg < TOUCHED; pg++)
		((volatile unsigned char *)p)[pg * PS] = 1;
	if (_i == 2) {
		(void)LMT_WAIT_UNTIL(resident_pages(p, PAGES) >= TOUCHED + UNIT, 5);
		ck_assert_uint_ge(resident_pages(p, PAGES), TOUCHED + UNIT);
		ck_assert_uint_gt(lmt_stats(rt).stream_pages, 0);
	} else {
		usleep(200 * 1000);
		ck_assert_uint_le(resident_pages(p, PAGES), TOUCHED + 2 * WIN);
		ck_assert_uint_eq(lmt_stats(rt).stream_pages, 0);
	}
	lm_runtime_close(rt);
}
END_TEST

/*
 * Sequential advice gives every fault the full window, but random
 * touches under it are no scan: no stream (each started one of 4 MiB
 * before review).  A scan under the advice still streams.
 */
START_TEST(sequential_advice_streams_scans_only)
{
	enum { PAGES = 16384, WIN = 16 };
	struct lm_options o = stream_options(WIN);
	struct lm_runtime *rt = lmt_open_opts(&o);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, (size_t)PAGES * PS, 0, &r), 0);
	ck_assert_int_eq(lm_region_advise(r, 0, (size_t)PAGES * PS, LM_ADV_SEQUENTIAL), 0);
	volatile unsigned char *p = lm_region_addr(r);
	for (size_t k = 0; k < 16; k++)
		p[((k * 7) % 16 * 1000 + 500) * PS] = 1;
	usleep(100 * 1000);
	ck_assert_uint_eq(lmt_stats(rt).stream_pages, 0);
	for (size_t pg = 0; pg < 2048; pg++)
		p[pg * PS] = 2;
	ck_assert_uint_gt(lmt_stats(rt).stream_pages, 0);
	lm_runtime_close(rt);
}
END_TEST

/*
 * A region's readahead and stream stop at its extent.  The application
 * unmapped A's upper half and moved region B there: a scan of A's lower
 * half, whose windows run on towards A's old end, must not install A's
 * pages into B's (found by review: the table knew the range was B's, the
 * fill did not ask).  B's pages keep B's contents.
 */
START_TEST(fills_stop_at_the_region_extent)
{
	enum { HALF = 256 };
	struct lm_options o = stream_options(16);
	struct lm_runtime *rt = lmt_open_opts(&o);
	unsigned char *abuf = malloc(2 * HALF * PS), *bbuf = malloc(HALF * PS);
	lmt_fill_pattern(abuf, 0, 2 * HALF * PS);
	memset(bbuf, 0x5b, HALF * PS);
	struct lm_region *a, *b;
	ck_assert_int_eq(lm_region_create_memory(rt, abuf, 2 * HALF * PS, 0, &a), 0);
	ck_assert_int_eq(lm_region_create_memory(rt, bbuf, HALF * PS, 0, &b), 0);
	unsigned char *pa = lm_region_addr(a), *upper = pa + HALF * PS;
	struct lm_stats s0 = lmt_stats(rt);
	ck_assert_int_eq(munmap(upper, HALF * PS), 0);
	void *moved = mremap(lm_region_addr(b), HALF * PS, HALF * PS, MREMAP_MAYMOVE | MREMAP_FIXED,
			     upper);
	ck_assert_ptr_eq(moved, upper);
	struct lm_stats s1;
	(void)LMT_WAIT_UNTIL((s1 = lmt_stats(rt)).events_remap > s0.events_remap &&
				     s1.events_unmap > s0.events_unmap, 5);
	ck_assert_ptr_eq(lm_region_addr(b), upper);
	for (size_t pg = 0; pg < HALF; pg++)
		ck_assert_uint_eq(((volatile unsigned char *)pa)[pg * PS], lmt_pattern(pg * PS));
	usleep(100 * 1000);	/* what a stream filled ahead has landed */
	for (size_t pg = 0; pg < HALF; pg++)
		ck_assert_msg(upper[pg * PS] == 0x5b && upper[pg * PS + PS - 1] == 0x5b,
			      "page %zu of the moved region holds %#x", pg, upper[pg * PS]);
	lm_runtime_close(rt);
	free(abuf);
	free(bbuf);
}
END_TEST

/* Regions destroyed while their streams fill ahead: nothing is touched after the destroy. */
START_TEST(stream_races_destroy)
{
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.readahead_max = 16;
	struct lm_runtime *rt = lmt_open_opts(&o);
	for (int round = 0; round < 40; round++) {
		struct lm_region *r;
		ck_assert_int_eq(lm_region_create_zero(rt, 4096 * PS, 0, &r), 0);
		volatile unsigned char *p = lm_region_addr(r);
		for (size_t pg = 0; pg < 48 + (size_t)round; pg++)
			p[pg * PS] = 1;
		ck_assert_int_eq(lm_region_destroy(r), 0);
	}
	lm_runtime_close(rt);
}
END_TEST

int main(void)
{
	lmt_require_uffd();
	Suite *s = suite_create("fault");
	TCase *tc = tcase_create("concurrency");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, threads_hammer_zero, 0, 2);
	tcase_add_loop_test(tc, threads_hammer_memory, 0, 2);
	tcase_add_loop_test(tc, threads_hammer_one_page, 0, 2);
	tcase_add_test(tc, single_handler_thread);
	tcase_add_test(tc, parked_fault_survives_failed_owner);
	tcase_add_loop_test(tc, sequential_scan_streams_ahead, 0, 2);
	tcase_add_test(tc, stream_races_destroy);
	tcase_add_test(tc, tracked_write_scan_streams_writable);
	tcase_add_loop_test(tc, stream_option_and_variable, 0, 3);
	tcase_add_test(tc, sequential_advice_streams_scans_only);
	tcase_add_test(tc, fills_stop_at_the_region_extent);
	suite_add_tcase(s, tc);
	tc = tcase_create("stats");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, latency_histogram_counts_fills, 0, 2);
	suite_add_tcase(s, tc);
	return lmt_run(s);
}
