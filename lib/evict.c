/* SPDX-License-Identifier: MIT */
/* The memory budget: the evictor thread and its clock, throttling of fills, and writeback of shared file regions. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/*
 * How a page leaves, without ever losing a write (docs/DESIGN.md, invariant 2):
 *
 *  1. The evictor claims it: CLEAN or DIRTY -> EVICTING, a CAS.  From
 *     here a fault on the page parks (thread mode) or replays (signal
 *     mode) until the page settles; no fill can install it.
 *  2. Dirty pages get swap slots, with their disk space allocated
 *     (fallocate), before anything moves: a full swap file or disk leaves
 *     them where they are, resident, and the runtime over its budget.
 *  3. UFFDIO_MOVE takes the pages out of the region into the evictor's
 *     staging area in one atomic step per run: a writer racing it either
 *     wrote before (its write moves with the page) or faults on the empty
 *     entry after and waits for step 5.  No write-protect and no
 *     MADV_DONTNEED on the region, so no REMOVE event round trip either.
 *     The staging area belongs to a second userfaultfd without events.
 *  4. Dirty pages are written to their slots.  A write that fails leaves
 *     the page held in memory by the swap layer (swap.c), still counted
 *     against the budget: it is never dropped.
 *  5. The entry settles: SWAPPED(slot), or MISSING when the source (or
 *     the file, for shared regions) has the contents; waiters are woken
 *     and refault into the swap-in path.
 *
 * Dirty pages of shared file regions are not moved: they are written
 * back in place (write-protected first, read through /proc/self/mem,
 * which never waits on a missing page) and become CLEAN, to be dropped
 * by a later pass, as the kernel writes back dirty page cache before
 * reclaiming it.
 *
 * Lock order: a handler applying an event holds ev_lock and may wait for
 * rt->lock or for a page to settle; region destroy holds rt->lock and
 * waits for readers.  The evictor holds a read section for a whole batch,
 * so it only ever try-locks ev_lock, and gives back its claims when that
 * fails: it never waits for a handler.
 */

#define EVICT_BATCH 256
#define SCAN_MAX 1024			/* entries looked at per batch, at most */
#define DEFAULT_SWAP_MAX (64ull << 30)
#define THROTTLE_MAX_NS 1000000000ull	/* a fault waits for the evictor one second at most */

struct batch {
	struct lm_region *r;
	unsigned n;
	uint64_t pg[EVICT_BATCH];
	lm__pte *e[EVICT_BATCH];
	uint64_t prev[EVICT_BATCH];
	uint64_t slot[EVICT_BATCH];	/* reserved for a dirty page; UINT64_MAX: none */
	int res[EVICT_BATCH];		/* see the R_* values */
	unsigned scanned;
	bool wrapped;
	/* Pages UFFDIO_MOVE refused as not the process's alone (a fork() shared them): unshared after. */
	uint64_t unshare[EVICT_BATCH];
	unsigned nunshare;
};

enum {
	R_STAGED = 0,	/* moved into estage[i] */
	R_GONE = 1,	/* the application dropped it: nothing to keep */
	R_BACK = 2,	/* not moved: settles back to its previous state */
	R_WB = 3,	/* shared and dirty: written back in place */
	R_WB_DONE = 4,
	R_AGAIN = 5,	/* like R_BACK, because an event was pending: try again, not an error */
};

static uint64_t gap_of(uint64_t budget)
{
	uint64_t g = budget / 32;
	if (g < 8)
		g = budget / 4 < 8 ? budget / 4 : 8;
	return g;
}

static void kick(struct lm_runtime *rt)
{
	if (!atomic_exchange_explicit(&rt->ev_wanted, true, memory_order_acq_rel)) {
		uint64_t one = 1;
		if (write(rt->ev_kick, &one, sizeof(one)) < 0) {
			/* Only an overflowing counter fails, and then a wake-up is pending anyway. */
		}
	}
}

void lm__evict_check(struct lm_runtime *rt)
{
	uint64_t b = atomic_load_explicit(&rt->budget, memory_order_relaxed);
	if (b && rt->ev_started &&
	    atomic_load_explicit(rt->nres, memory_order_relaxed) > (int64_t)(b - gap_of(b)))
		kick(rt);
}

/*
 * Fills stop at the budget and wait for the evictor, as the kernel's
 * allocations enter direct reclaim: without this a fast writer outruns
 * the evictor's disk writes without bound.  The wait ends when the
 * evictor made room, when it reports that it cannot (over budget:
 * counted, never fatal), or after a second.  Sleeping is async-signal-safe.
 */
void lm__throttle(struct lm_runtime *rt)
{
	uint64_t b = atomic_load_explicit(&rt->budget, memory_order_relaxed);
	if (!b || !rt->ev_started || atomic_load_explicit(&rt->ev_paused, memory_order_acquire) ||
	    atomic_load_explicit(rt->nres, memory_order_relaxed) < (int64_t)b)
		return;
	uint64_t t0 = lm__now_ns(), t = t0;
	kick(rt);
	while (atomic_load_explicit(rt->nres, memory_order_relaxed) >= (int64_t)b &&
	       !atomic_load_explicit(&rt->ev_stuck, memory_order_relaxed) &&
	       !atomic_load_explicit(&rt->ev_paused, memory_order_acquire) &&
	       t - t0 < THROTTLE_MAX_NS) {
		nanosleep(&(struct timespec){ 0, 20000 }, NULL);
		t = lm__now_ns();
		kick(rt);
	}
	LM__STAT_ADD(rt, throttle_ns, t - t0);
}

/*
 * A fork() stops eviction between batches (the child must not find a
 * page half moved out) by holding evict_lock from its prepare handler to
 * its after handlers.  Meanwhile the thread that forks runs the other
 * prepare handlers, jemalloc's among them under the preload library,
 * which take locks living in lazy memory: a fault on one of them that
 * waited for the evictor would wait for the forking thread itself, a
 * second at a time (a fork took 47 s under a 1 MiB budget).  So fills do
 * not wait while eviction is paused; the budget is exceeded by what the
 * fork touches, and the evictor catches up after it.
 */
