/* SPDX-License-Identifier: MIT */
/* Tests of regions: creation, contents of the zero and memory sources, bad input, scale, advice. */
#include "testutil.h"

#include <sched.h>
#include <sys/mman.h>
#include <time.h>

#define PS 4096u

static int mode_of(int i)
{
	return i ? LM_MODE_SIGNAL : LM_MODE_THREAD;
}

START_TEST(zero_region_reads_zero_and_keeps_writes)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 1, 0, &r), 0);
	ck_assert_uint_eq(lm_region_length(r), PS);	/* rounded up to a page */
	ck_assert_int_eq((uintptr_t)lm_region_addr(r) % PS, 0);
	ck_assert_int_eq(lm_region_create_zero(rt, 64 * PS + 1, 0, &r), 0);
	ck_assert_uint_eq(lm_region_length(r), 65 * PS);
	unsigned char *p = lm_region_addr(r);
	for (size_t i = 0; i < 65 * PS; i++)
		ck_assert_msg(p[i] == 0, "byte %zu is %u", i, p[i]);
	for (size_t i = 0; i < 65 * PS; i += 97)
		p[i] = (unsigned char)i;
	for (size_t i = 0; i < 65 * PS; i++)
		ck_assert_uint_eq(p[i], i % 97 ? 0 : (unsigned char)i);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_ge(st.fills_zero, 65);
	ck_assert_uint_eq(st.regions_live, 2);
	ck_assert_uint_eq(st.region_bytes, 66 * PS);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_uint_eq(lmt_stats(rt).regions_live, 1);
	lm_runtime_close(rt);
}
END_TEST

/* A memory source: every byte copied, the tail past its length zero, the buffer untouched. */
START_TEST(memory_region_copies_bytes)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	size_t len = 300 * PS + 777;
	unsigned char *buf;
	struct lm_region *r = lmt_memory_region(rt, len, &buf);
	unsigned char *p = lm_region_addr(r);
	/* Touch in a scattered order first, then check everything. */
	for (size_t pg = 0; pg < 301; pg += 7)
		ck_assert_uint_eq(p[pg * PS + 5], lmt_pattern(pg * PS + 5));
	ck_assert_int_eq(lmt_check_pattern(p, 0, len), -1);
	for (size_t i = len; i < 301 * PS; i++)
		ck_assert_uint_eq(p[i], 0);
	/* Writes are private to the region. */
	memset(p, 0xee, 3 * PS);
	ck_assert_int_eq(lmt_check_pattern(buf, 0, len), -1);
	ck_assert_uint_ge(lmt_stats(rt).fills_memory, 301);
	lm_runtime_close(rt);
	free(buf);
}
END_TEST

START_TEST(bad_arguments)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	struct lm_region *r = (void *)0x1;
	char buf[16];
	errno = 777;
	ck_assert_int_eq(lm_region_create_zero(NULL, PS, 0, &r), -EINVAL);
	ck_assert_int_eq(lm_region_create_zero(rt, PS, 0, NULL), -EINVAL);
	ck_assert_int_eq(lm_region_create_zero(rt, 0, 0, &r), -EINVAL);
	ck_assert_int_eq(lm_region_create_zero(rt, SIZE_MAX, 0, &r), -EINVAL);
	ck_assert_int_eq(lm_region_create_zero(rt, PS, 1, &r), -EINVAL);
	ck_assert_int_eq(lm_region_create_memory(rt, NULL, PS, 0, &r), -EINVAL);
	ck_assert_int_eq(lm_region_create_memory(rt, buf, 0, 0, &r), -EINVAL);
	ck_assert_int_eq(lm_region_create_file(rt, -1, 0, PS, 0, &r), -EBADF);
	ck_assert_ptr_eq(r, (void *)0x1);
	ck_assert_int_eq(lm_region_destroy(NULL), -EINVAL);
	ck_assert_ptr_null(lm_region_addr(NULL));
	ck_assert_uint_eq(lm_region_length(NULL), 0);
	ck_assert_int_eq(lm_region_advise(NULL, 0, PS, LM_ADV_RANDOM), -EINVAL);
	ck_assert_int_eq(errno, 777);
	/* Nothing half-created is left behind. */
	ck_assert_uint_eq(lmt_stats(rt).regions_live, 0);
	lm_runtime_close(rt);
}
END_TEST

