/* SPDX-License-Identifier: MIT */
/* Hugetlb runtimes (lm_options.page_size): sources, faults, dont-need, snapshots, images, and what they refuse. */
#define _GNU_SOURCE
#include "snaputil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MODE(i) (((i) & 1) ? LM_MODE_SIGNAL : LM_MODE_THREAD)

static size_t HPS;

static struct lm_runtime *open_huge(int mode)
{
	struct lm_options o = lmt_options(mode);
	o.page_size = HPS;
	o.swap_dir = lmt_dir;
	return lmt_open_opts(&o);
}

START_TEST(options)
{
	struct lm_runtime *rt;
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	/* Not a page size at all, or one the kernel has no pool for. */
	size_t bad[] = { 3u << 20, PS * 2, 1000, HPS * 3, (size_t)1 << 30 };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		o.page_size = bad[i];
		ck_assert_msg(lm_runtime_open(&o, &rt) == -EINVAL, "page size %zu accepted", bad[i]);
	}
	/* The base page size is the default spelled out. */
	o.page_size = PS;
	rt = lmt_open_opts(&o);
	ck_assert_uint_eq(lmt_stats(rt).page_size, PS);
	lm_runtime_close(rt);
	/* Eviction and asynchronous tracking cannot work on hugetlb pages: refused. */
	o.page_size = HPS;
	o.budget = 64u << 20;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EOPNOTSUPP);
	o.budget = 0;
	o.dirty_tracking = LM_DIRTY_ASYNC;
	ck_assert_int_eq(lm_runtime_open(&o, &rt), -EOPNOTSUPP);
	rt = open_huge(LM_MODE_THREAD);
	ck_assert_uint_eq(lmt_stats(rt).page_size, HPS);
	ck_assert_int_eq(lm_runtime_set_budget(rt, 64u << 20), -EOPNOTSUPP);
	ck_assert_int_eq(lm_runtime_set_budget(rt, 0), 0);
	int fd = lmt_pattern_file(HPS);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, HPS, LM_REGION_SHARED, &r), -EOPNOTSUPP);
	/* Offsets in a file are in the runtime's pages. */
	ck_assert_int_eq(lm_region_create_file(rt, fd, (off_t)PS, HPS, 0, &r), -EINVAL);
	close(fd);
	lm_runtime_close(rt);
	/* The environment, for programs that do not set options. */
	setenv("LAZYMEM_PAGE_SIZE", "2M", 1);
	if (HPS == 2u << 20) {
		ck_assert_int_eq(lm_runtime_open(NULL, &rt), 0);
		ck_assert_uint_eq(lmt_stats(rt).page_size, HPS);
		lm_runtime_close(rt);
	}
	setenv("LAZYMEM_PAGE_SIZE", "3M", 1);
	ck_assert_int_eq(lm_runtime_open(NULL, &rt), -EINVAL);
	unsetenv("LAZYMEM_PAGE_SIZE");
}
END_TEST

