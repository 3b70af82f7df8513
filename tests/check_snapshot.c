/* SPDX-License-Identifier: MIT */
/* Snapshots: consistency under concurrent writers, swap and shared files, save and lazy restore, rollback, lifetimes, failures. */
#define _GNU_SOURCE
#include "snaputil.h"

#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MODE(i) (((i) & 1) ? LM_MODE_SIGNAL : LM_MODE_THREAD)

/* A runtime whose budget is npages / div pages (0: no budget), its swap files in the test directory. */
static struct lm_runtime *open_budget(int i, size_t npages, size_t div)
{
	struct lm_options o = lmt_options(MODE(i));
	o.budget = div ? npages * PS / div : 0;
	o.readahead_max = 16;
	o.swap_dir = lmt_dir;
	return lmt_open_opts(&o);
}

START_TEST(consistent_under_writers)
{
	consistency_zero(lmt_open(MODE(_i)), 4096);
}
END_TEST

/*
 * A region large enough that the take protects it in parallel parts
 * (an uneven length, so the parts differ): a part left unprotected
 * would let writes after the take into the snapshot.
 */
START_TEST(consistent_large_region)
{
	consistency_zero(lmt_open(MODE(_i)), 16384 + 517);
}
END_TEST

/* With most of the region in the swap file: slots a snapshot needs are not freed under it. */
START_TEST(consistent_with_swapped_pages)
{
	size_t npages = 3072;
	struct lm_runtime *rt = open_budget(_i, npages, 3);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, npages * PS, 0, &r), 0);
	/* Every page written once first: two thirds of them end up swapped. */
	unsigned char *base = lm_region_addr(r);
	for (size_t p = 0; p < npages; p++)
		memset(base + p * PS, 0, 8);
	ck_assert_uint_gt(lmt_stats(rt).swapped_pages, npages / 3);
	consistency(rt, r, NULL, npages, false);
	ck_assert_uint_gt(lmt_stats(rt).evicted_pages, npages);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* A shared file region, flushed over and over during the save: writeback changes the source. */
START_TEST(consistent_shared_file)
{
	size_t npages = 2048;
	struct lm_runtime *rt = open_budget(_i, npages, 2);
	int fd = lmt_pattern_file(npages * PS);
	unsigned char *init = malloc(npages * PS);
	lmt_fill_pattern(init, 0, npages * PS);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, npages * PS, LM_REGION_SHARED, &r), 0);
	consistency(rt, r, init, npages, true);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	close(fd);
	free(init);
}
END_TEST

/* Reads of memory and private file regions: pages never touched are their source's. */
START_TEST(sources_and_untouched_pages)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t len = 256 * PS;
	unsigned char *buf;
	struct lm_region *m = lmt_memory_region(rt, len, &buf);
	int fd = lmt_pattern_file(len);
	struct lm_region *f;
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, len, 0, &f), 0);
	struct lm_region *rs[2] = { m, f };
	for (int k = 0; k < 2; k++) {
		unsigned char *p = lm_region_addr(rs[k]);
		/* Half the pages touched (read or written) before the take. */
		for (size_t pg = 0; pg < 128; pg++) {
			if (pg % 2)
				p[pg * PS] ^= 0xff;
			else
				(void)*(volatile unsigned char *)(p + pg * PS);
		}
		struct lm_snapshot *s;
		ck_assert_int_eq(lm_snapshot_take(rs[k], 0, &s), 0);
		unsigned char *want = malloc(len);
		lmt_fill_pattern(want, 0, len);
		for (size_t pg = 1; pg < 128; pg += 2)
			want[pg * PS] ^= 0xff;
		/* Everything written after the take, touched or not. */
		for (size_t off = 0; off < len; off += 64)
			p[off] = 0x5a;
		unsigned char *got = read_all(s);
		ck_assert_msg(memcmp(got, want, len) == 0, "snapshot of source %d differs", k);
		/* A read at an odd offset and length. */
		unsigned char part[3 * 1000];
		ck_assert_int_eq(lm_snapshot_read(s, 5 * PS - 123, part, sizeof(part)), 0);
		ck_assert(memcmp(part, want + 5 * PS - 123, sizeof(part)) == 0);
		ck_assert_int_eq(lm_snapshot_read(s, len - 10, part, 11), -EINVAL);
		ck_assert_int_eq(lm_snapshot_save(s, lmt_path("src"), LM_SAVE_WAIT), 0);
		check_image_equals(rt, lmt_path("src"), want, len);
		ck_assert_int_eq(lm_snapshot_release(s), 0);
		free(got);
		free(want);
	}
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	close(fd);
	free(buf);
}
END_TEST

