/* SPDX-License-Identifier: MIT */
/* Copy-on-write snapshots of regions: take, preserve before the first change, read, save in the background, roll back, release. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/*
 * What a snapshot is.  Its view of page p is map[p] when that is set
 * (where p's contents went when p first changed after the take), and
 * otherwise the region's current contents of p, which have not changed
 * since.  The one rule that keeps the view exact (docs/DESIGN.md, invariant 6):
 * a page's contents change only on paths that, holding the page
 * (FILLING), first preserve it for every live snapshot that lacks it:
 *
 *  - a write to a resident page: the take write-protects the region in
 *    one ioctl and fills install pages write-protected while a snapshot
 *    is live, so the write faults, and lm__snap_cow preserves the page
 *    (and its neighbours, one round trip for a block) before it lifts
 *    the protection;
 *  - a write fault on a page that is not resident: the fill preserves
 *    what it read (lm__fill) before it installs the page writable;
 *  - dont-need advice and rollback: lm__snap_before_drop, rollback_run.
 *
 * Everything else moves contents without changing them.  Eviction moves
 * a page to a swap slot or drops a clean one (its source has it); a slot
 * is freed only when its page changes, which preserved it first; a shared
 * file region's writeback writes a page's own contents to the file, and a
 * page that is not resident changes in the file only by the writeback of
 * a write, which preserved it.  Only immutable sources (zero, memory,
 * image) are recorded as "the source's" without a copy.
 *
 * Preserved copies go to the region's spill file (unnamed, in the swap
 * directory), shared by its live snapshots and emptied when the last one
 * is released: they stream to the page cache instead of piling up in the
 * process's memory.  A save writes the view to an image and, the first
 * time, records each page it wrote as the image's and lifts that page's
 * protection when no other snapshot lacks it: the saver unprotects what it
 * has written, and later writes cost no fault.
 *
 * What no path can catch: the application's own madvise(MADV_DONTNEED)
 * or munmap of a region's pages while a snapshot is live (lazymem(7)).
 */

#define SAVE_BATCH LM__SNAP_BATCH

struct lm_snapshot {
	struct lm__snapview view;	/* first: the live set holds views (snapview.c) */
	struct lm_region *r;		/* NULL once the region is gone */
	struct lm_runtime *rt;
	pid_t pid;			/* the process that took it */
	size_t len;
	uint64_t npages;
	/* The background save, guarded by lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t saver;
	bool joinable;			/* a saver thread to join */
	bool saving;
	bool saved_any;			/* a save was started: lm_snapshot_wait has a result */
	int save_rc;
	_Atomic bool cancel;
	struct lm__image_writer *w;
	bool record;			/* the save running is the first: it records and streams */
	int img_fd;
	/*
	 * What lm_snapshot_read needs, made on the first read and kept: a
	 * filler maps two staging areas, too much to make per call.  One
	 * reader at a time uses it; a concurrent one makes its own.
	 */
	pthread_mutex_t rlock;
	bool rready;
	struct lm__filler rf;
	unsigned char *rbuf;			/* the first image's file: MAP_IMAGE entries are in it */
};

static inline uintptr_t addr_of(struct lm_region *r, uint64_t pgno)
{
	return r->start + (pgno << r->rt->page_shift);
}

_Static_assert(offsetof(struct lm_snapshot, view) == 0, "a view is its snapshot");

/* The snapshot whose view the live set holds. */
static inline struct lm_snapshot *snap_of(struct lm__snapview *v)
{
	return (struct lm_snapshot *)v;
}

static inline uint64_t map_get(struct lm_snapshot *s, uint64_t pgno)
{
	return lm__view_get(&s->view, pgno);
}

static inline bool map_set(struct lm_snapshot *s, uint64_t pgno, uint64_t val)
{
	return lm__view_set(&s->view, pgno, val);
}

static inline void snap_break(struct lm_snapshot *s, int err)
{
	lm__view_break(&s->view, err);
}

static inline bool lacks(struct lm_snapshot *s, uint64_t pgno)
{
	return lm__view_lacks(&s->view, pgno);
}

/* ---- holding pages to read their current contents -------------------------- */

/*
 * Holds the pages of want (bits of pg[0..n)) that need it for a read of
 * their current contents: every resident or swapped page, and a missing
 * one when the source can change (a file); with every, each page,
 * whatever its state (a rollback replaces them all).  A page in
 * transition makes the whole batch let go and try again: a holder never
 * waits while holding, so it never waits on someone waiting on it.
 * Returns a bit per page held; ents/prev get their entries and values.
 */
static uint64_t hold_pages(struct lm_region *r, const uint64_t *pg, unsigned n, uint64_t want,
			   bool every, lm__pte **ents, uint64_t *prev, bool *busyp)
{
	bool create = every || !lm__source_immutable(r);
	for (;;) {
		uint64_t held = 0;
		bool busy = false;
		for (unsigned i = 0; i < n && !busy; i++) {
			if (!(want & (1ull << i)))
				continue;
			lm__pte *e = lm__pt_get(&r->pt, pg[i], create);
			if (!e)
				continue;	/* never touched: its source's, which cannot change */
			unsigned accept = LM__ST(LM_PS_MISSING) | LM__ST(LM_PS_CLEAN) |
					  LM__ST(LM_PS_DIRTY) | LM__ST(LM_PS_SWAPPED);
			if (every)
				accept |= LM__ST(LM_PS_POISON);
			else if (!create)
				accept &= ~LM__ST(LM_PS_MISSING);
			int c = lm__pte_claim_or_park(e, accept, false, &prev[i]);
			if (c == LM__PTE_BUSY) {
				busy = true;
			} else if (c == LM__PTE_CLAIMED) {
				ents[i] = e;
				held |= 1ull << i;
			}
		}
		if (!busy)
			return held;
		for (unsigned i = 0; i < n; i++)
			if (held & (1ull << i))
				lm__pte_settle(r, ents[i], pg[i], prev[i], prev[i]);
		/*
		 * In a read section the caller must leave it before it waits:
		 * the holder may wait for an event whose handler waits for the
		 * section's readers (found by review).
		 */
		if (busyp) {
			*busyp = true;
			return 0;
		}
		sched_yield();
	}
}

