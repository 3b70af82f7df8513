/* SPDX-License-Identifier: MIT */
/* Reading file sources into staging buffers: io_uring with a registered buffer, or pread. */
#include "internal.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

/*
 * Submission queue depth: a batch of swap or writeback I/O (up to 256
 * pages) goes in a few submissions, not one per 8 pages.
 */
#define RING_DEPTH 64

/*
 * The staging buffer is private anonymous memory, never a region: the
 * handler must not fault on registered memory (docs/DESIGN.md, invariant 1), so
 * the kernel reads into it and UFFDIO_COPY copies from it.
 */
int lm__filler_init(struct lm__filler *f, struct lm_runtime *rt, bool want_ring)
{
	memset(f, 0, sizeof(*f));
	f->rt = rt;
	f->epfd = -1;
	f->cpu = -1;
	f->stage_len = (size_t)rt->opt.readahead_max * (size_t)rt->page_size;
	f->ents = lm__calloc((size_t)rt->opt.readahead_max, sizeof(*f->ents));
	f->prev = lm__calloc((size_t)rt->opt.readahead_max, sizeof(*f->prev));
	f->keys = lm__calloc((size_t)rt->opt.readahead_max, sizeof(*f->keys));
	f->res = lm__calloc((size_t)rt->opt.readahead_max, sizeof(*f->res));
	f->snap = lm__calloc(1, sizeof(*f->snap));
	if (!f->ents || !f->prev || !f->keys || !f->res || !f->snap)
		return -ENOMEM;
	f->stage = mmap(NULL, f->stage_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			-1, 0);
	if (f->stage == MAP_FAILED) {
		f->stage = NULL;
		return -errno;
	}
	/* Never written: its pages stay the shared zero page, costing no memory. */
	f->zeros = mmap(NULL, f->stage_len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (f->zeros == MAP_FAILED) {
		f->zeros = NULL;
		return -errno;
	}
	if (!want_ring)
		return 0;
	struct io_uring *ring = lm__calloc(1, sizeof(*ring));
	if (!ring)
		return -ENOMEM;
	int rc = io_uring_queue_init(RING_DEPTH, ring, 0);
	if (rc < 0) {
		/*
		 * io_uring may be disabled (kernel.io_uring_disabled, seccomp):
		 * pread still works, unless io_uring was asked for by name.
		 */
		lm__free(ring);
		if (rt->io_required)
			return -EOPNOTSUPP;
		lm__log(rt, 2, "io_uring unavailable (%s), using pread", lm_strerror(rc));
		return 0;
	}
	struct iovec iov = { .iov_base = f->stage, .iov_len = f->stage_len };
	rc = io_uring_register_buffers(ring, &iov, 1);
	if (rc < 0 && rt->io_required) {
		io_uring_queue_exit(ring);
		lm__free(ring);
		return -EOPNOTSUPP;
	}
	if (rc < 0) {
		lm__log(rt, 2, "io_uring buffer registration failed (%s), using pread",
			lm_strerror(rc));
		io_uring_queue_exit(ring);
		lm__free(ring);
		return 0;
	}
	f->ring = ring;
	return 0;
}

void lm__filler_fini(struct lm__filler *f)
{
	lm__free(f->ents);
	lm__free(f->prev);
	lm__free(f->keys);
	lm__free(f->res);
	lm__free(f->snap);
	f->ents = NULL;
	f->prev = NULL;
	f->keys = NULL;
	f->res = NULL;
	f->snap = NULL;
	if (f->ring) {
		io_uring_queue_exit(f->ring);
		lm__free(f->ring);
		f->ring = NULL;
	}
	if (f->stage) {
		munmap(f->stage, f->stage_len);
		f->stage = NULL;
	}
	if (f->zeros) {
		munmap((void *)f->zeros, f->stage_len);
		f->zeros = NULL;
	}
}

static ssize_t uring_read(struct lm__filler *f, int fd, uint64_t off, unsigned char *dst,
			  size_t len)
{
	struct io_uring *ring = f->ring;
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	if (!sqe)
		return -EBUSY;
	/* Any address inside the registered buffer may be the target. */
	io_uring_prep_read_fixed(sqe, fd, dst, (unsigned)len, off, 0);
	int rc = io_uring_submit_and_wait(ring, 1);
	if (rc < 0)
		return rc;
	struct io_uring_cqe *cqe;
	rc = io_uring_wait_cqe(ring, &cqe);
	if (rc < 0)
		return rc;
	ssize_t res = cqe->res;
	io_uring_cqe_seen(ring, cqe);
	return res;
}

/*
 * Reads [off, off + len) into the staging buffer, looping over short
 * reads; stops early only at end of file.  Returns the bytes read or
 * -errno, so a caller can tell "past EOF" (short) from "failed".
 */
ssize_t lm__file_read(struct lm__filler *f, int fd, uint64_t off, size_t len)
{
	struct lm_runtime *rt = f->rt;
	size_t got = 0;
	if (len > f->stage_len)
		len = f->stage_len;
	while (got < len) {
		ssize_t n;
		if (f->ring) {
			LM__STAT_ADD(rt, io_uring_reads, 1);
			n = uring_read(f, fd, off + got, f->stage + got, len - got);
		} else {
			LM__STAT_ADD(rt, pread_reads, 1);
			n = pread(fd, f->stage + got, len - got, (off_t)(off + got));
			if (n < 0)
				n = -errno;
		}
		if (n == -EINTR || n == -EAGAIN)
			continue;
		if (n < 0)
			return n;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/*
 * Submits n transfers between io[i].buf and fd at io[i].off in one batch
 * through the filler's io_uring (fixed-buffer operations where the buffer
 * lies in the registered stage), or does them with pread/pwrite when the
 * filler has no ring.  io[i].res gets the bytes moved or -errno; short
 * transfers are not retried (the callers tell what a short one means).
 */
void lm__io_batch(struct lm__filler *f, int fd, struct lm__io *io, unsigned n, bool write)
{
	struct io_uring *ring = f ? f->ring : NULL;
	unsigned at = 0;
	while (at < n) {
		unsigned k = 0;
		if (!ring) {
			ssize_t r;
			do
				r = write ? pwrite(fd, io[at].buf, io[at].len, (off_t)io[at].off)
					  : pread(fd, io[at].buf, io[at].len, (off_t)io[at].off);
			while (r < 0 && errno == EINTR);
			io[at++].res = r < 0 ? -errno : (int)r;
			continue;
		}
		for (; at + k < n; k++) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
			if (!sqe)
				break;
			struct lm__io *t = &io[at + k];
			bool fixed = t->buf >= f->stage && t->buf < f->stage + f->stage_len;
			if (write && fixed)
				io_uring_prep_write_fixed(sqe, fd, t->buf, t->len, t->off, 0);
			else if (write)
				io_uring_prep_write(sqe, fd, t->buf, t->len, t->off);
			else if (fixed)
				io_uring_prep_read_fixed(sqe, fd, t->buf, t->len, t->off, 0);
			else
				io_uring_prep_read(sqe, fd, t->buf, t->len, t->off);
			sqe->user_data = at + k;
			/* Anything not completed below counts as failed. */
			t->res = -EIO;
		}
		int rc = io_uring_submit_and_wait(ring, k);
		for (unsigned c = 0; c < k && rc >= 0; c++) {
			struct io_uring_cqe *cqe;
			if (io_uring_wait_cqe(ring, &cqe) < 0)
				break;
			io[cqe->user_data].res = cqe->res;
			io_uring_cqe_seen(ring, cqe);
		}
		if (rc < 0)
			for (unsigned c = 0; c < k; c++)
				io[at + c].res = rc;
		at += k;
	}
}

/*
 * At most this much per write call.  A 2 MiB write at a 2 MiB boundary
 * (a huge page's copy) was measured 4 to 18 times slower per byte than
 * the same bytes in 1 MiB writes (Linux 6.18, ext4: 330 MB/s against
 * 5 GB/s); the page cache then allocates PMD-sized folios for it.
 */
#define WRITE_MAX ((size_t)1 << 20)

int lm__pwritev_all(int fd, struct iovec *iov, unsigned n, uint64_t off)
{
	while (n) {
		unsigned k = 0;
		size_t len = 0;
		while (k < n && len + iov[k].iov_len <= WRITE_MAX)
			len += iov[k++].iov_len;
		ssize_t got = k ? pwritev(fd, iov, (int)k, (off_t)off)
				: pwrite(fd, iov->iov_base, WRITE_MAX, (off_t)off);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0)
			return -EIO;
		off += (uint64_t)got;
		while (n && (size_t)got >= iov->iov_len) {
			got -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n) {
			iov->iov_base = (char *)iov->iov_base + got;
			iov->iov_len -= (size_t)got;
		}
	}
	return 0;
}
