/* SPDX-License-Identifier: MIT */
/* The fault path: claiming pages, reading their source, installing them, and the handler threads' loop. */
#include "internal.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MSG_BATCH 32
#define RA_START 4
#define PREFETCH_CHUNK_BYTES ((uint64_t)4 << 20)
/* epoll tags: 0 stop, 1 the runtime's userfaultfd. */

static inline uintptr_t page_addr(struct lm_region *r, uint64_t pgno)
{
	return r->start + (pgno << r->rt->page_shift);
}

/*
 * Moves a page its owner holds (FILLING) to a settled state; if a fault
 * was parked on it meanwhile, wakes the parked threads so they replay
 * the access against the new state.
 */
uint64_t lm__settle(struct lm_region *r, lm__pte *e, uint64_t pgno, uint64_t val, int ufd)
{
	uint64_t old = atomic_exchange_explicit(e, val, memory_order_acq_rel);
	/*
	 * Async tracking: a scan found the page written while this thread
	 * held it, and protected it again, so the write is recorded here or
	 * nowhere.  (A page that was not installed cannot have been written:
	 * then the flag is simply dropped with the state put back.)
	 */
	if ((old & LM_PTE_WRITTEN) && LM_PTE_STATE(val) == LM_PS_CLEAN &&
	    atomic_compare_exchange_strong(e, &val, (uint64_t)LM_PS_DIRTY | LM_PTE_REF)) {
		lm__dirty_add(r, 1);
		lm__slot_release(r->rt, val);
	}
	if (old & LM_PTE_WAITERS)
		lm__uffd_wake(ufd, page_addr(r, pgno), (size_t)r->rt->page_size);
	return old;
}

#define ST(s) (1u << (s))

/*
 * Claims a page for filling if its state is one of accept (ST() bits).
 * On a missing fault a page the table calls resident is accepted too:
 * the application may have dropped it (its REMOVE event still in
 * flight), and if it is in fact present the install reports EEXIST and
 * the old state is put back.
 */
static bool claim(lm__pte *e, unsigned accept, uint64_t *prev)
{
	uint64_t v = atomic_load_explicit(e, memory_order_acquire);
	for (;;) {
		if (!(accept & ST(LM_PTE_STATE(v))))
			return false;
		if (atomic_compare_exchange_weak_explicit(e, &v, (uint64_t)LM_PS_FILLING,
							  memory_order_acq_rel,
							  memory_order_acquire)) {
			*prev = v & ~LM_PTE_WAITERS;
			return true;
		}
	}
}

#define FAULT_ACCEPT (ST(LM_PS_MISSING) | ST(LM_PS_SWAPPED) | ST(LM_PS_CLEAN) | ST(LM_PS_DIRTY))

/*
 * Claims the faulting page, or parks the fault on it when someone else
 * owns it (its owner wakes the fault on settling).  Parking is a CAS on
 * the very state seen, so an owner that settled meanwhile (perhaps back to
 * MISSING, when its install failed) makes the CAS fail and the claim is
 * tried again: a fault is never dropped between the two.  Returns true
 * when the page was claimed; false when parked or poisoned.
 */
static bool claim_or_park(struct lm_region *r, lm__pte *e, uint64_t *prev, bool *poisoned)
{
	for (;;) {
		if (claim(e, FAULT_ACCEPT, prev))
			return true;
		uint64_t v = atomic_load_explicit(e, memory_order_acquire);
		unsigned s = LM_PTE_STATE(v);
		if (s == LM_PS_POISON) {
			*poisoned = true;
			return false;
		}
		if (s != LM_PS_FILLING && s != LM_PS_EVICTING)
			continue;	/* settled meanwhile: claim again */
		if ((v & LM_PTE_WAITERS) ||
		    atomic_compare_exchange_strong(e, &v, v | LM_PTE_WAITERS)) {
			LM__STAT_ADD(r->rt, faults_parked, 1);
			return false;
		}
	}
}

/* The readahead window for a fault at pgno, from advice and the access pattern. */
static unsigned window(struct lm_region *r, uint64_t pgno)
{
	unsigned max = (unsigned)r->rt->opt.readahead_max;
	switch (lm__region_advice_at(r, pgno)) {
	case LM_ADV_RANDOM:
		atomic_store_explicit(&r->ra_win, 1, memory_order_relaxed);
		return 1;
	case LM_ADV_SEQUENTIAL:
		atomic_store_explicit(&r->ra_win, max, memory_order_relaxed);
		return max;
	}
	/*
	 * Like the kernel's readahead: a fault where the previous fill ended
	 * is sequential and doubles the window; anything else starts over at
	 * one page.  Page 0 of a fresh region counts as the start of a scan.
	 */
	uint64_t next = atomic_load_explicit(&r->ra_next, memory_order_relaxed);
	unsigned win = atomic_load_explicit(&r->ra_win, memory_order_relaxed);
	if (pgno == next)
		win = win < RA_START ? RA_START : win * 2;
	else
		win = 1;
	if (win > max)
		win = max;
	atomic_store_explicit(&r->ra_win, win, memory_order_relaxed);
	return win;
}

