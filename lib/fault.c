/* SPDX-License-Identifier: MIT */
/* The fill engine: claiming pages, reading them from their store, installing them; first writes; prefetch. */
#include "internal.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define PREFETCH_CHUNK_BYTES ((uint64_t)4 << 20)
#define STREAM_UNIT_BYTES ((uint64_t)2 << 20)
#define STREAM_WINDOWS 8

static inline uintptr_t page_addr(struct lm_region *r, uint64_t pgno)
{
	return r->start + (pgno << r->rt->page_shift);
}

#define FAULT_ACCEPT (LM__ST(LM_PS_MISSING) | LM__ST(LM_PS_SWAPPED) | LM__ST(LM_PS_CLEAN) | LM__ST(LM_PS_DIRTY))

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
	/* A stream's fills end in any order: its cursor is where the scan goes next. */
	if (pgno == next || (pgno && pgno == atomic_load_explicit(&r->ra_cursor, memory_order_relaxed)))
		win = win < LM__RA_START ? LM__RA_START : win * 2;
	else
		win = 1;
	if (win > max)
		win = max;
	atomic_store_explicit(&r->ra_win, win, memory_order_relaxed);
	/*
	 * A random fault on a file fills its aligned block of LM__RA_AROUND
	 * pages, as mmap's read-around reads the pages about a fault: a
	 * device access costs about what a page costs, and the pages near a
	 * random touch are the likeliest next ones.  This fill takes the
	 * block from the fault on; lm__window_around gives the pages below.
	 * Measured with random reads of a cold 64 MiB file: one page per
	 * fault took 24x mmap's time.
	 */
	unsigned around = lm__window_around(r, pgno);
	if (win == 1 && around)
		return around - (unsigned)(pgno % around);
	return win;
}

unsigned lm__window_around(struct lm_region *r, uint64_t pgno)
{
	unsigned max = (unsigned)r->rt->opt.readahead_max;
	if (!(r->src.ops->flags & LM__STORE_AROUND) ||
	    lm__region_advice_at(r, pgno) == LM_ADV_RANDOM)
		return 0;
	return max < LM__RA_AROUND ? max : LM__RA_AROUND;
}

/*
 * A descending run (each fault the page just below the last fill, as a
 * buffer written from its end down: sort's line table) gets a window
 * below the fault, doubling like window()'s; 0 when the fault is not one.
 * low is the first page of the last fill, read before this fault's.
 */
unsigned lm__window_down(struct lm_region *r, uint64_t pgno, uint64_t low)
{
	unsigned max = (unsigned)r->rt->opt.readahead_max;
	if (pgno + 1 != low || !pgno || lm__region_advice_at(r, pgno) == LM_ADV_RANDOM) {
		atomic_store_explicit(&r->ra_dwin, 0, memory_order_relaxed);
		return 0;
	}
	unsigned win = atomic_load_explicit(&r->ra_dwin, memory_order_relaxed);
	win = win < LM__RA_START ? LM__RA_START : win * 2;
	if (win > max)
		win = max;
	atomic_store_explicit(&r->ra_dwin, win, memory_order_relaxed);
	return pgno < win ? (unsigned)pgno : win;
}

/*
 * Counts n pages filled.  A fault's pages after the first, and all of an
 * asynchronous readahead's, are readahead; advice's are prefetch.  Either
 * kind of readahead moves the sequential marker to where the fill ended.
 * Counted before the install, which wakes the faulting thread: when its
 * access completes the statistics already include it.
 */
static void account(struct lm_region *r, struct lm__store *st, unsigned n, unsigned flags,
		    uint64_t pgno)
{
	struct lm_runtime *rt = r->rt;
	lm__store_count(st, st->ops->fill_stat, n);
	if (flags & LM_FILL_PREFETCH) {
		LM__STAT_ADD(rt, prefetch_pages, n);
		return;
	}
	LM__STAT_ADD(rt, readahead_pages, (flags & LM_FILL_AHEAD) ? n : n - 1);
	atomic_store_explicit(&r->ra_next, pgno + n, memory_order_relaxed);
	atomic_store_explicit(&r->ra_low, pgno, memory_order_relaxed);
}