/* Rollback replaces only what changed, and several snapshots live side by side. */
START_TEST(rollback_and_several_snapshots)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 512, len = npages * PS;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	unsigned char *v1 = malloc(len), *v2 = malloc(len);
	for (size_t i = 0; i < len; i += 8)
		*(uint64_t *)(p + i) = i;
	memcpy(v1, p, len);
	struct lm_snapshot *s1, *s2, *s3;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s1), 0);
	for (size_t pg = 0; pg < npages; pg += 3)
		memset(p + pg * PS, 0xa1, PS);
	/* A page dropped with dont-need advice is a change too. */
	ck_assert_int_eq(lm_region_advise(r, 7 * PS, 2 * PS, LM_ADV_DONTNEED), 0);
	memcpy(v2, p, len);
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s2), 0);
	for (size_t pg = 1; pg < npages; pg += 5)
		memset(p + pg * PS, 0xb2, PS);
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s3), 0);
	ck_assert_uint_eq(lmt_stats(rt).snapshots_live, 3);
	unsigned char *g1 = read_all(s1), *g2 = read_all(s2);
	ck_assert(memcmp(g1, v1, len) == 0);
	ck_assert(memcmp(g2, v2, len) == 0);
	free(g1);
	free(g2);
	/* Back to the first: every page as it was, and the second still reads its own. */
	ck_assert_int_eq(lm_snapshot_rollback(s1), 0);
	ck_assert(memcmp(p, v1, len) == 0);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.snapshot_rollback_pages, 0);
	ck_assert_uint_lt(st.snapshot_rollback_pages, npages);
	g2 = read_all(s2);
	ck_assert(memcmp(g2, v2, len) == 0);
	free(g2);
	/* Released in the middle; then forward to the second. */
	ck_assert_int_eq(lm_snapshot_release(s3), 0);
	ck_assert_int_eq(lm_snapshot_rollback(s2), 0);
	ck_assert(memcmp(p, v2, len) == 0);
	/* The region keeps working: writes after a rollback stick. */
	memset(p, 0x77, PS);
	ck_assert_int_eq(p[PS - 1], 0x77);
	ck_assert_int_eq(lm_snapshot_rollback(s1), 0);
	ck_assert(memcmp(p, v1, len) == 0);
	ck_assert_int_eq(lm_snapshot_release(s1), 0);
	ck_assert_int_eq(lm_snapshot_release(s2), 0);
	ck_assert_uint_eq(lmt_stats(rt).snapshots_live, 0);
	free(v1);
	free(v2);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* A lazy restore reads only what is touched; zero pages cost nothing. */
START_TEST(lazy_restore)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 8192, len = npages * PS;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	for (size_t pg = 0; pg < npages; pg += 2)
		memset(p + pg * PS, (int)(pg % 251) + 1, PS);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("lazy"), LM_SAVE_WAIT), 0);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_eq(st.snapshot_bytes_written, npages / 2 * PS);
	struct stat sb;
	ck_assert_int_eq(stat(lmt_path("lazy"), &sb), 0);
	ck_assert_uint_lt((uint64_t)sb.st_size, len / 2 + 64 * PS);
	ck_assert_int_eq(count_files("lazy.tmp"), 0);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	ck_assert_int_eq(lm_region_destroy(r), 0);

	int fd = open(lmt_path("lazy"), O_RDONLY);
	struct lm_region *q;
	ck_assert_int_eq(lm_region_create_image(rt, fd, 0, &q), 0);
	close(fd);
	unsigned char *b = lm_region_addr(q);
	uint64_t f0 = lmt_stats(rt).restore_faults;
	ck_assert_int_eq(b[1000 * PS + 5], 1000 % 251 + 1);
	ck_assert_int_eq(b[1001 * PS + 5], 0);
	st = lmt_stats(rt);
	ck_assert_uint_ge(st.restore_faults - f0, 1);
	ck_assert_uint_le(st.fills_image, 64);
	for (size_t pg = 0; pg < npages; pg++)
		ck_assert_int_eq(b[pg * PS + PS - 1], pg % 2 ? 0 : (int)(pg % 251) + 1);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