void lm__evict_pause(struct lm_runtime *rt)
{
	atomic_store_explicit(&rt->ev_paused, true, memory_order_release);
	pthread_mutex_lock(&rt->evict_lock);
}

void lm__evict_resume(struct lm_runtime *rt)
{
	pthread_mutex_unlock(&rt->evict_lock);
	atomic_store_explicit(&rt->ev_paused, false, memory_order_release);
	lm__evict_check(rt);
}

/*
 * Refault distance, as the kernel's workingset code measures it: the
 * evictions between a page's eviction and its refault.  A page back
 * within half a budget's worth of evictions would have stayed with a
 * little more memory: it is part of the working set, and gets the clock's
 * second chance.  A page back only after a cycle (a scan larger than
 * memory comes back after about a budget) does not: with a whole budget
 * as the bound, sequential scans 2x the budget paid for second chances
 * they never used (swap.seq.2x.write 164k vs 188k accesses/s) and Zipf
 * writes lost 17%.  The stamp is 12 bits in units of 1/32 of the budget,
 * so it spans 128 budgets before it wraps (a shorter one made a
 * cyclic scan of two budgets look like a hot refault).
 */
static uint64_t age_unit(struct lm_runtime *rt)
{
	uint64_t u = atomic_load_explicit(&rt->budget, memory_order_relaxed) / 32;
	return u ? u : 1;
}

uint64_t lm__evict_stamp(struct lm_runtime *rt)
{
	uint64_t now = atomic_load_explicit(&rt->ev_count, memory_order_relaxed) / age_unit(rt);
	return (now & ((1ull << LM_PTE_AGE_BITS) - 1)) << LM_PTE_AGE_SHIFT;
}

bool lm__refault_hot(struct lm_runtime *rt, uint64_t prev)
{
	uint64_t now = atomic_load_explicit(&rt->ev_count, memory_order_relaxed) / age_unit(rt);
	uint64_t then = (prev & LM_PTE_AGE_MASK) >> LM_PTE_AGE_SHIFT;
	return ((now - then) & ((1ull << LM_PTE_AGE_BITS) - 1)) < 16;
}

const char *lm__swap_dir(const struct lm_runtime *rt)
{
	const char *dir = rt->opt.swap_dir;
	if (!dir || !*dir)
		dir = getenv("TMPDIR");
	return dir && *dir ? dir : "/tmp";
}

/* ---- choosing victims ---------------------------------------------------- */

static uintptr_t addr_of(struct lm_region *r, uint64_t pgno)
{
	return r->start + (pgno << r->rt->page_shift);
}


struct sel {
	struct batch *b;
	unsigned want;
	bool fifo;
	bool prefer_clean;
	uint64_t next;
	uint64_t wp_first, wp_end;	/* pages to protect again: one run, one ioctl */
};

/*
 * Protects the pending run of pages again.  One ioctl per run, not per
 * page: each is a TLB shootdown, and per page a sweep over a quarter of a
 * million dirty pages took seconds.
 */
static void reprotect(struct sel *c)
{
	struct lm_region *r = c->b->r;
	if (c->wp_end > c->wp_first)
		lm__uffd_writeprotect(r->rt->ufd, addr_of(r, c->wp_first),
				      (size_t)(c->wp_end - c->wp_first) << r->rt->page_shift, true);
	c->wp_first = c->wp_end = 0;
}

/*
 * The clock.  User space sees no accessed bits, so "referenced" means
 * what the runtime does see: a refault (the page was evicted and wanted
 * back: evicting it was a mistake) or a first write (a write-protect
 * fault).  The hand clears the bit and passes; an unreferenced page is
 * taken.  While clean pages are plentiful, a dirty page also gets one
 * pass, since dropping a clean page costs no write.  The application's
 * advice counts: sequential pages get no second chance, dont-need pages
 * are gone already, random ones are treated like any other.
 */
static int select_one(lm__pte *e, uint64_t pgno, void *arg)
{
	struct sel *c = arg;
	struct batch *b = c->b;
	b->scanned++;
	c->next = pgno + 1;
	uint64_t v = atomic_load_explicit(e, memory_order_acquire);
	unsigned s = LM_PTE_STATE(v);
	if (s == LM_PS_CLEAN || s == LM_PS_DIRTY) {
		/* Pages of a range advised sequential are used once, as the kernel treats them: no second chance. */
		bool once = c->fifo || lm__region_advice_at(b->r, pgno) == LM_ADV_SEQUENTIAL;
		if (!once && (v & LM_PTE_REF)) {
			/*
			 * Resident pages give no sign of use but writes: a dirty
			 * page is write-protected again as the hand passes, so its
			 * next write (a fault; async: the next scan) marks it
			 * referenced again.  Reads stay invisible.
			 */
			if (lm__pte_ref(e, &v, false) && s == LM_PS_DIRTY && !b->r->rt->wp_async) {
				if (c->wp_end != pgno || c->wp_end == c->wp_first) {
					reprotect(c);
					c->wp_first = pgno;
				}
				c->wp_end = pgno + 1;
			}
		} else if (!once && LM_PTE_HOT(v)) {
			/* Read pages leave no trace but refaults: one that keeps coming back is kept longer. */
			lm__pte_cool(e, &v);
		} else if (!once && s == LM_PS_DIRTY && c->prefer_clean) {
			lm__pte_ref(e, &v, true);
		} else if (lm__pte_claim(e, LM__ST(s), LM_PS_EVICTING, &v)) {
			b->pg[b->n] = pgno;
			b->e[b->n] = e;
			b->prev[b->n] = v & ~LM_PTE_REF;
			b->slot[b->n] = UINT64_MAX;
			b->res[b->n] = R_STAGED;
			b->n++;
		}
	}
	return b->n == c->want || b->scanned >= SCAN_MAX;
}

