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
#include <time.h>
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

_Atomic int lm__swap_fail_writes;

/*
 * A held page's copy is freed by the allocator only, when its slot is
 * handed out again (lm__free() is not signal-safe, and a fault frees
 * slots; and a fault may be copying from it): a slot freed while held
 * keeps its copy, marked HELD_FREED, and so does one whose page a
 * rewrite put in the store after all, marked HELD_WRITTEN (reads still
 * find it, equal to what the store has).  The marks are set atomically,
 * so that exactly one of lm__swap_free and a successful rewrite counts
 * the page out of *held_pages and nheld.
 */
#define HELD_FREED ((uintptr_t)1)
#define HELD_WRITTEN ((uintptr_t)2)
#define HELD_MARKS (HELD_FREED | HELD_WRITTEN)

static inline unsigned char *held_copy(uintptr_t v)
{
	return (unsigned char *)(v & ~HELD_MARKS);
}

/* Still held: a copy that is neither freed nor written since. */
static inline bool held_live(uintptr_t v)
{
	return held_copy(v) && !(v & HELD_MARKS);
}

static void held_count(struct lm__swap *s, int64_t n)
{
	atomic_fetch_add_explicit(&s->nheld, n, memory_order_relaxed);
	if (s->held_pages)
		atomic_fetch_add_explicit(s->held_pages, n, memory_order_relaxed);
}

static void *map_zeroed(size_t bytes)
{
	void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

int lm__open_unnamed(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC | O_EXCL, 0600);
	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
		return fd < 0 ? -errno : fd;
	/* No O_TMPFILE here: a named file, unlinked before anyone can use it. */
	char path[4096];
	int n = snprintf(path, sizeof(path), "%s/lazymem-XXXXXX", dir);
	if (n < 0 || (size_t)n >= sizeof(path))
		return -ENAMETOOLONG;
	fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	unlink(path);
	return fd;
}

static int swap_init(struct lm__swap *s, uint64_t max_bytes, size_t page_size)
{
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	if (max_bytes < page_size || !page_size)
		return -EINVAL;
	s->page_size = page_size;
	s->nslots = max_bytes / page_size;
	size_t words = (size_t)((s->nslots + 63) / 64);
	s->bitmap = (_Atomic uint64_t *)map_zeroed(words * sizeof(uint64_t));
	s->sums = map_zeroed((size_t)s->nslots * sizeof(uint32_t));
	s->held = map_zeroed((size_t)s->nslots * sizeof(*s->held));
	if (!s->bitmap || !s->sums || !s->held) {
		lm__swap_close(s);
		return -ENOMEM;
	}
	pthread_mutex_init(&s->lock, NULL);
	s->lock_ok = true;
	return 0;
}

int lm__swap_open(struct lm__swap *s, const char *dir, uint64_t max_bytes, size_t page_size)
{
	if (!dir || !*dir)
		return -EINVAL;
	int rc = swap_init(s, max_bytes, page_size);
	if (rc < 0)
		return rc;
	s->fd = lm__open_unnamed(dir);
	if (s->fd < 0) {
		int err = s->fd;
		lm__swap_close(s);
		return err;
	}
	return 0;
}

/*
 * Slots in a cluster keep their checksums here too: a page read back is
 * checked as a page of the file is, so a key overwritten, lost in a
 * failover or left from an earlier write is never returned as data.
 * Nothing is allocated ahead (the cluster holds what it is given).
 */
int lm__swap_open_remote(struct lm__swap *s, struct lm__remote *remote, uint64_t max_bytes,
			 size_t page_size)
{
	int rc = swap_init(s, max_bytes, page_size);
	if (rc < 0) {
		lm__remote_close(remote);
		return rc;
	}
	s->remote = remote;
	s->backed = s->nslots * page_size;
	atomic_store(&s->low, UINT64_MAX);
	return 0;
}