static void corrupt(const char *path, off_t off, size_t len)
{
	int fd = open(path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	unsigned char b[64];
	ck_assert_uint_le(len, sizeof(b));
	ck_assert_int_eq(pread(fd, b, len, off), (ssize_t)len);
	for (size_t i = 0; i < len; i++)
		b[i] ^= 0x5a;
	ck_assert_int_eq(pwrite(fd, b, len, off), (ssize_t)len);
	close(fd);
}

static int open_image(struct lm_runtime *rt, const char *path, struct lm_region **r)
{
	int fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	int rc = lm_region_create_image(rt, fd, 0, r);
	close(fd);
	return rc;
}

/* Every damaged image is refused when opened, or raises SIGBUS for its one bad page. */
START_TEST(corrupted_images)
{
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 64, len = npages * PS;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	for (size_t pg = 0; pg < npages; pg++)
		memset(p + pg * PS, (int)pg + 1, PS);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	const char *names[] = { "good", "trunc", "header", "index", "page", "foreign", "empty" };
	for (int i = 0; i < 7; i++)
		ck_assert_int_eq(lm_snapshot_save(s, lmt_path(names[i]), LM_SAVE_WAIT), 0);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	struct stat sb;
	ck_assert_int_eq(stat(lmt_path("good"), &sb), 0);
	ck_assert_int_eq(truncate(lmt_path("trunc"), sb.st_size - 1), 0);
	corrupt(lmt_path("header"), 24, 1);			/* length */
	corrupt(lmt_path("index"), sb.st_size - (off_t)PS + 3, 1);
	corrupt(lmt_path("page"), (off_t)(1 + 10) * (off_t)PS + 100, 4);	/* data page 10 */
	corrupt(lmt_path("foreign"), 0, 8);			/* the magic */
	ck_assert_int_eq(truncate(lmt_path("empty"), 0), 0);
	struct lm_region *q;
	ck_assert_int_eq(open_image(rt, lmt_path("trunc"), &q), -EBADMSG);
	ck_assert_int_eq(open_image(rt, lmt_path("header"), &q), -EBADMSG);
	ck_assert_int_eq(open_image(rt, lmt_path("index"), &q), -EBADMSG);
	ck_assert_int_eq(open_image(rt, lmt_path("foreign"), &q), -ENOEXEC);
	ck_assert_int_eq(open_image(rt, lmt_path("empty"), &q), -ENOEXEC);
	/* A bad page: its toucher gets SIGBUS, counted; its neighbours are fine. */
	ck_assert_int_eq(open_image(rt, lmt_path("page"), &q), 0);
	unsigned char *b = lm_region_addr(q);
	ck_assert_int_eq(lm_region_advise(q, 0, len, LM_ADV_RANDOM), 0);
	ck_assert_int_eq(lmt_touch((volatile char *)b + 10 * PS, 0), 1);
	ck_assert_int_eq(b[9 * PS], 10);
	ck_assert_int_eq(b[11 * PS], 12);
	ck_assert_uint_eq(lmt_stats(rt).image_errors, 1);
	ck_assert_int_eq(open_image(rt, lmt_path("good"), &q), 0);
	b = lm_region_addr(q);
	for (size_t pg = 0; pg < npages; pg++)
		ck_assert_int_eq(b[pg * PS + 7], (int)pg + 1);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* Releasing while a save runs cancels it and leaves no temporary file behind. */
START_TEST(release_while_saving)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 32768, len = npages * PS;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	for (size_t off = 0; off < len; off += PS)
		p[off] = 1;
	for (int round = 0; round < 3; round++) {
		struct lm_snapshot *s;
		ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
		ck_assert_int_eq(lm_snapshot_save(s, lmt_path("cancel"), 0), 0);
		ck_assert_int_eq(lm_snapshot_save(s, lmt_path("cancel2"), 0), -EBUSY);
		for (size_t off = 0; off < len; off += 97 * PS)
			p[off] = 2;
		ck_assert_int_eq(lm_snapshot_release(s), 0);
		ck_assert_int_eq(count_files("cancel.tmp"), 0);
	}
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* Destroying a region with live snapshots: their calls fail cleanly, release frees them. */
START_TEST(destroy_with_live_snapshots)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t len = 16384 * PS;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	for (size_t off = 0; off < len; off += PS)
		p[off] = 3;
	struct lm_snapshot *a, *b;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &a), 0);
	ck_assert_int_eq(lm_snapshot_take(r, 0, &b), 0);
	ck_assert_int_eq(lm_snapshot_save(a, lmt_path("d"), 0), 0);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_uint_eq(lmt_stats(rt).snapshots_live, 0);
	int w = lm_snapshot_wait(a);
	ck_assert_msg(w == 0 || w == -ECANCELED, "wait: %s", lm_strerror(w));
	char c;
	ck_assert_int_eq(lm_snapshot_read(b, 0, &c, 1), -ENXIO);
	ck_assert_int_eq(lm_snapshot_save(b, lmt_path("e"), 0), -ENXIO);
	ck_assert_int_eq(lm_snapshot_rollback(b), -ENXIO);
	ck_assert_int_eq(lm_snapshot_release(a), 0);
	/* And the runtime closes with a snapshot still taken. */
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	ck_assert_int_eq(lm_snapshot_take(r, 0, &a), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	ck_assert_int_eq(lm_snapshot_release(a), 0);
	ck_assert_int_eq(lm_snapshot_release(b), 0);
	ck_assert_int_eq(count_files("d.tmp"), 0);
}
END_TEST