/* Claims up to want (at most EVICT_BATCH) victims of one region, moving the hand. */
static void select_victims(struct lm_runtime *rt, struct lm__rtable *t, struct batch *b,
			   unsigned want)
{
	b->n = 0;
	b->nunshare = 0;
	b->scanned = 0;
	b->wrapped = false;
	b->r = NULL;
	if (rt->hand_ext >= t->n) {
		rt->hand_ext = 0;
		rt->hand_pg = 0;
		b->wrapped = true;
	}
	const struct lm__extent *x = &t->e[rt->hand_ext];
	struct lm_region *r = x->r;
	uint64_t first = (x->start - r->start) >> rt->page_shift;
	uint64_t last = (x->end - 1 - r->start) >> rt->page_shift;
	if (x->start < r->start || last >= r->npages) {
		/* The region moved since this table was built: try the next one. */
		rt->hand_ext++;
		return;
	}
	if (rt->hand_pg < first || rt->hand_pg > last)
		rt->hand_pg = first;
	int64_t res = atomic_load(rt->nres), dirty = atomic_load(rt->ndirty);
	struct sel c = {
		.b = b,
		.want = want < EVICT_BATCH ? want : EVICT_BATCH,
		.fifo = rt->opt.evict_policy == LM_EVICT_FIFO,
		.prefer_clean = res - dirty >= 2 * EVICT_BATCH,
		.next = last + 1,
	};
	b->r = r;
	lm__pt_walk(&r->pt, rt->hand_pg, last, select_one, &c);
	reprotect(&c);
	if (c.next > last || b->scanned < SCAN_MAX) {
		rt->hand_ext++;
		rt->hand_pg = 0;
	} else {
		rt->hand_pg = c.next;
	}
}

/* ---- one batch ------------------------------------------------------------- */

/* ---- asynchronous write protection ------------------------------------------ */

static void mark_written(struct lm_region *r, uint64_t pgno)
{
	lm__pte *e = lm__pt_get(&r->pt, pgno, false);
	if (e)
		lm__pte_mark_written(r, e);
}

/*
 * Called with ev_lock held: the scan protects what it reports, so it must
 * be of this region's pages and no other's (an mremap could otherwise move
 * another mapping under the addresses).  A scan that fails (part of the
 * range is not ours any more) counts every clean page in it as written:
 * a needless write is better than a lost one.
 */
void lm__harvest(struct lm_region *r, uint64_t first, uint64_t last)
{
	struct lm_runtime *rt = r->rt;
	if (!rt->wp_async || first > last)
		return;
	uintptr_t start = addr_of(r, first), end = addr_of(r, last + 1);
	struct lm__range v[32];
	while (start < end) {
		uintptr_t next = end;
		int n = lm__uffd_scan_written(rt->pagemap_fd, start, end, v, 32, &next);
		if (n < 0) {
			for (uint64_t pg = (start - r->start) >> rt->page_shift; pg <= last; pg++)
				mark_written(r, pg);
			return;
		}
		for (int i = 0; i < n; i++)
			for (uintptr_t a = v[i].start; a < v[i].end; a += (uintptr_t)rt->page_size)
				mark_written(r, (a - r->start) >> rt->page_shift);
		if (next <= start)
			break;
		start = next;
	}
}

/*
 * Settles a claimed page (pte.c judges a drop that came meanwhile).
 * Returns true when the page ended up dropped.
 */
static bool finish(struct lm_region *r, lm__pte *e, uint64_t pgno, uint64_t prev, uint64_t val,
		   unsigned how)
{
	return (lm__pte_settle_counted(r, e, pgno, prev, prev, val, how) &
		LM__SETTLED_DROPPED) != 0;
}

/* Gives every claimed page back, unchanged. */
static void give_back(struct lm_runtime *rt, struct batch *b)
{
	for (unsigned i = 0; i < b->n; i++) {
		if (b->slot[i] != UINT64_MAX)
			lm__store_release(&rt->swap_store, b->slot[i]);
		finish(b->r, b->e[i], b->pg[i], b->prev[i], b->prev[i], 0);
	}
	b->n = 0;
}

/* Reserves swap slots for the dirty private pages; those left without one stay. */
static void reserve_slots(struct lm_runtime *rt, struct batch *b)
{
	/* (Async tracking never has shared regions: see lm_region_create_file.) */
	uint64_t slots[EVICT_BATCH];
	unsigned need = 0;
	/* Under async tracking a clean page may turn out written: it gets a slot too, just in case. */
	for (unsigned i = 0; i < b->n; i++)
		if ((LM_PTE_STATE(b->prev[i]) == LM_PS_DIRTY || rt->wp_async) && !b->r->shared)
			need++;
	unsigned got = need && rt->swap_ok ? lm__store_alloc(&rt->swap_store, slots, need) : 0;
	unsigned k = 0;
	for (unsigned i = 0; i < b->n; i++) {
		if (LM_PTE_STATE(b->prev[i]) != LM_PS_DIRTY && !rt->wp_async)
			continue;
		if (b->r->shared)
			b->res[i] = R_WB;
		else if (k < got)
			b->slot[i] = slots[k++];
		else
			b->res[i] = R_BACK;
	}
}

/*
 * True when staging slot i holds a page (it was empty when the batch
 * began).  Asked of /proc/self/pagemap, present or swapped (bits 63 and
 * 62): mincore would miss a page the kernel had already swapped out.
 */
static bool staged(struct lm_runtime *rt, unsigned i)
{
	size_t ps = (size_t)rt->page_size;
	uint64_t ent = 0;
	uintptr_t a = (uintptr_t)rt->estage + (uintptr_t)i * ps;
	if (rt->ev_pagemap < 0 ||
	    pread(rt->ev_pagemap, &ent, sizeof(ent), (off_t)(a / ps * sizeof(ent))) != sizeof(ent)) {
		unsigned char vec = 0;
		return mincore((void *)a, ps, &vec) == 0 && (vec & 1);
	}
	return (ent >> 62) & 3;
}