void lm__swap_close(struct lm__swap *s)
{
	if (s->fd >= 0)
		close(s->fd);
	lm__remote_close(s->remote);
	if (s->bitmap)
		munmap((void *)s->bitmap, (size_t)((s->nslots + 63) / 64) * sizeof(uint64_t));
	if (s->sums)
		munmap(s->sums, (size_t)s->nslots * sizeof(uint32_t) ?: 1);
	if (s->held) {
		for (uint64_t i = 0; i < s->nslots; i++)
			lm__free(held_copy(atomic_load(&s->held[i])));
		munmap((void *)s->held, (size_t)s->nslots * sizeof(*s->held) ?: 1);
	}
	if (s->lock_ok)
		pthread_mutex_destroy(&s->lock);
	memset(s, 0, sizeof(*s));
	s->fd = -1;
}

/*
 * Disk space is allocated before slots are handed out, so that a full
 * disk shows while the pages are still in place, rather than as a failed
 * write.  The file grows a megabyte at a time, or as far as the disk
 * allows; slots beyond what is backed are not handed out.
 */
static void back(struct lm__swap *s, uint64_t need)
{
	uint64_t cap = s->nslots * s->page_size;
	while (need > s->backed) {
		uint64_t grow = (uint64_t)1 << 20;
		if (grow < need - s->backed)
			grow = need - s->backed;
		if (grow > cap - s->backed)
			grow = cap - s->backed;
		int rc;
		while ((rc = fallocate(s->fd, 0, (off_t)s->backed, (off_t)grow)) < 0 &&
		       errno == ENOSPC && grow > s->page_size)
			grow = (grow / 2 + s->page_size - 1) / s->page_size * s->page_size;
		if (rc == 0) {
			s->backed += grow;
			if (s->backed_mirror)
				atomic_store_explicit(s->backed_mirror, s->backed, memory_order_relaxed);
			continue;
		}
		/* A filesystem without fallocate: the writes will tell. */
		if (errno == EOPNOTSUPP)
			s->backed = cap;
		return;
	}
}

/*
 * Takes up to n free slots into slots[]; returns how many (0 when the
 * file is full).  Allocation rotates through the file so that slots freed
 * and taken again do not all land on the same blocks.  Allocators take
 * the mutex (only the evictor allocates); a bit is set with an atomic OR
 * because frees clear bits without it.
 */
unsigned lm__swap_alloc(struct lm__swap *s, uint64_t *slots, unsigned n)
{
	unsigned got = 0;
	/* A cluster that just timed out takes nothing: eviction stops rather than holding pages. */
	if (s->remote && !lm__remote_writable(s->remote))
		return 0;
	pthread_mutex_lock(&s->lock);
	uint64_t words = (s->nslots + 63) / 64, start = s->hint;
	/*
	 * A cluster has no blocks to spread wear over: slots freed are taken
	 * again first, so that the keys stay few (and closing deletes few).
	 */
	if (s->remote) {
		uint64_t low = atomic_exchange(&s->low, UINT64_MAX);
		if (low < start)
			start = low;
	}
	for (uint64_t k = 0; k < words && got < n; k++) {
		uint64_t w = (start + k) % words;
		uint64_t bits = atomic_load_explicit(&s->bitmap[w], memory_order_relaxed);
		while (got < n && ~bits) {
			unsigned bit = (unsigned)__builtin_ctzll(~bits);
			uint64_t slot = w * 64 + bit;
			if (slot >= s->nslots)
				break;
			bits = atomic_fetch_or_explicit(&s->bitmap[w], 1ull << bit,
							memory_order_acq_rel) | (1ull << bit);
			atomic_fetch_add_explicit(&s->used, 1, memory_order_relaxed);
			if (s->used_mirror)
				atomic_fetch_add_explicit(s->used_mirror, 1, memory_order_relaxed);
			slots[got++] = slot;
		}
		if (got == n)
			s->hint = w;
	}
	uint64_t need = 0;
	for (unsigned i = 0; i < got; i++)
		if ((slots[i] + 1) * s->page_size > need)
			need = (slots[i] + 1) * s->page_size;
	back(s, need);
	unsigned keep = 0;
	for (unsigned i = 0; i < got; i++) {
		if ((slots[i] + 1) * s->page_size <= s->backed) {
			slots[keep++] = slots[i];
			continue;
		}
		atomic_fetch_and(&s->bitmap[slots[i] / 64], ~(1ull << (slots[i] % 64)));
		atomic_fetch_sub(&s->used, 1);
		if (s->used_mirror)
			atomic_fetch_sub(s->used_mirror, 1);
	}
	/* A slot freed while its page was held: its memory goes now, outside signal context. */
	for (unsigned i = 0; i < keep; i++) {
		lm__free(held_copy(atomic_exchange(&s->held[slots[i]], 0)));
		if (slots[i] >= s->top)
			s->top = slots[i] + 1;
	}
	pthread_mutex_unlock(&s->lock);
	return keep;
}

