/* SPDX-License-Identifier: MIT */
/* Page entries: the page-state machine, the only code that changes an entry, and the counters derived from its transitions. */
#include "internal.h"

#include <errno.h>
#include <sched.h>

/*
 * Every change of a page entry goes through this file (docs/DESIGN.md,
 * "Page states"), so that three things hold in one place:
 *
 *  - Only legal transitions happen: the table below is the state machine,
 *    and every operation checks its change against it (and asserts it in
 *    a debug build: a caller asking for an illegal one has a bug).
 *  - The per-state counters (resident and dirty pages of the region and
 *    of the budget, swapped pages) follow from the old and the new value
 *    of each change, computed by count() and nowhere else; so does the
 *    release of a swap slot an entry stops carrying.
 *  - A page the application drops while a holder has it (its REMOVE or
 *    UNMAP event finds it FILLING or EVICTING) is only marked; the holder
 *    settles it, and settling judges the drop once: the page becomes
 *    MISSING, and the live snapshots that lacked contents its source does
 *    not have break.
 *
 * Ownership: a thread that moves an entry from a settled state into
 * FILLING or EVICTING with a compare-and-swap (a claim) holds the page
 * until it settles it; nobody else changes the state meanwhile, only
 * flags (WAITERS, WRITTEN, DROP, REF).  Settled entries change by
 * compare-and-swap only, so a racing claim and an application event
 * serialize on the entry itself.
 *
 * Everything here is lock free and async-signal-safe: the signal-mode
 * fault path claims and settles pages in a SIGBUS handler.
 */

#define SETTLED (LM__ST(LM_PS_MISSING) | LM__ST(LM_PS_CLEAN) | LM__ST(LM_PS_DIRTY) | LM__ST(LM_PS_SWAPPED) | \
		 LM__ST(LM_PS_POISON))
#define HELD (LM__ST(LM_PS_FILLING) | LM__ST(LM_PS_EVICTING))

/*
 * The state machine: legal[from] has bit `to` set when an entry may go
 * from `from` to `to`.  Claims go into FILLING (fills, first writes,
 * snapshot and rollback holders: from any settled state) or EVICTING
 * (the evictor and writeback: resident pages only); settles come out of
 * them.  Between settled states only two changes exist: a first write
 * seen by a scan (CLEAN -> DIRTY, asynchronous tracking) and the
 * application's drop (anything settled -> MISSING).  A dirty page never
 * becomes clean but by being written back (EVICTING), a swapped page
 * never becomes resident but by being filled (FILLING).
 */
static const uint8_t legal[LM_PS_NSTATES] = {
	[LM_PS_MISSING] = LM__ST(LM_PS_FILLING),
	[LM_PS_FILLING] = SETTLED,
	[LM_PS_CLEAN] = LM__ST(LM_PS_FILLING) | LM__ST(LM_PS_EVICTING) | LM__ST(LM_PS_DIRTY) | LM__ST(LM_PS_MISSING),
	[LM_PS_DIRTY] = LM__ST(LM_PS_FILLING) | LM__ST(LM_PS_EVICTING) | LM__ST(LM_PS_MISSING),
	[LM_PS_SWAPPED] = LM__ST(LM_PS_FILLING) | LM__ST(LM_PS_MISSING),
	[LM_PS_EVICTING] = LM__ST(LM_PS_MISSING) | LM__ST(LM_PS_CLEAN) | LM__ST(LM_PS_DIRTY) | LM__ST(LM_PS_SWAPPED),
	[LM_PS_POISON] = LM__ST(LM_PS_FILLING) | LM__ST(LM_PS_MISSING),
};

bool lm__pte_legal(unsigned from, unsigned to)
{
	return from < LM_PS_NSTATES && to < LM_PS_NSTATES && (legal[from] & LM__ST(to));
}

static inline uintptr_t page_addr(struct lm_region *r, uint64_t pgno)
{
	return r->start + (pgno << r->rt->page_shift);
}

/* The bits of an entry that say what the page is, without who waits on it or what happened to it meanwhile. */
#define FLAGS_HELD (LM_PTE_WAITERS | LM_PTE_DROP | LM_PTE_WRITTEN)

static inline bool resident(unsigned s)
{
	return s == LM_PS_CLEAN || s == LM_PS_DIRTY;
}