/* Takes back what account() counted for n pages of which only installed were installed. */
static void unaccount(struct lm_region *r, struct lm__store *st, unsigned n, unsigned installed,
		      unsigned flags)
{
	struct lm_runtime *rt = r->rt;
	lm__store_count(st, st->ops->fill_stat, -(long)(n - installed));
	if (flags & LM_FILL_PREFETCH)
		LM__STAT_SUB(rt, prefetch_pages, n - installed);
	else if (flags & LM_FILL_AHEAD)
		LM__STAT_SUB(rt, readahead_pages, n - installed);
	else
		LM__STAT_SUB(rt, readahead_pages, (n - 1) - (installed ? installed - 1 : 0));
}

/* Poisons page pgno (its toucher gets SIGBUS) and records it; a held page settles POISON. */
static void poison(struct lm_region *r, lm__pte *e, uint64_t pgno, uint64_t prev, uint64_t counted,
		   int ufd)
{
	struct lm_runtime *rt = r->rt;
	/* Counted first: the poison wakes the toucher, whose SIGBUS may read the stats. */
	LM__STAT_ADD(rt, sigbus_raised, 1);
	if (ufd >= 0) {
		int rc = lm__uffd_poison(ufd, page_addr(r, pgno), (size_t)rt->page_size);
		if (rc < 0 && rc != -EEXIST) {
			lm__log(rt, 1, "cannot poison page %llu: %s", (unsigned long long)pgno,
				lm_strerror(rc));
			/* Still wake the toucher: a refault beats a hang. */
			lm__uffd_wake(ufd, page_addr(r, pgno), (size_t)rt->page_size);
		}
	}
	if (e)
		lm__pte_settle_counted(r, e, pgno, prev, counted, LM_PS_POISON, 0);
}

/*
 * What the counters count a page as once installed (the settled value
 * without the clock's bit).  Written pages (and every page while nothing
 * tracks writes) are DIRTY; a page installed write-protected is CLEAN
 * and keeps the swap slot it came from, if any, as the swap cache.
 */
static uint64_t planned_value(uint64_t prev, bool clean)
{
	uint64_t v = clean ? LM_PS_CLEAN : LM_PS_DIRTY;
	if (clean && LM_PTE_STATE(prev) == LM_PS_SWAPPED)
		v |= prev & ~((1ull << LM_PTE_AUX_SHIFT) - 1);
	return v;
}

/* The settled value of a page just installed: a refault soon after the eviction earns the clock's second chance (see lm__refault_hot). */
static uint64_t installed_value(struct lm_runtime *rt, uint64_t prev, bool clean)
{
	uint64_t v = planned_value(prev, clean);
	if ((prev & LM_PTE_EVICTED) && lm__refault_hot(rt, prev)) {
		/*
		 * Evicting it was a mistake, most often of a page only read
		 * (writes are seen, reads are not): kept for the hand's next
		 * LM_PTE_HOT_MAX passes.  Counting up one per refault instead
		 * never got past one, since a page is only taken once its count
		 * is spent.
		 */
		v |= LM_PTE_REF | LM_PTE_HOT_MASK;
	}
	return v;
}

/*
 * One fill in progress: the pages claimed (the filler's arrays, not the
 * stack: this may run on a small signal stack), where their contents
 * are, and how they are to be installed.
 */
struct fill {
	struct lm__filler *f;
	struct lm_region *r;
	uint64_t pgno;
	unsigned n;		/* pages held: ents[0..n), prev[0..n) */
	unsigned flags;
	struct lm__store *st;	/* where the contents come from: the source, or the swap file */
	int ufd;
	bool fault;
	bool wp, wp_rest;	/* the first page's protection, the others' */
	bool zeropage;
	const unsigned char *src;
	uint64_t ext;		/* pages of r's extent from pgno on, 0: not looked up */
};

/* Whether page i is installed write-protected (so settles CLEAN). */
static inline bool fill_clean(const struct fill *x, unsigned i)
{
	return i ? x->wp_rest : x->wp;
}

/* Page i's value as the counters count it once the install was planned. */
static inline uint64_t fill_counted(const struct fill *x, unsigned i)
{
	return planned_value(x->f->prev[i], fill_clean(x, i));
}

/* Gives pages [from, to) back unfilled; counted: the counters moved ahead already. */
static void fill_release(struct fill *x, unsigned from, unsigned to, bool counted)
{
	for (unsigned i = from; i < to; i++)
		lm__pte_settle_counted(x->r, x->f->ents[i], x->pgno + i, x->f->prev[i],
				       counted ? fill_counted(x, i) : x->f->prev[i], x->f->prev[i], 0);
}