/* hold_pages for the run [first, first + n), in a read section: *busy when it must be left first. */
static uint64_t hold_batch(struct lm_region *r, uint64_t first, unsigned n, uint64_t want,
			   lm__pte **ents, uint64_t *prev, bool *busy)
{
	uint64_t pg[LM__SNAP_BATCH] = { 0 };
	for (unsigned i = 0; i < n; i++)
		pg[i] = first + i;
	*busy = false;
	return hold_pages(r, pg, n, want, false, ents, prev, busy);
}

enum { C_RESIDENT, C_SWAPPED, C_MISSING };

static int page_class(struct lm_region *r, uint64_t pgno, bool held, uint64_t prev)
{
	unsigned s;
	if (held) {
		s = LM_PTE_STATE(prev);
	} else {
		lm__pte *e = lm__pt_get(&r->pt, pgno, false);
		s = e ? LM_PTE_STATE(atomic_load(e)) : LM_PS_MISSING;
		/* Not held, so not resident: only a poisoned page or a missing one is left unheld. */
		if (s != LM_PS_POISON)
			s = LM_PS_MISSING;
	}
	switch (s) {
	case LM_PS_CLEAN:
	case LM_PS_DIRTY:
		return C_RESIDENT;
	case LM_PS_SWAPPED:
		return C_SWAPPED;
	case LM_PS_MISSING:
		return C_MISSING;
	}
	return -EIO;	/* poisoned: it has no contents */
}

/*
 * The current contents of the pages of want (bits of [first, first + n))
 * into buf: held pages from their state (resident, swap slot, source),
 * the others from the source.  Returns 0, or -EIO when a page has none
 * (poisoned, unreadable).
 */
static int current_contents(struct lm__filler *f, struct lm_region *r, uint64_t first, unsigned n,
			    uint64_t want, uint64_t held, const uint64_t *prev, unsigned char *buf)
{
	struct lm_runtime *rt = r->rt;
	size_t ps = (size_t)rt->page_size;
	unsigned maxrun = (unsigned)(f->stage_len / ps);
	for (unsigned i = 0; i < n;) {
		if (!(want & (1ull << i))) {
			i++;
			continue;
		}
		unsigned char *dst = buf + (size_t)i * ps;
		int c = page_class(r, first + i, held & (1ull << i), prev[i]);
		if (c < 0)
			return c;
		/* A run of pages of the same class, read at once. */
		unsigned j = i + 1;
		while (c != C_SWAPPED && j < n && (want & (1ull << j)) && j - i < maxrun &&
		       page_class(r, first + j, held & (1ull << j), prev[j]) == c)
			j++;
		if (c == C_RESIDENT) {
			if (lm__cow_read_resident(r, first + i, j - i, dst) != j - i)
				return -EIO;
		} else if (c == C_SWAPPED) {
			uint64_t slot = LM_PTE_SLOT(prev[i]);
			const unsigned char *src = NULL;
			if (lm__store_read(&rt->swap_store, f, &slot, 1, &src) != 1)
				return -EIO;
			memcpy(dst, src, ps);
		} else {
			const unsigned char *src = NULL;
			long got = lm__source_read(f, r, first + i, j - i, &src);
			if (got < 0)
				return (int)got;
			/* Past the end of the file: zeros, as the region's tail reads. */
			if (got)
				memcpy(dst, src, (size_t)got * ps);
			if ((unsigned long)got < j - i)
				memset(dst + (size_t)got * ps, 0, (size_t)(j - i - (unsigned)got) * ps);
		}
		i = j;
	}
	return 0;
}

/* The preserved contents a map entry points to, into dst. */
static int location_contents(struct lm__filler *f, struct lm_snapshot *s, uint64_t pgno,
			     uint64_t m, unsigned char *dst)
{
	struct lm_region *r = s->r;
	size_t ps = (size_t)s->rt->page_size;
	int fd;
	uint64_t off;
	switch (MAP_KIND(m)) {
	case MAP_ZERO:
		memset(dst, 0, ps);
		return 0;
	case MAP_SOURCE: {
		const unsigned char *src = NULL;
		long got = lm__source_read(f, r, pgno, 1, &src);
		if (got < 0)
			return (int)got;
		if (got)
			memcpy(dst, src, ps);
		else
			memset(dst, 0, ps);
		return 0;
	}
	case MAP_SPILL:
		fd = r->spill_fd;
		off = MAP_IDX(m) * ps;
		break;
	case MAP_IMAGE:
		fd = s->img_fd;
		off = (1 + MAP_IDX(m)) * ps;
		break;
	default:
		return -EIO;
	}
	size_t got = 0;
	while (got < ps) {
		ssize_t k = pread(fd, dst + got, ps - got, (off_t)(off + got));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		got += (size_t)k;
	}
	return 0;
}

/*
 * A held resident page that cannot be read is not there: the application
 * dropped it while it was held here.  Returns those pages, which settle
 * as gone (the drop judged there, pte.c).  Swapped pages are not read
 * from the region, so they are not judged here (buf is scratch).
 */
static uint64_t find_gone(struct lm_region *r, uint64_t first, unsigned n, uint64_t held,
			  const uint64_t *prev, unsigned char *buf)
{
	uint64_t gone = 0;
	for (unsigned i = 0; i < n; i++) {
		unsigned st = LM_PTE_STATE(prev[i]);
		if ((held & (1ull << i)) && (st == LM_PS_CLEAN || st == LM_PS_DIRTY) &&
		    lm__cow_read_resident(r, first + i, 1, buf) != 1)
			gone |= 1ull << i;
	}
	return gone;
}

/*
 * The snapshot's view of pages [first, first + n) into buf.  With w (a
 * save), the view is also added to the image; on the snapshot's first
 * save each page read from the region is recorded as the image's and,
 * when no other snapshot lacks it and nothing tracks writes, loses its
 * protection.  Called in a read section.
 */