static long read_image(struct lm__filler *f, struct lm_region *r, uint64_t pgno, unsigned n);

/*
 * Makes the source's bytes for pages [pgno, pgno + n) available at *src.
 * Returns the number of pages with data (fewer at end of file), 0 when
 * pgno itself is past the end of the file, or -errno on a read error.
 */
long lm__source_read(struct lm__filler *f, struct lm_region *r, uint64_t pgno, unsigned n,
		     const unsigned char **src)
{
	struct lm_runtime *rt = r->rt;
	size_t ps = (size_t)rt->page_size;
	uint64_t off = (pgno + r->src_shift) << rt->page_shift;
	size_t want = (size_t)n * ps;
	switch (r->kind) {
	case LM_SOURCE_ZERO:
		*src = f->zeros;
		return n;
	case LM_SOURCE_MEMORY:
		if (off + want <= r->buflen) {
			*src = r->buf + off;
			return n;
		}
		/* The buffer ends inside this batch: stage it with a zero tail. */
		memset(f->stage, 0, want);
		if (off < r->buflen)
			memcpy(f->stage, r->buf + off, (size_t)(r->buflen - off));
		*src = f->stage;
		return n;
	case LM_SOURCE_IMAGE:
		*src = f->stage;
		return read_image(f, r, pgno, n);
	case LM_SOURCE_FILE: {
		ssize_t got = lm__file_read(f, r->fd, r->foff + off, want);
		if (got < 0) {
			LM__STAT_ADD(rt, io_errors, 1);
			return got;
		}
		/* The size as last seen: smaller on a short read, larger if the file grew. */
		uint64_t end = r->foff + off + (uint64_t)got;
		if ((size_t)got < want || end > atomic_load_explicit(&r->fsize, memory_order_relaxed))
			atomic_store_explicit(&r->fsize, end, memory_order_relaxed);
		if ((size_t)got < want)
			memset(f->stage + got, 0, want - (size_t)got);
		*src = f->stage;
		return (long)(((size_t)got + ps - 1) / ps);
	}
	}
	return -EINVAL;
}

/*
 * Reads the swap slots of pages [0, n) (their previous entries) into the
 * stage.  Returns the pages read before the first that failed (a read
 * error, or a checksum that does not match: never returned as data), or
 * -EBADMSG when the first page itself failed.
 */
static long read_swap(struct lm__filler *f, struct lm_runtime *rt, const uint64_t *prev,
		      unsigned n, const unsigned char **src)
{
	uint64_t slots[n];
	int done[n];
	for (unsigned i = 0; i < n; i++)
		slots[i] = LM_PTE_SLOT(prev[i]);
	lm__swap_read(&rt->swap, f, slots, n, done);
	*src = f->stage;
	for (unsigned i = 0; i < n; i++)
		if (done[i]) {
			LM__STAT_ADD(rt, swap_read_errors, 1);
			return i ? (long)i : -EBADMSG;
		}
	return n;
}

/*
 * Image source: pages [pgno, pgno + n) into the stage.  Pages the index
 * lacks are zero (no I/O); stored ones are read in runs of consecutive
 * data pages and checked against their checksums.  Returns the pages good
 * before the first bad one, or -EBADMSG when the first itself is bad.
 * No arrays on the stack: this may run on a small signal stack.
 */
static long read_image(struct lm__filler *f, struct lm_region *r, uint64_t pgno, unsigned n)
{
	struct lm_runtime *rt = r->rt;
	struct lm__image *im = r->image;
	size_t ps = (size_t)rt->page_size;
	uint64_t first = pgno + r->src_shift;
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
		lm__io_batch(f, r->fd, &io, 1, false);
		LM__STAT_ADD(rt, pread_reads, 1);
		unsigned ok = io.res > 0 ? (unsigned)((size_t)io.res / ps) : 0;
		if (ok > run)
			ok = run;
		for (unsigned j = 0; j < ok; j++)
			if (lm__image_page_sum(im, dst + (size_t)j * ps) != e[j].sum) {
				ok = j;
				break;
			}
		if (ok < run) {
			/* A damaged page: the good ones before it only (counted when poisoned). */
			return i + ok ? (long)(i + ok) : -EBADMSG;
		}
		i += run;
		k += run;
	}
	return n;
}

static void count_fill(struct lm_runtime *rt, int kind, long n)
{
	if (kind < 0)
		LM__STAT_ADD(rt, swap_reads, n);
	else if (kind == LM_SOURCE_IMAGE)
		LM__STAT_ADD(rt, fills_image, n);
	else if (kind == LM_SOURCE_ZERO)
		LM__STAT_ADD(rt, fills_zero, n);
	else if (kind == LM_SOURCE_MEMORY)
		LM__STAT_ADD(rt, fills_memory, n);
	else
		LM__STAT_ADD(rt, fills_file, n);
}

/*
 * Counts n pages filled (fresh of them newly resident).  A fault's pages
 * after the first, and all of an asynchronous readahead's, are readahead;
 * advice's are prefetch.  Either kind of readahead moves the sequential
 * marker to where the fill ended.
 */