START_TEST(bad_advice)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 16 * PS, 0, &r), 0);
	ck_assert_int_eq(lm_region_advise(r, 0, 0, LM_ADV_RANDOM), -EINVAL);
	ck_assert_int_eq(lm_region_advise(r, 1, PS, LM_ADV_RANDOM), -EINVAL);
	ck_assert_int_eq(lm_region_advise(r, 16 * PS, PS, LM_ADV_RANDOM), -EINVAL);
	ck_assert_int_eq(lm_region_advise(r, 8 * PS, 9 * PS, LM_ADV_RANDOM), -EINVAL);
	ck_assert_int_eq(lm_region_advise(r, 0, PS, 42), -EINVAL);
	ck_assert_int_eq(lm_region_advise(r, 0, PS, -1), -EINVAL);
	ck_assert_int_eq(lm_region_advise(r, 0, 16 * PS, LM_ADV_NORMAL), 0);
	lm_runtime_close(rt);
}
END_TEST

/* A buffer inside one of the runtime's own regions would deadlock the handler. */
START_TEST(memory_source_inside_region_refused)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	struct lm_region *a, *b;
	ck_assert_int_eq(lm_region_create_zero(rt, 16 * PS, 0, &a), 0);
	char *p = lm_region_addr(a);
	ck_assert_int_eq(lm_region_create_memory(rt, p + PS, 4 * PS, 0, &b), -EINVAL);
	ck_assert_int_eq(lm_region_create_memory(rt, p - 2 * PS, 4 * PS, 0, &b), -EINVAL);
	ck_assert_uint_eq(lmt_stats(rt).regions_live, 1);
	/*
	 * Another runtime's region is refused too: a signal-mode runtime's
	 * unfilled page would make the copy fail (EFAULT), two thread-mode
	 * runtimes sourcing from each other could deadlock.
	 */
	struct lm_runtime *other = lmt_open(LM_MODE_SIGNAL);
	struct lm_region *c;
	ck_assert_int_eq(lm_region_create_zero(other, 16 * PS, 0, &c), 0);
	ck_assert_int_eq(lm_region_create_memory(rt, lm_region_addr(c), 4 * PS, 0, &b), -EINVAL);
	lm_runtime_close(other);
	/* A buffer that ends right where the region starts does not overlap it. */
	ck_assert_int_eq(lm_region_create_memory(rt, p - 100, 100, 0, &b), 0);
	ck_assert_int_eq(lm_region_destroy(b), 0);
	lm_runtime_close(rt);
}
END_TEST

/* 10,000 live regions in one runtime (one peer fails near 950). */
START_TEST(ten_thousand_regions)
{
	enum { N = 10000 };
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	struct lm_region **rs = calloc(N, sizeof(*rs));
	static unsigned char src[2 * PS];
	lmt_fill_pattern(src, 0, sizeof(src));
	for (int i = 0; i < N; i++) {
		int rc = i % 2 ? lm_region_create_zero(rt, 2 * PS, 0, &rs[i])
			       : lm_region_create_memory(rt, src, sizeof(src), 0, &rs[i]);
		ck_assert_msg(rc == 0, "region %d: %s", i, lm_strerror(rc));
	}
	ck_assert_uint_eq(lmt_stats(rt).regions_live, N);
	for (int i = N - 1; i >= 0; i--) {
		unsigned char *p = lm_region_addr(rs[i]);
		ck_assert_uint_eq(p[PS + 9], i % 2 ? 0 : lmt_pattern(PS + 9));
		p[1] = (unsigned char)i;
	}
	for (int i = 0; i < N; i++) {
		unsigned char *p = lm_region_addr(rs[i]);
		ck_assert_uint_eq(p[1], (unsigned char)i);
		ck_assert_uint_eq(p[0], i % 2 ? 0 : lmt_pattern(0));
	}
	/* Destroy every other one, then the rest through close. */
	for (int i = 0; i < N; i += 2)
		ck_assert_int_eq(lm_region_destroy(rs[i]), 0);
	ck_assert_uint_eq(lmt_stats(rt).regions_live, N / 2);
	ck_assert_uint_eq(((unsigned char *)lm_region_addr(rs[N - 1]))[1], (unsigned char)(N - 1));
	lm_runtime_close(rt);
	free(rs);
}
END_TEST