/* Bad arguments, and the configurations a snapshot cannot serve. */
START_TEST(bad_input)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 16 * PS, 0, &r), 0);
	struct lm_snapshot *s = NULL;
	ck_assert_int_eq(lm_snapshot_take(NULL, 0, &s), -EINVAL);
	ck_assert_int_eq(lm_snapshot_take(r, 0, NULL), -EINVAL);
	ck_assert_int_eq(lm_snapshot_take(r, 1, &s), -EINVAL);
	ck_assert_ptr_null(s);
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	ck_assert_int_eq(lm_snapshot_wait(s), -EINVAL);	/* nothing saved yet */
	ck_assert_int_eq(lm_snapshot_save(s, NULL, 0), -EINVAL);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("x"), 2), -EINVAL);
	ck_assert_int_eq(lm_snapshot_save(s, "/nonexistent/dir/img", 0), -ENOENT);
	ck_assert_int_eq(lm_snapshot_read(s, 0, NULL, 1), -EINVAL);
	ck_assert_int_eq(lm_snapshot_read(NULL, 0, &s, 1), -EINVAL);
	ck_assert_int_eq(lm_snapshot_release(NULL), -EINVAL);
	ck_assert_uint_eq(lm_snapshot_length(s), 16 * PS);
	ck_assert_uint_eq(lm_snapshot_length(NULL), 0);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);

	/* Asynchronous write protection cannot preserve a page before its write. */
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.dirty_tracking = LM_DIRTY_ASYNC;
	o.budget = 1 << 20;
	rt = lmt_open_opts(&o);
	ck_assert_int_eq(lm_region_create_zero(rt, 16 * PS, 0, &r), 0);
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), -EOPNOTSUPP);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/*
 * The spill file's filesystem fills up: the snapshot breaks with a clear
 * error, and the application's writes all go through, none lost.
 */
START_TEST(spill_full_breaks_snapshot_not_the_app)
{
	char small[600];
	snprintf(small, sizeof(small), "%s/small", lmt_dir);
	ck_assert_int_eq(mkdir(small, 0700), 0);
	/* main found that a tmpfs can be mounted: not here is a failure. */
	ck_assert_msg(lmt_mount_small_tmpfs(small) == 0, "mount a tmpfs on %s: %s", small,
		      strerror(errno));
	struct lm_options o = lmt_options(MODE(_i));
	o.swap_dir = small;
	struct lm_runtime *rt = lmt_open_opts(&o);
	size_t npages = 1024, len = npages * PS;
	unsigned char *buf;
	/* A memory source: written pages need copies (a file source would too). */
	int fd = lmt_pattern_file(len);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, len, 0, &r), 0);
	(void)buf;
	unsigned char *p = lm_region_addr(r);
	for (size_t off = 0; off < len; off += PS)
		p[off] ^= 1;
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	for (size_t off = 0; off < len; off += PS)
		memset(p + off, 0xee, 64);
	for (size_t off = 0; off < len; off += PS)
		ck_assert_int_eq(p[off + 63], 0xee);
	ck_assert_uint_ge(lmt_stats(rt).snapshot_errors, 1);
	char c;
	ck_assert_int_eq(lm_snapshot_read(s, 0, &c, 1), -ENOSPC);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("never"), LM_SAVE_WAIT), -ENOSPC);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
	close(fd);
	umount(small);
}
END_TEST

/*
 * Pages stay write-protected after the snapshots are gone, also where
 * mremap moves them: a write there is a write-protect fault in every
 * mode (signal mode replayed it for ever; found by review).
 */
START_TEST(moved_part_stays_writable)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 64;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, npages * PS, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	memset(p, 1, npages * PS);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	void *dst = mmap(NULL, 16 * PS, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(dst, MAP_FAILED);
	void *moved = mremap(p + 32 * PS, 16 * PS, 16 * PS, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ck_assert_ptr_eq(moved, dst);
	unsigned char *q = moved;
	for (size_t i = 0; i < 16; i++) {
		q[i * PS] = 5;
		ck_assert_int_eq(q[i * PS + 1], 1);
	}
	p[0] = 6;
	ck_assert_int_eq(q[0], 5);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	munmap(dst, 16 * PS);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/*
 * The saver lifts the protection of what it wrote: after a save, writes
 * to every page cost no fault and no copy, and the snapshot still reads
 * its own contents (from the image now).
 */
START_TEST(saver_lifts_protection)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 1024, len = npages * PS;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	for (size_t pg = 0; pg < npages; pg++)
		memset(p + pg * PS, (int)(pg % 200) + 1, PS);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("lift"), LM_SAVE_WAIT), 0);
	struct lm_stats a = lmt_stats(rt);
	ck_assert_uint_eq(a.snapshot_saved, npages);
	for (size_t pg = 0; pg < npages; pg++)
		p[pg * PS + 9] = 0;
	struct lm_stats b = lmt_stats(rt);
	ck_assert_uint_eq(b.faults_wp - a.faults_wp, 0);
	ck_assert_uint_eq(b.snapshot_spilled - a.snapshot_spilled, 0);
	unsigned char *got = read_all(s);
	for (size_t pg = 0; pg < npages; pg++)
		ck_assert_int_eq(got[pg * PS + 9], (int)(pg % 200) + 1);
	free(got);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/*
 * From the save call on, pages preserved go straight into the image: a
 * page is written once, nothing goes to the spill file, and the image has
 * the take's contents.
 */
