/* SPDX-License-Identifier: MIT */
/* Unit tests of the swap file (lib/swap.c, compiled in): slots, checksums, batched I/O, failures. */
#include "internal.h"

#include "testutil.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define PS 4096u

/* A runtime shell with what a filler needs: options and page size. */
static struct lm_runtime *fake_runtime(int readahead)
{
	struct lm_runtime *rt = calloc(1, sizeof(*rt));
	lm_options_init(&rt->opt);
	rt->opt.readahead_max = readahead;
	rt->page_size = PS;
	rt->page_shift = 12;
	return rt;
}

static const char *tmpdir(void)
{
	const char *d = getenv("TMPDIR");
	return d && *d ? d : "/tmp";
}

static void fill_page(unsigned char *p, uint64_t seed)
{
	for (size_t i = 0; i < PS; i++)
		p[i] = (unsigned char)((seed * 131 + i * 7) ^ (i >> 8));
}

static int check_page(const unsigned char *p, uint64_t seed)
{
	for (size_t i = 0; i < PS; i++)
		if (p[i] != (unsigned char)((seed * 131 + i * 7) ^ (i >> 8)))
			return 0;
	return 1;
}

/* The file is unnamed (nothing to clean up after a crash) and private. */
START_TEST(file_is_unnamed_and_private)
{
	struct lm__swap s;
	ck_assert_int_eq(lm__swap_open(&s, tmpdir(), 1 << 20, PS), 0);
	struct stat st;
	ck_assert_int_eq(fstat(s.fd, &st), 0);
	ck_assert_uint_eq(st.st_nlink, 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0600);
	char link[64], target[4096];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", s.fd);
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	ck_assert_int_gt(n, 0);
	target[n] = 0;
	ck_assert_msg(strstr(target, "(deleted)") || strstr(target, "#"), "swap file named %s",
		      target);
	lm__swap_close(&s);
	ck_assert_int_eq(lm__swap_open(&s, "/nonexistent-dir", 1 << 20, PS), -ENOENT);
	ck_assert_int_eq(lm__swap_open(&s, tmpdir(), 100, PS), -EINVAL);
	ck_assert_int_eq(lm__swap_open(&s, NULL, 1 << 20, PS), -EINVAL);
}
END_TEST

START_TEST(allocator_fills_and_frees)
{
	struct lm__swap s;
	ck_assert_int_eq(lm__swap_open(&s, tmpdir(), 200 * PS, PS), 0);
	uint64_t slots[256];
	ck_assert_uint_eq(lm__swap_alloc(&s, slots, 150), 150);
	ck_assert_uint_eq(lm__swap_alloc(&s, slots + 150, 100), 50);	/* full at 200 */
	ck_assert_uint_eq(lm__swap_alloc(&s, slots, 1), 0);
	ck_assert_uint_eq(lm__swap_used(&s), 200);
	/* Every slot handed out once. */
	unsigned char seen[200] = { 0 };
	for (int i = 0; i < 200; i++) {
		ck_assert_uint_lt(slots[i], 200);
		ck_assert_uint_eq(seen[slots[i]]++, 0);
	}
	lm__swap_free(&s, slots[7]);
	lm__swap_free(&s, slots[7]);	/* twice: no effect */
	lm__swap_free(&s, 99999);	/* out of range: no effect */
	ck_assert_uint_eq(lm__swap_used(&s), 199);
	uint64_t again;
	ck_assert_uint_eq(lm__swap_alloc(&s, &again, 1), 1);
	ck_assert_uint_eq(again, slots[7]);
	lm__swap_close(&s);
}
END_TEST

/* Page pointers into the filler's stage, as lm__swap_write takes them. */
static unsigned char **stage_pages(struct lm__filler *f, unsigned n)
{
	static unsigned char *p[64];
	for (unsigned i = 0; i < n; i++)
		p[i] = f->stage + i * PS;
	return p;
}