/*
 * Claims the readahead pages after the first (already held): contiguous
 * pages like the first only, as many as the window, the stage and (for
 * a file) the file as last seen allow.
 */
static void fill_claim_window(struct fill *x, unsigned want)
{
	struct lm_region *r = x->r;
	struct lm_runtime *rt = r->rt;
	size_t ps = (size_t)rt->page_size;
	bool from_swap = x->st == &rt->swap_store;
	unsigned n = want ? want : window(r, x->pgno);
	if (n > r->npages - x->pgno)
		n = (unsigned)(r->npages - x->pgno);
	if (n > x->f->stage_len / ps)
		n = (unsigned)(x->f->stage_len / ps);
	/*
	 * Not past the region's extent: the application may have unmapped
	 * a part after it, and a new region may be mapped there now, its
	 * pages not ours to install (found by review).
	 */
	if (n > 1 && !x->ext)
		x->ext = lm__region_extent_pages(r, x->pgno);
	if (n > 1 && n > x->ext)
		n = x->ext ? (unsigned)x->ext : 1;
	/* Not past the end of the source as last seen (a file's). */
	if (n > 1 && !from_swap)
		n = (unsigned)lm__store_avail(x->st, x->pgno + r->src_shift, n);
	unsigned accept = from_swap ? LM__ST(LM_PS_SWAPPED) : LM__ST(LM_PS_MISSING);
	x->n = 1;
	while (x->n < n) {
		lm__pte *e = lm__pt_get(&r->pt, x->pgno + x->n, true);
		if (!e || !lm__pte_claim(e, accept, LM_PS_FILLING, &x->f->prev[x->n]))
			break;
		x->f->ents[x->n++] = e;
	}
}

/*
 * Sequential streams.  A scan over lazy memory waits on its filler: it
 * touches an installed page in about 14 ns, while one UFFDIO_COPY of a
 * 64-page window costs 0.76 us a page here (the kernel's own first
 * touch 1.25 us), so one filler, however early it starts, caps a scan at
 * 0.6x the kernel's cost, and filling one window ahead per fault (the
 * asynchronous readahead above) left it at 0.95x, the scan and its filler
 * taking turns.  A stream fills ahead continuously instead: the region's
 * cursor is the next page to fill and its limit how far the scan may be
 * outrun (stream_ahead past its last fault); any handler that comes by
 * takes the next unit from the cursor and fills it window by window:
 * the faulting thread's handler after the fault's own window, a handler
 * whose fault message was the scan catching up (it would otherwise wait
 * on the first one), an idle handler lingering.  Two fillers on two CPUs
 * fill twice as fast; the scan runs behind them.  Measured on a 1 GiB
 * scan: writes of zeros 1.17 -> 0.52 us a page, reads 0.34 -> 0.14.
 *
 * A unit is the rest of a page table page (2 MiB of base pages), so that
 * two fillers never install into the same one: they contended for its
 * lock (5 % of the time in its slow path, 0.67 -> 0.52 us a page).  The
 * stream stops at its limit: what a scan that stops has cost is at most
 * the limit and a unit ahead of it, filled for nothing (and never past a
 * budget: its fills are readahead, which never evicts).
 */

/*
 * Fills r's stream from its cursor, a unit at a time and window by
 * window, up to the limit as it was on entry: the caller is in a read
 * section (and a handler in its event batch), which a region's create
 * and destroy wait out, and a scan that keeps moving the limit would
 * otherwise hold it for the whole scan (found by review: creates waited
 * up to 1.2 s beside a 4 GiB scan).  Whether it filled.
 */