/* Moves the staged pages out of the region, in runs; called with ev_lock held. */
static void move_out(struct lm_runtime *rt, struct batch *b)
{
	size_t ps = (size_t)rt->page_size;
	struct lm_region *r = b->r;
	for (unsigned i = 0; i < b->n;) {
		if (b->res[i] != R_STAGED) {
			i++;
			continue;
		}
		unsigned j = i + 1;
		while (j < b->n && b->res[j] == R_STAGED && b->pg[j] == b->pg[j - 1] + 1)
			j++;
		size_t done = 0;
		int rc = lm__uffd_move(rt->stage_ufd, (uintptr_t)rt->estage + i * ps,
				       addr_of(r, b->pg[i]), (j - i) * ps, &done);
		unsigned ok = (unsigned)(done / ps);
		if (rc == 0) {
			i = j;
			continue;
		}
		unsigned at = i + ok;
		/*
		 * The kernel (6.18) can move a page and still fail it: when its
		 * move is retried internally (the page table changed under it,
		 * say a concurrent PAGEMAP_SCAN), the retry finds the page
		 * already at the destination and reports -EEXIST, not counted.
		 * The staging area holds nothing but what this batch moved into
		 * it, so a page present there is this one: staged, not failed.
		 * Taking the error at its word would give back a page that is
		 * no longer in the region, and lose it.
		 */
		if (staged(rt, at)) {
			i = at + 1;
			continue;
		}
		/* Absent: the application dropped it (its event may still be on the way). */
		b->res[at] = rc == -ENOENT ? R_GONE : R_BACK;
		if (rc == -EBUSY || rc == -EAGAIN)
			LM__STAT_ADD(rt, evict_busy, 1);
		if (rc == -EBUSY)
			b->unshare[b->nunshare++] = b->pg[at];
		if (rc == -EAGAIN)
			for (unsigned k = at + 1; k < b->n; k++)
				if (b->res[k] == R_STAGED)
					b->res[k] = R_BACK;
		i = at + 1;
	}
}

/*
 * Write-protects the shared dirty pages and copies them out; called with
 * ev_lock held (the addresses must not move under the copy).  The copy
 * goes through /proc/self/mem, which fails on a missing page instead of
 * waiting for a fill that this thread's own claim would block.
 */
static void copy_for_writeback(struct lm_runtime *rt, struct batch *b, int memfd,
			       unsigned char *buf)
{
	size_t ps = (size_t)rt->page_size;
	for (unsigned i = 0; i < b->n; i++) {
		if (b->res[i] != R_WB)
			continue;
		uintptr_t a = addr_of(b->r, b->pg[i]);
		int rc = lm__uffd_writeprotect(rt->ufd, a, ps, true);
		if (rc < 0) {
			b->res[i] = rc == -EAGAIN ? R_AGAIN : R_BACK;
			continue;
		}
		ssize_t n = pread(memfd, buf + (size_t)i * ps, ps, (off_t)a);
		if (n != (ssize_t)ps)
			b->res[i] = n < 0 && errno == EIO ? R_GONE : R_BACK;
	}
}

/*
 * Writes the copied pages back to the region's source (its file) in one
 * batch through the page store; successes become R_WB_DONE.
 */
static int write_back(struct lm_runtime *rt, struct batch *b, struct lm__filler *f,
		      unsigned char *buf)
{
	size_t ps = (size_t)rt->page_size;
	struct lm_region *r = b->r;
	uint64_t keys[EVICT_BATCH];
	unsigned char *pages[EVICT_BATCH];
	unsigned at[EVICT_BATCH], n = 0;
	int res[EVICT_BATCH];
	for (unsigned i = 0; i < b->n; i++) {
		if (b->res[i] != R_WB)
			continue;
		keys[n] = b->pg[i] + r->src_shift;
		pages[n] = buf + (size_t)i * ps;
		at[n++] = i;
	}
	if (!n)
		return 0;
	int err = lm__store_write(&r->src, f, keys, pages, n, res);
	for (unsigned k = 0; k < n; k++) {
		if (!res[k]) {
			b->res[at[k]] = R_WB_DONE;
			LM__STAT_ADD(rt, written_back, 1);
		} else {
			LM__STAT_ADD(rt, swap_write_errors, 1);
		}
	}
	return err;
}

/* Settles every page of the batch and counts what happened (the page counters follow from the settles, pte.c). */
static long settle_batch(struct lm_runtime *rt, struct batch *b)
{
	struct lm_region *r = b->r;
	long evicted = 0;
	for (unsigned i = 0; i < b->n; i++) {
		uint64_t prev = b->prev[i];
		bool dirty = LM_PTE_STATE(prev) == LM_PS_DIRTY || b->slot[i] != UINT64_MAX;
		uint64_t val;
		switch (b->res[i]) {
		case R_BACK:
		case R_AGAIN:
		case R_WB:
			/* A write-protected DIRTY page is fine: its next write unprotects it. */
			if (b->slot[i] != UINT64_MAX)
				lm__store_release(&rt->swap_store, b->slot[i]);
			finish(r, b->e[i], b->pg[i], prev, prev, 0);
			continue;
		case R_WB_DONE:
			finish(r, b->e[i], b->pg[i], prev, (uint64_t)LM_PS_CLEAN, 0);
			continue;
		case R_GONE:
			/* The move found it gone: the application dropped it, judged as such. */
			if (b->slot[i] != UINT64_MAX)
				lm__store_release(&rt->swap_store, b->slot[i]);
			finish(r, b->e[i], b->pg[i], prev, (uint64_t)LM_PS_MISSING, LM__SETTLE_GONE);
			continue;
		}
		/*
		 * Staged: out of the region now.  A page written since its
		 * scan (asynchronous tracking) leaves its old slot for the new
		 * one; a clean one with a slot keeps it (the swap cache).
		 */
		if (b->slot[i] != UINT64_MAX)
			val = LM_PS_SWAPPED | LM_PTE_WITH_SLOT(b->slot[i]);
		else if (LM_PTE_HAS_SLOT(prev))
			val = LM_PS_SWAPPED | (prev & ~(((uint64_t)1 << LM_PTE_AUX_SHIFT) - 1));
		else
			val = LM_PS_MISSING;
		val |= LM_PTE_EVICTED | lm__evict_stamp(rt) | (prev & LM_PTE_HOT_MASK);
		if (finish(r, b->e[i], b->pg[i], prev, val, 0)) {
			/* Dropped while it was being written: the slot holds nothing wanted. */
			if (b->slot[i] != UINT64_MAX)
				lm__store_release(&rt->swap_store, b->slot[i]);
			continue;
		}
		if (b->slot[i] == UINT64_MAX && LM_PTE_HAS_SLOT(prev))
			LM__STAT_ADD(rt, swap_cache_hits, 1);
		if (dirty)
			LM__STAT_ADD(rt, evicted_dirty, 1);
		evicted++;
	}
	LM__STAT_ADD(rt, evicted_pages, evicted);
	atomic_fetch_add_explicit(&rt->ev_count, (uint64_t)evicted, memory_order_relaxed);
	return evicted;
}