/* Pages written in batches read back byte for byte, through io_uring or pread/pwrite. */
START_TEST(write_read_round_trip)
{
	struct lm_runtime *rt = fake_runtime(32);
	struct lm__filler f;
	ck_assert_int_eq(lm__filler_init(&f, rt, _i == 0), 0);
	if (_i == 0)
		ck_assert_ptr_nonnull(f.ring);
	struct lm__swap s;
	ck_assert_int_eq(lm__swap_open(&s, tmpdir(), 4096 * PS, PS), 0);
	uint64_t slots[4096];
	int done[32];
	ck_assert_uint_eq(lm__swap_alloc(&s, slots, 4096), 4096);
	for (unsigned b = 0; b < 4096; b += 32) {
		for (unsigned i = 0; i < 32; i++)
			fill_page(f.stage + i * PS, slots[b + i]);
		ck_assert_int_eq(lm__swap_write(&s, &f, stage_pages(&f, 32), slots + b, 32, done), 0);
	}
	/* Read back in another order and batch size. */
	for (int b = 4096 - 20; b >= 0; b -= 20) {
		memset(f.stage, 0, 20 * PS);
		ck_assert_int_eq(lm__swap_read(&s, &f, slots + b, 20, done), 0);
		for (unsigned i = 0; i < 20; i++)
			ck_assert_msg(check_page(f.stage + i * PS, slots[b + i]), "slot %llu",
				      (unsigned long long)slots[b + i]);
	}
	lm__swap_close(&s);
	lm__filler_fini(&f);
	free(rt);
}
END_TEST

/* A corrupted slot, a truncated file or a slot never written is an error, never data. */
START_TEST(corruption_is_detected)
{
	struct lm_runtime *rt = fake_runtime(8);
	struct lm__filler f;
	ck_assert_int_eq(lm__filler_init(&f, rt, _i == 0), 0);
	struct lm__swap s;
	ck_assert_int_eq(lm__swap_open(&s, tmpdir(), 64 * PS, PS), 0);
	uint64_t slots[8];
	int done[8];
	ck_assert_uint_eq(lm__swap_alloc(&s, slots, 8), 8);
	for (unsigned i = 0; i < 8; i++)
		fill_page(f.stage + i * PS, i + 1);
	ck_assert_int_eq(lm__swap_write(&s, &f, stage_pages(&f, 8), slots, 8, done), 0);
	/* Flip one byte of slot 3 on disk. */
	unsigned char b;
	off_t off = (off_t)(slots[3] * PS + 1000);
	ck_assert_int_eq(pread(s.fd, &b, 1, off), 1);
	b ^= 0x40;
	ck_assert_int_eq(pwrite(s.fd, &b, 1, off), 1);
	ck_assert_int_eq(lm__swap_read(&s, &f, slots, 8, done), -EBADMSG);
	for (unsigned i = 0; i < 8; i++) {
		ck_assert_int_eq(done[i], i == 3 ? -EBADMSG : 0);
		if (i != 3)
			ck_assert(check_page(f.stage + i * PS, i + 1));
	}
	/* Truncate the file under slots beyond the first. */
	uint64_t lowest = slots[0];
	for (unsigned i = 1; i < 8; i++)
		if (slots[i] < lowest)
			lowest = slots[i];
	ck_assert_int_eq(ftruncate(s.fd, (off_t)((lowest + 1) * PS)), 0);
	ck_assert_int_eq(lm__swap_read(&s, &f, slots, 8, done), -EBADMSG);
	for (unsigned i = 0; i < 8; i++)
		ck_assert_int_eq(done[i], slots[i] == lowest ? 0 : -EBADMSG);
	/* A slot allocated but never written has no checksum: not data. */
	uint64_t fresh;
	ck_assert_uint_eq(lm__swap_alloc(&s, &fresh, 1), 1);
	ck_assert_int_eq(lm__swap_read(&s, &f, &fresh, 1, done), -EBADMSG);
	lm__swap_close(&s);
	lm__filler_fini(&f);
	free(rt);
}
END_TEST

/*
 * Disk full: a swap file on a tiny tmpfs.  The allocator backs slots with
 * disk space before handing them out, so a full disk shows as fewer slots
 * while the pages are still in place; every slot handed out is writable.
 */
