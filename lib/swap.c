/* SPDX-License-Identifier: MIT */
/* The swap file: page-sized slots, their allocator and checksums, and batched slot I/O. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * The file has no name: it is opened with O_TMPFILE (or created and
 * unlinked at once where the filesystem lacks it), mode 0600, so nobody
 * else can open it and a crash leaves nothing behind to clean up.
 *
 * Each slot holds one page.  The allocator is a bitmap with a rotating
 * hint, under a mutex: slots are taken by the evictor in batches, never
 * on the signal path.  Each slot's checksum is kept in memory and checked
 * on every read, so a corrupted or truncated file is never returned as
 * data.  The bitmap and the checksums are mmap'ed without reservation:
 * a large maximum costs memory only for the slots in use.
 */

/* A 64-bit mix of a page, folded to 32 bits: cheap, and any changed word changes it. */
static uint32_t page_sum(const unsigned char *p, size_t len)
{
	uint64_t h = 0x9e3779b97f4a7c15ull ^ len;
	for (size_t i = 0; i + 8 <= len; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, sizeof(w));
		h ^= w + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
		h *= 0xff51afd7ed558ccdull;
	}
	h ^= h >> 33;
	/* 0 means "never written": a written slot's sum is never 0. */
	uint32_t s = (uint32_t)(h ^ (h >> 32));
	return s ? s : 1;
}

static void *map_zeroed(size_t bytes)
{
	void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static int open_unnamed(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC | O_EXCL, 0600);
	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
		return fd < 0 ? -errno : fd;
	/* No O_TMPFILE here: a named file, unlinked before anyone can use it. */
	char path[4096];
	int n = snprintf(path, sizeof(path), "%s/lazymem-swap-XXXXXX", dir);
	if (n < 0 || (size_t)n >= sizeof(path))
		return -ENAMETOOLONG;
	fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	unlink(path);
	return fd;
}

int lm__swap_open(struct lm__swap *s, const char *dir, uint64_t max_bytes, size_t page_size)
{
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	if (!dir || !*dir || max_bytes < page_size || !page_size)
		return -EINVAL;
	s->page_size = page_size;
	s->nslots = max_bytes / page_size;
	size_t words = (size_t)((s->nslots + 63) / 64);
	s->bitmap = map_zeroed(words * sizeof(uint64_t));
	s->sums = map_zeroed((size_t)s->nslots * sizeof(uint32_t));
	if (!s->bitmap || !s->sums) {
		lm__swap_close(s);
		return -ENOMEM;
	}
	s->fd = open_unnamed(dir);
	if (s->fd < 0) {
		int err = s->fd;
		lm__swap_close(s);
		return err;
	}
	pthread_mutex_init(&s->lock, NULL);
	s->lock_ok = true;
	return 0;
}

void lm__swap_close(struct lm__swap *s)
{
	if (s->fd >= 0)
		close(s->fd);
	if (s->bitmap)
		munmap(s->bitmap, (size_t)((s->nslots + 63) / 64) * sizeof(uint64_t));
	if (s->sums)
		munmap(s->sums, (size_t)s->nslots * sizeof(uint32_t) ?: 1);
	if (s->lock_ok)
		pthread_mutex_destroy(&s->lock);
	memset(s, 0, sizeof(*s));
	s->fd = -1;
}

/*
 * Takes up to n free slots into slots[]; returns how many (0 when the
 * file is full).  Allocation rotates through the file so that slots freed
 * and taken again do not all land on the same blocks.
 */
unsigned lm__swap_alloc(struct lm__swap *s, uint64_t *slots, unsigned n)
{
	unsigned got = 0;
	pthread_mutex_lock(&s->lock);
	uint64_t words = (s->nslots + 63) / 64;
	for (uint64_t k = 0; k < words && got < n && s->used < s->nslots; k++) {
		uint64_t w = (s->hint + k) % words;
		while (got < n && ~s->bitmap[w]) {
			unsigned bit = (unsigned)__builtin_ctzll(~s->bitmap[w]);
			uint64_t slot = w * 64 + bit;
			if (slot >= s->nslots)
				break;
			s->bitmap[w] |= 1ull << bit;
			s->used++;
			slots[got++] = slot;
		}
		if (got == n)
			s->hint = w;
	}
	pthread_mutex_unlock(&s->lock);
	return got;
}

void lm__swap_free(struct lm__swap *s, uint64_t slot)
{
	if (slot >= s->nslots)
		return;
	pthread_mutex_lock(&s->lock);
	uint64_t bit = 1ull << (slot % 64);
	if (s->bitmap[slot / 64] & bit) {
		s->bitmap[slot / 64] &= ~bit;
		s->used--;
		s->sums[slot] = 0;
	}
	pthread_mutex_unlock(&s->lock);
}