void lm__swap_free(struct lm__swap *s, uint64_t slot)
{
	if (slot >= s->nslots)
		return;
	uint64_t bit = 1ull << (slot % 64);
	s->sums[slot] = 0;
	/* A held page's memory is freed when the slot is next allocated (lm__free() is not signal-safe). */
	uintptr_t h = atomic_fetch_or_explicit(&s->held[slot], HELD_FREED, memory_order_acq_rel);
	if (held_live(h))
		held_count(s, -1);
	if (s->remote) {
		uint64_t w = slot / 64, low = atomic_load_explicit(&s->low, memory_order_relaxed);
		while (w < low && !atomic_compare_exchange_weak_explicit(&s->low, &low, w,
									 memory_order_relaxed,
									 memory_order_relaxed))
			;
	}
	if (atomic_fetch_and_explicit(&s->bitmap[slot / 64], ~bit, memory_order_acq_rel) & bit)
	{
		atomic_fetch_sub_explicit(&s->used, 1, memory_order_relaxed);
		if (s->used_mirror)
			atomic_fetch_sub_explicit(s->used_mirror, 1, memory_order_relaxed);
	}
}

uint64_t lm__swap_used(struct lm__swap *s)
{
	return atomic_load_explicit(&s->used, memory_order_relaxed);
}

/*
 * One batch of page-sized transfers between pages[i] and slots[i], as
 * lm__io_batch does them.  done[i] gets each page's result: 0, or -errno.
 * Returns 0 when all succeeded, else the first error; a short transfer is
 * -EIO for a write (disk full shows as -ENOSPC) and -EBADMSG for a read
 * (the file was truncated).
 */
static int batch_io(struct lm__swap *s, struct lm__filler *f, unsigned char *const *pages,
		    const uint64_t *slots, unsigned n, bool write, int *done)
{
	size_t ps = s->page_size;
	if (s->remote) {
		int rc = write ? lm__remote_write(s->remote, slots, pages, n, done) :
				 lm__remote_read(s->remote, slots, pages, n, done);
		/* Not there, or not whole: what the file's short read is. */
		for (unsigned i = 0; !write && i < n; i++)
			if (done[i] == -ENODATA)
				done[i] = -EBADMSG;
		return rc == -ENODATA ? -EBADMSG : rc;
	}
	struct lm__io io[n ? n : 1];
	for (unsigned i = 0; i < n; i++)
		io[i] = (struct lm__io){ .buf = pages[i], .off = slots[i] * ps, .len = (uint32_t)ps };
	lm__io_batch(f, s->fd, io, n, write);
	int first = 0;
	for (unsigned i = 0; i < n; i++) {
		int res = io[i].res;
		done[i] = res == (int)ps ? 0 : res < 0 ? res : write ? -EIO : -EBADMSG;
		if (done[i] && !first)
			first = done[i];
	}
	return first;
}

/*
 * Writes pages [0, n) of src to slots[]; their checksums are taken first,
 * so the slot's sum always describes what was written.  done[i] is 0 when
 * page i was written, 1 when its write failed and the slot holds the page
 * in memory instead (reads return it; it counts in *held_pages until the
 * slot is freed).  Returns the first write error, for the caller to count.
 */