static void account(struct lm_region *r, int kind, unsigned n, unsigned fresh, unsigned flags,
		    uint64_t pgno)
{
	struct lm_runtime *rt = r->rt;
	lm__resident_add(r, fresh);
	/* Swapped pages are all fresh: no longer swapped once counted resident. */
	if (kind < 0)
		lm__swapped_add(r, -(int64_t)fresh);
	count_fill(rt, kind, n);
	if (flags & LM_FILL_PREFETCH) {
		LM__STAT_ADD(rt, prefetch_pages, n);
		return;
	}
	LM__STAT_ADD(rt, readahead_pages, (flags & LM_FILL_AHEAD) ? n : n - 1);
	atomic_store_explicit(&r->ra_next, pgno + n, memory_order_relaxed);
}

/* Takes back what account() counted for n pages of which only installed were installed. */
static void unaccount(struct lm_region *r, int kind, unsigned n, unsigned installed,
		      unsigned fresh, unsigned flags)
{
	struct lm_runtime *rt = r->rt;
	lm__resident_add(r, -(int64_t)fresh);
	if (kind < 0)
		lm__swapped_add(r, fresh);
	count_fill(rt, kind, -(long)(n - installed));
	if (flags & LM_FILL_PREFETCH)
		LM__STAT_SUB(rt, prefetch_pages, n - installed);
	else if (flags & LM_FILL_AHEAD)
		LM__STAT_SUB(rt, readahead_pages, n - installed);
	else
		LM__STAT_SUB(rt, readahead_pages, (n - 1) - (installed ? installed - 1 : 0));
}

/* Poisons page pgno (its toucher gets SIGBUS) and records it. */
static void poison(struct lm_region *r, lm__pte *e, uint64_t pgno, int ufd)
{
	struct lm_runtime *rt = r->rt;
	/* Counted first: the poison wakes the toucher, whose SIGBUS may read the stats. */
	LM__STAT_ADD(rt, sigbus_raised, 1);
	int rc = lm__uffd_poison(ufd, page_addr(r, pgno), (size_t)rt->page_size);
	if (rc < 0 && rc != -EEXIST) {
		lm__log(rt, 1, "cannot poison page %llu: %s", (unsigned long long)pgno,
			lm_strerror(rc));
		/* Still wake the toucher: a refault beats a hang. */
		lm__uffd_wake(ufd, page_addr(r, pgno), (size_t)rt->page_size);
	}
	if (e)
		lm__settle(r, e, pgno, LM_PS_POISON, ufd);
}

/*
 * The settled value of a page just installed.  Written pages (and every
 * page while nothing tracks writes) are DIRTY; a page installed
 * write-protected is CLEAN and keeps the swap slot it came from, if any,
 * as the swap cache.  A refault soon after the eviction earns the
 * clock's second chance (see lm__refault_hot).
 */
static uint64_t installed_value(struct lm_runtime *rt, uint64_t prev, bool clean)
{
	uint64_t v = clean ? LM_PS_CLEAN : LM_PS_DIRTY;
	if (clean && LM_PTE_STATE(prev) == LM_PS_SWAPPED)
		v |= prev & ~((1ull << LM_PTE_AUX_SHIFT) - 1);
	if ((prev & LM_PTE_EVICTED) && lm__refault_hot(rt, prev))
		v |= LM_PTE_REF;
	return v;
}

/* Counts the move of an installed page from prev to val (dirty pages, swapped pages, slots). */
static void transition(struct lm_region *r, uint64_t prev, uint64_t val)
{
	unsigned ps = LM_PTE_STATE(prev), vs = LM_PTE_STATE(val);
	/* (Swapped pages are counted by account(), before the install.) */
	if ((ps == LM_PS_DIRTY) != (vs == LM_PS_DIRTY))
		lm__dirty_add(r, vs == LM_PS_DIRTY ? 1 : -1);
	if (LM_PTE_HAS_SLOT(prev) && !LM_PTE_HAS_SLOT(val))
		lm__slot_release(r->rt, prev);
	if (prev & LM_PTE_EVICTED)
		LM__STAT_ADD(r->rt, refaults, 1);
}