void lm__pte_count(struct lm_region *r, uint64_t from, uint64_t to)
{
	unsigned f = LM_PTE_STATE(from), t = LM_PTE_STATE(to);
	LM__ASSERT(!(HELD & LM__ST(f)) && !(HELD & LM__ST(t)));
	int res = (int)resident(t) - (int)resident(f);
	int dirty = (t == LM_PS_DIRTY) - (f == LM_PS_DIRTY);
	int swapped = (t == LM_PS_SWAPPED) - (f == LM_PS_SWAPPED);
	if (res)
		lm__resident_add(r, res);
	if (dirty)
		lm__dirty_add(r, dirty);
	if (swapped)
		lm__swapped_add(r, swapped);
}

/*
 * The slot an entry carried belongs to the page: once the page's settled
 * value no longer carries that same slot (written, dropped, poisoned, or
 * moved to a fresh one), nothing refers to it any more and it is freed.
 * Only here, when the entry has changed: a slot freed earlier could be
 * reused by the evictor while the page may still go back to it.
 */
static void slot_follow(struct lm_region *r, uint64_t from, uint64_t to)
{
	if (LM_PTE_HAS_SLOT(from) &&
	    (!LM_PTE_HAS_SLOT(to) || LM_PTE_SLOT(to) != LM_PTE_SLOT(from)) && r->rt->swap_ok)
		lm__store_release(&r->rt->swap_store, LM_PTE_SLOT(from));
}

bool lm__pte_claim(lm__pte *e, unsigned accept, unsigned to, uint64_t *prev)
{
	LM__ASSERT(to == LM_PS_FILLING || to == LM_PS_EVICTING);
	uint64_t v = atomic_load_explicit(e, memory_order_acquire);
	for (;;) {
		unsigned s = LM_PTE_STATE(v);
		if (!(accept & LM__ST(s)) || !lm__pte_legal(s, to))
			return false;
		/*
		 * Flags of the settled value (REF, EVICTED, age) stay in prev;
		 * the held entry keeps the state it came from and its slot,
		 * for a fork() child (lm__pte_fork_reset).
		 */
		uint64_t held = (uint64_t)to | ((uint64_t)s << LM_PTE_AGE_SHIFT) |
				(v & ~((1ull << LM_PTE_AUX_SHIFT) - 1));
		if (atomic_compare_exchange_weak_explicit(e, &v, held, memory_order_acq_rel,
							  memory_order_acquire)) {
			*prev = v & ~FLAGS_HELD;
			return true;
		}
	}
}

int lm__pte_claim_or_park(lm__pte *e, unsigned accept, bool park, uint64_t *prev)
{
	for (;;) {
		if (lm__pte_claim(e, accept, LM_PS_FILLING, prev))
			return LM__PTE_CLAIMED;
		uint64_t v = atomic_load_explicit(e, memory_order_acquire);
		unsigned s = LM_PTE_STATE(v);
		if (accept & LM__ST(s))
			continue;	/* settled into an acceptable state meanwhile: claim again */
		if (!(HELD & LM__ST(s)))
			return s == LM_PS_POISON ? LM__PTE_POISONED : LM__PTE_REFUSED;
		if (!park)
			return LM__PTE_BUSY;
		/*
		 * Parking is a CAS on the very value seen, so a holder that
		 * settled meanwhile makes it fail and the claim is tried again:
		 * a fault is never dropped between the two.
		 */
		if ((v & LM_PTE_WAITERS) ||
		    atomic_compare_exchange_strong_explicit(e, &v, v | LM_PTE_WAITERS,
							    memory_order_acq_rel, memory_order_acquire))
			return LM__PTE_PARKED;
	}
}

/*
 * A drop judged: the application discarded the page while it was held
 * (or the holder found it gone).  What it was before the claim, prev,
 * says what went: a snapshot that lacked contents its source does not
 * have cannot be exact any more, and breaks rather than save what the
 * page refills with.
 */
static void judge_drop(struct lm_region *r, uint64_t pgno, uint64_t prev)
{
	if (!lm__contents_lost(prev))
		return;
	int idx = lm__read_lock(r->rt);
	const struct lm__snapset *set = atomic_load_explicit(&r->snaps, memory_order_acquire);
	if (set)
		lm__snap_lost(set, pgno);
	lm__read_unlock(r->rt, idx);
}