START_TEST(copies_stream_into_the_image)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 4096, len = npages * PS;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	memset(p, 0x31, len);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	struct lm_stats a = lmt_stats(rt);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("stream"), 0), 0);
	for (size_t off = len; off > 0; off -= PS)
		p[off - PS] = 0x32;	/* from the end: ahead of the saver */
	ck_assert_int_eq(lm_snapshot_wait(s), 0);
	struct lm_stats b = lmt_stats(rt);
	ck_assert_uint_eq(b.snapshot_spilled - a.snapshot_spilled, 0);
	ck_assert_uint_eq(b.snapshot_bytes_written - a.snapshot_bytes_written, len);
	unsigned char *want = malloc(len);
	memset(want, 0x31, len);
	check_image_equals(rt, lmt_path("stream"), want, len);
	free(want);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/*
 * A write preserves its page's whole aligned block in one round trip:
 * a sequential writer takes one write-protect fault per 64 pages, not
 * one per page.  Pages still equal to an immutable source cost no copy.
 */
START_TEST(neighbours_share_a_fault)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 1024, len = npages * PS;
	struct lm_region *r, *fresh;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &fresh), 0);
	unsigned char *p = lm_region_addr(r), *q = lm_region_addr(fresh);
	memset(p, 1, len);
	struct lm_snapshot *s, *t;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	ck_assert_int_eq(lm_snapshot_take(fresh, 0, &t), 0);
	struct lm_stats a = lmt_stats(rt);
	for (size_t off = 0; off < len; off += PS)
		p[off] = 2;
	struct lm_stats b = lmt_stats(rt);
	ck_assert_uint_eq(b.snapshot_preserved - a.snapshot_preserved, npages);
	ck_assert_uint_eq(b.snapshot_spilled - a.snapshot_spilled, npages);
	ck_assert_uint_le(b.faults_wp - a.faults_wp, npages / 64 + 4 /* a block: lm_snapshot_take(3) */);
	/* Untouched at the take: read (filled protected, clean), then written. */
	for (size_t off = 0; off < len; off += PS)
		(void)*(volatile unsigned char *)(q + off);
	for (size_t off = 0; off < len; off += PS)
		q[off] = 3;
	struct lm_stats c = lmt_stats(rt);
	ck_assert_uint_eq(c.snapshot_preserved - b.snapshot_preserved, npages);
	ck_assert_uint_eq(c.snapshot_spilled - b.snapshot_spilled, 0);
	unsigned char *got = read_all(s), *zero = read_all(t);
	for (size_t off = 0; off < len; off++) {
		ck_assert_int_eq(got[off], 1);
		ck_assert_int_eq(zero[off], 0);
	}
	free(got);
	free(zero);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	ck_assert_int_eq(lm_snapshot_release(t), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* Rollback under a budget: pages swapped out before and after the take come back right. */
START_TEST(rollback_with_swapped_pages)
{
	size_t npages = 3072, len = npages * PS;
	struct lm_runtime *rt = open_budget(_i, npages, 3);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	uint64_t *p = lm_region_addr(r);
	for (size_t pg = 0; pg < npages; pg++)
		for (size_t w = 0; w < PS / 8; w++)
			p[pg * PS / 8 + w] = word(pg, 1, w);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	for (size_t pg = 0; pg < npages; pg += 2)
		for (size_t w = 0; w < PS / 8; w++)
			p[pg * PS / 8 + w] = word(pg, 2, w);
	ck_assert_uint_gt(lmt_stats(rt).swapped_pages, npages / 3);
	ck_assert_int_eq(lm_snapshot_rollback(s), 0);
	struct load l = { .npages = npages };
	for (size_t pg = 0; pg < npages; pg++)
		check_bracket(&l, (unsigned char *)p, pg, 1, 1);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	/* The counters add up: everything resident or swapped, nothing twice. */
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_le(st.resident_pages + st.swapped_pages, npages);
	ck_assert_uint_le(st.resident_pages, npages / 3 + 6 * 16);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* A partial mremap breaks the snapshots (they cannot follow it); a fork child gets -ECHILD. */
START_TEST(remap_and_fork)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 64;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, npages * PS, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	memset(p, 1, npages * PS);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char c;
		struct lm_snapshot *t;
		int ok = lm_snapshot_read(s, 0, &c, 1) == -ECHILD &&
			 lm_snapshot_save(s, lmt_path("child"), 0) == -ECHILD &&
			 lm_snapshot_rollback(s) == -ECHILD && lm_snapshot_take(r, 0, &t) == -ECHILD &&
			 lm_snapshot_wait(s) == -ECHILD && lm_snapshot_release(s) == 0;
		/* And the child's copy of the region still works. */
		p[0] = 7;
		_exit(ok && p[0] == 7 && p[PS] == 1 ? 0 : 1);
	}
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	char c;
	ck_assert_int_eq(lm_snapshot_read(s, 0, &c, 1), 0);
	ck_assert_int_eq(c, 1);
	void *dst = mmap(NULL, 16 * PS, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(dst, MAP_FAILED);
	ck_assert_ptr_eq(mremap(p + 16 * PS, 16 * PS, 16 * PS, MREMAP_MAYMOVE | MREMAP_FIXED, dst),
			 dst);
	/* The event is applied by a handler: wait for it to break the snapshot. */
	(void)LMT_WAIT_UNTIL(lm_snapshot_read(s, 0, &c, 1) != 0, 2);
	ck_assert_int_eq(lm_snapshot_read(s, 0, &c, 1), -EBUSY);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("x"), 0), -EBUSY);
	struct lm_snapshot *t;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &t), -EBUSY);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	munmap(dst, 16 * PS);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* A save to a full filesystem fails cleanly: nothing left behind, the snapshot intact. */
