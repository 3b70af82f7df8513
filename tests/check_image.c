/* SPDX-License-Identifier: MIT */
/* Snapshot images: the writer's crash safety, lazy restore, and every damaged-image case. */
#include "internal.h"
#include "testutil.h"

#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * Linked with the library's sources: the writer is internal until the
 * snapshot API uses it.  Restores go through lm_region_create_image.
 */

#define PS ((size_t)sysconf(_SC_PAGESIZE))
#define MODE(i) (((i) & 1) ? LM_MODE_SIGNAL : LM_MODE_THREAD)
/* Loop tests with bit 1 set write version 2 of the format (older data checksums). */
#define IMG_VERSION(i) (((i) & 2) ? 2u : 0u)

static unsigned image_version;


/* Page p of the test image: zero when p % 3 == 0, else a pattern. */
static void page_of(unsigned char *buf, size_t p)
{
	if (p % 3 == 0)
		memset(buf, 0, PS);
	else
		lmt_fill_pattern(buf, p * PS, PS);
}

/* Writes an image of npages (+ tail bytes) with pages added in a scrambled order. */
static void write_image(const char *path, size_t npages, size_t tail)
{
	struct lm__image_writer *w;
	ck_assert_int_eq(lm__image_create(path, npages * PS + tail, PS, &w), 0);
	if (image_version)
		lm__image_set_version(w, image_version);
	unsigned char *buf = malloc(PS);
	size_t total = npages + (tail ? 1 : 0);
	for (size_t i = 0; i < total; i++) {
		size_t p = (i * 7919) % total;	/* a permutation: 7919 is prime */
		page_of(buf, p);
		ck_assert_int_eq(lm__image_add(w, p, buf), 0);
	}
	ck_assert_int_eq(lm__image_add(w, 0, buf), -EINVAL);	/* twice */
	free(buf);
	ck_assert_int_eq(lm__image_commit(w), 0);
}

static struct lm_region *restore(struct lm_runtime *rt, const char *path, int *fdp)
{
	int fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	struct lm_region *r;
	int rc = lm_region_create_image(rt, fd, 0, &r);
	ck_assert_msg(rc == 0, "lm_region_create_image: %s", lm_strerror(rc));
	if (fdp)
		*fdp = fd;
	else
		close(fd);
	return r;
}

/* Every byte comes back, zero pages included; the region has the image's length. */
START_TEST(round_trip)
{
	const size_t npages = 300, tail = 100;
	image_version = IMG_VERSION(_i);
	write_image(lmt_path("img"), npages, tail);
	struct lm_runtime *rt = lmt_open(MODE(_i));
	struct lm_region *r = restore(rt, lmt_path("img"), NULL);
	ck_assert_uint_eq(lm_region_length(r), (npages + 1) * PS);
	const unsigned char *b = lm_region_addr(r);
	unsigned char *want = malloc(PS);
	for (size_t p = 0; p <= npages; p++) {
		page_of(want, p);
		ck_assert_msg(!memcmp(b + p * PS, want, PS), "page %zu", p);
	}
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.fills_image, npages + 1);
	ck_assert_uint_eq(st.image_errors, 0);
	free(want);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

/* Zero pages cost no I/O: a 4096-page image with one stored page is read once. */
START_TEST(zero_pages_cost_no_io)
{
	struct lm__image_writer *w;
	const size_t npages = 4096;
	ck_assert_int_eq(lm__image_create(lmt_path("sparse"), npages * PS, PS, &w), 0);
	unsigned char *buf = calloc(1, PS);
	buf[7] = 42;
	ck_assert_int_eq(lm__image_add(w, 1234, buf), 0);
	buf[7] = 0;
	ck_assert_int_eq(lm__image_add(w, 99, buf), 0);	/* zero: not stored */
	ck_assert_int_eq(lm__image_commit(w), 0);
	struct stat sb;
	ck_assert_int_eq(stat(lmt_path("sparse"), &sb), 0);
	ck_assert_int_le(sb.st_size, (off_t)(4 * PS));	/* header, one page, the index, the directory */
	struct lm_runtime *rt = lmt_open(MODE(_i));
	struct lm_stats st0 = lmt_stats(rt);
	struct lm_region *r = restore(rt, lmt_path("sparse"), NULL);
	const unsigned char *b = lm_region_addr(r);
	unsigned long sum = 0;
	for (size_t p = 0; p < npages; p++)
		sum += b[p * PS + 7];
	ck_assert_uint_eq(sum, 42);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.pread_reads - st0.pread_reads, 1);
	lm_region_destroy(r);
	free(buf);
	lm_runtime_close(rt);
}
END_TEST