long lm__fill(struct lm__filler *f, struct lm_region *r, uint64_t pgno, unsigned want,
	      unsigned flags, int ufd)
{
	struct lm_runtime *rt = r->rt;
	size_t ps = (size_t)rt->page_size;
	bool fault = !(flags & (LM_FILL_PREFETCH | LM_FILL_AHEAD));
	if (flags & LM_FILL_AHEAD) {
		/* Readahead is a bet: not one worth evicting for. */
		uint64_t b = atomic_load_explicit(&rt->budget, memory_order_relaxed);
		if (b && atomic_load_explicit(rt->nres, memory_order_relaxed) +
			 (int64_t)want >= (int64_t)b)
			return 0;
	} else {
		lm__throttle(rt);
	}
	uint64_t t0 = lm__now_ns();
	lm__pte *e0 = lm__pt_get(&r->pt, pgno, true);
	if (!e0) {
		if (fault)
			poison(r, NULL, pgno, ufd);
		return -ENOMEM;
	}
	uint64_t prev0;
	bool poisoned = false;
	if (fault ? !claim_or_park(r, e0, &prev0, &poisoned)
		  : !claim(e0, ST(LM_PS_MISSING) | ST(LM_PS_SWAPPED), &prev0)) {
		/* Already poisoned: answer the fault with the poison again, not counted twice. */
		if (poisoned)
			poison(r, NULL, pgno, ufd), LM__STAT_SUB(rt, sigbus_raised, 1);
		return 0;
	}
	if (r->kind == LM_SOURCE_IMAGE && fault)
		LM__STAT_ADD(rt, restore_faults, 1);
	/* A swapped page reads its slot, and its readahead takes swapped neighbours only. */
	bool from_swap = LM_PTE_STATE(prev0) == LM_PS_SWAPPED;
	int kind = from_swap ? -1 : r->kind;

	/* Claim the readahead pages: contiguous pages like the first only. */
	unsigned n = want ? want : window(r, pgno);
	if (n > r->npages - pgno)
		n = (unsigned)(r->npages - pgno);
	if (n > f->stage_len / ps)
		n = (unsigned)(f->stage_len / ps);
	if (r->kind == LM_SOURCE_FILE && n > 1 && !from_swap) {
		/* Do not read ahead past the end of the file as last seen. */
		uint64_t fsize = atomic_load_explicit(&r->fsize, memory_order_relaxed);
		uint64_t off = r->foff + ((pgno + r->src_shift) << rt->page_shift);
		uint64_t avail = fsize > off ? (fsize - off + ps - 1) / ps : 1;
		if (n > avail)
			n = avail ? (unsigned)avail : 1;
	}
	/* The filler's arrays, not the stack: this may run on a small signal stack. */
	lm__pte **ents = f->ents;
	uint64_t *prev = f->prev;
	ents[0] = e0;
	prev[0] = prev0;
	unsigned claimed = 1;
	unsigned accept = from_swap ? ST(LM_PS_SWAPPED) : ST(LM_PS_MISSING);
	while (claimed < n) {
		lm__pte *e = lm__pt_get(&r->pt, pgno + claimed, true);
		if (!e || !claim(e, accept, &prev[claimed]))
			break;
		ents[claimed++] = e;
	}
	n = claimed;

	const unsigned char *src = NULL;
	long avail = from_swap ? read_swap(f, rt, prev, n, &src) : lm__source_read(f, r, pgno, n, &src);
	if (avail < 0 && n > 1 && !from_swap && r->kind != LM_SOURCE_IMAGE) {
		/*
		 * The batch failed, maybe only in its readahead part: a bad
		 * block further on must not cost the faulting page, so read
		 * that page alone before giving up on it.
		 */
		for (unsigned i = 1; i < n; i++)
			lm__settle(r, ents[i], pgno + i, prev[i], ufd);
		n = 1;
		avail = lm__source_read(f, r, pgno, 1, &src);
	}
	if (avail <= 0) {
		/* Past the end of the file, or a read error: SIGBUS for this page only. */
		for (unsigned i = 1; i < n; i++)
			lm__settle(r, ents[i], pgno + i, prev[i], ufd);
		if (from_swap && avail < 0) {
			/* Its only copy is unreadable: the page is lost, and says so on every touch. */
			lm__swapped_add(r, -1);
			lm__slot_release(rt, prev0);
			if (fault) {
				poison(r, e0, pgno, ufd);
			} else {
				LM__STAT_ADD(rt, sigbus_raised, 1);
				lm__settle(r, e0, pgno, LM_PS_POISON, ufd);
			}
		} else if (fault) {
			if (kind == LM_SOURCE_IMAGE)
				LM__STAT_ADD(rt, image_errors, 1);
			poison(r, e0, pgno, ufd);
		} else {
			lm__settle(r, e0, pgno, prev0, ufd);
		}
		return avail < 0 ? avail : -ENXIO;
	}
	for (unsigned i = (unsigned)avail; i < n; i++)
		lm__settle(r, ents[i], pgno + i, prev[i], ufd);
	n = (unsigned)avail;

	/*
	 * Accounted before the install, which wakes the faulting thread: when
	 * its access completes the counters already include it.  What does not
	 * get installed is taken back below.
	 */
	unsigned fresh = 0;
	for (unsigned i = 0; i < n; i++) {
		unsigned s = LM_PTE_STATE(prev[i]);
		fresh += s == LM_PS_MISSING || s == LM_PS_SWAPPED;
	}
	account(r, kind, n, fresh, flags, pgno);

	/*
	 * Install.  While writes are tracked (a budget or a shared region
	 * needs to know which pages are dirty), pages not being written are
	 * installed write-protected: their first write faults and marks them
	 * dirty.  Untracked read faults on zero-source pages map the shared
	 * zero page (no memory until written).  EEXIST at a page means another
	 * path populated it: keep going after it.
	 */
	bool track = atomic_load_explicit(&rt->track, memory_order_relaxed);
	/*
	 * While a snapshot is live every page is installed write-protected
	 * (its first write must preserve it first, snapshot.c), except the
	 * page of a write fault: the write is what the fault is for, so the
	 * contents just read are preserved here and that page alone is
	 * installed writable, before the rest of the window.
	 */
	const struct lm__snapset *snaps = atomic_load_explicit(&r->snaps, memory_order_acquire);
	/*
	 * A stale fault on a page the table calls resident (found by review)
	 * stays protected: what it holds is not the source's, so nothing can
	 * be preserved from the stage, and its write replays as a
	 * write-protect fault, which preserves the real contents.
	 */
	unsigned st0 = LM_PTE_STATE(prev0);
	bool staged0 = st0 == LM_PS_MISSING || st0 == LM_PS_SWAPPED;
	bool wp = (track || snaps) && !((flags & LM_FILL_WRITE) && (!snaps || staged0));
	bool wp_rest = snaps || wp;
	if (snaps && !wp) {
		const unsigned char *d0 = st0 == LM_PS_MISSING && lm__source_immutable(r) ? NULL : src;
		lm__snap_preserve(f, r, snaps, &pgno, &d0, 1);
	}
	/*
	 * The shared zero page only while nothing tracks writes: mapping it
	 * and protecting it are two steps, and a write between them (the
	 * first wakes the toucher) would go unseen.  Tracked, zeros are
	 * copied in write-protected, in one step.
	 */
	bool zeropage = kind == LM_SOURCE_ZERO && !track && !snaps && !rt->huge &&
			!(flags & (LM_FILL_WRITE | LM_FILL_PREFETCH));
	unsigned at = 0, installed = 0, fresh_done = 0;
	long ret = 0;
	while (at < n) {
		size_t done = 0;
		/* A write fault under a snapshot: its page alone, writable; then the rest. */
		bool wpc = at ? wp_rest : wp;
		unsigned lim = (!at && wp_rest != wp) ? 1 : n;
		int rc = zeropage ? lm__uffd_zeropage(ufd, page_addr(r, pgno + at), (n - at) * ps, &done)
				  : lm__uffd_copy(ufd, page_addr(r, pgno + at), src + (size_t)at * ps,
						  (lim - at) * ps, wpc, &done);
		unsigned ok = (unsigned)(done / ps);
		bool clean = wpc;
		for (unsigned i = at; i < at + ok; i++) {
			unsigned s = LM_PTE_STATE(prev[i]);
			fresh_done += s == LM_PS_MISSING || s == LM_PS_SWAPPED;
			uint64_t val = installed_value(rt, prev[i], clean);
			transition(r, prev[i], val);
			lm__settle(r, ents[i], pgno + i, val, ufd);
		}
		installed += ok;
		at += ok;
		if (rc == 0 && at < n)
			continue;
		if (rc == 0)
			break;
		if (ok && rc != -EEXIST)
			LM__STAT_ADD(rt, copy_partial, 1);
		if (rc == -EEXIST) {
			/*
			 * Present already: usually a second thread's fault on a page
			 * just filled (each faulting thread queues its own message).
			 * Resident as before, or newly by another path; not a fill.
			 * Its write protection is unknown: count it dirty.
			 */
			LM__STAT_ADD(rt, copy_eexist, 1);
			if (at == 0 && fault)
				LM__STAT_ADD(rt, faults_dup, 1);
			uint64_t keep = prev[at];
			unsigned s = LM_PTE_STATE(keep);
			if (s == LM_PS_MISSING || s == LM_PS_SWAPPED) {
				keep = installed_value(rt, keep, false);
				transition(r, prev[at], keep);
				fresh_done++;
			}
			lm__settle(r, ents[at], pgno + at, keep, ufd);
			lm__uffd_wake(ufd, page_addr(r, pgno + at), ps);
			at++;
			continue;
		}
		if (rc == -EAGAIN)
			LM__STAT_ADD(rt, copy_eagain, 1);
		/*
		 * The install must lie within one mapping: a readahead window
		 * that crosses a hole the application unmapped fails whole
		 * (ENOENT).  The faulting page alone may still be fine.
		 */
		if (at == 0 && n > 1 && rc != -EAGAIN && rc != -ESRCH) {
			for (unsigned i = 1; i < n; i++)
				lm__settle(r, ents[i], pgno + i, prev[i], ufd);
			unsigned s0 = LM_PTE_STATE(prev[0]);
			unsigned fresh0 = s0 == LM_PS_MISSING || s0 == LM_PS_SWAPPED;
			unaccount(r, kind, n, 1, fresh - fresh0, flags);
			fresh = fresh0;
			n = 1;
			continue;
		}
		/*
		 * EAGAIN: the address space is changing (mremap, fork) and an
		 * event we must read may be pending, so never retry here: put
		 * the pages back and wake the toucher, whose access replays.
		 * ENOENT/ESRCH: unmapped, or the process is gone: wake it too.
		 * Anything else cannot be filled: SIGBUS for the faulting page.
		 * Either way the faulting thread is answered, never left asleep.
		 */
		bool sigbus = at == 0 && fault && rc != -EAGAIN && rc != -ENOENT && rc != -ESRCH;
		for (unsigned i = at; i < n; i++) {
			if (i == 0 && sigbus) {
				if (from_swap) {
					lm__swapped_add(r, -1);
					lm__slot_release(rt, prev0);
				}
				poison(r, ents[0], pgno, ufd);
			} else
				lm__settle(r, ents[i], pgno + i, prev[i], ufd);
		}
		if (at == 0 && fault && !sigbus)
			lm__uffd_wake(ufd, page_addr(r, pgno), ps);
		ret = rc;
		break;
	}
	if (installed < n || fresh_done < fresh)
		unaccount(r, kind, n, installed, fresh - fresh_done, flags);
	if (installed) {
		lm__stats_latency(rt, lm__now_ns() - t0);
		lm__evict_check(rt);
	}
	return installed ? (long)installed : ret;
}