static bool stream_work(struct lm__filler *f, struct lm_region *r)
{
	unsigned flags = atomic_load_explicit(&r->ra_flags, memory_order_relaxed);
	struct lm_runtime *rt = r->rt;
	unsigned max = (unsigned)rt->opt.readahead_max;
	uint64_t lim = atomic_load_explicit(&r->ra_limit, memory_order_relaxed);
	uint64_t unit = STREAM_UNIT_BYTES >> rt->page_shift;
	bool did = false;
	while (!atomic_load_explicit(&rt->stopping, memory_order_relaxed)) {
		uint64_t c = atomic_load_explicit(&r->ra_cursor, memory_order_relaxed);
		if (c >= lim || c >= r->npages)
			break;
		/* The rest of a page table page (see above), at least a window. */
		uint64_t end = (c / unit + 1) * unit;
		if (end < c + max)
			end = c + max;
		if (end > r->npages)
			end = r->npages;
		if (!atomic_compare_exchange_weak_explicit(&r->ra_cursor, &c, end,
							   memory_order_relaxed, memory_order_relaxed))
			continue;
		for (uint64_t pg = c; pg < end;) {
			unsigned want = end - pg < max ? (unsigned)(end - pg) : max;
			long n = lm__fill(f, r, pg, want, flags | LM_FILL_AHEAD, rt->ufd);
			if (n > 0)
				LM__STAT_ADD(rt, stream_pages, (uint64_t)n);
			/* A page resident already: the next one; an error: the rest of the window. */
			pg += n > 0 ? (uint64_t)n : n == 0 ? 1 : want;
		}
		did = true;
	}
	return did;
}

/* How far past its last fault a stream fills: two units, at least STREAM_WINDOWS windows. */
static uint64_t stream_ahead(struct lm_runtime *rt)
{
	uint64_t units = 2 * (STREAM_UNIT_BYTES >> rt->page_shift);
	uint64_t wins = (uint64_t)STREAM_WINDOWS * (uint64_t)rt->opt.readahead_max;
	return units > wins ? units : wins;
}

bool lm__stream_fault(struct lm__filler *f, struct lm_region *r, uint64_t pgno, long n,
		      unsigned flags, bool next)
{
	struct lm_runtime *rt = r->rt;
	/* Another handler must be there to fill beside this one; and streams may be off. */
	if (rt->nthreads < 2 || (rt->opt.flags & LM_OPT_NO_STREAM))
		return false;
	unsigned max = (unsigned)rt->opt.readahead_max;
	uint64_t cur = atomic_load_explicit(&r->ra_cursor, memory_order_relaxed);
	uint64_t lim = atomic_load_explicit(&r->ra_limit, memory_order_relaxed);
	uint64_t end = pgno + (uint64_t)(n > 0 ? n : 1), ahead = stream_ahead(rt);
	/*
	 * In the stream: the scan caught up with the fillers, and its
	 * handler joins them.  It waits for a page they hold, or took one of
	 * a unit a filler claimed and has not reached yet: below the cursor
	 * by at most what they fill ahead and the units in progress (one
	 * per handler).  Pages dropped since do not count: forgetting them
	 * ended the stream.
	 */
	uint64_t band = ahead + (uint64_t)(rt->nthreads + 1) * (STREAM_UNIT_BYTES >> rt->page_shift) +
			max;
	bool in = cur && pgno < cur && cur - pgno <= band;
	if (!in) {
		/*
		 * Only a full-window fault where the last fill (or a stream)
		 * ended starts one.  The full window alone is not enough:
		 * sequential advice gives it to every fault, and random access
		 * under that advice started a stream at each (found by review).
		 */
		if (n < (long)max || max < LM__RA_START || end >= r->npages || !(next || pgno == cur) ||
		    atomic_load_explicit(&r->ra_win, memory_order_relaxed) < max)
			return false;
		atomic_store_explicit(&r->ra_cursor, end, memory_order_relaxed);
	}
	if (end + ahead > lim || !in)
		atomic_store_explicit(&r->ra_limit, end + ahead, memory_order_relaxed);
	/*
	 * A scan that writes is filled writable, as its fault's window is:
	 * else it would fault again on every page, on the shared zero page
	 * or, while writes are tracked, on the write protection (found by
	 * review: 10x slower under a budget).
	 */
	atomic_store_explicit(&r->ra_flags, flags & LM_FILL_WRITE, memory_order_relaxed);
	atomic_store_explicit(&rt->stream, r, memory_order_relaxed);
	atomic_store_explicit(&rt->stream_work, true, memory_order_release);
	stream_work(f, r);
	return true;
}