/* The target appears only at commit, whole; an aborted write leaves nothing behind. */
START_TEST(crash_safe_writer)
{
	struct lm__image_writer *w;
	unsigned char *buf = malloc(PS);
	lmt_fill_pattern(buf, 0, PS);
	ck_assert_int_eq(lm__image_create(lmt_path("a"), 4 * PS, PS, &w), 0);
	ck_assert_int_eq(lm__image_add(w, 1, buf), 0);
	ck_assert_int_eq(access(lmt_path("a"), F_OK), -1);	/* not before commit */
	lm__image_abort(w);
	ck_assert_int_eq(access(lmt_path("a"), F_OK), -1);
	/* Nothing else either: no temporary file left. */
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A '%s')\"", lmt_dir);
	ck_assert_int_eq(system(cmd), 0);
	/* A commit replaces an existing image atomically. */
	write_image(lmt_path("a"), 8, 0);
	ck_assert_int_eq(lm__image_create(lmt_path("a"), 2 * PS, PS, &w), 0);
	ck_assert_int_eq(lm__image_add(w, 1, buf), 0);
	ck_assert_int_eq(lm__image_commit(w), 0);
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	struct lm_region *r = restore(rt, lmt_path("a"), NULL);
	ck_assert_uint_eq(lm_region_length(r), 2 * PS);
	ck_assert_int_eq(lmt_check_pattern((unsigned char *)lm_region_addr(r) + PS, 0, PS), -1);
	lm_region_destroy(r);
	lm_runtime_close(rt);
	free(buf);
	ck_assert_int_eq(lm__image_create(NULL, PS, PS, &w), -EINVAL);
	ck_assert_int_eq(lm__image_create("/nonexistent/dir/img", PS, PS, &w), -ENOENT);
}
END_TEST

static int open_err(const char *path)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	int fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	struct lm_region *r = (void *)0x1;
	int rc = lm_region_create_image(rt, fd, 0, &r);
	if (rc == 0)
		lm_region_destroy(r);
	else
		ck_assert_ptr_eq(r, (void *)0x1);
	close(fd);
	lm_runtime_close(rt);
	return rc;
}

static void patch(const char *path, off_t off, const void *bytes, size_t n)
{
	int fd = open(path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, bytes, n, off), (ssize_t)n);
	close(fd);
}