void lm__wp_fault(struct lm__filler *f, struct lm_region *r, uint64_t pgno, uintptr_t addr,
		  int ufd, bool park)
{
	struct lm_runtime *rt = r->rt;
	size_t ps = (size_t)rt->page_size;
	lm__pte *e = lm__pt_get(&r->pt, pgno, false);
	uint64_t v = e ? atomic_load_explicit(e, memory_order_acquire) : 0;
	for (;;) {
		unsigned s = LM_PTE_STATE(v);
		if (!e || s == LM_PS_MISSING || s == LM_PS_SWAPPED || s == LM_PS_POISON) {
			/*
			 * Moved out or dropped since: the write replays as a
			 * missing fault.  Should the page still be mapped all the
			 * same, lifting the protection lets the write through
			 * rather than fault for ever.
			 */
			if (lm__uffd_writeprotect(ufd, addr & ~(ps - 1), ps, false) < 0)
				lm__uffd_wake(ufd, addr, ps);
			return;
		}
		if (s == LM_PS_FILLING || s == LM_PS_EVICTING) {
			/* Being evicted or written back: wait, the owner wakes the page. */
			if (!park) {
				sched_yield();
				return;
			}
			if ((v & LM_PTE_WAITERS) ||
			    atomic_compare_exchange_weak(e, &v, v | LM_PTE_WAITERS)) {
				LM__STAT_ADD(rt, faults_parked, 1);
				return;
			}
			continue;
		}
		/*
		 * CLEAN or DIRTY.  The page is held (FILLING) while its
		 * protection is lifted: otherwise a writeback could claim it in
		 * between, protect and write it, settle it CLEAN, and then this
		 * unprotect would leave a clean page writable, its next write
		 * unseen and lost on eviction (found by review).  DIRTY pages
		 * come here when a racing fault marked them first, or when the
		 * clock hand protected them again.
		 */
		if (!atomic_compare_exchange_weak(e, &v, (uint64_t)LM_PS_FILLING))
			continue;
		uint64_t prev = v & ~LM_PTE_WAITERS;
		/*
		 * A snapshot lacks the page: its contents are preserved (with its
		 * neighbours') before the write may go through.  Without a
		 * staging buffer (signal mode, the pool empty) the write replays.
		 */
		const struct lm__snapset *snaps = atomic_load_explicit(&r->snaps, memory_order_acquire);
		bool lifted = false;
		if (snaps && lm__snap_needs(snaps, pgno)) {
			if (!f) {
				lm__settle(r, e, pgno, prev, ufd);
				sched_yield();
				return;
			}
			lifted = lm__snap_cow(f, r, snaps, pgno, prev);
		}
		if (s == LM_PS_CLEAN)
			lm__dirty_add(r, 1);
		/* Lifting the protection wakes the writer; an event pending (EAGAIN): it faults again. */
		int rc = lifted ? 0 : lm__uffd_writeprotect(ufd, addr & ~(ps - 1), ps, false);
		/* Written: referenced for the clock.  A clean page's slot is stale now. */
		uint64_t old = atomic_exchange_explicit(e, (uint64_t)LM_PS_DIRTY | LM_PTE_REF,
							memory_order_acq_rel);
		if (s == LM_PS_CLEAN)
			lm__slot_release(rt, prev);
		if (rc < 0 || (old & LM_PTE_WAITERS))
			lm__uffd_wake(ufd, addr & ~(ps - 1), ps);
		return;
	}
}