/* Zeros: one fault per huge page however many base pages are touched, length rounded up. */
START_TEST(zero_pages)
{
	struct lm_runtime *rt = open_huge(MODE(_i));
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 3 * HPS + 1, 0, &r), 0);
	ck_assert_uint_eq(lm_region_length(r), 4 * HPS);
	ck_assert_uint_eq((uintptr_t)lm_region_addr(r) % HPS, 0);
	unsigned char *p = lm_region_addr(r);
	for (size_t off = 0; off < 4 * HPS; off += PS)
		ck_assert_uint_eq(p[off], 0);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.resident_pages, 4);
	ck_assert_uint_eq(st.fills_zero, 4);
	ck_assert_uint_le(st.faults_missing, 4 + st.faults_dup);
	for (size_t off = 0; off < 4 * HPS; off += PS)
		p[off] = (unsigned char)(off / PS);
	for (size_t off = 0; off < 4 * HPS; off += PS)
		ck_assert_uint_eq(p[off], (unsigned char)(off / PS));
	ck_assert_uint_eq(lmt_stats(rt).resident_pages, 4);
	/* Dont-need drops whole huge pages; the next touch brings zeros back. */
	ck_assert_int_eq(lm_region_advise(r, HPS, 2 * HPS, LM_ADV_DONTNEED), 0);
	ck_assert_uint_eq(lmt_stats(rt).resident_pages, 2);
	for (size_t off = HPS; off < 3 * HPS; off += PS)
		ck_assert_uint_eq(p[off], 0);
	ck_assert_uint_eq(p[0], 0);
	ck_assert_uint_eq(p[3 * HPS + PS], (unsigned char)((3 * HPS + PS) / PS));
	/* Will-need advice prefetches whole huge pages, a few at a time, in the background. */
	ck_assert_int_eq(lm_region_advise(r, HPS, 2 * HPS, LM_ADV_DONTNEED), 0);
	ck_assert_uint_eq(lmt_stats(rt).resident_pages, 2);
	ck_assert_int_eq(lm_region_advise(r, HPS, 2 * HPS, LM_ADV_WILLNEED), 0);
	(void)LMT_WAIT_UNTIL(lmt_stats(rt).resident_pages >= 4, 2);
	ck_assert_uint_eq(lmt_stats(rt).resident_pages, 4);
	ck_assert_uint_ge(lmt_stats(rt).prefetch_pages, 2);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_uint_eq(lmt_stats(rt).resident_pages, 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* A memory buffer and a file, each ending inside a huge page; a page past the file's end is SIGBUS. */
START_TEST(memory_and_file)
{
	lmt_install_sigbus();
	struct lm_runtime *rt = open_huge(MODE(_i));
	size_t len = 2 * HPS + 5 * PS + 7;
	unsigned char *buf;
	struct lm_region *m = lmt_memory_region(rt, len, &buf);
	const unsigned char *p = lm_region_addr(m);
	ck_assert_int_eq(lmt_check_pattern(p, 0, len), -1);
	for (size_t i = len; i < 3 * HPS; i++)
		ck_assert_uint_eq(p[i], 0);
	/* Private: writes stay in the region. */
	memset((void *)p, 0xab, PS);
	ck_assert_uint_eq(buf[0], lmt_pattern(0));
	ck_assert_int_eq(lm_region_destroy(m), 0);
	free(buf);

	int fd = lmt_pattern_file(len);
	struct lm_region *f;
	ck_assert_int_eq(lm_region_create_file(rt, fd, (off_t)HPS, 3 * HPS, 0, &f), 0);
	p = lm_region_addr(f);
	size_t in_file = len - HPS;
	ck_assert_int_eq(lmt_check_pattern(p, HPS, in_file), -1);
	for (size_t i = in_file; i < 2 * HPS; i++)
		ck_assert_uint_eq(p[i], 0);
	ck_assert_int_eq(lmt_touch((volatile char *)p + 2 * HPS + PS, 0), 1);
	ck_assert_uint_eq(lmt_stats(rt).sigbus_raised, 1);
	ck_assert_uint_eq(lmt_stats(rt).fills_file, 2);
	ck_assert_int_eq(lm_region_destroy(f), 0);
	close(fd);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* The pool is reserved when the region is created: short of pages, the create fails, not a thread. */
START_TEST(pool_exhausted)
{
	struct lm_runtime *rt = open_huge(LM_MODE_THREAD);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, (size_t)1 << 40, 0, &r), -ENOMEM);
	ck_assert_int_eq(lm_region_create_zero(rt, HPS, 0, &r), 0);
	*(volatile char *)lm_region_addr(r) = 1;
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/*
 * A snapshot protects and preserves whole huge pages: one write copies
 * its page aside, the snapshot keeps it all, rollback puts it back, the
 * image restores it lazily, in a hugetlb runtime only.
 */
START_TEST(snapshot_whole_pages)
{
	struct lm_runtime *rt = open_huge(MODE(_i));
	struct lm_region *r;
	size_t len = 4 * HPS;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	unsigned char *want = malloc(len);
	lmt_fill_pattern(want, 0, 3 * HPS);
	memset(want + 3 * HPS, 0, HPS);
	memcpy(p, want, 3 * HPS);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	p[HPS + 3 * PS] ^= 0xff;
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.snapshot_preserved, 1);
	ck_assert_uint_gt(st.snapshot_pause_ns, 0);
	p[HPS + 9 * PS] ^= 0xff;
	p[3 * HPS] = 7;
	ck_assert_uint_eq(lmt_stats(rt).snapshot_preserved, 2);
	unsigned char *got = malloc(len);
	ck_assert_int_eq(lm_snapshot_read(s, 0, got, len), 0);
	ck_assert_int_eq(memcmp(got, want, len), 0);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("huge.img"), 0), 0);
	ck_assert_int_eq(lm_snapshot_wait(s), 0);
	ck_assert_int_eq(lm_snapshot_rollback(s), 0);
	ck_assert_int_eq(memcmp(p, want, len), 0);
	ck_assert_int_eq(lm_snapshot_release(s), 0);

	int fd = open(lmt_path("huge.img"), O_RDONLY);
	ck_assert_int_ge(fd, 0);
	struct lm_region *im;
	ck_assert_int_eq(lm_region_create_image(rt, fd, 0, &im), 0);
	const unsigned char *q = lm_region_addr(im);
	ck_assert_uint_eq(q[HPS + 5], want[HPS + 5]);
	ck_assert_uint_eq(lmt_stats(rt).restore_faults, 1);
	ck_assert_int_eq(memcmp(q, want, len), 0);
	ck_assert_int_eq(lm_region_destroy(im), 0);
	/* Its pages are huge: a runtime of base pages does not take it for its own. */
	struct lm_runtime *small = lmt_open(LM_MODE_THREAD);
	ck_assert_int_eq(lm_region_create_image(small, fd, 0, &im), -ENOEXEC);
	lm_runtime_close(small);
	close(fd);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	free(want);
	free(got);
}
END_TEST