bool lm__stream_help(struct lm__filler *f)
{
	struct lm_runtime *rt = f->rt;
	if (!atomic_load_explicit(&rt->stream_work, memory_order_acquire))
		return false;
	/* Cleared first: a fault that starts a stream from now on sets it again. */
	atomic_store_explicit(&rt->stream_work, false, memory_order_relaxed);
	bool any = false, did;
	/* A read section per limit seen (see stream_work), while there is work. */
	do {
		int idx = lm__read_lock(rt);
		struct lm_region *r = atomic_load_explicit(&rt->stream, memory_order_relaxed);
		did = r && lm__region_live(rt, r) && stream_work(f, r);
		lm__read_unlock(rt, idx);
		any |= did;
	} while (did);
	return any;
}

/*
 * Reads the held pages' contents into x->src.  On failure (past the end
 * of the file, a read error, a damaged page) every page is settled: the
 * faulting page is poisoned (SIGBUS for it alone), the others go back.
 * Returns the pages with contents, or -errno.
 */
static long fill_read(struct fill *x)
{
	struct lm__filler *f = x->f;
	struct lm_region *r = x->r;
	struct lm_runtime *rt = r->rt;
	bool from_swap = x->st == &rt->swap_store;
	/* Keys: the swapped pages' slots, or the source's page numbers. */
	for (unsigned i = 0; i < x->n; i++)
		f->keys[i] = from_swap ? LM_PTE_SLOT(f->prev[i]) : x->pgno + r->src_shift + i;
	long avail = lm__store_read(x->st, f, f->keys, x->n, &x->src);
	if (avail < 0 && x->n > 1 && (x->st->ops->flags & LM__STORE_RETRY_SHORT)) {
		/*
		 * The batch failed, maybe only in its readahead part: a bad
		 * block further on must not cost the faulting page, so read
		 * that page alone before giving up on it.
		 */
		fill_release(x, 1, x->n, false);
		x->n = 1;
		avail = lm__store_read(x->st, f, f->keys, 1, &x->src);
	}
	if (avail > 0) {
		fill_release(x, (unsigned)avail, x->n, false);
		x->n = (unsigned)avail;
		return avail;
	}
	/* Past the end of the file, or a read error: SIGBUS for this page only. */
	fill_release(x, 1, x->n, false);
	x->n = 1;
	uint64_t prev0 = f->prev[0];
	if (from_swap && avail < 0) {
		/* Its only copy is unreadable: the page is lost, and says so on every touch. */
		poison(r, f->ents[0], x->pgno, prev0, prev0, x->fault ? x->ufd : -1);
	} else if (x->fault) {
		lm__store_count(x->st, x->st->ops->err_stat, 1);
		poison(r, f->ents[0], x->pgno, prev0, prev0, x->ufd);
	} else {
		lm__pte_settle(r, f->ents[0], x->pgno, prev0, prev0);
	}
	return avail < 0 ? avail : -ENXIO;
}

/*
 * Decides how the pages are installed.  While writes are tracked (a
 * budget or a shared region needs to know which pages are dirty), pages
 * not being written are installed write-protected: their first write
 * faults and marks them dirty.
 *
 * While a snapshot is live every page is installed write-protected (its
 * first write must preserve it first, snapshot.c), except the page of a
 * write fault: the write is what the fault is for, so the contents just
 * read are preserved here and that page alone is installed writable,
 * before the rest of the window.  A stale fault on a page the table
 * calls resident (found by review) stays protected: what it holds is not
 * the source's, so nothing can be preserved from the stage, and its write
 * replays as a write-protect fault, which preserves the real contents.
 *
 * The shared zero page only while nothing tracks writes: mapping it and
 * protecting it are two steps, and a write between them (the first wakes
 * the toucher) would go unseen.  Tracked, zeros are copied in
 * write-protected, in one step.
 */
static void fill_plan(struct fill *x)
{
	struct lm_region *r = x->r;
	struct lm_runtime *rt = r->rt;
	bool track = atomic_load_explicit(&rt->track, memory_order_relaxed);
	const struct lm__snapset *snaps = atomic_load_explicit(&r->snaps, memory_order_acquire);
	unsigned st0 = LM_PTE_STATE(x->f->prev[0]);
	bool staged0 = st0 == LM_PS_MISSING || st0 == LM_PS_SWAPPED;
	x->wp = (track || snaps) && !((x->flags & LM_FILL_WRITE) && (!snaps || staged0));
	x->wp_rest = snaps || x->wp;
	if (snaps && !x->wp) {
		const unsigned char *d0 = st0 == LM_PS_MISSING && lm__source_immutable(r) ? NULL
											 : x->src;
		lm__snap_preserve(x->f, r, snaps, &x->pgno, &d0, 1);
	}
	x->zeropage = (x->st->ops->flags & LM__STORE_ZEROS) && !track && !snaps && !rt->huge &&
		      !(x->flags & (LM_FILL_WRITE | LM_FILL_PREFETCH));
}