int lm__pte_settle_counted(struct lm_region *r, lm__pte *e, uint64_t pgno, uint64_t prev,
			   uint64_t counted, uint64_t val, unsigned how)
{
	uint64_t old = atomic_load_explicit(e, memory_order_acquire);
	unsigned from = LM_PTE_STATE(old);
	if (!(HELD & LM__ST(from)) || !lm__pte_legal(from, LM_PTE_STATE(val)) ||
	    (val & FLAGS_HELD)) {
		LM__ASSERT(!"settle of a page not held, or to an illegal state");
		return -EINVAL;
	}
	LM__ASSERT(!(HELD & LM__ST(LM_PTE_STATE(prev))) && !(HELD & LM__ST(LM_PTE_STATE(counted))));
	uint64_t nv;
	bool dropped;
	for (;;) {
		dropped = (old & LM_PTE_DROP) || (how & LM__SETTLE_GONE);
		nv = val;
		/*
		 * The one rule for a dropped page.  A page the holder just
		 * installed keeps its value: the drop may have come before the
		 * install (then the page is mapped again, with its source's
		 * contents) or after (then a missing fault finds the entry
		 * resident and heals it); either way the table must not lose
		 * sight of a mapped page.
		 */
		if (dropped && !(how & LM__SETTLE_INSTALLED))
			nv = LM_PS_MISSING;
		/*
		 * Asynchronous tracking: a scan found the page written while
		 * it was held and protected it again, so the write is recorded
		 * here or nowhere.
		 */
		else if ((old & LM_PTE_WRITTEN) && LM_PTE_STATE(nv) == LM_PS_CLEAN)
			nv = (uint64_t)LM_PS_DIRTY | LM_PTE_REF;
		if (atomic_compare_exchange_weak_explicit(e, &old, nv, memory_order_acq_rel,
							  memory_order_acquire))
			break;
	}
	lm__pte_count(r, counted, nv);
	slot_follow(r, prev, nv);
	if (dropped)
		judge_drop(r, pgno, prev);
	int ret = dropped ? LM__SETTLED_DROPPED : 0;
	if (old & LM_PTE_WAITERS) {
		lm__uffd_wake(r->rt->ufd, page_addr(r, pgno), (size_t)r->rt->page_size);
		ret |= LM__SETTLED_WOKE;
	}
	return ret;
}

int lm__pte_settle(struct lm_region *r, lm__pte *e, uint64_t pgno, uint64_t prev, uint64_t val)
{
	return lm__pte_settle_counted(r, e, pgno, prev, prev, val, 0);
}

int lm__pte_mark_written(struct lm_region *r, lm__pte *e)
{
	uint64_t v = atomic_load_explicit(e, memory_order_acquire);
	for (;;) {
		unsigned s = LM_PTE_STATE(v);
		uint64_t nv;
		if (s == LM_PS_CLEAN)
			nv = (uint64_t)LM_PS_DIRTY | LM_PTE_REF | (v & LM_PTE_HOT_MASK);
		else if (s == LM_PS_DIRTY && !(v & LM_PTE_REF))
			nv = v | LM_PTE_REF;	/* written again: referenced, for the clock */
		else if ((HELD & LM__ST(s)) && !(v & LM_PTE_WRITTEN))
			nv = v | LM_PTE_WRITTEN;	/* the holder settles it dirty */
		else
			return 0;
		if (!atomic_compare_exchange_weak_explicit(e, &v, nv, memory_order_acq_rel,
							   memory_order_acquire))
			continue;
		if (s == LM_PS_CLEAN) {
			lm__pte_count(r, v, nv);
			slot_follow(r, v, nv);
		}
		return 1;
	}
}

bool lm__pte_cool(lm__pte *e, uint64_t *v)
{
	LM__ASSERT(resident(LM_PTE_STATE(*v)) && LM_PTE_HOT(*v));
	return atomic_compare_exchange_strong_explicit(e, v, *v - (1ull << LM_PTE_HOT_SHIFT),
						       memory_order_acq_rel, memory_order_acquire);
}

bool lm__pte_ref(lm__pte *e, uint64_t *v, bool set)
{
	LM__ASSERT(resident(LM_PTE_STATE(*v)));
	uint64_t nv = set ? *v | LM_PTE_REF : *v & ~LM_PTE_REF;
	return atomic_compare_exchange_strong_explicit(e, v, nv, memory_order_acq_rel,
						       memory_order_acquire);
}