START_TEST(disk_full_is_reported)
{
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		/*
		 * A private mount namespace: the tmpfs vanishes with the child.
		 * main found that a tmpfs can be mounted: not here is a failure.
		 */
		char dir[] = "/tmp/lazymem-swapfull-XXXXXX";
		if (!mkdtemp(dir) || unshare(CLONE_NEWNS) < 0 ||
		    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
		    lmt_mount_small_tmpfs(dir) < 0) {
			printf("the small tmpfs: %s\n", strerror(errno));
			fflush(stdout);
			_exit(1);
		}
		struct lm_runtime *rt = fake_runtime(32);
		struct lm__filler f;
		struct lm__swap s;
		if (lm__filler_init(&f, rt, true) < 0 || lm__swap_open(&s, dir, 1 << 20, PS) < 0)
			_exit(2);
		uint64_t slots[32];
		int done[32];
		unsigned got = lm__swap_alloc(&s, slots, 32);
		if (got == 0 || got >= 32)
			_exit(3);
		/* Full: no more. */
		uint64_t more;
		if (lm__swap_alloc(&s, &more, 1) != 0)
			_exit(4);
		for (unsigned i = 0; i < got; i++)
			fill_page(f.stage + i * PS, i + 7);
		if (lm__swap_write(&s, &f, stage_pages(&f, got), slots, got, done) != 0)
			_exit(5);
		for (unsigned i = 0; i < got; i++)
			if (done[i] != 0)
				_exit(6);
		memset(f.stage, 0, got * PS);
		if (lm__swap_read(&s, &f, slots, got, done) != 0)
			_exit(7);
		for (unsigned i = 0; i < got; i++)
			if (!check_page(f.stage + i * PS, i + 7))
				_exit(8);
		lm__swap_close(&s);
		umount2(dir, MNT_DETACH);
		rmdir(dir);
		_exit(0);
	}
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status 0x%x%s", st,
		      WIFEXITED(st) && WEXITSTATUS(st) == 1 ? " (no small tmpfs: why is above)" : "");
}
END_TEST

/* A write that fails keeps the page in memory: it reads back, and is counted held until freed. */
START_TEST(failed_write_is_held)
{
	struct lm_runtime *rt = fake_runtime(8);
	struct lm__filler f;
	ck_assert_int_eq(lm__filler_init(&f, rt, _i == 0), 0);
	struct lm__swap s;
	ck_assert_int_eq(lm__swap_open(&s, tmpdir(), 64 * PS, PS), 0);
	_Atomic int64_t held = 0;
	s.held_pages = &held;
	uint64_t slots[8];
	int done[8];
	ck_assert_uint_eq(lm__swap_alloc(&s, slots, 8), 8);
	for (unsigned i = 0; i < 8; i++)
		fill_page(f.stage + i * PS, i + 100);
	atomic_store(&lm__swap_fail_writes, EIO);
	ck_assert_int_eq(lm__swap_write(&s, &f, stage_pages(&f, 8), slots, 8, done), -EIO);
	atomic_store(&lm__swap_fail_writes, 0);
	for (unsigned i = 0; i < 8; i++)
		ck_assert_int_eq(done[i], 1);
	ck_assert_int_eq(atomic_load(&held), 8);
	memset(f.stage, 0, 8 * PS);
	ck_assert_int_eq(lm__swap_read(&s, &f, slots, 8, done), 0);
	for (unsigned i = 0; i < 8; i++)
		ck_assert(check_page(f.stage + i * PS, i + 100));
	/* Freed: no longer held; a slot handed out again is written normally. */
	lm__swap_free(&s, slots[2]);
	ck_assert_int_eq(atomic_load(&held), 7);
	uint64_t again;
	ck_assert_uint_eq(lm__swap_alloc(&s, &again, 1), 1);
	ck_assert_uint_eq(again, slots[2]);
	fill_page(f.stage, 555);
	ck_assert_int_eq(lm__swap_write(&s, &f, stage_pages(&f, 1), &again, 1, done), 0);
	ck_assert_int_eq(done[0], 0);
	memset(f.stage, 0, PS);
	ck_assert_int_eq(lm__swap_read(&s, &f, &again, 1, done), 0);
	ck_assert(check_page(f.stage, 555));
	lm__swap_close(&s);
	lm__filler_fini(&f);
	free(rt);
}
END_TEST

int main(void)
{
	/* disk_full_is_reported fills a tmpfs of its own. */
	lmt_require_mount("a tmpfs", lmt_mount_small_tmpfs);
	Suite *s = suite_create("swap");
	TCase *tc = tcase_create("slots");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, file_is_unnamed_and_private);
	tcase_add_test(tc, allocator_fills_and_frees);
	tcase_add_loop_test(tc, write_read_round_trip, 0, 2);
	tcase_add_loop_test(tc, corruption_is_detected, 0, 2);
	tcase_add_test(tc, disk_full_is_reported);
	tcase_add_loop_test(tc, failed_write_is_held, 0, 2);
	suite_add_tcase(s, tc);
	return lmt_run(s);
}