/*
 * After a fork(), the parent's pages are no longer its alone (the kernel
 * marks them shared for copy-on-write) until each is written again, even
 * long after the child is gone, and UFFDIO_MOVE refuses a page that is
 * not: read-mostly memory would stay resident for good, over the budget
 * (issue 13, bug 4).  MADV_POPULATE_WRITE makes such a page the
 * process's own again without changing a byte: the kernel's write fault
 * reuses it when no one else maps it, and copies it when a child still
 * does.  The next pass then moves it.
 *
 * Signal mode: the fault of a write-protected page would be a SIGBUS the
 * populate cannot take, so the page is held, unprotected (it settles
 * DIRTY: writes go unseen from then on), populated and settled; a held
 * page that turned out missing gives EFAULT there, never a wait.  Called
 * in the batch's read section.
 */
static void unshare_held(struct lm_runtime *rt, struct batch *b)
{
	size_t ps = (size_t)rt->page_size;
	for (unsigned i = 0; i < b->nunshare; i++) {
		uint64_t pg = b->unshare[i], prev;
		lm__pte *e = lm__pt_get(&b->r->pt, pg, false);
		if (!e || !lm__pte_claim(e, LM__ST(LM_PS_CLEAN) | LM__ST(LM_PS_DIRTY), LM_PS_FILLING,
					 &prev))
			continue;
		lm__uffd_writeprotect(rt->ufd, addr_of(b->r, pg), ps, false);
		madvise((void *)addr_of(b->r, pg), ps, MADV_POPULATE_WRITE);
		lm__pte_settle(b->r, e, pg, prev, (uint64_t)LM_PS_DIRTY | (prev & LM_PTE_REF));
	}
	b->nunshare = 0;
}

/*
 * Thread mode: populated without holding, outside every lock and read
 * section, since its faults go to the handler threads (a write-protected
 * page's: a first write, marked dirty; a page dropped meanwhile: a fill),
 * which must not find the page held by the thread that waits for them.
 * An address that moved or went since is populated harmlessly: a
 * populate changes no contents.
 */
static void unshare_addrs(struct lm_runtime *rt, const uint64_t *addr, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		madvise((void *)(uintptr_t)addr[i], (size_t)rt->page_size, MADV_POPULATE_WRITE);
}

/*
 * One batch: choose, claim, move out, write, settle.  Returns the pages
 * that left memory (or were written back), or -EAGAIN when the event
 * lock was busy and everything was given back.
 */
static long evict_batch(struct lm_runtime *rt, struct batch *b, unsigned want, int memfd)
{
	size_t ps = (size_t)rt->page_size;
	int idx = lm__read_lock(rt);
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	if (!t || !t->n) {
		lm__read_unlock(rt, idx);
		b->wrapped = true;
		b->scanned = 1;
		return 0;
	}
	if (rt->wp_async) {
		/* Written pages found first, under ev_lock (see lm__harvest), then the victims. */
		if (pthread_mutex_trylock(&rt->ev_lock) != 0) {
			lm__read_unlock(rt, idx);
			return -EAGAIN;
		}
		if (rt->hand_ext < t->n) {
			const struct lm__extent *x = &t->e[rt->hand_ext];
			struct lm_region *r = x->r;
			if (x->start >= r->start && x->end <= r->start + r->len)
				lm__harvest(r, (x->start - r->start) >> rt->page_shift,
					    (x->end - 1 - r->start) >> rt->page_shift);
		}
		pthread_mutex_unlock(&rt->ev_lock);
	}
	select_victims(rt, t, b, want);
	if (!b->n) {
		lm__read_unlock(rt, idx);
		return 0;
	}
	reserve_slots(rt, b);
	if (pthread_mutex_trylock(&rt->ev_lock) != 0) {
		give_back(rt, b);
		lm__read_unlock(rt, idx);
		return -EAGAIN;
	}
	/* A page marked dropped before the move is simply gone. */
	for (unsigned i = 0; i < b->n; i++)
		if (atomic_load(b->e[i]) & LM_PTE_DROP)
			b->res[i] = R_GONE;
	move_out(rt, b);
	bool wb = false;
	for (unsigned i = 0; i < b->n; i++)
		wb |= b->res[i] == R_WB;
	if (wb)
		copy_for_writeback(rt, b, memfd, rt->wbuf);
	pthread_mutex_unlock(&rt->ev_lock);

	/*
	 * Outside the lock: the pages are out of reach of the application
	 * now.  Async tracking cannot stop a write between its scan and the
	 * move, so a page the scan called clean is compared, once it is out,
	 * with where its contents already are: its source, or the swap slot
	 * it was read from (the swap cache: read back and compared, which
	 * costs less than writing it again).  Where the store cannot tell
	 * (a file), the page is written.
	 */
	for (unsigned i = 0; rt->wp_async && i < b->n; i++) {
		if (b->res[i] != R_STAGED || LM_PTE_STATE(b->prev[i]) != LM_PS_CLEAN ||
		    b->slot[i] == UINT64_MAX)
			continue;
		const unsigned char *page = rt->estage + (size_t)i * ps;
		bool same = LM_PTE_HAS_SLOT(b->prev[i])
				    ? lm__store_verify(&rt->swap_store, &rt->ev_filler,
						       LM_PTE_SLOT(b->prev[i]), page)
				    : lm__store_verify(&b->r->src, &rt->ev_filler,
						       b->pg[i] + b->r->src_shift, page);
		if (same) {
			lm__store_release(&rt->swap_store, b->slot[i]);
			b->slot[i] = UINT64_MAX;
		}
	}
	unsigned char *pages[EVICT_BATCH];
	uint64_t slots[EVICT_BATCH];
	int done[EVICT_BATCH];
	unsigned nw = 0;
	/* Invariant 2: a page is written out only once it left the region, whole, into the stage. */
	for (unsigned i = 0; i < b->n; i++)
		LM__ASSERT(b->res[i] != R_STAGED || staged(rt, i));
	for (unsigned i = 0; i < b->n; i++)
		if (b->res[i] == R_STAGED && b->slot[i] != UINT64_MAX) {
			pages[nw] = rt->estage + (size_t)i * ps;
			slots[nw++] = b->slot[i];
		}
	/* A page whose write failed is held by the swap file, never lost (invariant 10). */
	if (nw)
		lm__store_write(&rt->swap_store, &rt->ev_filler, slots, pages, nw, done);
	/* Durability is lm_region_flush's business: a later read finds the data in the page cache. */
	if (wb)
		write_back(rt, b, &rt->ev_filler, rt->wbuf);
	long n = settle_batch(rt, b);
	for (unsigned i = 0; i < b->n; i++)
		if (b->res[i] == R_WB_DONE)
			n++;
	if (rt->mode == LM_MODE_SIGNAL)
		unshare_held(rt, b);
	for (unsigned i = 0; i < b->nunshare; i++)
		b->unshare[i] = addr_of(b->r, b->unshare[i]);
	madvise(rt->estage, (size_t)EVICT_BATCH * ps, MADV_DONTNEED);
	lm__read_unlock(rt, idx);
	return n;
}