START_TEST(save_to_full_disk)
{
	char small[600];
	snprintf(small, sizeof(small), "%s/small", lmt_dir);
	ck_assert_int_eq(mkdir(small, 0700), 0);
	/* main found that a tmpfs can be mounted: not here is a failure. */
	ck_assert_msg(lmt_mount_small_tmpfs(small) == 0, "mount a tmpfs on %s: %s", small,
		      strerror(errno));
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 256, len = npages * PS;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r);
	memset(p, 0x42, len);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	char path[700];
	snprintf(path, sizeof(path), "%s/img", small);
	ck_assert_int_eq(lm_snapshot_save(s, path, LM_SAVE_WAIT), -ENOSPC);
	ck_assert_int_eq(access(path, F_OK), -1);
	char cmd[800];
	snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A '%s')\"", small);
	ck_assert_int_eq(system(cmd), 0);
	/*
	 * Written after the failure, a second save elsewhere has the take's
	 * contents: the pages the first one got into its (unlinked) file are
	 * read from there, the others were preserved.
	 */
	memset(p, 0x43, len);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("ok"), LM_SAVE_WAIT), 0);
	unsigned char *want = malloc(len);
	memset(want, 0x42, len);
	check_image_equals(rt, lmt_path("ok"), want, len);
	free(want);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/* The remove (madvise) or unmap (munmap) events the runtime has applied: each is counted once applied. */
static uint64_t applied(struct lm_runtime *rt, bool unmap)
{
	struct lm_stats st = lmt_stats(rt);
	return unmap ? st.events_unmap : st.events_remove;
}

/* Until the runtime has applied n remove (or unmap) events in all. */
static void wait_applied(struct lm_runtime *rt, bool unmap, uint64_t n)
{
	(void)LMT_WAIT_UNTIL(applied(rt, unmap) >= n, 2);
	ck_assert_uint_ge(applied(rt, unmap), n);
}

/*
 * A zero region of len bytes, its first written bytes set to 0x5a; *want:
 * what it holds.  Random advice: readahead would fill untouched pages
 * too, and without write tracking a filled page may have been written.
 */
static unsigned char *written_region(struct lm_runtime *rt, size_t len, size_t written,
				     struct lm_region **r, unsigned char **want)
{
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, r), 0);
	unsigned char *p = lm_region_addr(*r);
	ck_assert_int_eq(lm_region_advise(*r, 0, len, LM_ADV_RANDOM), 0);
	memset(p, 0x5a, written);
	*want = calloc(1, len);
	ck_assert_ptr_nonnull(*want);
	memset(*want, 0x5a, written);
	return p;
}