/*
 * Fills [first, first + count) in batches of the readahead size: used by
 * will-need (in the background) and populate (synchronously) advice.
 * Returns the pages installed or the first hard error.
 */
long lm__fill_range(struct lm__filler *f, struct lm_region *r, uint64_t first, uint64_t count)
{
	unsigned max = (unsigned)(f->stage_len >> r->rt->page_shift);
	long total = 0, err = 0;
	uint64_t pg = first, end = first + count;
	while (pg < end) {
		unsigned want = end - pg < max ? (unsigned)(end - pg) : max;
		long n = lm__fill(f, r, pg, want, LM_FILL_PREFETCH, r->rt->ufd);
		/*
		 * The address space is changing: an event is pending that a
		 * handler must read and apply, and applying it may wait for
		 * this very read section.  Never back off in here: return, and
		 * let the caller leave the section before it tries again.
		 */
		if (n == -EAGAIN)
			return total ? total : n;
		if (n == -ESRCH)
			return n;
		/* Past the end of the file is not an error: mmap would not fill it either. */
		if (n < 0 && n != -ENXIO && !err)
			err = n == -ENOENT ? -ENOMEM : n;	/* ENOENT: a hole, as madvise says */
		total += n > 0 ? n : 0;
		pg += n > 0 ? (uint64_t)n : 1;
	}
	return err ? err : total;
}

