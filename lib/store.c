/* SPDX-License-Identifier: MIT */
/* Page stores: the one interface behind which page contents live (a region's source: zero, memory, file, image; the swap file), read and written in batches. */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

/*
 * The contract (docs/DESIGN.md, "Page stores").  A store holds pages
 * under keys: a source its region's pages by source page number (the
 * region's page plus src_shift), the swap file its pages by slot.  The
 * fill path, the evictor, the saver and rollback use these calls and
 * nothing else, and never ask what kind of store they have; what differs
 * is said by flags (immutable, reads as zeros) and the stats a store
 * counts its pages in.
 *
 *  - read: a batch of pages, into the filler's staging buffer, or straight
 *    from the store's own memory when it has them (zeros, a memory
 *    source): *out says where.  Every page returned has been checked
 *    (checksums, for the stores that keep them): a page that fails is
 *    never returned as data.  The result is the pages good before the
 *    first that is not, 0 when the first key lies past the end of the
 *    store (a file's end), or -errno when the first page failed.
 *  - write: a batch of pages to their keys, one result per page; a page
 *    whose write failed must not be given up by the caller.
 *  - release: a key's contents are no longer wanted.
 *  - verify: whether the store holds exactly these contents for a key
 *    (false when it cannot tell); it may read into the filler's stage.
 *  - avail: how many of n pages from a key exist as last seen, so a
 *    readahead does not run past a file's end.
 *
 * Batches are the unit, so that a store that takes milliseconds (a
 * remote one) pays one round trip per batch.  Callers hold nothing but
 * the pages they claimed while a store works (a fault on one of those
 * parks; every other page goes on), so several batches are in flight at
 * once, one per filler, and a store must take concurrent calls.  A store
 * that fails returns the error; the callers' rules (poison the faulting
 * page alone, keep a page whose write failed) are the same for every
 * store.  All of it may run in a SIGBUS handler: async-signal-safe, no
 * arrays on the stack beyond a batch.
 */

static inline size_t psize(const struct lm__store *s)
{
	return (size_t)s->rt->page_size;
}

/* ---- zero ---------------------------------------------------------------- */

static long zero_read(struct lm__store *s, struct lm__filler *f, const uint64_t *key, unsigned n,
		      const unsigned char **out)
{
	(void)s;
	(void)key;
	*out = f->zeros;
	return n;
}

static bool is_zero(const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, sizeof(w));
		if (w)
			return false;
	}
	return true;
}

static bool zero_verify(struct lm__store *s, struct lm__filler *f, uint64_t key,
			const unsigned char *page)
{
	(void)f;
	(void)key;
	return is_zero(page, psize(s));
}

/* ---- memory -------------------------------------------------------------- */

static long memory_read(struct lm__store *s, struct lm__filler *f, const uint64_t *key, unsigned n,
			const unsigned char **out)
{
	struct lm_region *r = s->r;
	size_t ps = psize(s);
	uint64_t off = key[0] * ps;
	size_t want = (size_t)n * ps;
	if (off + want <= r->buflen) {
		*out = r->buf + off;
		return n;
	}
	/* The buffer ends inside this batch: stage it with a zero tail. */
	memset(f->stage, 0, want);
	if (off < r->buflen)
		memcpy(f->stage, r->buf + off, (size_t)(r->buflen - off));
	*out = f->stage;
	return n;
}

static bool memory_verify(struct lm__store *s, struct lm__filler *f, uint64_t key,
			  const unsigned char *page)
{
	(void)f;
	struct lm_region *r = s->r;
	size_t ps = psize(s);
	uint64_t off = key * ps;
	size_t have = off >= r->buflen ? 0 : r->buflen - off < ps ? (size_t)(r->buflen - off) : ps;
	return (!have || !memcmp(page, r->buf + off, have)) && is_zero(page + have, ps - have);
}

/* ---- file ---------------------------------------------------------------- */