/*
 * One round: evict down to the low watermark.  Gives up after two full
 * sweeps without progress (everything referenced twice over would have
 * been taken by then): the runtime stays over its budget and says so.
 */
static void evict_round(struct lm_runtime *rt, struct batch *b, int memfd)
{
	unsigned wraps = 0, busy = 0;
	for (;;) {
		uint64_t bud = atomic_load(&rt->budget);
		if (!bud || atomic_load(&rt->ev_stop))
			break;
		int64_t low = (int64_t)(bud - 2 * gap_of(bud)), res = atomic_load(rt->nres);
		if (res <= low)
			break;
		pthread_mutex_lock(&rt->evict_lock);
		long n = evict_batch(rt, b, (unsigned)(res - low < EVICT_BATCH ? res - low : EVICT_BATCH),
				     memfd);
		pthread_mutex_unlock(&rt->evict_lock);
		/* The batch left addresses here (thread mode): out of every lock now. */
		unshare_addrs(rt, b->unshare, b->nunshare);
		b->nunshare = 0;
		if (n > 0) {
			wraps = busy = 0;
			continue;
		}
		if (n == -EAGAIN) {
			if (++busy > 10000)
				break;
			nanosleep(&(struct timespec){ 0, 50000 }, NULL);
			continue;
		}
		/* A page is taken on the hand's pass after its REF and hot count are spent. */
		if (b->wrapped && ++wraps > 2 + LM_PTE_HOT_MAX)
			break;
	}
	uint64_t bud = atomic_load(&rt->budget);
	bool stuck = bud && atomic_load(rt->nres) > (int64_t)bud;
	if (stuck)
		LM__STAT_ADD(rt, over_budget, 1);
	atomic_store(&rt->ev_stuck, stuck);
	atomic_fetch_add(&rt->ev_gen, 1);
}

static void *evictor_main(void *arg)
{
	lm__thread_mark();
	struct lm_runtime *rt = arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	struct batch *b = lm__calloc(1, sizeof(*b));
	int memfd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	while (b && !atomic_load(&rt->ev_stop)) {
		/* Stuck: look again now and then, since slots and disk space come back. */
		struct pollfd p = { .fd = rt->ev_kick, .events = POLLIN };
		int rc = poll(&p, 1, atomic_load(&rt->ev_stuck) ? 200 : -1);
		if (atomic_load(&rt->ev_stop))
			break;
		uint64_t v;
		if (rc > 0 && read(rt->ev_kick, &v, sizeof(v)) < 0) {
			/* EAGAIN: another read took it; nothing to do. */
		}
		atomic_store(&rt->ev_wanted, false);
		/* Pages held in memory because a write failed go first, once the store takes them. */
		lm__swap_rewrite_held(&rt->swap, &rt->ev_filler, EVICT_BATCH);
		evict_round(rt, b, memfd);
	}
	if (memfd >= 0)
		close(memfd);
	lm__free(b);
	return NULL;
}

/* ---- setup, budget ---------------------------------------------------------- */

/*
 * The evictor's resources, made the first time a budget is set: a swap
 * file, a staging area on a userfaultfd of its own (UFFDIO_MOVE needs a
 * registered destination; without events, freeing it never waits for a
 * handler), and the thread.
 */
