/* SPDX-License-Identifier: MIT */
/* The resolver: what a fault on registered memory calls for, decided once for both front ends (handler threads and the SIGBUS handler). */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <sys/mman.h>

/*
 * The front ends only decode a fault and hand it over (docs/DESIGN.md,
 * "How a fault flows").  A handler thread reads a uffd_msg: the address,
 * whether it was a write, whether it was a write-protect fault.  The
 * SIGBUS handler reads a siginfo and the page-fault error code: the
 * address and whether it was a write, but not which kind of fault it was
 * (with UFFD_FEATURE_SIGBUS both raise SIGBUS): the resolver finds out
 * from the page.  Everything else is decided here: which region, fill or
 * first write, replay, zeros for memory no region owns, a SIGBUS that is
 * not the runtime's.  Async-signal-safe.
 */

static inline void wake(struct lm_runtime *rt, uintptr_t addr)
{
	lm__uffd_wake(rt->ufd, addr, (size_t)rt->page_size);
}

/*
 * Signal mode: a staging buffer for the faulting thread, borrowed from
 * the runtime's pool (lock free).  NULL when every one is in use: the
 * access then replays.
 */
static struct lm__filler *borrow(struct lm_runtime *rt)
{
	for (int i = 0; i < rt->npool; i++) {
		int z = 0;
		if (atomic_compare_exchange_strong(&rt->pool[i].busy, &z, 1))
			return &rt->pool[i];
	}
	return NULL;
}

static void give_back(struct lm__filler *f)
{
	if (f)
		atomic_store(&f->busy, 0);
}

/* An event read but not applied yet: the application's call may have returned already. */
static bool events_unapplied(struct lm_runtime *rt)
{
	return atomic_load_explicit(&rt->ev_unapplied, memory_order_seq_cst) > 0;
}

/*
 * With UFFD_FEATURE_SIGBUS a write to a write-protected page raises
 * SIGBUS too, with nothing to tell it from a missing page but the page
 * itself: mapped means write-protected.
 */
static bool mapped(uintptr_t addr)
{
	/* One byte: the first base page of the page (a huge one has many). */
	unsigned char vec = 0;
	return mincore((void *)addr, 1, &vec) == 0 && (vec & 1);
}

/*
 * A missing fault: fill the page (and its window).  In thread mode the
 * handler then fills the next window ahead of the application, as the
 * kernel's asynchronous readahead does: the install woke the faulting
 * thread, which works through its window on its own CPU while this one
 * fills the next, so a sequential scan faults once per two windows.
 * (Also asking the kernel to read a file's next windows with
 * POSIX_FADV_WILLNEED was measured: slower here, for lazymem and for the
 * kernel's own mmap of the same file afterwards.)
 */
static int resolve_missing(struct lm__filler *f, struct lm_region *r, uint64_t pgno,
			   const struct lm__fault *ft)
{
	struct lm_runtime *rt = r->rt;
	unsigned flags = ft->write ? LM_FILL_WRITE : 0;
	if (ft->signal) {
		struct lm__filler *own = borrow(rt);
		long n = own ? lm__fill(own, r, pgno, 0, flags, rt->ufd) : 0;
		give_back(own);
		/* Another thread holds the page (or every buffer): let it finish. */
		if (n == 0)
			sched_yield();
		return LM__RESOLVE_DONE;
	}
	uint64_t low = atomic_load_explicit(&r->ra_low, memory_order_relaxed);
	uint64_t next = atomic_load_explicit(&r->ra_next, memory_order_relaxed);
	long n = lm__fill(f, r, pgno, 0, flags, rt->ufd);
	/*
	 * Failed (unmapped, moved, changing): the fill woke the page at the
	 * region's address; the thread waits at the message's, which differs
	 * if the whole region moved meanwhile.  A spare wake is free.
	 */
	if (n < 0)
		wake(rt, ft->addr);
	unsigned win = atomic_load_explicit(&r->ra_win, memory_order_relaxed), down, around;
	if (lm__stream_fault(f, r, pgno, n, flags, !pgno || pgno == next))
		;
	else if (n > 1 && win >= LM__RA_START && pgno + (uint64_t)n < r->npages)
		lm__fill(f, r, pgno + (uint64_t)n, win, flags | LM_FILL_AHEAD, rt->ufd);
	else if (n == 1 && (down = lm__window_down(r, pgno, low)))
		/* Pages below, not yet written: installed as any readahead is. */
		lm__fill(f, r, pgno - down, down, (flags & ~LM_FILL_WRITE) | LM_FILL_AHEAD,
			 rt->ufd);
	else if (n > 0 && win == 1 && (around = lm__window_around(r, pgno)) && pgno % around)
		/* A random fault's read-around block: its pages below the fault, after it. */
		lm__fill(f, r, pgno - pgno % around, (unsigned)(pgno % around),
			 (flags & ~LM_FILL_WRITE) | LM_FILL_AHEAD, rt->ufd);
	return LM__RESOLVE_DONE;
}

/*
 * A first write.  Signal mode borrows a staging buffer only when a
 * snapshot may need the page preserved; without one the write replays.
 */