/* A sparse 1 TiB region costs metadata in proportion to the pages touched. */
START_TEST(sparse_terabyte_region)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	struct lm_region *r;
	size_t len = (size_t)1 << 40;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	ck_assert_int_eq(lm_region_advise(r, 0, len, LM_ADV_RANDOM), 0);
	unsigned char *p = lm_region_addr(r);
	uint64_t npages = len / PS, seed = 88172645463325252ull;
	enum { TOUCH = 3000 };
	uint64_t *pages = malloc(TOUCH * sizeof(*pages));
	for (int i = 0; i < TOUCH; i++) {
		seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
		pages[i] = seed % npages;
		p[pages[i] * PS + 11] = (unsigned char)(i + 1);
	}
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_le(st.resident_pages, TOUCH);
	ck_assert_uint_ge(st.resident_pages, TOUCH - 5);	/* a rare repeated page */
	ck_assert_msg(st.metadata_bytes <= 5u << 20, "metadata %llu bytes",
		      (unsigned long long)st.metadata_bytes);
	for (int i = TOUCH - 1; i >= 0; i--) {
		/* A page hit twice holds the later write. */
		int last = i;
		for (int j = i + 1; j < TOUCH; j++)
			if (pages[j] == pages[i])
				last = j;
		ck_assert_uint_eq(p[pages[i] * PS + 11], (unsigned char)(last + 1));
	}
	free(pages);
	lm_runtime_close(rt);
}
END_TEST

static uint64_t stat_at(struct lm_runtime *rt, size_t off)
{
	struct lm_stats st = lmt_stats(rt);
	return *(uint64_t *)((char *)&st + off);
}

static void wait_stat(struct lm_runtime *rt, size_t off, uint64_t want)
{
	ck_assert_msg(LMT_WAIT_UNTIL(stat_at(rt, off) >= want, 5), "stat at %zu never reached %llu",
		      off, (unsigned long long)want);
}

START_TEST(advice_random_and_sequential)
{
	struct lm_options o = lmt_options(mode_of(_i));
	o.readahead_max = 16;
	struct lm_runtime *rt = lmt_open_opts(&o);
	unsigned char *buf;
	struct lm_region *r = lmt_memory_region(rt, 256 * PS, &buf);
	unsigned char *p = lm_region_addr(r);
	/* Random on the first half: one page per fault, even when scanned in order. */
	ck_assert_int_eq(lm_region_advise(r, 0, 128 * PS, LM_ADV_RANDOM), 0);
	ck_assert_int_eq(lm_region_advise(r, 128 * PS, 128 * PS, LM_ADV_SEQUENTIAL), 0);
	struct lm_stats a = lmt_stats(rt);
	for (size_t pg = 0; pg < 128; pg++)
		ck_assert_uint_eq(p[pg * PS], lmt_pattern(pg * PS));
	struct lm_stats b = lmt_stats(rt);
	ck_assert_uint_eq(b.faults_missing - a.faults_missing, 128);
	ck_assert_uint_eq(b.readahead_pages - a.readahead_pages, 0);
	/*
	 * Sequential on the second half: full windows of 16 from the first
	 * fault; in thread mode the handlers also fill windows ahead of the
	 * application (a stream), so faults come once per several windows.
	 */
	for (size_t pg = 128; pg < 256; pg++)
		ck_assert_uint_eq(p[pg * PS + 1], lmt_pattern(pg * PS + 1));
	struct lm_stats c = lmt_stats(rt);
	uint64_t faults = c.faults_missing - b.faults_missing;
	ck_assert_uint_eq(c.fills_memory - b.fills_memory, 128);
	if (o.mode == LM_MODE_THREAD) {
		/* A fault may also park on a page a stream's filler holds. */
		ck_assert_uint_ge(faults, 1);
		ck_assert_uint_le(faults, 128 / 16);
		ck_assert_uint_ge(c.readahead_pages - b.readahead_pages, 128 - 128 / 16);
	} else {
		ck_assert_uint_eq(faults, 128 / 16);
		ck_assert_uint_eq(c.readahead_pages - b.readahead_pages, 128 - 128 / 16);
	}
	ck_assert_int_eq(lmt_check_pattern(p, 0, 256 * PS), -1);
	lm_runtime_close(rt);
	free(buf);
}
END_TEST