static int view_batch(struct lm__filler *f, struct lm_snapshot *s, uint64_t first, unsigned n,
		      unsigned char *buf, struct lm__image_writer *w, bool record)
{
	struct lm_region *r = s->r;
	struct lm_runtime *rt = s->rt;
	size_t ps = (size_t)rt->page_size;
	lm__pte *ents[SAVE_BATCH];
	uint64_t prev[SAVE_BATCH] = { 0 }, m[SAVE_BATCH];
	int64_t idx[SAVE_BATCH];
	uint64_t all = n == 64 ? ~0ull : (1ull << n) - 1, fromloc = 0;
	for (unsigned i = 0; i < n; i++)
		if ((m[i] = map_get(s, first + i)))
			fromloc |= 1ull << i;
	/* Set entries are final; the other pages are held while read. */
	bool busy;
	uint64_t held = hold_batch(r, first, n, all & ~fromloc, ents, prev, &busy);
	if (busy)
		return -EAGAIN;
	for (unsigned i = 0; i < n; i++)
		if ((held & (1ull << i)) && (m[i] = map_get(s, first + i))) {
			/* Preserved between the look and the hold. */
			lm__pte_settle(r, ents[i], first + i, prev[i], prev[i]);
			held &= ~(1ull << i);
			fromloc |= 1ull << i;
		}
	int rc = current_contents(f, r, first, n, all & ~fromloc, held, prev, buf);
	uint64_t gone = rc == -EIO ? find_gone(r, first, n, held & ~fromloc, prev, buf) : 0;
	/*
	 * A page the table calls clean (no slot: equal to its source) but the
	 * application dropped all the same, while its fill was settling (the
	 * drop's event came between the install and the settle): this
	 * snapshot lacks it, so it was unchanged since the take, and a
	 * source that never changes still has its contents.  Read from there
	 * rather than fail the read (found by check_snapshot's
	 * app_dontneed_under_eviction, about once in 40 runs).
	 */
	if (gone && lm__source_immutable(r)) {
		bool from_source = true;
		for (unsigned i = 0; i < n; i++)
			if ((gone & (1ull << i)) && (LM_PTE_STATE(prev[i]) != LM_PS_CLEAN ||
						     LM_PTE_HAS_SLOT(prev[i])))
				from_source = false;
		if (from_source)
			rc = current_contents(f, r, first, n, all & ~fromloc, held & ~gone, prev, buf);
	}
	for (unsigned i = 0; i < n && !rc; i++)
		if (fromloc & (1ull << i))
			rc = location_contents(f, s, first + i, m[i], buf + (size_t)i * ps);
	/*
	 * Into the image, but for what is there already: on the first save
	 * an image or zero entry means the page was streamed into this very
	 * image when it was preserved.
	 */
	if (!rc && w) {
		uint64_t apg[SAVE_BATCH];
		const unsigned char *ptr[SAVE_BATCH];
		int64_t aidx[SAVE_BATCH];
		unsigned k = 0, at[SAVE_BATCH];
		for (unsigned i = 0; i < n; i++) {
			unsigned kind = MAP_KIND(m[i]);
			if (record && (fromloc & (1ull << i)) && (kind == MAP_IMAGE || kind == MAP_ZERO))
				continue;
			at[k] = i;
			apg[k] = first + i;
			ptr[k++] = buf + (size_t)i * ps;
		}
		rc = lm__image_add_run(w, apg, ptr, k, aidx);
		for (unsigned j = 0; j < k; j++)
			idx[at[j]] = aidx[j];
		if (!rc)
			LM__STAT_ADD(rt, snapshot_saved, n);
	}
	/*
	 * The first save records each page it took from the region as the
	 * image's; a resident one no other snapshot lacks loses its
	 * protection (while nothing else tracks writes), so that its next
	 * write costs no fault.
	 */
	const struct lm__snapset *set = atomic_load_explicit(&r->snaps, memory_order_acquire);
	bool track = atomic_load_explicit(&rt->track, memory_order_relaxed);
	uint64_t lift = 0;
	for (unsigned i = 0; i < n && !rc && record && w; i++) {
		if (!(held & (1ull << i)))
			continue;
		unsigned st = LM_PTE_STATE(prev[i]);
		if (!map_set(s, first + i,
			     idx[i] < 0 ? MAP_MAKE(MAP_ZERO, 0) : MAP_MAKE(MAP_IMAGE, idx[i])))
			snap_break(s, -ENOMEM);
		else if (!track && set && (st == LM_PS_CLEAN || st == LM_PS_DIRTY) &&
			 !lm__snap_needs(set, first + i))
			lift |= 1ull << i;
	}
	lift &= lm__cow_unprotect(r, first, n, lift);
	for (unsigned i = 0; i < n; i++) {
		if (lift & (1ull << i))
			lm__cow_release_unprotected(r, ents[i], first + i, prev[i]);
		else if (held & (1ull << i))
			lm__pte_settle_counted(r, ents[i], first + i, prev[i], prev[i], prev[i],
					       (gone & (1ull << i)) ? LM__SETTLE_GONE : 0);
	}
	return rc;
}

/* ---- the public calls --------------------------------------------------------- */

static int check_snap(struct lm_snapshot *s)
{
	if (!s)
		return -EINVAL;
	if (!s->r)
		return -ENXIO;
	if (getpid() != s->pid)
		return -ECHILD;
	int err = atomic_load(&s->view.err);
	return err;
}

/* The live set with s added (add) or removed; NULL for an empty one. */
static struct lm__snapset *set_with(const struct lm__snapset *old, struct lm_snapshot *s, bool add,
				    int *rc)
{
	unsigned n = old ? old->n : 0;
	struct lm__snapset *set = lm__malloc(sizeof(*set) + (n + 1) * sizeof(set->v[0]));
	*rc = set ? 0 : -ENOMEM;
	if (!set)
		return NULL;
	set->n = 0;
	for (unsigned i = 0; i < n; i++)
		if (snap_of(old->v[i]) != s)
			set->v[set->n++] = old->v[i];
	if (add)
		set->v[set->n++] = &s->view;
	if (!set->n) {
		lm__free(set);
		return NULL;
	}
	return set;
}