/*
 * The application's own madvise(MADV_DONTNEED) of pages a live snapshot
 * still needs: the kernel discards them before the runtime hears of it,
 * so the snapshot breaks (-EIO) instead of keeping what the pages refill
 * with.  Pages it already has, and pages the source still holds, do not
 * break it; lm_region_advise preserves first and never does.
 */
START_TEST(app_dontneed_breaks_snapshot)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 256, len = npages * PS;
	struct lm_region *r;
	unsigned char *want, *got = malloc(len);
	/* Pages 0-127 written; 128-255 never touched (the source's zeros). */
	unsigned char *p = written_region(rt, len, len / 2, &r, &want);
	struct lm_snapshot *s;
	uint64_t removes = applied(rt, false);
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	/*
	 * Page 0 written after the take (preserved, with the rest of its
	 * 64-page block), then dropped; page 200 dropped untouched.
	 */
	p[0] = 1;
	ck_assert_int_eq(madvise(p, PS, MADV_DONTNEED), 0);
	ck_assert_int_eq(madvise(p + 200 * PS, PS, MADV_DONTNEED), 0);
	/* The library's own advice preserves page 70 before it goes. */
	ck_assert_int_eq(lm_region_advise(r, 70 * PS, PS, LM_ADV_DONTNEED), 0);
	wait_applied(rt, false, removes + 3);
	ck_assert_int_eq(lm_snapshot_read(s, 0, got, len), 0);
	ck_assert(memcmp(got, want, len) == 0);
	/* Page 100: written before the take, lacked by the snapshot, discarded by the application. */
	uint64_t errors = lmt_stats(rt).snapshot_errors;
	ck_assert_int_eq(madvise(p + 100 * PS, PS, MADV_DONTNEED), 0);
	wait_applied(rt, false, removes + 4);
	ck_assert_int_eq(lm_snapshot_read(s, 0, got, len), -EIO);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("dontneed.img"), 0), -EIO);
	ck_assert_uint_eq(lmt_stats(rt).snapshot_errors, errors + 1);
	/* The region itself is only what the application asked for. */
	ck_assert_int_eq(p[100 * PS], 0);
	ck_assert_int_eq(p[101 * PS], 0x5a);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	free(want);
	free(got);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/*
 * Dont-need advice of the application's own while the evictor runs flat
 * out on a region that is only read: every page it drops is the source's
 * zeros or already evicted clean, so the snapshot must stay whole (pages
 * the evictor holds are judged by what they were, not by the claim).
 */
START_TEST(app_dontneed_under_eviction)
{
	size_t npages = 4096, len = npages * PS;
	struct lm_runtime *rt = open_budget(_i, npages, 4);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	volatile unsigned char *p = lm_region_addr(r);
	unsigned sum = 0;
	for (size_t i = 0; i < len; i += PS)
		sum += p[i];
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	/*
	 * Two seconds of drops, and on until the evictor has run during them
	 * (the premise): it has before, on the first pass.
	 */
	uint64_t seed = 7, evicted = lmt_stats(rt).evicted_pages;
	ck_assert_uint_gt(evicted, 0);
	for (double t0 = lmt_now(); lmt_now() - t0 < 2 || lmt_stats(rt).evicted_pages == evicted;) {
		ck_assert_msg(lmt_now() - t0 < 2 + 10 * lmt_time_scale(),
			      "no page was evicted during the drops");
		for (int k = 0; k < 64; k++)
			sum += p[lmt_rng(&seed) % npages * PS];
		size_t at = lmt_rng(&seed) % (npages - 16);
		ck_assert_int_eq(madvise((void *)(p + at * PS), 16 * PS, MADV_DONTNEED), 0);
	}
	ck_assert_uint_eq(sum, 0);
	unsigned char *got = read_all(s), *zeros = calloc(1, len);
	ck_assert(memcmp(got, zeros, len) == 0);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	free(got);
	free(zeros);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/*
 * The application drops one written page at a random instant of a save:
 * before the saver reaches it, while the saver holds it, or after.  The
 * snapshot then either breaks or reads exactly as at the take, never the
 * page's refill.
 */
START_TEST(app_dontneed_during_save)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t npages = 2048, len = npages * PS;
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, len, 0, &r), 0);
	unsigned char *p = lm_region_addr(r), *got = malloc(len);
	uint64_t seed = 11, removes = applied(rt, false);
	int broke = 0, whole = 0;
	for (int round = 0; round < 30; round++) {
		lmt_fill_pattern(p, 0, len);
		struct lm_snapshot *s;
		ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
		ck_assert_int_eq(lm_snapshot_save(s, lmt_path("during.img"), 0), 0);
		usleep((useconds_t)(lmt_rng(&seed) % 3000));
		size_t pg = lmt_rng(&seed) % npages;
		ck_assert_int_eq(madvise(p + pg * PS, PS, MADV_DONTNEED), 0);
		int rc = lm_snapshot_wait(s);
		ck_assert_msg(rc == 0 || rc == -EIO, "save: %s", lm_strerror(rc));
		/* Once the event is applied: broken, or every byte as at the take. */
		wait_applied(rt, false, removes + (uint64_t)round + 1);
		rc = lm_snapshot_read(s, 0, got, len);
		ck_assert_msg(rc == 0 || rc == -EIO, "read: %s", lm_strerror(rc));
		if (rc == 0) {
			long at = lmt_check_pattern(got, 0, len);
			ck_assert_msg(at < 0, "round %d: page %zu dropped, the snapshot differs at page %ld",
				      round, pg, at / (long)PS);
			whole++;
		} else {
			broke++;
		}
		ck_assert_int_eq(lm_snapshot_release(s), 0);
	}
	/*
	 * Both outcomes happen (about 20 and 10 of 30 here): a drop before the
	 * saver reaches its page breaks the snapshot, one after leaves it
	 * whole.
	 */
	ck_assert_msg(broke > 0 && whole > 0, "%d rounds broke, %d stayed whole", broke, whole);
	free(got);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