static long file_read(struct lm__store *s, struct lm__filler *f, const uint64_t *key, unsigned n,
		      const unsigned char **out)
{
	struct lm_region *r = s->r;
	size_t ps = psize(s);
	uint64_t off = r->foff + key[0] * ps;
	size_t want = (size_t)n * ps;
	ssize_t got = lm__file_read(f, r->fd, off, want);
	if (got < 0) {
		LM__STAT_ADD(s->rt, io_errors, 1);
		return got;
	}
	/* The size as last seen: smaller on a short read, larger if the file grew. */
	uint64_t end = off + (uint64_t)got;
	if ((size_t)got < want || end > atomic_load_explicit(&r->fsize, memory_order_relaxed))
		atomic_store_explicit(&r->fsize, end, memory_order_relaxed);
	if ((size_t)got < want)
		memset(f->stage + got, 0, want - (size_t)got);
	*out = f->stage;
	return (long)(((size_t)got + ps - 1) / ps);
}

static uint64_t file_avail(struct lm__store *s, uint64_t key, uint64_t n)
{
	struct lm_region *r = s->r;
	size_t ps = psize(s);
	uint64_t fsize = atomic_load_explicit(&r->fsize, memory_order_relaxed);
	uint64_t off = r->foff + key * ps;
	/* At least one page: the read itself finds out whether the file grew. */
	uint64_t avail = fsize > off ? (fsize - off + ps - 1) / ps : 1;
	return avail < n ? (avail ? avail : 1) : n;
}

/*
 * Shared file regions write their dirty pages back, in one batch.  The
 * tail past the end of the file is not the file's: it stays out (a page
 * wholly past the end writes nothing, and succeeds).  The file may have
 * grown since the region last read it: its size is looked at again.
 */