/*
 * The live set without s.  Its allocation must not fail, or s would stay
 * in a set it has left (or the others would drop out of it): a small
 * array, retried until memory comes back.
 */
static struct lm__snapset *set_without(const struct lm__snapset *old, struct lm_snapshot *s)
{
	for (;;) {
		int rc = 0;
		struct lm__snapset *set = set_with(old, s, false, &rc);
		if (!rc)
			return set;
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	}
}

/* Publishes a new live set, waits out the readers of the old one and frees it. */
static void publish(struct lm_region *r, struct lm__snapset *set)
{
	struct lm__snapset *old = atomic_exchange_explicit(&r->snaps, set, memory_order_seq_cst);
	lm__synchronize(r->rt);
	lm__free(old);
}

static int open_spill(struct lm_region *r)
{
	if (r->spill_fd >= 0)
		return 0;
	const char *dir = lm__swap_dir(r->rt);
	int fd = lm__open_unnamed(dir);
	if (fd < 0) {
		lm__log(r->rt, 1, "cannot create a spill file in %s: %s", dir, lm_strerror(fd));
		return fd;
	}
	r->spill_fd = fd;
	atomic_store(&r->spill_next, 0);
	return 0;
}

static void snap_free(struct lm_snapshot *s)
{
	if (s->rready) {
		lm__filler_fini(&s->rf);
		lm__free(s->rbuf);
	}
	pthread_mutex_destroy(&s->rlock);
	lm__pt_destroy(&s->view.map);
	if (s->img_fd >= 0)
		close(s->img_fd);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	lm__free(s);
}

/*
 * Write-protects [start, start + len).  Where the application unmapped
 * part of the region the ioctl fails with ENOENT, and what is still
 * mapped is protected page by page.
 */
static int protect_range(struct lm_runtime *rt, uintptr_t start, size_t len)
{
	int rc = lm__uffd_writeprotect(rt->ufd, start, len, true);
	if (rc != -ENOENT)
		return rc;
	rc = 0;
	size_t ps = (size_t)rt->page_size;
	for (size_t off = 0; off < len && !rc; off += ps) {
		rc = lm__uffd_writeprotect(rt->ufd, start + off, ps, true);
		if (rc == -ENOENT)
			rc = 0;
	}
	return rc;
}

/* Parts of a large take: one per CPU, at most this many. */
#define PROTECT_PARTS 4
/* Below this many pages the threads would cost more than they save. */
#define PROTECT_SPLIT_PAGES 16384

struct protect_part {
	struct lm_runtime *rt;
	uintptr_t start;
	size_t len;
	int rc;
};

static void *protect_main(void *arg)
{
	lm__thread_mark();
	struct protect_part *p = arg;
	p->rc = protect_range(p->rt, p->start, p->len);
	return NULL;
}

/*
 * The whole of a take's pause: the kernel rewriting every resident
 * page-table entry of the region, as long as fork() takes to copy them.
 * The ioctl holds the address space only for reading and each part's
 * page tables lock separately (per 2 MiB), so a large region is cut in
 * parts on 2 MiB boundaries, protected in parallel by the caller and one
 * thread per other CPU: 12-16 ms per GiB on two CPUs where one ioctl
 * takes 20-25 ms.  The take returns when every part is protected.
 */
static int protect_all(struct lm_runtime *rt, uintptr_t start, size_t len)
{
	/* The CPU count (a file read) only where a split is worth it. */
	long ncpu = (len >> rt->page_shift) < PROTECT_SPLIT_PAGES ? 1 : sysconf(_SC_NPROCESSORS_ONLN);
	unsigned n = ncpu < 1 ? 1 : ncpu > PROTECT_PARTS ? PROTECT_PARTS : (unsigned)ncpu;
	uintptr_t align = (uintptr_t)2 << 20, end = start + len, at = start;
	struct protect_part part[PROTECT_PARTS];
	pthread_t th[PROTECT_PARTS];
	bool started[PROTECT_PARTS] = { false };
	unsigned k = 0;
	for (unsigned i = 1; i <= n && at < end; i++) {
		/* Part i ends at the 2 MiB boundary after i n-ths of the region (the last at its end). */
		uintptr_t to = i == n ? end : (start + len / n * i + align - 1) & ~(align - 1);
		if (to > end)
			to = end;
		if (to <= at)
			continue;
		part[k] = (struct protect_part){ rt, at, to - at, 0 };
		at = to;
		if (k++ == 0)
			continue;
		/* Signals stay with the application's threads: the helper blocks them all. */
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &old);
		started[k - 1] = pthread_create(&th[k - 1], NULL, protect_main, &part[k - 1]) == 0;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	int rc = protect_range(rt, part[0].start, part[0].len);
	for (unsigned i = 1; i < k; i++) {
		if (started[i])
			pthread_join(th[i], NULL);
		else
			protect_main(&part[i]);
		if (!rc)
			rc = part[i].rc;
	}
	return rc;
}