/* Later advice on the same range overrides earlier advice. */
START_TEST(newest_advice_wins)
{
	struct lm_options o = lmt_options(LM_MODE_SIGNAL);
	o.readahead_max = 16;
	struct lm_runtime *rt = lmt_open_opts(&o);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 64 * PS, 0, &r), 0);
	ck_assert_int_eq(lm_region_advise(r, 0, 32 * PS, LM_ADV_RANDOM), 0);
	ck_assert_int_eq(lm_region_advise(r, 0, 32 * PS, LM_ADV_SEQUENTIAL), 0);
	volatile char *p = lm_region_addr(r);
	struct lm_stats a = lmt_stats(rt);
	p[0] = 1;
	struct lm_stats b = lmt_stats(rt);
	ck_assert_uint_eq(b.readahead_pages - a.readahead_pages, 15);
	ck_assert_int_eq(lm_region_advise(r, 0, 32 * PS, LM_ADV_RANDOM), 0);
	p[40 * PS] = 1;	/* outside the advised range: the heuristic */
	p[33 * PS] = 1;
	ck_assert_int_eq(lm_region_advise(r, 48 * PS, 16 * PS, LM_ADV_RANDOM), 0);
	a = lmt_stats(rt);
	p[48 * PS] = 1;
	p[49 * PS] = 1;
	b = lmt_stats(rt);
	ck_assert_uint_eq(b.readahead_pages - a.readahead_pages, 0);
	lm_runtime_close(rt);
}
END_TEST

/* Populate says when it could not fill: a read error, a hole. */
START_TEST(populate_reports_failures)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	int fd = open("/proc/self/mem", O_RDONLY);
	ck_assert_int_ge(fd, 0);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, 4 * PS, 0, &r), 0);
	ck_assert_int_eq(lm_region_advise(r, 0, 4 * PS, LM_ADV_POPULATE), -EIO);
	close(fd);
	/* A hole the application unmapped: -ENOMEM, as madvise(MADV_POPULATE_READ) says. */
	struct lm_region *z;
	ck_assert_int_eq(lm_region_create_zero(rt, 8 * PS, 0, &z), 0);
	char *p = lm_region_addr(z);
	ck_assert_int_eq(munmap(p + 4 * PS, PS), 0);
	ck_assert_int_eq(lm_region_advise(z, 0, 8 * PS, LM_ADV_POPULATE), -ENOMEM);
	ck_assert_int_eq(p[7 * PS], 0);
	lm_runtime_close(rt);
}
END_TEST