static void resolve_wp(struct lm__filler *f, struct lm_region *r, uint64_t pgno,
		       const struct lm__fault *ft)
{
	struct lm_runtime *rt = r->rt;
	if (!ft->signal) {
		lm__wp_fault(f, r, pgno, ft->addr, rt->ufd, true);
		return;
	}
	struct lm__filler *own = atomic_load(&r->snaps) ? borrow(rt) : NULL;
	lm__wp_fault(own, r, pgno, ft->addr, rt->ufd, false);
	give_back(own);
}

/*
 * A SIGBUS on a region's page: which fault it was, from the page.  A
 * poisoned page's SIGBUS belongs to the application (UFFDIO_POISON
 * markers raise a plain BUS_ADRERR on recent kernels, so only the state
 * tells it from a missing page: without this the access would replay for
 * ever).  A mapped page was write-protected: a write is a write-protect
 * fault, a read a missing fault another thread has filled since (it just
 * replays).  A fork() child registers without write protection, so a
 * write to a present page is never ours there; nor, with hugetlb pages, a
 * resident one gone: the kernel could not copy a shared huge page on
 * write (the pool was empty) or gave it back to the parent, and a refill
 * from the source would lose the child's contents.
 */
static int classify_signal(struct lm_region *r, uint64_t pgno, const struct lm__fault *ft,
			   bool *wp)
{
	struct lm_runtime *rt = r->rt;
	lm__pte *e = lm__pt_get(&r->pt, pgno, false);
	unsigned s = e ? LM_PTE_STATE(atomic_load(e)) : LM_PS_MISSING;
	if (s == LM_PS_POISON)
		return LM__RESOLVE_NOT_OURS;
	bool resident = s == LM_PS_CLEAN || s == LM_PS_DIRTY || s == LM_PS_EVICTING;
	bool present = resident && mapped(ft->addr);
	bool child = rt->ufd_pid != rt->pid;
	if (child && (present ? ft->write : resident && rt->huge))
		return LM__RESOLVE_NOT_OURS;
	if (present && !ft->write) {
		LM__STAT_ADD(rt, faults_dup, 1);
		return LM__RESOLVE_REPLAY;
	}
	*wp = present;
	return LM__RESOLVE_DONE;
}

int lm__resolve(struct lm__filler *f, struct lm_runtime *rt, const struct lm__fault *ft)
{
	LM__ASSERT(!(ft->addr & ((uintptr_t)rt->page_size - 1)) && (ft->signal || f));
	int verdict = LM__RESOLVE_DONE;
	int idx = lm__read_lock(rt);
	struct lm_region *r = lm__region_find(rt, ft->addr);
	if (!r) {
		verdict = LM__RESOLVE_UNKNOWN;
	} else if (ft->signal && events_unapplied(rt)) {
		/*
		 * An event read but not applied yet (madvise returns once it is
		 * read): filling now could bring back what the application just
		 * dropped, a swapped page's old contents.  Replay once the event
		 * thread is done.
		 */
		verdict = LM__RESOLVE_REPLAY;
		sched_yield();
	} else {
		uint64_t pgno = (ft->addr - r->start) >> rt->page_shift;
		bool wp = ft->wp;
		if (ft->signal) {
			verdict = classify_signal(r, pgno, ft, &wp);
			/* What the SIGBUS was, told only now: counted here (a handler thread's, by its front end). */
			if (verdict == LM__RESOLVE_DONE) {
				LM__STAT_ADD(rt, faults_signal, 1);
				if (wp)
					LM__STAT_ADD(rt, faults_wp, 1);
				else
					LM__STAT_ADD(rt, faults_missing, 1);
			}
		}
		if (verdict == LM__RESOLVE_DONE && wp)
			resolve_wp(f, r, pgno, ft);
		else if (verdict == LM__RESOLVE_DONE)
			verdict = resolve_missing(f, r, pgno, ft);
	}
	lm__read_unlock(rt, idx);
	/* A handler thread's fault must always be answered: the stray rules, or a wake to replay. */
	if (verdict == LM__RESOLVE_UNKNOWN && !ft->signal) {
		verdict = lm__resolve_stray(rt, ft->addr);
		if (verdict == LM__RESOLVE_REPLAY)
			LM__STAT_ADD(rt, faults_parked, 1);
		if (verdict != LM__RESOLVE_DONE)
			wake(rt, ft->addr);
	}
	return verdict;
}

int lm__resolve_stray(struct lm_runtime *rt, uintptr_t addr)
{
	/* Maybe a part just moved by mremap: replay once the event is applied. */
	if (events_unapplied(rt))
		return LM__RESOLVE_REPLAY;
	/*
	 * Registered memory no region owns: a region destroyed under the
	 * fault, or a part the application grew with mremap.  It is
	 * anonymous memory now; zeros rather than a thread left hanging.
	 */
	unsigned done;
	return lm__install(rt, rt->ufd, addr, NULL, 1, LM__INSTALL_ZEROS, &done) == 0
		       ? LM__RESOLVE_DONE
		       : LM__RESOLVE_NOT_OURS;
}