int lm_snapshot_take(struct lm_region *r, unsigned flags, struct lm_snapshot **out)
{
	LM__KEEP_ERRNO;
	if (!r || !out || flags || r->parent)
		return -EINVAL;
	struct lm_runtime *rt = r->rt;
	if (getpid() != rt->pid || getpid() != rt->ufd_pid)
		return -ECHILD;
	/*
	 * Asynchronous write protection lifts the protection in the kernel,
	 * with no fault to preserve the page first: it cannot serve a
	 * snapshot (it shares the runtime's one userfaultfd).
	 */
	if (!(rt->features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) || rt->wp_async)
		return -EOPNOTSUPP;
	uint64_t t0 = lm__now_ns();
	struct lm_snapshot *s = lm__calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->r = r;
	s->rt = rt;
	s->view.rt = rt;
	s->pid = getpid();
	s->len = r->len;
	s->npages = r->npages;
	s->img_fd = -1;
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->rlock, NULL);
	pthread_cond_init(&s->cond, NULL);
	int rc = lm__pt_init(&s->view.map, s->npages);
	pthread_mutex_lock(&rt->lock);
	if (!rc && r->naliases)
		rc = -EBUSY;
	if (!rc && rt->snap_memfd < 0) {
		rt->snap_memfd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
		if (rt->snap_memfd < 0)
			rc = -errno;
	}
	pthread_mutex_unlock(&rt->lock);
	pthread_mutex_lock(&r->snap_lock);
	if (!rc)
		rc = open_spill(r);
	struct lm__snapset *set = rc ? NULL : set_with(atomic_load(&r->snaps), s, true, &rc);
	if (rc) {
		pthread_mutex_unlock(&r->snap_lock);
		snap_free(s);
		return rc;
	}
	/*
	 * The set first, then the wait for every read section that may have
	 * missed it: a fill or a write-protect fault already under way when
	 * the set appeared finishes before the protection below (its page is
	 * then protected with the others), and every later one sees the set.
	 */
	publish(r, set);
	int idx = lm__read_lock(rt);
	uintptr_t start = r->start;
	lm__read_unlock(rt, idx);
	rc = protect_all(rt, start, r->len);
	if (rc < 0) {
		publish(r, set_without(atomic_load(&r->snaps), s));
		pthread_mutex_unlock(&r->snap_lock);
		snap_free(s);
		return rc;
	}
	pthread_mutex_unlock(&r->snap_lock);
	LM__STAT_ADD(rt, snapshots_taken, 1);
	LM__STAT_ADD(rt, snapshots_live, 1);
	LM__STAT_SET(rt, snapshot_pause_ns, lm__now_ns() - t0);
	*out = s;
	return 0;
}

size_t lm_snapshot_length(const struct lm_snapshot *s)
{
	return s ? s->len : 0;
}

int lm_snapshot_read(struct lm_snapshot *s, size_t offset, void *buf, size_t len)
{
	LM__KEEP_ERRNO;
	int rc = check_snap(s);
	if (rc)
		return rc;
	if (!buf || offset > s->len || len > s->len - offset)
		return -EINVAL;
	if (!len)
		return 0;
	struct lm_runtime *rt = s->rt;
	size_t ps = (size_t)rt->page_size;
	struct lm__filler own, *fp = &s->rf;
	unsigned char *tmp = NULL;
	bool cached = pthread_mutex_trylock(&s->rlock) == 0;
	if (cached && !s->rready) {
		rc = lm__filler_init(&s->rf, rt, false);
		s->rbuf = rc ? NULL : lm__malloc(rt->batch * ps);
		s->rready = !rc && s->rbuf;
		if (!s->rready)
			lm__filler_fini(&s->rf);
	}
	if (cached && s->rready) {
		tmp = s->rbuf;
	} else {
		fp = &own;
		rc = lm__filler_init(&own, rt, false);
		tmp = rc ? NULL : lm__malloc(rt->batch * ps);
	}
	if (!tmp && !rc)
		rc = -ENOMEM;
	struct lm__filler *f = fp;
	uint64_t pg = offset / ps, last = (offset + len - 1) / ps;
	size_t copied = 0;
	while (!rc && pg <= last) {
		unsigned n = last - pg + 1 < rt->batch ? (unsigned)(last - pg + 1) : rt->batch;
		int idx = lm__read_lock(rt);
		rc = view_batch(f, s, pg, n, tmp, NULL, false);
		lm__read_unlock(rt, idx);
		if (rc == -EAGAIN) {
			/* A page in transition: wait outside the read section. */
			sched_yield();
			rc = 0;
			continue;
		}
		if (!rc)
			rc = atomic_load(&s->view.err);
		if (rc)
			break;
		/* Copied out after the pages are let go: buf may itself be lazy memory. */
		size_t from = pg * ps, skip = offset > from ? offset - from : 0;
		size_t take = (size_t)n * ps - skip;
		if (take > len - copied)
			take = len - copied;
		memcpy((unsigned char *)buf + copied, tmp + skip, take);
		copied += take;
		pg += n;
	}
	if (fp == &own) {
		lm__free(tmp);
		lm__filler_fini(&own);
	}
	if (cached)
		pthread_mutex_unlock(&s->rlock);
	return rc;
}