/* Without advice a sequential scan grows the window; a random one does not. */
START_TEST(readahead_heuristic)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	size_t n = 4096;
	struct lm_region *seq, *rnd;
	ck_assert_int_eq(lm_region_create_zero(rt, n * PS, 0, &seq), 0);
	ck_assert_int_eq(lm_region_create_zero(rt, n * PS, 0, &rnd), 0);
	unsigned char *p = lm_region_addr(seq);
	struct lm_stats a = lmt_stats(rt);
	for (size_t pg = 0; pg < n; pg++)
		p[pg * PS] = 1;
	struct lm_stats b = lmt_stats(rt);
	uint64_t faults = b.faults_missing - a.faults_missing;
	ck_assert_msg(faults < n / 16, "sequential scan of %zu pages took %llu faults", n,
		      (unsigned long long)faults);
	ck_assert_uint_ge(b.readahead_pages - a.readahead_pages, n - faults);
	/* A random permutation: nearly every access its own fault. */
	p = lm_region_addr(rnd);
	size_t *perm = malloc(n * sizeof(*perm));
	for (size_t i = 0; i < n; i++)
		perm[i] = i;
	srand(7);
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)rand() % (i + 1), t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	for (size_t i = 0; i < n; i++)
		p[perm[i] * PS] = 1;
	struct lm_stats c = lmt_stats(rt);
	ck_assert_uint_ge(c.faults_missing - b.faults_missing, n - n / 16);
	free(perm);
	lm_runtime_close(rt);
}
END_TEST

/* A scan downwards (a buffer filled from its end) grows a window below the fault too (thread mode). */
START_TEST(readahead_descending)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	size_t n = 4096;
	unsigned char *buf;
	struct lm_region *r = lmt_memory_region(rt, n * PS, &buf);
	unsigned char *p = lm_region_addr(r);
	struct lm_stats a = lmt_stats(rt);
	unsigned sum = 0;
	for (size_t pg = n; pg-- > 0;)
		sum += p[pg * PS];
	struct lm_stats b = lmt_stats(rt);
	uint64_t faults = b.faults_missing - a.faults_missing;
	ck_assert_msg(faults < n / 8, "descending scan of %zu pages took %llu faults", n,
		      (unsigned long long)faults);
	unsigned want = 0;
	for (size_t pg = 0; pg < n; pg++)
		want += buf[pg * PS];
	ck_assert_uint_eq(sum, want);
	ck_assert_int_eq(memcmp(p, buf, n * PS), 0);
	lm_runtime_close(rt);
	free(buf);
}
END_TEST

START_TEST(advice_willneed_prefetches)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	unsigned char *buf;
	struct lm_region *r = lmt_memory_region(rt, 512 * PS, &buf);
	ck_assert_int_eq(lm_region_advise(r, 64 * PS, 256 * PS, LM_ADV_WILLNEED), 0);
	wait_stat(rt, offsetof(struct lm_stats, prefetch_pages), 256);
	struct lm_stats a = lmt_stats(rt);
	ck_assert_uint_eq(a.resident_pages, 256);
	unsigned char *p = lm_region_addr(r);
	ck_assert_int_eq(lmt_check_pattern(p + 64 * PS, 64 * PS, 256 * PS), -1);
	struct lm_stats b = lmt_stats(rt);
	ck_assert_uint_eq(b.faults_missing, a.faults_missing);	/* no fault at all */
	lm_runtime_close(rt);
	free(buf);
}
END_TEST

START_TEST(advice_populate_and_dontneed)
{
	struct lm_runtime *rt = lmt_open(mode_of(_i));
	unsigned char *buf;
	struct lm_region *r = lmt_memory_region(rt, 128 * PS, &buf);
	ck_assert_int_eq(lm_region_advise(r, 0, 128 * PS, LM_ADV_POPULATE), 0);
	struct lm_stats a = lmt_stats(rt);
	ck_assert_uint_eq(a.resident_pages, 128);
	unsigned char *p = lm_region_addr(r);
	memset(p, 0x5a, 128 * PS);
	ck_assert_uint_eq(lmt_stats(rt).faults_missing, a.faults_missing);
	/* Dont-need drops the writes: the next touch refills from the source. */
	ck_assert_int_eq(lm_region_advise(r, 32 * PS, 64 * PS, LM_ADV_DONTNEED), 0);
	struct lm_stats b = lmt_stats(rt);
	ck_assert_uint_eq(b.resident_pages, 64);
	ck_assert_uint_ge(b.dontneed_pages, 64);
	for (size_t i = 0; i < 128 * PS; i++) {
		unsigned char want = i >= 32 * PS && i < 96 * PS ? lmt_pattern(i) : 0x5a;
		ck_assert_msg(p[i] == want, "byte %zu: %u, want %u", i, p[i], want);
	}
	ck_assert_uint_eq(lmt_stats(rt).resident_pages, 128);
	lm_runtime_close(rt);
	free(buf);
}
END_TEST