/*
 * munmap(2) of region pages by the application under a live snapshot:
 * a page the snapshot already has keeps its old contents in it; a
 * written page it still lacked breaks it (-EIO).
 */
START_TEST(app_munmap_breaks_snapshot)
{
	struct lm_runtime *rt = lmt_open(MODE(_i));
	size_t len = 256 * PS;
	struct lm_region *r;
	unsigned char *want;
	unsigned char *p = written_region(rt, len, len, &r, &want);
	uint64_t unmaps = applied(rt, true);
	struct lm_snapshot *s;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &s), 0);
	/* Page 1 written after the take (preserved with its block), then unmapped. */
	p[PS] = 1;
	ck_assert_int_eq(munmap(p + PS, PS), 0);
	wait_applied(rt, true, unmaps + 1);
	unsigned char *got = read_all(s);
	ck_assert(memcmp(got, want, len) == 0);
	free(got);
	/* Page 200: written before the take and never preserved. */
	ck_assert_int_eq(munmap(p + 200 * PS, PS), 0);
	wait_applied(rt, true, unmaps + 2);
	got = malloc(len);
	ck_assert_int_eq(lm_snapshot_read(s, 0, got, len), -EIO);
	ck_assert_int_eq(p[199 * PS], 0x5a);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	free(got);
	free(want);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("snapshot");
	TCase *tc = tcase_create("snapshot");
	tcase_add_checked_fixture(tc, lmt_dir_setup, lmt_dir_teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, consistent_under_writers, 0, 2);
	tcase_add_loop_test(tc, consistent_large_region, 0, 2);
	tcase_add_loop_test(tc, consistent_with_swapped_pages, 0, 2);
	tcase_add_loop_test(tc, consistent_shared_file, 0, 2);
	tcase_add_loop_test(tc, sources_and_untouched_pages, 0, 2);
	tcase_add_loop_test(tc, rollback_and_several_snapshots, 0, 2);
	tcase_add_loop_test(tc, lazy_restore, 0, 2);
	tcase_add_loop_test(tc, corrupted_images, 0, 2);
	tcase_add_loop_test(tc, release_while_saving, 0, 2);
	tcase_add_loop_test(tc, destroy_with_live_snapshots, 0, 2);
	tcase_add_test(tc, bad_input);
	tcase_add_loop_test(tc, spill_full_breaks_snapshot_not_the_app, 0, 2);
	tcase_add_loop_test(tc, moved_part_stays_writable, 0, 2);
	tcase_add_loop_test(tc, saver_lifts_protection, 0, 2);
	tcase_add_loop_test(tc, neighbours_share_a_fault, 0, 2);
	tcase_add_loop_test(tc, copies_stream_into_the_image, 0, 2);
	tcase_add_loop_test(tc, rollback_with_swapped_pages, 0, 2);
	tcase_add_loop_test(tc, remap_and_fork, 0, 2);
	tcase_add_loop_test(tc, save_to_full_disk, 0, 2);
	tcase_add_loop_test(tc, app_dontneed_breaks_snapshot, 0, 2);
	tcase_add_loop_test(tc, app_dontneed_under_eviction, 0, 2);
	tcase_add_loop_test(tc, app_dontneed_during_save, 0, 2);
	tcase_add_loop_test(tc, app_munmap_breaks_snapshot, 0, 2);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	lmt_require_uffd();
	/* spill_full_breaks_snapshot_not_the_app and save_to_full_disk fill a tmpfs. */
	lmt_require_mount("a tmpfs", lmt_mount_small_tmpfs);
	return lmt_run(suite());
}