uint64_t lm__swap_used(struct lm__swap *s)
{
	pthread_mutex_lock(&s->lock);
	uint64_t u = s->used;
	pthread_mutex_unlock(&s->lock);
	return u;
}

/*
 * One batch of page-sized transfers between a filler's staging buffer
 * (page i at stage + i pages) and slots[i], through the filler's io_uring
 * (one submission for the batch) or pread/pwrite.  done[i] gets each
 * page's result: 0, or -errno.  Returns 0 when all succeeded, else the
 * first error; a short transfer is -EIO for a write (disk full shows as
 * -ENOSPC) and -EBADMSG for a read (the file was truncated).
 */
static int batch_io(struct lm__swap *s, struct lm__filler *f, const uint64_t *slots, unsigned n,
		    bool write, int *done)
{
	size_t ps = s->page_size;
	int first = 0;
	unsigned at = 0;
	struct io_uring *ring = f->ring;
	while (at < n) {
		unsigned k = 0;
		if (ring) {
			/* Anything not completed below counts as failed. */
			for (unsigned c = at; c < n; c++)
				done[c] = -EIO;
			for (; at + k < n; k++) {
				struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
				if (!sqe)
					break;
				unsigned char *buf = f->stage + (size_t)(at + k) * ps;
				off_t off = (off_t)(slots[at + k] * ps);
				if (write)
					io_uring_prep_write_fixed(sqe, s->fd, buf, (unsigned)ps, off, 0);
				else
					io_uring_prep_read_fixed(sqe, s->fd, buf, (unsigned)ps, off, 0);
				sqe->user_data = at + k;
			}
			int rc = io_uring_submit_and_wait(ring, k);
			for (unsigned c = 0; c < k && rc >= 0; c++) {
				struct io_uring_cqe *cqe;
				if (io_uring_wait_cqe(ring, &cqe) < 0)
					break;
				unsigned i = (unsigned)cqe->user_data;
				int res = cqe->res;
				io_uring_cqe_seen(ring, cqe);
				done[i] = res == (int)ps ? 0 : res < 0 ? res : write ? -EIO : -EBADMSG;
			}
			if (rc < 0)
				for (unsigned c = 0; c < k; c++)
					done[at + c] = rc;
		} else {
			k = 1;
			unsigned char *buf = f->stage + (size_t)at * ps;
			off_t off = (off_t)(slots[at] * ps);
			ssize_t r;
			do
				r = write ? pwrite(s->fd, buf, ps, off) : pread(s->fd, buf, ps, off);
			while (r < 0 && errno == EINTR);
			done[at] = r == (ssize_t)ps ? 0 : r < 0 ? -errno : write ? -EIO : -EBADMSG;
		}
		at += k;
	}
	for (unsigned i = 0; i < n; i++)
		if (done[i] && !first)
			first = done[i];
	return first;
}

/*
 * Writes pages [0, n) of f->stage to slots[]; their checksums are taken
 * first, so the slot's sum always describes what was written.  A page
 * whose write failed (done[i] < 0) must stay resident: its slot holds
 * nothing usable.
 */
int lm__swap_write(struct lm__swap *s, struct lm__filler *f, const uint64_t *slots, unsigned n,
		   int *done)
{
	if (n > f->stage_len / s->page_size)
		return -EINVAL;
	uint32_t sums[n];
	for (unsigned i = 0; i < n; i++)
		sums[i] = page_sum(f->stage + (size_t)i * s->page_size, s->page_size);
	int rc = batch_io(s, f, slots, n, true, done);
	for (unsigned i = 0; i < n; i++)
		s->sums[slots[i]] = done[i] ? 0 : sums[i];
	return rc;
}

/*
 * Reads slots[] into pages [0, n) of f->stage and checks each against
 * its checksum: a mismatch, a slot never written, or a short read is
 * -EBADMSG for that page (done[i]), never data.
 */
int lm__swap_read(struct lm__swap *s, struct lm__filler *f, const uint64_t *slots, unsigned n,
		  int *done)
{
	if (n > f->stage_len / s->page_size)
		return -EINVAL;
	int rc = batch_io(s, f, slots, n, false, done);
	for (unsigned i = 0; i < n; i++) {
		if (done[i])
			continue;
		uint32_t want = slots[i] < s->nslots ? s->sums[slots[i]] : 0;
		if (!want || page_sum(f->stage + (size_t)i * s->page_size, s->page_size) != want) {
			done[i] = -EBADMSG;
			if (!rc)
				rc = -EBADMSG;
		}
	}
	return rc;
}