/* Destroying a region that has a prefetch queued or running is safe. */
/*
 * Dont-need, then will-need at once, many times: the drop's event must be
 * applied before the prefetch fills the pages again, or it forgets them
 * (mapped, but counted out for good; check_hugetlb caught it once).
 */
START_TEST(dontneed_then_willneed)
{
	struct lm_runtime *rt = lmt_open(_i ? LM_MODE_SIGNAL : LM_MODE_THREAD);
	const size_t ps = (size_t)sysconf(_SC_PAGESIZE), pages = 64;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, pages * ps, 0, &r), 0);
	ck_assert_int_eq(lm_region_advise(r, 0, pages * ps, LM_ADV_POPULATE), 0);
	for (int round = 0; round < 300; round++) {
		ck_assert_int_eq(lm_region_advise(r, 0, pages / 2 * ps, LM_ADV_DONTNEED), 0);
		ck_assert_int_eq(lm_region_advise(r, 0, pages / 2 * ps, LM_ADV_WILLNEED), 0);
		ck_assert_msg(LMT_WAIT_UNTIL(lmt_stats(rt).resident_pages == pages, 2),
			      "round %d: %llu resident of %zu", round,
			      (unsigned long long)lmt_stats(rt).resident_pages, pages);
	}
	ck_assert_int_eq(lm_region_destroy(r), 0);
	lm_runtime_close(rt);
}
END_TEST

START_TEST(destroy_during_prefetch)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	for (int round = 0; round < 50; round++) {
		struct lm_region *r;
		ck_assert_int_eq(lm_region_create_zero(rt, 4096 * PS, 0, &r), 0);
		ck_assert_int_eq(lm_region_advise(r, 0, 4096 * PS, LM_ADV_WILLNEED), 0);
		if (round % 3)
			sched_yield();
		ck_assert_int_eq(lm_region_destroy(r), 0);
	}
	ck_assert_uint_eq(lmt_stats(rt).regions_live, 0);
	lm_runtime_close(rt);
}
END_TEST

int main(void)
{
	lmt_require_uffd();
	Suite *s = suite_create("region");
	TCase *tc = tcase_create("contents");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, zero_region_reads_zero_and_keeps_writes, 0, 2);
	tcase_add_loop_test(tc, memory_region_copies_bytes, 0, 2);
	suite_add_tcase(s, tc);
	tc = tcase_create("errors");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, bad_arguments);
	tcase_add_test(tc, bad_advice);
	tcase_add_test(tc, memory_source_inside_region_refused);
	suite_add_tcase(s, tc);
	tc = tcase_create("scale");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, ten_thousand_regions, 0, 2);
	tcase_add_loop_test(tc, sparse_terabyte_region, 0, 2);
	suite_add_tcase(s, tc);
	tc = tcase_create("advice");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, advice_random_and_sequential, 0, 2);
	tcase_add_test(tc, newest_advice_wins);
	tcase_add_loop_test(tc, populate_reports_failures, 0, 2);
	tcase_add_loop_test(tc, readahead_heuristic, 0, 2);
	tcase_add_test(tc, readahead_descending);
	tcase_add_loop_test(tc, advice_willneed_prefetches, 0, 2);
	tcase_add_loop_test(tc, advice_populate_and_dontneed, 0, 2);
	tcase_add_loop_test(tc, dontneed_then_willneed, 0, 2);
	tcase_add_test(tc, destroy_during_prefetch);
	suite_add_tcase(s, tc);
	return lmt_run(s);
}