static int file_write(struct lm__store *s, struct lm__filler *f, const uint64_t *key,
		      unsigned char *const *pages, unsigned n, int *res)
{
	struct lm_region *r = s->r;
	size_t ps = psize(s);
	struct stat st;
	uint64_t fsize = atomic_load(&r->fsize);
	if (fstat(r->fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size > fsize) {
		fsize = (uint64_t)st.st_size;
		atomic_store(&r->fsize, fsize);
	}
	int err = 0;
	for (unsigned done = 0; done < n;) {
		struct lm__io io[64];
		unsigned at[64], m = 0, i = done;
		for (; i < n && m < LM__ARRAY_SIZE(io); i++) {
			uint64_t off = r->foff + key[i] * ps;
			size_t len = off >= fsize ? 0 : fsize - off < ps ? (size_t)(fsize - off) : ps;
			res[i] = 0;
			if (len) {
				io[m] = (struct lm__io){ .buf = pages[i], .off = off, .len = (uint32_t)len };
				at[m++] = i;
			}
		}
		lm__io_batch(f, r->fd, io, m, true);
		for (unsigned k = 0; k < m; k++) {
			if (io[k].res == (int)io[k].len)
				continue;
			res[at[k]] = io[k].res < 0 ? io[k].res : -EIO;
			if (!err)
				err = res[at[k]];
		}
		done = i;
	}
	return err;
}

/* ---- image --------------------------------------------------------------- */

/* n pages of an image file in a cluster from file page first into dst: the good ones before the first bad. */
static unsigned remote_run(struct lm__remote *c, struct lm__filler *f, uint64_t first,
			   unsigned char *dst, unsigned n)
{
	/* Arrays of its own: the caller's keys may be f->keys (thread mode only: a stack to spare). */
	uint64_t keys[n];
	unsigned char *pages[n];
	int res[n];
	size_t ps = (size_t)f->rt->page_size;
	for (unsigned j = 0; j < n; j++) {
		keys[j] = first + j;
		pages[j] = dst + (size_t)j * ps;
	}
	lm__remote_read(c, keys, pages, n, res);
	unsigned ok = 0;
	while (ok < n && !res[ok])
		ok++;
	return ok;
}

/*
 * Pages the index lacks are zero (no I/O); stored ones are read in runs
 * of consecutive data pages and checked against their checksums.
 */
static long image_read(struct lm__store *s, struct lm__filler *f, const uint64_t *key, unsigned n,
		       const unsigned char **out)
{
	struct lm_region *r = s->r;
	struct lm__image *im = r->image;
	size_t ps = psize(s);
	uint64_t first = key[0];
	*out = f->stage;
	/* A damaged index page: the pages it describes cannot be told, SIGBUS for them. */
	int64_t k = lm__image_find(im, r->fd, first);
	if (k < 0)
		return k;
	for (unsigned i = 0; i < n;) {
		unsigned char *dst = f->stage + (size_t)i * ps;
		const struct lm__image_ent *e = lm__image_ent(im, r->fd, (uint64_t)k);
		if ((uint64_t)k < im->stored && !e)
			return i ? (long)i : -EBADMSG;
		if (!e || e->pgno != first + i) {
			memset(dst, 0, ps);
			i++;
			continue;
		}
		/* A run of stored pages whose data is contiguous too: one read. */
		unsigned run = 1;
		const struct lm__image_ent *x;
		while (i + run < n && (x = lm__image_ent(im, r->fd, (uint64_t)k + run)) &&
		       x->pgno == first + i + run && x->data == e->data + run)
			run++;
		struct lm__io io = {
			.buf = dst,
			.off = im->data_off + (uint64_t)e->data * ps,
			.len = (uint32_t)(run * ps),
		};
		unsigned ok;
		if (im->remote) {
			/* Its keys are the file's page numbers: one round trip per master. */
			ok = remote_run(im->remote, f, io.off / ps, dst, run);
		} else {
			lm__io_batch(f, r->fd, &io, 1, false);
			LM__STAT_ADD(s->rt, pread_reads, 1);
			ok = io.res > 0 ? (unsigned)((size_t)io.res / ps) : 0;
		}
		if (ok > run)
			ok = run;
		for (unsigned j = 0; j < ok; j++)
			if (lm__image_page_sum(im, dst + (size_t)j * ps) != e[j].sum) {
				ok = j;
				break;
			}
		/* A damaged page: the good ones before it only (counted when poisoned). */
		if (ok < run)
			return i + ok ? (long)(i + ok) : -EBADMSG;
		i += run;
		k += run;
	}
	return n;
}

/* ---- swap ---------------------------------------------------------------- */

/* Slots read and checked against the sums kept when they were written. */
static long swap_read(struct lm__store *s, struct lm__filler *f, const uint64_t *key, unsigned n,
		      const unsigned char **out)
{
	int *done = f->res;
	lm__swap_read(s->swap, f, key, n, done);
	*out = f->stage;
	for (unsigned i = 0; i < n; i++)
		if (done[i]) {
			LM__STAT_ADD(s->rt, swap_read_errors, 1);
			return i ? (long)i : -EBADMSG;
		}
	return n;
}

static int swap_write(struct lm__store *s, struct lm__filler *f, const uint64_t *key,
		      unsigned char *const *pages, unsigned n, int *res)
{
	int rc = lm__swap_write(s->swap, f, pages, key, n, res);
	for (unsigned k = 0; k < n; k++) {
		if (!res[k])
			LM__STAT_ADD(s->rt, swap_writes, 1);
		else if (rc < 0)
			LM__STAT_ADD(s->rt, swap_write_errors, 1);
	}
	return rc;
}

static unsigned swap_alloc(struct lm__store *s, uint64_t *key, unsigned n)
{
	return lm__swap_alloc(s->swap, key, n);
}

static void swap_release(struct lm__store *s, uint64_t key)
{
	lm__swap_free(s->swap, key);
}

/*
 * Exact, never by checksum alone (a 32-bit sum that matched by chance
 * would drop a write): the sum rules out a changed page without I/O, and
 * a page whose sum matches is compared with the slot's contents, read
 * back (usually from the page cache, cheaper than writing it again).
 */
static bool swap_verify(struct lm__store *s, struct lm__filler *f, uint64_t key,
			const unsigned char *page)
{
	if (key >= s->swap->nslots)
		return false;
	uint32_t sum = s->swap->sums[key];
	if (!sum || sum != lm__page_sum(page, psize(s)))
		return false;
	int done = -1;
	return lm__swap_read(s->swap, f, &key, 1, &done) == 0 && !done &&
	       !memcmp(f->stage, page, psize(s));
}

/* ---- the stores ----------------------------------------------------------- */

#define STAT(field) offsetof(struct lm__stats, field)

static const struct lm__store_ops zero_ops = {
	.name = "zero",
	.flags = LM__STORE_IMMUTABLE | LM__STORE_ZEROS,
	.fill_stat = STAT(fills_zero),
	.read = zero_read,
	.verify = zero_verify,
};

static const struct lm__store_ops memory_ops = {
	.name = "memory",
	.flags = LM__STORE_IMMUTABLE,
	.fill_stat = STAT(fills_memory),
	.read = memory_read,
	.verify = memory_verify,
};

static const struct lm__store_ops file_ops = {
	.name = "file",
	.fill_stat = STAT(fills_file),
	.read = file_read,
	.write = file_write,
	.avail = file_avail,
	/*
	 * A bad block is often further on: a failed batch is read again page
	 * by page.  A random fault reads its block, as mmap reads around.
	 */
	.flags = LM__STORE_RETRY_SHORT | LM__STORE_AROUND,
};

static const struct lm__store_ops image_ops = {
	.name = "image",
	.flags = LM__STORE_IMMUTABLE,
	.fill_stat = STAT(fills_image),
	.err_stat = STAT(image_errors),
	.fault_stat = STAT(restore_faults),
	.read = image_read,
};

static const struct lm__store_ops swap_ops = {
	.name = "swap",
	.fill_stat = STAT(swap_reads),
	.read = swap_read,
	.write = swap_write,
	.alloc = swap_alloc,
	.release = swap_release,
	.verify = swap_verify,
};

void lm__store_init_source(struct lm__store *s, struct lm_region *r)
{
	static const struct lm__store_ops *const by_kind[] = {
		[LM_SOURCE_ZERO] = &zero_ops,
		[LM_SOURCE_MEMORY] = &memory_ops,
		[LM_SOURCE_FILE] = &file_ops,
		[LM_SOURCE_IMAGE] = &image_ops,
	};
	LM__ASSERT(r->kind >= 0 && (size_t)r->kind < LM__ARRAY_SIZE(by_kind) && by_kind[r->kind]);
	s->ops = by_kind[r->kind];
	s->rt = r->rt;
	s->r = r;
	s->swap = NULL;
}

void lm__store_init_swap(struct lm__store *s, struct lm_runtime *rt, struct lm__swap *swap)
{
	s->ops = &swap_ops;
	s->rt = rt;
	s->r = NULL;
	s->swap = swap;
}

long lm__store_read(struct lm__store *s, struct lm__filler *f, const uint64_t *key, unsigned n,
		    const unsigned char **out)
{
	LM__ASSERT(n && (size_t)n * psize(s) <= f->stage_len);
	return s->ops->read(s, f, key, n, out);
}

int lm__store_write(struct lm__store *s, struct lm__filler *f, const uint64_t *key,
		    unsigned char *const *pages, unsigned n, int *res)
{
	if (!s->ops->write) {
		for (unsigned i = 0; i < n; i++)
			res[i] = -EROFS;
		return n ? -EROFS : 0;
	}
	return s->ops->write(s, f, key, pages, n, res);
}

unsigned lm__store_alloc(struct lm__store *s, uint64_t *key, unsigned n)
{
	return s->ops->alloc ? s->ops->alloc(s, key, n) : 0;
}

void lm__store_release(struct lm__store *s, uint64_t key)
{
	if (s->ops->release)
		s->ops->release(s, key);
}

bool lm__store_verify(struct lm__store *s, struct lm__filler *f, uint64_t key,
		      const unsigned char *page)
{
	return s->ops->verify && s->ops->verify(s, f, key, page);
}

uint64_t lm__store_avail(struct lm__store *s, uint64_t key, uint64_t n)
{
	return s->ops->avail ? s->ops->avail(s, key, n) : n;
}

void lm__store_count(struct lm__store *s, size_t stat, long n)
{
	if (stat)
		atomic_fetch_add_explicit((_Atomic uint64_t *)((char *)s->rt->stats + stat),
					  (uint64_t)n, memory_order_relaxed);
}

long lm__source_read(struct lm__filler *f, struct lm_region *r, uint64_t pgno, unsigned n,
		     const unsigned char **out)
{
	for (unsigned i = 0; i < n; i++)
		f->keys[i] = pgno + r->src_shift + i;
	return lm__store_read(&r->src, f, f->keys, n, out);
}