int lm__pte_forget(struct lm_region *r, lm__pte *e, uint64_t pgno)
{
	uint64_t v = atomic_load_explicit(e, memory_order_acquire);
	for (;;) {
		unsigned s = LM_PTE_STATE(v);
		if (s == LM_PS_MISSING)
			return 0;
		if (HELD & LM__ST(s)) {
			/* Held: marked, and judged by the holder when it settles the page. */
			if ((v & LM_PTE_DROP) ||
			    atomic_compare_exchange_weak_explicit(e, &v, v | LM_PTE_DROP,
								  memory_order_acq_rel,
								  memory_order_acquire))
				return 0;
			continue;
		}
		if (!atomic_compare_exchange_weak_explicit(e, &v, (uint64_t)LM_PS_MISSING,
							   memory_order_acq_rel, memory_order_acquire))
			continue;
		lm__pte_count(r, v, LM_PS_MISSING);
		slot_follow(r, v, LM_PS_MISSING);
		judge_drop(r, pgno, v);
		return resident(s);
	}
}

int lm__pte_move(struct lm_region *from, lm__pte *e, struct lm_region *to, lm__pte *d)
{
	uint64_t v = atomic_load_explicit(e, memory_order_acquire);
	for (;;) {
		unsigned s = LM_PTE_STATE(v);
		if (HELD & LM__ST(s))
			return -EBUSY;
		if (s == LM_PS_MISSING)
			return 0;
		if (atomic_compare_exchange_weak_explicit(e, &v, (uint64_t)LM_PS_MISSING,
							  memory_order_acq_rel, memory_order_acquire))
			break;
	}
	v &= ~FLAGS_HELD;
	lm__pte_count(from, v, LM_PS_MISSING);
	if (!d) {
		/* No entry to take it (out of memory): the page is lost to the runtime, as if unmapped. */
		slot_follow(from, v, LM_PS_MISSING);
		return -ENOMEM;
	}
	/* The page keeps its state and its slot; only the region that counts it changes. */
	LM__ASSERT(LM_PTE_STATE(atomic_load(d)) == LM_PS_MISSING);
	atomic_store_explicit(d, v, memory_order_release);
	lm__pte_count(to, LM_PS_MISSING, v);
	return 1;
}

static int release_slot(lm__pte *e, uint64_t pgno, void *arg)
{
	(void)pgno;
	struct lm_runtime *rt = arg;
	uint64_t v = atomic_exchange_explicit(e, (uint64_t)LM_PS_MISSING, memory_order_acq_rel);
	LM__ASSERT(!(HELD & LM__ST(LM_PTE_STATE(v))));
	if (LM_PTE_HAS_SLOT(v))
		lm__store_release(&rt->swap_store, LM_PTE_SLOT(v));
	return 0;
}

void lm__pte_fork_reset(lm__pte *e)
{
	uint64_t v = atomic_load_explicit(e, memory_order_relaxed);
	/*
	 * The child has one thread, so no holder: a held page settles back
	 * to what it was when claimed, as if the holder had not started (its
	 * contents are what the child's copy of the page, or of the swap
	 * slot, holds).  A fill from a swap slot reads that slot again, a
	 * page being written back is still mapped.  The child's counters are
	 * its own copy and stay as they were.
	 */
	if (HELD & LM__ST(LM_PTE_STATE(v)))
		atomic_store_explicit(e, LM_PTE_HELD_FROM(v) | (v & ~((1ull << LM_PTE_AUX_SHIFT) - 1)),
				      memory_order_relaxed);
}

void lm__pte_release_table(struct lm_region *r)
{
	/*
	 * The region goes: its slots back to the swap file, its pages out of
	 * the runtime's totals, in bulk (one walk, not a count per page).
	 * Nothing holds its pages any more (destroy waited for that).
	 */
	struct lm_runtime *rt = r->rt;
	if (rt->swap_ok && r->npages)
		lm__pt_walk(&r->pt, 0, r->npages - 1, release_slot, rt);
	atomic_fetch_sub(rt->nres, atomic_load(&r->resident));
	atomic_fetch_sub(rt->ndirty, atomic_load(&r->dirty));
	LM__STAT_SUB(rt, swapped_pages, atomic_load(&r->swapped));
	atomic_store(&r->resident, 0);
	atomic_store(&r->dirty, 0);
	atomic_store(&r->swapped, 0);
}

/* Waits until no page of [first, first + count) is being filled or evicted by someone else. */
void lm__pte_wait_settled(struct lm_region *r, uint64_t first, uint64_t count)
{
	for (uint64_t pg = first; pg < first + count; pg++) {
		lm__pte *e = lm__pt_get(&r->pt, pg, false);
		unsigned s;
		while (e && ((s = LM_PTE_STATE(atomic_load(e))) == LM_PS_FILLING ||
			     s == LM_PS_EVICTING))
			sched_yield();
	}
}