/* Waits until no page of [first, first + count) is being filled or evicted by someone else. */
void lm__wait_settled(struct lm_region *r, uint64_t first, uint64_t count)
{
	for (uint64_t pg = first; pg < first + count; pg++) {
		lm__pte *e = lm__pt_get(&r->pt, pg, false);
		unsigned s;
		while (e && ((s = LM_PTE_STATE(atomic_load(e))) == LM_PS_FILLING ||
			     s == LM_PS_EVICTING))
			sched_yield();
	}
}

/*
 * True while some handler may hold an event (remap, unmap) it has read
 * but not applied: the application's call has returned and its threads
 * may already fault on addresses the runtime does not know yet.
 */
static bool events_unapplied(struct lm_runtime *rt)
{
	return atomic_load_explicit(&rt->ev_unapplied, memory_order_seq_cst) > 0;
}

int lm__zero_fill(struct lm_runtime *rt, int ufd, uintptr_t addr)
{
	size_t done;
	if (rt->huge)
		return lm__uffd_copy(ufd, addr, rt->zeros, (size_t)rt->page_size, false, &done);
	return lm__uffd_zeropage(ufd, addr, (size_t)rt->page_size, &done);
}

static void handle_fault(struct lm__filler *f, int ufd, const struct uffd_msg *m)
{
	struct lm_runtime *rt = f->rt;
	uintptr_t addr = (uintptr_t)m->arg.pagefault.address & ~((uintptr_t)rt->page_size - 1);
	bool wp = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP;
	LM__STAT_ADD(rt, faults_thread, 1);
	if (wp)
		LM__STAT_ADD(rt, faults_wp, 1);
	else
		LM__STAT_ADD(rt, faults_missing, 1);
	int idx = lm__read_lock(rt);
	struct lm_region *r = lm__region_find(rt, addr);
	if (!r && events_unapplied(rt)) {
		/* Maybe a part just moved by mremap: replay once the event is applied. */
		LM__STAT_ADD(rt, faults_parked, 1);
		lm__uffd_wake(ufd, addr, (size_t)rt->page_size);
	} else if (!r) {
		/*
		 * Registered memory we do not know: a region destroyed under
		 * the fault, or a part the application grew with mremap.  It is
		 * anonymous memory now; zero-fill it rather than leave the
		 * thread hanging.
		 */
		int rc = lm__zero_fill(rt, ufd, addr);
		if (rc < 0)
			lm__uffd_wake(ufd, addr, (size_t)rt->page_size);
	} else if (wp) {
		lm__wp_fault(f, r, (addr - r->start) >> rt->page_shift, addr, ufd, true);
	} else {
		unsigned flags = (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) ? LM_FILL_WRITE : 0;
		uint64_t pgno = (addr - r->start) >> rt->page_shift;
		long n = lm__fill(f, r, pgno, 0, flags, ufd);
		/*
		 * Failed (unmapped, moved, changing): the fill woke the page at
		 * the region's address; the thread waits at the message's, which
		 * differs if the whole region moved meanwhile.  A spare wake is free.
		 */
		if (n < 0)
			lm__uffd_wake(ufd, addr, (size_t)rt->page_size);
		/*
		 * Asynchronous readahead, as the kernel does it: the install
		 * above woke the faulting thread, which now works through its
		 * window on its own CPU while this one fills the next window.
		 * A sequential scan then faults once per two windows, and the
		 * fills overlap the application's work.
		 */
		unsigned win = atomic_load_explicit(&r->ra_win, memory_order_relaxed);
		/*
		 * (Also asking the kernel to read a file's next windows with
		 * POSIX_FADV_WILLNEED was measured: slower here, for lazymem and
		 * for the kernel's own mmap of the same file afterwards.)
		 */
		if (n > 1 && win >= RA_START && pgno + (uint64_t)n < r->npages)
			lm__fill(f, r, pgno + (uint64_t)n, win, flags | LM_FILL_AHEAD, ufd);
	}
	lm__read_unlock(rt, idx);
}

/* The application dropped [start, end) with madvise: the pages come from the source again. */
static void handle_remove(struct lm_runtime *rt, uintptr_t start, uintptr_t end)
{
	int idx = lm__read_lock(rt);
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	for (size_t i = 0; t && i < t->n; i++) {
		const struct lm__extent *e = &t->e[i];
		if (start < e->end && e->start < end)
			lm__region_forget(e->r, e->start > start ? e->start : start,
					  e->end < end ? e->end : end, true);
	}
	lm__read_unlock(rt, idx);
}