int lm__evict_setup(struct lm_runtime *rt)
{
	int rc = 0;
	pthread_mutex_lock(&rt->ev_setup_lock);
	if (rt->ev_started)
		goto out;
	size_t ps = (size_t)rt->page_size;
	if (!(rt->features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
		rc = -EOPNOTSUPP;
		goto out;
	}
	int origin;
	unsigned limits;
	uint64_t features;
	rt->stage_ufd = lm__uffd_open(rt->origin, UFFD_FEATURE_SIGBUS | UFFD_FEATURE_MOVE,
				      &origin, &limits, &features);
	if (rt->stage_ufd < 0) {
		rc = rt->stage_ufd;
		goto out;
	}
	if (!(features & UFFD_FEATURE_MOVE)) {
		lm__log(rt, 1, "the kernel lacks UFFDIO_MOVE: no eviction");
		rc = -EOPNOTSUPP;
		goto out;
	}
	rt->estage = mmap(NULL, EVICT_BATCH * ps, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	rt->wbuf = mmap(NULL, EVICT_BATCH * ps, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (rt->estage == MAP_FAILED || rt->wbuf == MAP_FAILED) {
		rc = -ENOMEM;
		goto out;
	}
	if ((rc = lm__uffd_register(rt->stage_ufd, (uintptr_t)rt->estage, EVICT_BATCH * ps,
				    false)) < 0)
		goto out;
	const char *dir = lm__swap_dir(rt);
	uint64_t max = rt->opt.swap_max ? rt->opt.swap_max : DEFAULT_SWAP_MAX;
	if (rt->opt.swap_url) {
		/* A remote store's client allocates and blocks: never in a signal handler. */
		if (rt->mode != LM_MODE_THREAD) {
			lm__log(rt, 1, "a remote swap (%s) needs thread mode", rt->opt.swap_url);
			rc = -EOPNOTSUPP;
			goto out;
		}
		struct lm__remote *remote;
		if ((rc = lm__remote_open(rt, rt->opt.swap_url, ps, 0, &remote)) < 0)
			goto out;
		rc = lm__swap_open_remote(&rt->swap, remote, max, ps);
	} else if ((rc = lm__swap_open(&rt->swap, dir, max, ps)) < 0) {
		lm__log(rt, 1, "cannot create a swap file in %s: %s", dir, lm_strerror(rc));
	}
	if (rc < 0)
		goto out;
	lm__store_init_swap(&rt->swap_store, rt, &rt->swap);
	rt->swap.held_pages = rt->nres;
	rt->swap.used_mirror = &rt->stats->swap_slots_used;
	rt->swap.backed_mirror = &rt->stats->swap_file_bytes;
	rt->swap_ok = true;
	LM__STAT_SET(rt, swap_slots_total, rt->swap.nslots);
	if ((rc = lm__filler_init(&rt->ev_filler, rt, rt->opt.io == LM_IO_URING)) < 0)
		goto out;
	rt->ev_pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	rt->ev_kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (rt->ev_kick < 0) {
		rc = -errno;
		goto out;
	}
	if ((rc = -pthread_create(&rt->ev_thread, NULL, evictor_main, rt)) < 0)
		goto out;
	rt->ev_started = true;
	atomic_store(&rt->track, true);
out:
	if (rc < 0)
		lm__evict_shutdown(rt);
	pthread_mutex_unlock(&rt->ev_setup_lock);
	return rc;
}

/* Stops the evictor and frees what setup made; the swap file goes last, with the regions. */
void lm__evict_shutdown(struct lm_runtime *rt)
{
	size_t ps = (size_t)rt->page_size;
	if (rt->ev_started && getpid() == rt->pid) {
		atomic_store(&rt->ev_stop, true);
		kick(rt);
		uint64_t one = 1;
		if (write(rt->ev_kick, &one, sizeof(one)) < 0) {
			/* A pending wake-up is as good. */
		}
		pthread_join(rt->ev_thread, NULL);
	}
	rt->ev_started = false;
	if (rt->ev_kick >= 0)
		close(rt->ev_kick);
	rt->ev_kick = -1;
	if (rt->ev_pagemap >= 0)
		close(rt->ev_pagemap);
	rt->ev_pagemap = -1;
	lm__filler_fini(&rt->ev_filler);
	if (rt->estage && rt->estage != MAP_FAILED)
		munmap(rt->estage, EVICT_BATCH * ps);
	if (rt->wbuf && rt->wbuf != MAP_FAILED)
		munmap(rt->wbuf, EVICT_BATCH * ps);
	rt->estage = rt->wbuf = NULL;
	if (rt->stage_ufd >= 0)
		close(rt->stage_ufd);
	rt->stage_ufd = -1;
}

int lm_runtime_set_budget(struct lm_runtime *rt, uint64_t bytes)
{
	LM__KEEP_ERRNO;
	if (!rt)
		return -EINVAL;
	if (rt->huge && bytes)
		return -EOPNOTSUPP;	/* UFFDIO_MOVE cannot take hugetlb pages out */
	uint64_t pages = bytes >> rt->page_shift;
	/*
	 * A budget leaves the evictor a gap between its watermarks; below
	 * LM__BUDGET_MIN pages there is none, every fill would wait out the
	 * throttle, and the runtime would crawl (one page: 15 faults in five
	 * seconds, against 63,769 with 16 pages): refused, not half honoured.
	 */
	if (bytes && pages < LM__BUDGET_MIN)
		return -EINVAL;
	if (getpid() != rt->pid)
		return -EOPNOTSUPP;	/* a fork() child has no evictor */
	if (pages) {
		int rc = lm__evict_setup(rt);
		if (rc < 0)
			return rc;
	}
	if (atomic_exchange(&rt->budget, pages) != pages)
		LM__STAT_ADD(rt, budget_changes, 1);
	LM__STAT_SET(rt, budget_bytes, pages << rt->page_shift);
	if (!pages)
		return 0;
	/*
	 * Lowered: wait for the evictor to bring the resident pages under
	 * it, or to give up (over budget), or for ten seconds of an
	 * application filling as fast as the evictor drains: eviction goes
	 * on in the background either way.
	 */
	unsigned gen = atomic_load(&rt->ev_gen);
	atomic_store(&rt->ev_stuck, false);
	kick(rt);
	uint64_t t0 = lm__now_ns();
	while (atomic_load(rt->nres) > (int64_t)pages) {
		if (atomic_load(&rt->ev_gen) - gen >= 2 && atomic_load(&rt->ev_stuck))
			return -ENOSPC;
		if (lm__now_ns() - t0 > 10000000000ull)
			break;
		nanosleep(&(struct timespec){ 0, 200000 }, NULL);
		kick(rt);
	}
	return 0;
}

/* ---- writeback of shared file regions ---------------------------------------- */

struct wb_sel {
	struct batch *b;
	uint64_t next;
};

static int select_dirty(lm__pte *e, uint64_t pgno, void *arg)
{
	struct wb_sel *c = arg;
	struct batch *b = c->b;
	c->next = pgno + 1;
	uint64_t v;
	if (lm__pte_claim(e, LM__ST(LM_PS_DIRTY), LM_PS_EVICTING, &v)) {
		b->pg[b->n] = pgno;
		b->e[b->n] = e;
		b->prev[b->n] = v;
		b->slot[b->n] = UINT64_MAX;
		b->res[b->n] = R_WB;
		b->n++;
	}
	return b->n == EVICT_BATCH;
}

/*
 * Writes the dirty pages of [first, first + count) of a shared region to
 * its file, in batches: each page is claimed, write-protected and copied
 * under ev_lock (try-locked, as the evictor does: a handler holding it
 * may be waiting for these very pages), written, and settles CLEAN.  A
 * write that fails leaves the page DIRTY and is reported.
 */
static int wait_filled(lm__pte *e, uint64_t pgno, void *arg)
{
	(void)pgno;
	(void)arg;
	while (LM_PTE_STATE(atomic_load_explicit(e, memory_order_acquire)) == LM_PS_FILLING)
		sched_yield();
	return 0;
}

static int writeback_region(struct lm_region *r, uint64_t first, uint64_t count, int memfd,
			    struct batch *b, struct lm__filler *f, unsigned char *buf)
{
	struct lm_runtime *rt = r->rt;
	int err = 0;
	unsigned retries = 0;
	/*
	 * A write that faulted a page in has returned to the application a
	 * moment before the handler records the page dirty: let such fills
	 * settle, or this flush would miss what the caller just wrote.
	 */
	lm__pt_walk(&r->pt, first, first + count - 1, wait_filled, NULL);
	uint64_t pg = first, end = first + count;
	while (pg < end) {
		b->n = 0;
		b->r = r;
		struct wb_sel c = { b, end };
		pthread_mutex_lock(&rt->evict_lock);
		if (rt->wp_async) {
			while (pthread_mutex_trylock(&rt->ev_lock) != 0) {
				pthread_mutex_unlock(&rt->evict_lock);
				nanosleep(&(struct timespec){ 0, 50000 }, NULL);
				pthread_mutex_lock(&rt->evict_lock);
			}
			lm__harvest(r, pg, end - 1);
			pthread_mutex_unlock(&rt->ev_lock);
		}
		lm__pt_walk(&r->pt, pg, end - 1, select_dirty, &c);
		if (!b->n) {
			pthread_mutex_unlock(&rt->evict_lock);
			break;
		}
		while (pthread_mutex_trylock(&rt->ev_lock) != 0) {
			/*
			 * Give the pages back while a handler needs them, and
			 * evict_lock too (fork() waits for it while holding
			 * rt->lock, which that handler may be waiting for); then
			 * claim again.
			 */
			give_back(rt, b);
			pthread_mutex_unlock(&rt->evict_lock);
			nanosleep(&(struct timespec){ 0, 50000 }, NULL);
			pthread_mutex_lock(&rt->evict_lock);
			lm__pt_walk(&r->pt, pg, end - 1, select_dirty, &c);
			if (!b->n)
				break;
		}
		if (!b->n) {
			pthread_mutex_unlock(&rt->evict_lock);
			pg = c.next;
			continue;
		}
		copy_for_writeback(rt, b, memfd, buf);
		pthread_mutex_unlock(&rt->ev_lock);
		int rc = write_back(rt, b, f, buf);
		if (rc < 0 && !err)
			err = rc;
		bool again = false;
		for (unsigned i = 0; i < b->n; i++) {
			again |= b->res[i] == R_AGAIN;
			if (b->res[i] == R_BACK && !err)
				err = -EIO;
		}
		settle_batch(rt, b);
		pthread_mutex_unlock(&rt->evict_lock);
		if (again && !err && ++retries < 20000) {
			/* An event was pending (another region's madvise): let it be read, then redo. */
			nanosleep(&(struct timespec){ 0, 50000 }, NULL);
			continue;
		}
		if (again && !err)
			err = -EAGAIN;	/* a second of events pending without a break: say so */
		pg = c.next;
	}
	return err;
}

int lm__writeback(struct lm_region *r, uint64_t first, uint64_t count)
{
	struct lm_runtime *rt = r->rt;
	if (!r->shared)
		return 0;
	/* A fork() child's pages are its own copy: its writes never reach the file. */
	if (getpid() != rt->pid)
		return -EOPNOTSUPP;
	size_t ps = (size_t)rt->page_size;
	struct batch *b = lm__calloc(1, sizeof(*b));
	unsigned char *buf = mmap(NULL, EVICT_BATCH * ps, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int memfd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	int err = !b || buf == MAP_FAILED ? -ENOMEM : memfd < 0 ? -errno : 0;
	/* A ring of the caller's own for the batches' writes: pwrite when there is none. */
	struct lm__filler f;
	bool have_f = false;
	if (!err) {
		have_f = lm__filler_init(&f, rt, rt->opt.io == LM_IO_URING) == 0;
		if (!have_f)
			lm__filler_fini(&f);
	}
	if (!err)
		err = writeback_region(r, first, count, memfd, b, have_f ? &f : NULL, buf);
	/*
	 * Parts the application moved away with mremap are the file's too.
	 * They live as long as r; the list is copied so that no lock is held
	 * while writing (a handler applying a remap holds ev_lock and waits
	 * for rt->lock).
	 */
	pthread_mutex_lock(&rt->lock);
	size_t na = r->naliases;
	struct lm_region **al = na ? lm__malloc(na * sizeof(*al)) : NULL;
	if (al)
		memcpy(al, r->aliases, na * sizeof(*al));
	else
		na = 0;
	pthread_mutex_unlock(&rt->lock);
	for (size_t i = 0; !err && i < na; i++) {
		struct lm_region *a = al[i];
		uint64_t lo = a->src_shift - r->src_shift;
		uint64_t a_first = first > lo ? first - lo : 0;
		if (first + count <= lo || a_first >= a->npages)
			continue;
		uint64_t a_end = first + count - lo < a->npages ? first + count - lo : a->npages;
		err = writeback_region(a, a_first, a_end - a_first, memfd, b, have_f ? &f : NULL,
				       buf);
	}
	lm__free(al);
	if (have_f)
		lm__filler_fini(&f);
	if (!err && fdatasync(r->fd) < 0)
		err = -errno;
	if (memfd >= 0)
		close(memfd);
	if (buf != MAP_FAILED)
		munmap(buf, EVICT_BATCH * ps);
	lm__free(b);
	return err;
}

int lm_region_flush(struct lm_region *r, size_t offset, size_t length)
{
	LM__KEEP_ERRNO;
	if (!r || r->parent)
		return -EINVAL;
	size_t ps = (size_t)r->rt->page_size;
	if ((offset & (ps - 1)) || offset > r->len || length > r->len - offset)
		return -EINVAL;
	if (!length)
		length = r->len - offset;
	if (!length)
		return 0;
	return lm__writeback(r, offset >> r->rt->page_shift,
			     (length + ps - 1) >> r->rt->page_shift);
}