/* Foreign, damaged, truncated or other-version files are refused with a clear error. */
START_TEST(damaged_images_refused)
{
	const char *img = lmt_path("img");
	/* Not an image at all. */
	int fd = open(lmt_path("foreign"), O_CREAT | O_WRONLY, 0600);
	ck_assert_int_eq(write(fd, "#!/bin/sh\necho hello\n", 21), 21);
	close(fd);
	ck_assert_int_eq(open_err(lmt_path("foreign")), -ENOEXEC);
	fd = open(lmt_path("empty"), O_CREAT | O_WRONLY, 0600);
	close(fd);
	ck_assert_int_eq(open_err(lmt_path("empty")), -ENOEXEC);
	/* A flipped byte in the header (the length). */
	write_image(img, 16, 0);
	unsigned char c = 0x55;
	patch(img, 16, &c, 1);
	ck_assert_int_eq(open_err(img), -EBADMSG);
	/* Another version, with a header checksum that matches. */
	write_image(img, 16, 0);
	unsigned char h[128];
	fd = open(img, O_RDWR);
	ck_assert_int_eq(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
	uint32_t v = 99;
	memcpy(h + 8, &v, sizeof(v));
	uint64_t sum = lm__hash64(h, 120, 1);
	memcpy(h + 120, &sum, sizeof(sum));
	ck_assert_int_eq(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
	close(fd);
	ck_assert_int_eq(open_err(img), -ENOEXEC);
	/* Truncated: the index is gone. */
	write_image(img, 16, 0);
	struct stat sb;
	ck_assert_int_eq(stat(img, &sb), 0);
	ck_assert_int_eq(truncate(img, sb.st_size - (off_t)PS), 0);
	ck_assert_int_eq(open_err(img), -EBADMSG);
	/* A flipped byte in the directory (the last page). */
	write_image(img, 16, 0);
	ck_assert_int_eq(stat(img, &sb), 0);
	patch(img, sb.st_size - (off_t)PS + 3, &c, 1);
	ck_assert_int_eq(open_err(img), -EBADMSG);
	/* Bad arguments. */
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_image(rt, -1, 0, &r), -EBADF);
	ck_assert_int_eq(lm_region_create_image(rt, 0, 1, &r), -EINVAL);
	ck_assert_int_eq(lm_region_create_image(NULL, 0, 0, &r), -EINVAL);
	lm_runtime_close(rt);
}
END_TEST

/*
 * A damaged index page is found when a fault first needs it, not at the
 * open (which reads the directory only): SIGBUS for the pages it
 * describes, counted; pages of the other index pages fine.
 */
START_TEST(bad_index_page_raises_sigbus)
{
	const char *img = lmt_path("img");
	size_t per = PS / 16, npages = 3 * per * 3 / 2;	/* ~ 2/3 stored: two index pages and more */
	write_image(img, npages, 0);
	struct stat sb;
	ck_assert_int_eq(stat(img, &sb), 0);
	/* Index page 1, just before the directory (whose size is one page here). */
	size_t stored = npages - (npages + 2) / 3, ipages = (stored + per - 1) / per;
	ck_assert_uint_ge(ipages, 3);
	off_t index_off = sb.st_size - (off_t)PS - (off_t)(ipages * PS);
	unsigned char c = 0x5a;
	int fd = open(img, O_RDWR);
	ck_assert_int_eq(pwrite(fd, &c, 1, index_off + (off_t)PS + 40), 1);
	close(fd);
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(MODE(_i));
	struct lm_region *r = restore(rt, img, NULL);
	ck_assert_int_eq(lm_region_advise(r, 0, npages * PS, LM_ADV_RANDOM), 0);
	volatile char *b = lm_region_addr(r);
	unsigned char *want = malloc(PS);
	size_t bad = 0;
	for (size_t p = 0; p < npages; p++) {
		int bus = lmt_touch(b + p * PS, 0);
		bad += bus;
		if (!bus) {
			page_of(want, p);
			ck_assert_msg(!memcmp((const void *)(b + p * PS), want, PS), "page %zu", p);
		}
	}
	/* The stored pages of index page 1 (and the zero pages among them). */
	ck_assert_uint_ge(bad, per);
	ck_assert_uint_le(bad, per * 3 / 2 + 2);
	ck_assert_uint_eq(lmt_stats(rt).image_errors, bad);
	free(want);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

/*
 * A page whose data went bad after the image was opened: SIGBUS for that
 * page only, counted; its neighbours, in the same readahead window, fine.
 */
START_TEST(bad_page_raises_sigbus)
{
	const char *img = lmt_path("img");
	image_version = IMG_VERSION(_i);
	write_image(img, 64, 0);
	unsigned char head[12];
	int hfd = open(img, O_RDONLY);
	ck_assert_int_eq(pread(hfd, head, sizeof(head), 0), (ssize_t)sizeof(head));
	close(hfd);
	uint32_t v;
	memcpy(&v, head + 8, sizeof(v));
	ck_assert_uint_eq(v, image_version ? image_version : 3);
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(MODE(_i));
	int fd;
	struct lm_region *r = restore(rt, img, &fd);
	/* Page 10 (stored: 10 % 3 != 0) is corrupted on disk after the open. */
	int wfd = open(img, O_RDWR);
	ck_assert_int_ge(wfd, 0);
	struct lm__image *im = r->image;
	int64_t k = lm__image_find(im, fd, 10);
	ck_assert_int_ge(k, 0);
	const struct lm__image_ent *e = lm__image_ent(im, fd, (uint64_t)k);
	ck_assert_ptr_nonnull(e);
	ck_assert_uint_eq(e->pgno, 10);
	unsigned char c = 0xff;
	ck_assert_int_eq(pwrite(wfd, &c, 1, (off_t)(im->data_off + e->data * PS + 5)), 1);
	close(wfd);
	ck_assert_int_eq(lm_region_advise(r, 0, 64 * PS, LM_ADV_SEQUENTIAL), 0);
	volatile char *b = lm_region_addr(r);
	unsigned char *want = malloc(PS);
	for (size_t p = 0; p < 64; p++) {
		int bus = lmt_touch(b + p * PS, 0);
		ck_assert_msg(bus == (p == 10), "page %zu: sigbus %d", p, bus);
		if (!bus) {
			page_of(want, p);
			ck_assert(!memcmp((const void *)(b + p * PS), want, PS));
		}
	}
	ck_assert_int_eq(lmt_touch(b + 10 * PS, 0), 1);	/* and again */
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.image_errors, 1);
	free(want);
	close(fd);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

/* Under a budget, restored pages are dropped clean and come back from the image. */
START_TEST(restore_under_budget)
{
	const size_t npages = 1024;
	write_image(lmt_path("img"), npages, 0);
	struct lm_options o = lmt_options(MODE(_i));
	o.budget = 128 * PS;
	struct lm_runtime *rt = lmt_open_opts(&o);
	struct lm_region *r = restore(rt, lmt_path("img"), NULL);
	const unsigned char *b = lm_region_addr(r);
	unsigned char *want = malloc(PS);
	for (int pass = 0; pass < 2; pass++)
		for (size_t p = 0; p < npages; p++) {
			page_of(want, p);
			ck_assert_msg(!memcmp(b + p * PS, want, PS), "pass %d page %zu", pass, p);
		}
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.evicted_pages, npages);
	ck_assert_uint_eq(st.swap_writes, 0);	/* clean: the image has them */
	free(want);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

int main(void)
{
	lmt_require_uffd();
	Suite *s = suite_create("image");
	TCase *tc = tcase_create("image");
	tcase_add_checked_fixture(tc, lmt_dir_setup, lmt_dir_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, round_trip, 0, 4);
	tcase_add_loop_test(tc, zero_pages_cost_no_io, 0, 2);
	tcase_add_test(tc, crash_safe_writer);
	tcase_add_test(tc, damaged_images_refused);
	tcase_add_loop_test(tc, bad_page_raises_sigbus, 0, 4);
	tcase_add_loop_test(tc, bad_index_page_raises_sigbus, 0, 2);
	tcase_add_loop_test(tc, restore_under_budget, 0, 2);
	suite_add_tcase(s, tc);
	return lmt_run(s);
}