/* Applies one event message, in the order the kernel queued it. */
static void apply_event(struct lm_runtime *rt, const struct uffd_msg *m)
{
	/* Counted once applied: a count that moved tells that its event's effects are visible. */
	switch (m->event) {
	case UFFD_EVENT_REMAP:
		lm__region_remap(rt, (uintptr_t)m->arg.remap.from, (uintptr_t)m->arg.remap.to,
				 (size_t)m->arg.remap.len);
		LM__STAT_ADD(rt, events_remap, 1);
		break;
	case UFFD_EVENT_REMOVE:
		handle_remove(rt, (uintptr_t)m->arg.remove.start, (uintptr_t)m->arg.remove.end);
		LM__STAT_ADD(rt, events_remove, 1);
		break;
	case UFFD_EVENT_UNMAP:
		lm__region_unmapped(rt, (uintptr_t)m->arg.remove.start,
				    (uintptr_t)m->arg.remove.end);
		LM__STAT_ADD(rt, events_unmap, 1);
		break;
	}
}

/*
 * Reads and handles every message pending on the userfaultfd.
 *
 * Events are applied in the order the kernel queued them: one system
 * call queues several (mremap: REMAP, then UNMAP of the old range), and
 * two handlers applying them concurrently could forget the moved pages
 * before moving them.  So one handler at a time reads and applies its
 * batch's events under ev_lock; the batch's faults are handled after it
 * is released, in parallel.  Each batch is also one section of the evq
 * epoch, which lm_region_destroy waits out (a section per batch, not per
 * drain, so that steady faults never starve it).
 *
 * No fork waits for this path: the runtime does not ask for fork events
 * (see signal.c), so taking locks or allocating here can never hold up a
 * fork() that itself holds the allocator's locks.
 */
static void drain(struct lm__filler *f, int ufd)
{
	struct lm_runtime *rt = f->rt;
	struct uffd_msg msgs[MSG_BATCH];
	for (;;) {
		int ev = lm__epoch_enter(&rt->evq);
		/* Counted from before the read until the batch's events are applied. */
		pthread_mutex_lock(&rt->ev_lock);
		atomic_fetch_add_explicit(&rt->ev_unapplied, 1, memory_order_seq_cst);
		ssize_t n = read(ufd, msgs, sizeof(msgs));
		int err = n < 0 ? errno : 0;
		size_t count = n > 0 ? (size_t)n / sizeof(msgs[0]) : 0;
		for (size_t i = 0; i < count; i++)
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				apply_event(rt, &msgs[i]);
		atomic_fetch_sub_explicit(&rt->ev_unapplied, 1, memory_order_seq_cst);
		pthread_mutex_unlock(&rt->ev_lock);
		for (size_t i = 0; i < count; i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				handle_fault(f, ufd, &msgs[i]);
		lm__epoch_exit(&rt->evq, ev);
		if (n < 0 && err == EINTR)
			continue;
		if (n < 0 || (size_t)n < sizeof(msgs))
			return;	/* EAGAIN: drained; anything else: nothing to read */
	}
}

void *lm__handler_main(void *arg)
{
	struct lm__filler *f = arg;
	struct lm_runtime *rt = f->rt;
	sigset_t all;
	/* Application signals are not ours to take. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	struct epoll_event evs[8];
	while (!atomic_load_explicit(&rt->stopping, memory_order_relaxed)) {
		int n = epoll_wait(rt->epfd, evs, 8, -1);
		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u64 == 0)
				return NULL;	/* stop_fd: the runtime is closing */
			drain(f, rt->ufd);
		}
	}
	return NULL;
}

void *lm__prefetch_main(void *arg)
{
	struct lm_runtime *rt = arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_mutex_lock(&rt->pf_lock);
	for (;;) {
		while (!rt->pf_head && !atomic_load(&rt->stopping))
			pthread_cond_wait(&rt->pf_cond, &rt->pf_lock);
		if (atomic_load(&rt->stopping))
			break;
		struct lm__prefetch *p = rt->pf_head;
		rt->pf_head = p->next;
		if (!rt->pf_head)
			rt->pf_tail = &rt->pf_head;
		pthread_mutex_unlock(&rt->pf_lock);
		/* The region may have been destroyed since: find it by identity first. */
		int idx = lm__read_lock(rt);
		struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
		bool live = false;
		for (size_t i = 0; t && i < t->n && !live; i++)
			live = t->e[i].r == p->r && t->e[i].r->id == p->id;
		/*
		 * 4 MiB at a time (at least a page), so that a region's destroy
		 * (which waits for readers) never waits for a gigabyte of
		 * prefetch.
		 */
		uint64_t max = PREFETCH_CHUNK_BYTES >> rt->page_shift ? PREFETCH_CHUNK_BYTES >> rt->page_shift
								   : 1;
		uint64_t chunk = p->count < max ? p->count : max;
		long done = live ? lm__fill_range(&rt->pf_filler, p->r, p->first, chunk) : 0;
		lm__read_unlock(rt, idx);
		if (done == -EAGAIN) {
			/* Outside the section now: let the pending event be applied, then retry. */
			sched_yield();
			chunk = 0;
		}
		pthread_mutex_lock(&rt->pf_lock);
		if (live && chunk < p->count) {
			/* Back at the head: the rest goes on, unless destroy drops it. */
			p->first += chunk;
			p->count -= chunk;
			p->next = rt->pf_head;
			if (!rt->pf_head)
				rt->pf_tail = &p->next;
			rt->pf_head = p;
		} else {
			free(p);
		}
	}
	pthread_mutex_unlock(&rt->pf_lock);
	return NULL;
}