static void *saver_main(void *arg)
{
	lm__thread_mark();
	struct lm_snapshot *s = arg;
	struct lm_runtime *rt = s->rt;
	struct lm_region *r = s->r;
	size_t ps = (size_t)rt->page_size;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	struct lm__filler f;
	int rc = lm__filler_init(&f, rt, false);
	unsigned char *buf = rc ? NULL : lm__malloc(rt->batch * ps);
	if (!rc && !buf)
		rc = -ENOMEM;
	/* Only the first save's pages are recorded as the image's: MAP_IMAGE names one file. */
	bool record = s->record;
	bool zero = (r->src.ops->flags & LM__STORE_ZEROS) != 0;
	uint64_t written = 0;
	for (uint64_t pg = 0; !rc && pg < s->npages;) {
		if (atomic_load_explicit(&s->cancel, memory_order_relaxed)) {
			rc = -ECANCELED;
			break;
		}
		unsigned n = s->npages - pg < rt->batch ? (unsigned)(s->npages - pg) : rt->batch;
		/* A zero region's pages never touched, nor preserved, are zero: nothing to write. */
		bool any = !zero;
		for (unsigned i = 0; i < n && !any; i++)
			any = lm__pt_get(&r->pt, pg + i, false) || map_get(s, pg + i);
		if (any) {
			int idx = lm__read_lock(rt);
			rc = view_batch(&f, s, pg, n, buf, s->w, record);
			lm__read_unlock(rt, idx);
			if (rc == -EAGAIN) {
				/* A page in transition: wait outside the read section, then again. */
				sched_yield();
				rc = 0;
				continue;
			}
			if (!rc)
				rc = atomic_load(&s->view.err);
			uint64_t now = lm__image_bytes(s->w);
			LM__STAT_ADD(rt, snapshot_bytes_written, now - written);
			written = now;
		}
		pg += n;
	}
	/*
	 * Every page is in the image now (a page being preserved into it was
	 * held, so the loop waited for it); stop streaming and wait out the
	 * preservers that may still hold the writer, then commit.
	 */
	if (atomic_exchange(&s->view.stream, NULL))
		lm__synchronize(rt);
	uint64_t now = lm__image_bytes(s->w);
	LM__STAT_ADD(rt, snapshot_bytes_written, now - written);
	if (!rc)
		rc = lm__image_commit(s->w);
	else
		lm__image_abort(s->w);
	lm__free(buf);
	lm__filler_fini(&f);
	pthread_mutex_lock(&s->lock);
	s->w = NULL;
	s->save_rc = rc;
	s->saving = false;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int lm_snapshot_save(struct lm_snapshot *s, const char *path, unsigned flags)
{
	LM__KEEP_ERRNO;
	int rc = check_snap(s);
	if (rc)
		return rc;
	if (!path || !*path || (flags & ~LM_SAVE_WAIT))
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	if (s->saving) {
		pthread_mutex_unlock(&s->lock);
		return -EBUSY;
	}
	if (s->joinable) {
		pthread_join(s->saver, NULL);
		s->joinable = false;
	}
	/* A path, or a cluster (the image written in the swap directory first: image.c). */
	rc = lm__image_create_at(s->rt, path, lm__swap_dir(s->rt), s->len,
				 (size_t)s->rt->page_size, &s->w);
	/*
	 * Only the first save's pages are recorded as the image's (MAP_IMAGE
	 * names one file, kept open here), and it streams: from this call on,
	 * every page preserved goes into the image.
	 */
	s->record = !rc && s->img_fd < 0;
	if (s->record) {
		s->img_fd = fcntl(lm__image_fd(s->w), F_DUPFD_CLOEXEC, 0);
		if (s->img_fd < 0) {
			rc = -errno;
			lm__image_abort(s->w);
			s->w = NULL;
		} else {
			atomic_store(&s->view.stream, s->w);
		}
	}
	if (!rc) {
		s->saving = true;
		s->saved_any = true;
		s->save_rc = 0;
		atomic_store(&s->cancel, false);
		rc = -pthread_create(&s->saver, NULL, saver_main, s);
		if (rc) {
			if (atomic_exchange(&s->view.stream, NULL))
				lm__synchronize(s->rt);
			lm__image_abort(s->w);
			s->w = NULL;
			s->saving = false;
			s->save_rc = rc;
		} else {
			s->joinable = true;
		}
	}
	pthread_mutex_unlock(&s->lock);
	if (rc || !(flags & LM_SAVE_WAIT))
		return rc;
	return lm_snapshot_wait(s);
}

/* Waits for the saver (cancelled first with cancel); returns its result. */
static int join_saver(struct lm_snapshot *s, bool cancel)
{
	pthread_mutex_lock(&s->lock);
	if (cancel)
		atomic_store(&s->cancel, true);
	while (s->saving)
		pthread_cond_wait(&s->cond, &s->lock);
	if (s->joinable) {
		pthread_join(s->saver, NULL);
		s->joinable = false;
	}
	int rc = s->saved_any ? s->save_rc : -EINVAL;
	pthread_mutex_unlock(&s->lock);
	return rc;
}

int lm_snapshot_wait(struct lm_snapshot *s)
{
	LM__KEEP_ERRNO;
	if (!s)
		return -EINVAL;
	if (getpid() != s->pid)
		return -ECHILD;
	/* A detached snapshot still reports how its last save ended (cancelled, usually). */
	return join_saver(s, false);
}

/* ---- rollback and drops ------------------------------------------------------ */

/*
 * Preserves, for the snapshots that lack them, the current contents of
 * held pages about to change (rollback, dont-need).
 */
static int preserve_held(struct lm__filler *f, struct lm_region *r, const struct lm__snapset *set,
			 uint64_t first, unsigned n, uint64_t held, const uint64_t *prev,
			 unsigned char *buf)
{
	uint64_t need = 0;
	for (unsigned i = 0; i < n; i++)
		if ((held & (1ull << i)) && lm__snap_needs(set, first + i))
			need |= 1ull << i;
	if (!need)
		return 0;
	int rc = current_contents(f, r, first, n, need, held, prev, buf);
	if (rc)
		return rc;
	uint64_t pgs[SAVE_BATCH];
	const unsigned char *data[SAVE_BATCH];
	unsigned k = 0;
	bool immut = lm__source_immutable(r);
	for (unsigned i = 0; i < n; i++) {
		if (!(need & (1ull << i)))
			continue;
		pgs[k] = first + i;
		data[k] = immut && LM_PTE_STATE(prev[i]) == LM_PS_MISSING ? NULL
									 : buf + (size_t)i * r->rt->page_size;
		k++;
	}
	lm__snap_preserve(f, r, set, pgs, data, k);
	return 0;
}

void lm__snap_before_drop(struct lm_region *r, uint64_t first, uint64_t count)
{
	struct lm_runtime *rt = r->rt;
	if (!atomic_load(&r->snaps))
		return;
	struct lm__filler f;
	memset(&f, 0, sizeof(f));
	unsigned char *buf = lm__malloc(rt->batch * (size_t)rt->page_size);
	if (!buf || lm__filler_init(&f, rt, false) < 0) {
		/* The pages go all the same: the snapshots that needed them cannot be exact. */
		lm__free(buf);
		lm__filler_fini(&f);
		lm__views_break(r, -ENOMEM);
		return;
	}
	pthread_mutex_lock(&r->snap_lock);
	for (uint64_t pg = first; pg < first + count;) {
		unsigned n = first + count - pg < rt->batch ? (unsigned)(first + count - pg) : rt->batch;
		int idx = lm__read_lock(rt);
		const struct lm__snapset *set = atomic_load(&r->snaps);
		bool busy = false;
		if (set) {
			lm__pte *ents[SAVE_BATCH];
			uint64_t prev[SAVE_BATCH];
			uint64_t held = hold_batch(r, pg, n, n == 64 ? ~0ull : (1ull << n) - 1, ents,
						   prev, &busy);
			int rc = busy ? 0 : preserve_held(&f, r, set, pg, n, held, prev, buf);
			for (unsigned i = 0; i < n; i++)
				if (held & (1ull << i)) {
					if (rc)
						for (unsigned x = 0; x < set->n; x++)
							if (!map_get(snap_of(set->v[x]), pg + i))
								snap_break(snap_of(set->v[x]), rc);
					lm__pte_settle(r, ents[i], pg + i, prev[i], prev[i]);
				}
		}
		lm__read_unlock(rt, idx);
		if (busy) {
			sched_yield();
			continue;
		}
		pg += n;
	}
	pthread_mutex_unlock(&r->snap_lock);
	lm__filler_fini(&f);
	lm__free(buf);
}

struct collect {
	uint64_t pg[SAVE_BATCH];
	unsigned n, max;
	uint64_t from;
};

static int collect_one(lm__pte *e, uint64_t pgno, void *arg)
{
	struct collect *c = arg;
	if (!atomic_load(e))
		return 0;
	c->pg[c->n++] = pgno;
	return c->n == c->max;
}

/*
 * The snapshot's contents of the held pages into buf, and what is there
 * now: a page preserved only as a neighbour of a written one may be
 * unchanged, and stays (its protection is gone, so only a comparison can
 * tell: *same).  What is there now is preserved for the other snapshots
 * that lack it.
 */
static int rollback_read(struct lm__filler *f, struct lm_snapshot *s, const uint64_t *pg,
			 unsigned n, const uint64_t *prev, unsigned char *buf, unsigned char *cur,
			 uint64_t *same)
{
	struct lm_region *r = s->r;
	struct lm_runtime *rt = s->rt;
	size_t ps = (size_t)rt->page_size;
	int rc = 0;
	int idx = lm__read_lock(rt);
	const struct lm__snapset *set = atomic_load(&r->snaps);
	*same = 0;
	for (unsigned i = 0; i < n && !rc; i++) {
		uint64_t m = map_get(s, pg[i]);
		unsigned char *want = buf + (size_t)i * ps;
		unsigned st = LM_PTE_STATE(prev[i]);
		bool res = st == LM_PS_CLEAN || st == LM_PS_DIRTY;
		if (MAP_KIND(m) != MAP_SOURCE)
			rc = location_contents(f, s, pg[i], m, want);
		if (rc || st == LM_PS_POISON)
			continue;
		bool need = set && lm__snap_needs(set, pg[i]);
		if (!need && !(res && MAP_KIND(m) != MAP_SOURCE))
			continue;
		rc = current_contents(f, r, pg[i], 1, 1, 1, &prev[i], cur);
		if (rc)
			break;
		if (res && MAP_KIND(m) != MAP_SOURCE && memcmp(cur, want, ps) == 0) {
			*same |= 1ull << i;
			continue;
		}
		const unsigned char *d = lm__source_immutable(r) && st == LM_PS_MISSING ? NULL : cur;
		if (need)
			lm__snap_preserve(f, r, set, &pg[i], &d, 1);
	}
	lm__read_unlock(rt, idx);
	return rc;
}

/* Calls fn for each run of consecutive pages of mask (bits of pg[0..n)). */
static int for_runs(const uint64_t *pg, unsigned n, uint64_t mask,
		    int (*fn)(void *arg, unsigned i, unsigned j), void *arg)
{
	int rc = 0;
	for (unsigned i = 0, j; i < n; i = j) {
		j = i + 1;
		if (!(mask & (1ull << i)))
			continue;
		while (j < n && (mask & (1ull << j)) && pg[j] == pg[j - 1] + 1)
			j++;
		int c = fn(arg, i, j);
		if (c && !rc)
			rc = c;
	}
	return rc;
}

struct rollback_run {
	struct lm_region *r;
	const uint64_t *pg;
	const unsigned char *buf;
	bool wp;
	uint64_t installed;
};

static int drop_run(void *arg, unsigned i, unsigned j)
{
	struct rollback_run *x = arg;
	size_t ps = (size_t)x->r->rt->page_size;
	madvise((void *)addr_of(x->r, x->pg[i]), (size_t)(j - i) * ps, MADV_DONTNEED);
	return 0;
}

/*
 * Installed DIRTY, a run per install: the page differs from its source (a
 * clean page without a slot would be dropped by the evictor and refilled
 * from the source).  A page the install found present (EEXIST: someone
 * mapped it after all) counts as installed; the run goes on after it.
 */
static int install_run(void *arg, unsigned i, unsigned j)
{
	struct rollback_run *x = arg;
	struct lm_runtime *rt = x->r->rt;
	size_t ps = (size_t)rt->page_size;
	int rc = 0;
	unsigned again = 0;
	for (unsigned at = i; at < j;) {
		unsigned ok = 0;
		int c = lm__install(rt, rt->ufd, addr_of(x->r, x->pg[at]), x->buf + (size_t)at * ps,
				    j - at, x->wp ? LM__INSTALL_WP : 0, &ok);
		for (unsigned k = at; k < at + ok; k++)
			x->installed |= 1ull << k;
		at += ok;
		if (c == 0)
			break;
		/*
		 * The address space is changing (another thread's madvise,
		 * say): this thread holds no read section, so the handler can
		 * read the event; try the page again rather than leave it
		 * neither as it was nor as the snapshot has it.  Bounded: a
		 * second of events without a break gives up with the error.
		 */
		if (c == -EAGAIN && ++again < 20000) {
			nanosleep(&(struct timespec){ 0, 50000 }, NULL);
			continue;
		}
		if (c == -EEXIST)
			x->installed |= 1ull << at;
		else if (!rc)
			rc = c;
		at++;
	}
	return rc;
}

/*
 * Puts back the pages of one batch (page numbers pg[], ascending) as the
 * snapshot has them.  Each is held; what other snapshots lack of it is
 * preserved; a resident page is dropped (madvise, outside any read
 * section: madvise waits for a handler to read its event) and, once the
 * events are applied (the handler must not forget the pages installed
 * after), the snapshot's contents are installed in its place.  A page
 * whose snapshot contents are its immutable source's is left missing, to
 * be filled again on its next touch.
 */
static int rollback_batch(struct lm__filler *f, struct lm_snapshot *s, const uint64_t *pg,
			  unsigned n, unsigned char *buf, unsigned char *cur)
{
	struct lm_region *r = s->r;
	struct lm_runtime *rt = s->rt;
	lm__pte *ents[SAVE_BATCH];
	uint64_t prev[SAVE_BATCH];
	uint64_t all = n == 64 ? ~0ull : (1ull << n) - 1, same = 0;
	/*
	 * A fork() child would find a dropped page not yet replaced, and no
	 * one to replace it: forks wait for the batch (issue 13, bug 2).
	 */
	lm__fork_gate_enter();
	uint64_t held = hold_pages(r, pg, n, all, true, ents, prev, NULL);
	int rc = held != all ? -ENOMEM : rollback_read(f, s, pg, n, prev, buf, cur, &same);
	if (rc) {
		/* Out of memory for the page table, or contents that could not be read. */
		for (unsigned i = 0; i < n; i++)
			if (held & (1ull << i))
				lm__pte_settle(r, ents[i], pg[i], prev[i], prev[i]);
		lm__fork_gate_exit();
		return rc;
	}
	uint64_t drop = 0, put = all & ~same, install = 0;
	for (unsigned i = 0; i < n; i++) {
		unsigned st = LM_PTE_STATE(prev[i]);
		if (same & (1ull << i)) {
			lm__pte_settle(r, ents[i], pg[i], prev[i], prev[i]);
			continue;
		}
		if (st == LM_PS_CLEAN || st == LM_PS_DIRTY || st == LM_PS_POISON)
			drop |= 1ull << i;
		if (MAP_KIND(map_get(s, pg[i])) != MAP_SOURCE)
			install |= 1ull << i;
	}
	struct rollback_run x = { r, pg, buf, atomic_load(&rt->track) || atomic_load(&r->snaps), 0 };
	for_runs(pg, n, drop, drop_run, &x);
	if (drop)
		lm__epoch_wait(&rt->evq);
	rc = for_runs(pg, n, install, install_run, &x);
	/*
	 * Settled as what they are now.  The drops above marked the held
	 * pages (their events found them held): settling judges those drops,
	 * which break nothing, since what other snapshots lacked was
	 * preserved first; a page installed since stays resident.
	 */
	for (unsigned i = 0; i < n; i++) {
		if (!(put & (1ull << i)))
			continue;
		if (x.installed & (1ull << i))
			lm__pte_settle_counted(r, ents[i], pg[i], prev[i], prev[i], LM_PS_DIRTY,
					       LM__SETTLE_INSTALLED);
		else
			lm__pte_settle(r, ents[i], pg[i], prev[i], LM_PS_MISSING);
	}
	lm__fork_gate_exit();
	LM__STAT_ADD(rt, snapshot_rollback_pages, __builtin_popcountll(put));
	lm__evict_check(rt);
	return rc;
}

int lm_snapshot_rollback(struct lm_snapshot *s)
{
	LM__KEEP_ERRNO;
	int rc = check_snap(s);
	if (rc)
		return rc;
	struct lm_region *r = s->r;
	struct lm_runtime *rt = s->rt;
	size_t ps = (size_t)rt->page_size;
	struct lm__filler f;
	rc = lm__filler_init(&f, rt, false);
	unsigned char *buf = rc ? NULL : lm__malloc((rt->batch + 1) * ps);
	if (!rc && !buf)
		rc = -ENOMEM;
	pthread_mutex_lock(&r->snap_lock);
	/* Every page changed since the take has an entry: walk the map, a batch at a time. */
	struct collect c = { .n = 0, .max = rt->batch, .from = 0 };
	while (!rc && c.from < s->npages) {
		c.n = 0;
		lm__pt_walk(&s->view.map, c.from, s->npages - 1, collect_one, &c);
		if (!c.n)
			break;
		c.from = c.pg[c.n - 1] + 1;
		rc = rollback_batch(&f, s, c.pg, c.n, buf, buf + rt->batch * ps);
	}
	pthread_mutex_unlock(&r->snap_lock);
	lm__free(buf);
	lm__filler_fini(&f);
	if (!rc)
		rc = atomic_load(&s->view.err);
	return rc;
}

int lm_snapshot_release(struct lm_snapshot *s)
{
	LM__KEEP_ERRNO;
	if (!s)
		return -EINVAL;
	struct lm_region *r = s->r;
	/* In a fork() child the handle is a copy: only its memory is the child's. */
	if (r && getpid() == s->pid) {
		join_saver(s, true);
		pthread_mutex_lock(&r->snap_lock);
		publish(r, set_without(atomic_load(&r->snaps), s));
		/* The last one gone: its copies are nobody's any more. */
		if (!atomic_load(&r->snaps) && r->spill_fd >= 0 && ftruncate(r->spill_fd, 0) == 0)
			atomic_store(&r->spill_next, 0);
		pthread_mutex_unlock(&r->snap_lock);
		LM__STAT_SUB(s->rt, snapshots_live, 1);
	}
	snap_free(s);
	return 0;
}

void lm__snap_detach_all(struct lm_region *r)
{
	struct lm__snapset *set = atomic_load(&r->snaps);
	if (!set || getpid() != r->rt->pid)
		return;
	for (unsigned i = 0; i < set->n; i++)
		join_saver(snap_of(set->v[i]), true);
	pthread_mutex_lock(&r->snap_lock);
	set = atomic_exchange(&r->snaps, NULL);
	lm__synchronize(r->rt);
	for (unsigned i = 0; set && i < set->n; i++) {
		struct lm_snapshot *s = snap_of(set->v[i]);
		/* What it held of the region goes now; the handle waits for release. */
		lm__pt_destroy(&s->view.map);
		s->r = NULL;
		LM__STAT_SUB(r->rt, snapshots_live, 1);
	}
	pthread_mutex_unlock(&r->snap_lock);
	lm__free(set);
}