int lm__swap_write(struct lm__swap *s, struct lm__filler *f, unsigned char *const *pages,
		   const uint64_t *slots, unsigned n, int *done)
{
	uint32_t sums[n ? n : 1];
	for (unsigned i = 0; i < n; i++)
		sums[i] = lm__page_sum(pages[i], s->page_size);
	int fail = atomic_load(&lm__swap_fail_writes);
	int rc = 0;
	if (fail) {
		for (unsigned i = 0; i < n; i++)
			done[i] = -fail;
		rc = -fail;
	} else {
		rc = batch_io(s, f, pages, slots, n, true, done);
	}
	for (unsigned i = 0; i < n; i++) {
		s->sums[slots[i]] = sums[i];
		if (!done[i])
			continue;
		/*
		 * Not written: the slot holds the page in memory instead, so
		 * nothing is lost.  The caller has nowhere else to keep it, so
		 * an allocation failure is waited out, not returned.
		 */
		unsigned char *copy;
		while (!(copy = lm__malloc(s->page_size)))
			nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
		memcpy(copy, pages[i], s->page_size);
		/* A slot handed out has no copy (the allocator freed it): old is one written twice. */
		uintptr_t old = atomic_exchange(&s->held[slots[i]], (uintptr_t)copy);
		lm__free(held_copy(old));
		if (!held_live(old))
			held_count(s, 1);
		done[i] = 1;	/* held */
	}
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
	/* Held pages are copied from memory; the others are read in one batch. */
	uint64_t io_slots[n ? n : 1];
	unsigned char *io_pages[n ? n : 1];
	unsigned io_at[n ? n : 1], nio = 0;
	int io_done[n ? n : 1];
	for (unsigned i = 0; i < n; i++) {
		const unsigned char *h = slots[i] < s->nslots ?
			held_copy(atomic_load_explicit(&s->held[slots[i]], memory_order_acquire)) : NULL;
		done[i] = 0;
		if (h) {
			memcpy(f->stage + (size_t)i * s->page_size, h, s->page_size);
		} else {
			io_slots[nio] = slots[i];
			io_pages[nio] = f->stage + (size_t)i * s->page_size;
			io_at[nio++] = i;
		}
	}
	int rc = nio ? batch_io(s, f, io_pages, io_slots, nio, false, io_done) : 0;
	for (unsigned k = 0; k < nio; k++)
		done[io_at[k]] = io_done[k];
	for (unsigned i = 0; i < n; i++) {
		if (done[i])
			continue;
		uint32_t want = slots[i] < s->nslots ? s->sums[slots[i]] : 0;
		if (!want || lm__page_sum(f->stage + (size_t)i * s->page_size, s->page_size) != want) {
			done[i] = -EBADMSG;
			if (!rc)
				rc = -EBADMSG;
		}
	}
	return rc;
}

/*
 * Held pages are written again as soon as their store takes writes: a
 * cluster that was unreachable, a disk that was full.  Each is written
 * from its copy, which stays until its slot is handed out again; a slot
 * freed meanwhile (its page faulted back in) is left to the allocator.
 */
unsigned lm__swap_rewrite_held(struct lm__swap *s, struct lm__filler *f, unsigned max)
{
	if (atomic_load_explicit(&s->nheld, memory_order_relaxed) <= 0 || !s->top)
		return 0;
	if (s->remote && !lm__remote_writable(s->remote))
		return 0;
	enum { BATCH = 64 };
	unsigned done_total = 0;
	uint64_t scanned = 0;
	while (done_total < max && scanned < s->top) {
		uint64_t slots[BATCH];
		unsigned char *pages[BATCH];
		uintptr_t seen[BATCH];
		int done[BATCH];
		unsigned n = 0;
		for (; n < BATCH && scanned < s->top; scanned++) {
			uint64_t slot = s->held_hint++ % s->top;
			uintptr_t h = atomic_load_explicit(&s->held[slot], memory_order_acquire);
			if (!held_live(h))
				continue;
			slots[n] = slot;
			pages[n] = held_copy(h);
			seen[n++] = h;
		}
		if (!n)
			break;
		if (atomic_load(&lm__swap_fail_writes) || batch_io(s, f, pages, slots, n, true, done) < 0)
			break;
		for (unsigned i = 0; i < n; i++) {
			uintptr_t expect = seen[i];
			/*
			 * Written: marked, not freed (a fault may be copying from it;
			 * the allocator frees it).  Freed since: the free counted it out.
			 */
			if (!atomic_compare_exchange_strong(&s->held[slots[i]], &expect,
							    seen[i] | HELD_WRITTEN))
				continue;
			held_count(s, -1);
			done_total++;
		}
	}
	return done_total;
}