/*
 * Invariant 6 on hugetlb pages: 8 writers flat out through the take and
 * the save, each write a base page inside a huge one; the snapshot and
 * its image hold every base page as it was when the take returned.
 */
START_TEST(consistent_under_writers)
{
	consistency_zero(open_huge(MODE(_i)), 8 * HPS / PS);
}
END_TEST

/* Huge pages the pool can still hand out: free and not reserved. */
static long hugetlb_available(void)
{
	return lmt_meminfo("HugePages_Free") - lmt_meminfo("HugePages_Rsvd");
}

/*
 * A fork() child of a hugetlb runtime, with the pool empty: it reads
 * what it inherited, and a write it cannot get a copy for, or a page it
 * cannot get filled, is SIGBUS, as for any private hugetlb memory,
 * never a fault replayed for ever.
 */
START_TEST(fork_child_with_empty_pool)
{
	lmt_install_sigbus();
	struct lm_runtime *rt = open_huge(LM_MODE_THREAD);
	struct lm_region *r, *hog = NULL;
	ck_assert_int_eq(lm_region_create_zero(rt, 2 * HPS, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	p[0] = 7;
	long avail = hugetlb_available();
	if (avail > 0)
		ck_assert_int_eq(lm_region_create_zero(rt, (size_t)avail * HPS, 0, &hog), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		alarm(20);
		int fails = 0;
		fails += p[0] != 7;
		fails += lmt_touch((volatile char *)p + 100, 1) != 1;
		fails += lmt_touch((volatile char *)p + HPS, 0) != 1;
		_exit(fails);
	}
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %#x", status);
	/* The parent's own pages are its reservation's: unaffected. */
	ck_assert_uint_eq(p[0], 7);
	p[HPS] = 8;
	ck_assert_uint_eq(p[HPS], 8);
	if (hog)
		ck_assert_int_eq(lm_region_destroy(hog), 0);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* An image of base pages in a hugetlb runtime: a clear error. */
START_TEST(foreign_page_size)
{
	struct lm_runtime *small = lmt_open(LM_MODE_THREAD);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(small, 16 * PS, 0, &r), 0);
	memset(lm_region_addr(r), 5, 16 * PS);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("small.img"), 0), 0);
	ck_assert_int_eq(lm_snapshot_wait(s), 0);
	lm_snapshot_release(s);
	lm_runtime_close(small);
	struct lm_runtime *rt = open_huge(LM_MODE_THREAD);
	int fd = open(lmt_path("small.img"), O_RDONLY);
	ck_assert_int_eq(lm_region_create_image(rt, fd, 0, &r), -ENOEXEC);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/*
 * The snapshot demo on huge pages (--hugetlb), as README's Quick start
 * offers it: the store, its snapshots, the fork() comparison, the lazy
 * restore and the rollback, every check of its own passing.
 */
START_TEST(snapshot_demo)
{
	const char *b = getenv("LMT_BUILDDIR");
	char cmd[1024], out[16384], pages[32];
	snprintf(pages, sizeof(pages), "%zu KiB pages", HPS >> 10);
	snprintf(cmd, sizeof(cmd), "LAZYMEM_SOCKET=off TMPDIR=%s %s/demos/lazymem-snapshot-demo "
		 "--quick --hugetlb 2>&1", lmt_dir, b && *b ? b : ".");
	FILE *f = popen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	size_t n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = '\0';
	int st = pclose(f);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "demo status %d:\n%s", st, out);
	ck_assert_msg(strstr(out, pages) && strstr(out, "every check passed"), "%s", out);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("hugetlb");
	TCase *tc = tcase_create("hugetlb");
	tcase_add_checked_fixture(tc, lmt_dir_setup, lmt_dir_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, options);
	tcase_add_loop_test(tc, zero_pages, 0, 2);
	tcase_add_loop_test(tc, memory_and_file, 0, 2);
	tcase_add_test(tc, pool_exhausted);
	tcase_add_loop_test(tc, snapshot_whole_pages, 0, 2);
	tcase_add_test(tc, foreign_page_size);
	tcase_add_test(tc, fork_child_with_empty_pool);
	tcase_add_loop_test(tc, consistent_under_writers, 0, 2);
	tcase_add_test(tc, snapshot_demo);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	lmt_require_uffd();
	HPS = lmt_huge_page_size();
	/*
	 * The largest test maps 8 huge pages twice over (a region and its
	 * image); the demo takes 32 more, its store and its fork() copy.
	 */
	lmt_require_hugetlb(48 * (HPS ? HPS : 1));
	return lmt_run(suite());
}