/*
 * EEXIST at page `at`: present already, usually a second thread's fault
 * on a page just filled (each faulting thread queues its own message).
 * Resident as before, or newly by another path; not a fill.  Its write
 * protection is unknown: count it dirty.
 */
static void fill_exists(struct fill *x, unsigned at)
{
	struct lm_runtime *rt = x->r->rt;
	if (at == 0 && x->fault)
		LM__STAT_ADD(rt, faults_dup, 1);
	uint64_t prev = x->f->prev[at];
	unsigned s = LM_PTE_STATE(prev);
	uint64_t keep = s == LM_PS_MISSING || s == LM_PS_SWAPPED ? installed_value(rt, prev, false)
								 : prev;
	lm__pte_settle_counted(x->r, x->f->ents[at], x->pgno + at, prev, fill_counted(x, at), keep,
			       LM__SETTLE_INSTALLED);
	lm__uffd_wake(x->ufd, page_addr(x->r, x->pgno + at), (size_t)rt->page_size);
}

/*
 * Installs the held pages, settling each as it lands.  EEXIST at a page
 * means another path populated it: keep going after it.  Returns the
 * pages installed; *err gets the error that stopped it, if any.
 */
static unsigned fill_install(struct fill *x, long *err)
{
	struct lm_region *r = x->r;
	struct lm_runtime *rt = r->rt;
	struct lm__filler *f = x->f;
	size_t ps = (size_t)rt->page_size;
	unsigned at = 0, installed = 0;
	while (at < x->n) {
		/* A write fault under a snapshot: its page alone, writable; then the rest. */
		bool wpc = fill_clean(x, at);
		unsigned lim = (!at && x->wp_rest != x->wp) ? 1 : x->n, ok = 0;
		int rc = lm__install(rt, x->ufd, page_addr(r, x->pgno + at),
				     x->zeropage ? NULL : x->src + (size_t)at * ps,
				     x->zeropage ? x->n - at : lim - at,
				     x->zeropage ? LM__INSTALL_ZEROS : wpc ? LM__INSTALL_WP : 0, &ok);
		for (unsigned i = at; i < at + ok; i++) {
			if (f->prev[i] & LM_PTE_EVICTED)
				LM__STAT_ADD(rt, refaults, 1);
			lm__pte_settle_counted(r, f->ents[i], x->pgno + i, f->prev[i],
					       fill_counted(x, i),
					       installed_value(rt, f->prev[i], wpc),
					       LM__SETTLE_INSTALLED);
		}
		installed += ok;
		at += ok;
		if (rc == 0 && at < x->n)
			continue;
		if (rc == 0)
			break;
		if (rc == -EEXIST) {
			fill_exists(x, at);
			at++;
			continue;
		}
		/*
		 * The install must lie within one mapping: a readahead window
		 * that crosses a hole the application unmapped fails whole
		 * (ENOENT).  The faulting page alone may still be fine.
		 */
		if (at == 0 && x->n > 1 && rc != -EAGAIN && rc != -ESRCH) {
			fill_release(x, 1, x->n, true);
			unaccount(r, x->st, x->n, 1, x->flags);
			x->n = 1;
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
		bool sigbus = at == 0 && x->fault && rc != -EAGAIN && rc != -ENOENT && rc != -ESRCH;
		if (sigbus) {
			poison(r, f->ents[0], x->pgno, f->prev[0], fill_counted(x, 0), x->ufd);
			fill_release(x, 1, x->n, true);
		} else {
			fill_release(x, at, x->n, true);
		}
		if (at == 0 && x->fault && !sigbus)
			lm__uffd_wake(x->ufd, page_addr(r, x->pgno), ps);
		*err = rc;
		break;
	}
	return installed;
}

long lm__fill(struct lm__filler *f, struct lm_region *r, uint64_t pgno, unsigned want,
	      unsigned flags, int ufd)
{
	struct lm_runtime *rt = r->rt;
	struct fill x = {
		.f = f, .r = r, .pgno = pgno, .flags = flags, .ufd = ufd,
		.fault = !(flags & (LM_FILL_PREFETCH | LM_FILL_AHEAD)),
	};
	if (flags & (LM_FILL_AHEAD | LM_FILL_WILLNEED)) {
		/*
		 * Readahead and will-need advice are bets: not ones worth
		 * evicting for, nor waiting for the evictor (a will-need that
		 * waited out the throttle page by page held a region's destroy
		 * for minutes).
		 */
		uint64_t b = atomic_load_explicit(&rt->budget, memory_order_relaxed);
		if (b && atomic_load_explicit(rt->nres, memory_order_relaxed) +
			 (int64_t)want >= (int64_t)b)
			return (flags & LM_FILL_WILLNEED) ? -ENOSPC : 0;
	} else {
		lm__throttle(rt);
	}
	/*
	 * Readahead and advice name pages the table may have given to
	 * another region since, or that are unmapped: advice says so (a
	 * hole, as the install's ENOENT would), readahead just stops.
	 */
	if (!x.fault && !(x.ext = lm__region_extent_pages(r, pgno)))
		return (flags & LM_FILL_PREFETCH) ? -ENOENT : 0;
	uint64_t t0 = lm__now_ns();
	lm__pte *e0 = lm__pt_get(&r->pt, pgno, true);
	if (!e0) {
		if (x.fault)
			poison(r, NULL, pgno, 0, 0, ufd);
		return -ENOMEM;
	}
	int c = x.fault ? lm__pte_claim_or_park(e0, FAULT_ACCEPT, true, &f->prev[0])
			: lm__pte_claim(e0, LM__ST(LM_PS_MISSING) | LM__ST(LM_PS_SWAPPED), LM_PS_FILLING,
					&f->prev[0]) ? LM__PTE_CLAIMED : LM__PTE_REFUSED;
	if (c == LM__PTE_PARKED)
		LM__STAT_ADD(rt, faults_parked, 1);
	if (c != LM__PTE_CLAIMED) {
		/* Already poisoned: answer the fault with the poison again, not counted twice. */
		if (c == LM__PTE_POISONED)
			poison(r, NULL, pgno, 0, 0, ufd), LM__STAT_SUB(rt, sigbus_raised, 1);
		return 0;
	}
	f->ents[0] = e0;
	/* A swapped page reads its slot, and its readahead takes swapped neighbours only. */
	x.st = LM_PTE_STATE(f->prev[0]) == LM_PS_SWAPPED ? &rt->swap_store : &r->src;
	if (x.fault)
		lm__store_count(&r->src, r->src.ops->fault_stat, 1);
	fill_claim_window(&x, want);
	/* The window fits the stage and the region, and every page of it is held. */
	LM__ASSERT(x.n >= 1 && (size_t)x.n << rt->page_shift <= f->stage_len &&
		   pgno + x.n <= r->npages);
	long avail = fill_read(&x);
	if (avail < 0)
		return avail;
	fill_plan(&x);
	/*
	 * Counted before the install, which wakes the faulting thread: when
	 * its access completes the counters already include it.  What does
	 * not get installed is taken back by its settle.
	 */
	account(r, x.st, x.n, flags, pgno);
	for (unsigned i = 0; i < x.n; i++)
		lm__pte_count(r, f->prev[i], fill_counted(&x, i));
	long ret = 0;
	unsigned installed = fill_install(&x, &ret);
	if (installed < x.n)
		unaccount(r, x.st, x.n, installed, flags);
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
	uint64_t prev = 0;
	/*
	 * CLEAN or DIRTY pages are held (FILLING) while their protection is
	 * lifted: otherwise a writeback could claim the page in between,
	 * protect and write it, settle it CLEAN, and then this unprotect
	 * would leave a clean page writable, its next write unseen and lost
	 * on eviction (found by review).  DIRTY pages come here when a racing
	 * fault marked them first, or when the clock hand protected them
	 * again.
	 */
	int c = e ? lm__pte_claim_or_park(e, LM__ST(LM_PS_CLEAN) | LM__ST(LM_PS_DIRTY), park, &prev)
		  : LM__PTE_REFUSED;
	switch (c) {
	case LM__PTE_PARKED:
		/* Being evicted or written back: the holder wakes the page. */
		LM__STAT_ADD(rt, faults_parked, 1);
		return;
	case LM__PTE_BUSY:
		sched_yield();
		return;
	case LM__PTE_CLAIMED:
		break;
	default:
		/*
		 * Moved out or dropped since: the write replays as a missing
		 * fault.  Should the page still be mapped all the same, lifting
		 * the protection lets the write through rather than fault for
		 * ever.
		 */
		if (lm__uffd_writeprotect(ufd, addr & ~(ps - 1), ps, false) < 0)
			lm__uffd_wake(ufd, addr, ps);
		return;
	}
	/*
	 * A snapshot lacks the page: its contents are preserved (with its
	 * neighbours') before the write may go through.  Without a staging
	 * buffer (signal mode, the pool empty) the write replays.
	 */
	const struct lm__snapset *snaps = atomic_load_explicit(&r->snaps, memory_order_acquire);
	int lifted = 0;
	if (snaps && lm__snap_needs(snaps, pgno)) {
		if (!f) {
			lm__pte_settle(r, e, pgno, prev, prev);
			sched_yield();
			return;
		}
		lifted = lm__snap_cow(f, r, snaps, pgno, prev);
		if (lifted < 0) {
			/* The page was gone (settled as such): the write replays as a missing fault. */
			lm__uffd_wake(ufd, addr & ~(ps - 1), ps);
			return;
		}
	}
	/* Written: referenced for the clock, and counted dirty before the write goes through. */
	uint64_t val = (uint64_t)LM_PS_DIRTY | LM_PTE_REF;
	lm__pte_count(r, prev, val);
	/* Lifting the protection wakes the writer; an event pending (EAGAIN): it faults again. */
	int rc = lifted ? 0 : lm__uffd_writeprotect(ufd, addr & ~(ps - 1), ps, false);
	int st = lm__pte_settle_counted(r, e, pgno, prev, val, val, 0);
	if (rc < 0 && !(st & LM__SETTLED_WOKE))
		lm__uffd_wake(ufd, addr & ~(ps - 1), ps);
}

/* In batches of the readahead size. */
long lm__fill_range(struct lm__filler *f, struct lm_region *r, uint64_t first, uint64_t count,
		    unsigned flags)
{
	unsigned max = (unsigned)(f->stage_len >> r->rt->page_shift);
	long total = 0, err = 0;
	uint64_t pg = first, end = first + count;
	while (pg < end) {
		unsigned want = end - pg < max ? (unsigned)(end - pg) : max;
		long n = lm__fill(f, r, pg, want, LM_FILL_PREFETCH | flags, r->rt->ufd);
		/*
		 * The address space is changing: an event is pending that a
		 * handler must read and apply, and applying it may wait for
		 * this very read section.  Never back off in here: return, and
		 * let the caller leave the section before it tries again.
		 */
		if (n == -EAGAIN)
			return total ? total : n;
		/* Will-need reached the budget: said as such, whatever was filled before. */
		if (n == -ENOSPC)
			return n;
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

void *lm__prefetch_main(void *arg)
{
	lm__thread_mark();
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
		bool live = lm__region_live(rt, p->r) && p->r->id == p->id;
		/*
		 * 4 MiB at a time (at least a page), so that a region's destroy
		 * (which waits for readers) never waits for a gigabyte of
		 * prefetch.
		 */
		uint64_t max = PREFETCH_CHUNK_BYTES >> rt->page_shift ? PREFETCH_CHUNK_BYTES >> rt->page_shift
								   : 1;
		uint64_t chunk = p->count < max ? p->count : max;
		long done = live ? lm__fill_range(&rt->pf_filler, p->r, p->first, chunk,
						  LM_FILL_WILLNEED)
				 : 0;
		lm__read_unlock(rt, idx);
		if (done == -EAGAIN) {
			/* Outside the section now: let the pending event be applied, then retry. */
			sched_yield();
			chunk = 0;
		} else if (done == -ENOSPC) {
			/* At the budget: the advice is a bet not worth evicting for; the rest is dropped. */
			chunk = p->count;
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
			lm__free(p);
		}
	}
	pthread_mutex_unlock(&rt->pf_lock);
	return NULL;
}
