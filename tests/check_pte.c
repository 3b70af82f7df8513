/* SPDX-License-Identifier: MIT */
/* Unit tests of the page-state machine (lib/pte.c, compiled in), without a userfaultfd: transitions, counters, slots, drops, claimers. */
#include "internal.h"

#include "testutil.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PS 4096u
#define NPAGES 256u
#define ALL_STATES ((1u << LM_PS_NSTATES) - 1)

/*
 * The state machine as docs/DESIGN.md draws it, written out again here
 * (not read from pte.c): the test holds the code to the document.
 */
static const char *const spec[] = {
	"MISSING FILLING",
	"FILLING MISSING", "FILLING CLEAN", "FILLING DIRTY", "FILLING SWAPPED", "FILLING POISON",
	"CLEAN FILLING", "CLEAN EVICTING", "CLEAN DIRTY", "CLEAN MISSING",
	"DIRTY FILLING", "DIRTY EVICTING", "DIRTY MISSING",
	"SWAPPED FILLING", "SWAPPED MISSING",
	"EVICTING MISSING", "EVICTING CLEAN", "EVICTING DIRTY", "EVICTING SWAPPED",
	"POISON FILLING", "POISON MISSING",
};

static const char *const names[LM_PS_NSTATES] = {
	[LM_PS_MISSING] = "MISSING", [LM_PS_FILLING] = "FILLING", [LM_PS_CLEAN] = "CLEAN",
	[LM_PS_DIRTY] = "DIRTY", [LM_PS_SWAPPED] = "SWAPPED", [LM_PS_EVICTING] = "EVICTING",
	[LM_PS_POISON] = "POISON",
};

static bool in_spec(unsigned from, unsigned to)
{
	char want[32];
	snprintf(want, sizeof(want), "%s %s", names[from], names[to]);
	for (size_t i = 0; i < LM__ARRAY_SIZE(spec); i++)
		if (!strcmp(spec[i], want))
			return true;
	return false;
}

static bool held(unsigned s)
{
	return s == LM_PS_FILLING || s == LM_PS_EVICTING;
}

/*
 * A runtime and a region shell: what the module touches is the counters,
 * the swap file (slots), the read epoch (snapshot judgement) and the
 * userfaultfd for wake-ups, which is -1 here (a wake fails, harmlessly).
 */
struct fixture {
	struct lm_runtime rt;
	struct lm__stats stats;
	_Atomic int64_t nres, ndirty;
	struct lm_region r, r2;
};

static struct fixture *fx;

static void setup(void)
{
	fx = calloc(1, sizeof(*fx));
	ck_assert_ptr_nonnull(fx);
	struct lm_runtime *rt = &fx->rt;
	lm_options_init(&rt->opt);
	rt->page_size = PS;
	rt->page_shift = 12;
	rt->ufd = -1;
	rt->stats = &fx->stats;
	rt->nres = &fx->nres;
	rt->ndirty = &fx->ndirty;
	lm__epoch_init(&rt->rcu);
	const char *dir = getenv("TMPDIR");
	ck_assert_int_eq(lm__swap_open(&rt->swap, dir && *dir ? dir : "/tmp", 64 * PS, PS), 0);
	lm__store_init_swap(&rt->swap_store, rt, &rt->swap);
	rt->swap_ok = true;
	struct lm_region *rs[] = { &fx->r, &fx->r2 };
	for (int i = 0; i < 2; i++) {
		rs[i]->rt = rt;
		rs[i]->start = (uintptr_t)0x100000000ull * (uintptr_t)(i + 1);
		rs[i]->npages = NPAGES;
		rs[i]->len = NPAGES * PS;
		ck_assert_int_eq(lm__pt_init(&rs[i]->pt, NPAGES), 0);
	}
}

static void teardown(void)
{
	lm__pt_destroy(&fx->r.pt);
	lm__pt_destroy(&fx->r2.pt);
	lm__swap_close(&fx->rt.swap);
	lm__epoch_fini(&fx->rt.rcu);
	free(fx);
}

static lm__pte *entry(struct lm_region *r, uint64_t pgno)
{
	lm__pte *e = lm__pt_get(&r->pt, pgno, true);
	ck_assert_ptr_nonnull(e);
	return e;
}

/* Puts a page in state s the legal way, from MISSING, with the counters following. */
static uint64_t bring_to(struct lm_region *r, lm__pte *e, uint64_t pgno, unsigned s)
{
	uint64_t prev;
	switch (s) {
	case LM_PS_MISSING:
		return LM_PS_MISSING;
	case LM_PS_FILLING:
		ck_assert(lm__pte_claim(e, LM__ST(LM_PS_MISSING), LM_PS_FILLING, &prev));
		return prev;
	case LM_PS_EVICTING:
		bring_to(r, e, pgno, LM_PS_CLEAN);
		ck_assert(lm__pte_claim(e, LM__ST(LM_PS_CLEAN), LM_PS_EVICTING, &prev));
		return prev;
	default:
		ck_assert(lm__pte_claim(e, LM__ST(LM_PS_MISSING), LM_PS_FILLING, &prev));
		ck_assert_int_ge(lm__pte_settle(r, e, pgno, prev, s), 0);
		return s;
	}
}

static struct lm_stats counters(void)
{
	struct lm_stats st;
	memset(&st, 0, sizeof(st));
	st.resident_pages = (uint64_t)atomic_load(&fx->nres);
	st.resident_dirty = (uint64_t)atomic_load(&fx->ndirty);
	st.swapped_pages = atomic_load(&fx->stats.swapped_pages);
	return st;
}

/* The table in the code is the table in the document, pair by pair. */
START_TEST(table_matches_the_design)
{
	for (unsigned f = 0; f < LM_PS_NSTATES; f++)
		for (unsigned t = 0; t < LM_PS_NSTATES; t++)
			ck_assert_msg(lm__pte_legal(f, t) == in_spec(f, t), "%s -> %s: code %d, design %d",
				      names[f], names[t], lm__pte_legal(f, t), in_spec(f, t));
	ck_assert(!lm__pte_legal(LM_PS_NSTATES, LM_PS_MISSING));
	ck_assert(!lm__pte_legal(LM_PS_MISSING, 15));
}
END_TEST

/*
 * Every legal transition is made by the operation that owns it, and the
 * entry and the counters end where the transition says.  _i is the
 * pair: from = _i / NSTATES, to = _i % NSTATES.
 */
START_TEST(every_legal_transition)
{
	unsigned from = (unsigned)_i / LM_PS_NSTATES, to = (unsigned)_i % LM_PS_NSTATES;
	if (!in_spec(from, to))
		return;	/* (the loop covers every pair; illegal ones are the next test's) */
	struct lm_region *r = &fx->r;
	lm__pte *e = entry(r, 7);
	uint64_t prev = bring_to(r, e, 7, from), got;
	if (to == LM_PS_FILLING || to == LM_PS_EVICTING) {
		ck_assert(lm__pte_claim(e, ALL_STATES, to, &got));
		ck_assert_uint_eq(LM_PTE_STATE(got), from);
	} else if (held(from)) {
		ck_assert_int_ge(lm__pte_settle(r, e, 7, prev, to), 0);
	} else if (to == LM_PS_DIRTY) {
		ck_assert_int_eq(lm__pte_mark_written(r, e), 1);
	} else {
		ck_assert_uint_eq(to, LM_PS_MISSING);
		ck_assert_int_ge(lm__pte_forget(r, e, 7), 0);
	}
	ck_assert_uint_eq(LM_PTE_STATE(atomic_load(e)), to);
	/* Counters count settled states; a held page counts as what it was. */
	unsigned now = held(to) ? from : to;
	struct lm_stats st = counters();
	ck_assert_uint_eq(st.resident_pages, now == LM_PS_CLEAN || now == LM_PS_DIRTY);
	ck_assert_uint_eq(st.resident_dirty, now == LM_PS_DIRTY);
	ck_assert_uint_eq(st.swapped_pages, now == LM_PS_SWAPPED);
}
END_TEST

/*
 * Every illegal transition is refused by every operation that could ask
 * for it, and the entry stays as it was.  A settle asked of a page not
 * held, or to a state it cannot go to, is a caller's bug: the debug
 * build stops there (SIGABRT, see the suite), a release build refuses.
 */
START_TEST(every_illegal_transition)
{
	unsigned from = (unsigned)_i / LM_PS_NSTATES, to = (unsigned)_i % LM_PS_NSTATES;
	if (in_spec(from, to))
		return;
	struct lm_region *r = &fx->r;
	lm__pte *e = entry(r, 9);
	uint64_t prev = bring_to(r, e, 9, from), got;
	uint64_t before = atomic_load(e);
	if (to == LM_PS_FILLING || to == LM_PS_EVICTING) {
		ck_assert(!lm__pte_claim(e, ALL_STATES, to, &got));
		ck_assert_uint_eq(atomic_load(e), before);
		return;
	}
	/*
	 * Between settled states only mark-written (CLEAN -> DIRTY) and
	 * forget (-> MISSING) exist, both legal; any other change asked of a
	 * settled page is a settle of a page not held.
	 */
#ifdef LM_DEBUG
	/* The suite expects this test to die with SIGABRT: tell Check when it does not. */
	lm__pte_settle(r, e, 9, held(from) ? prev : before, to);
	ck_abort_msg("settle %s -> %s did not stop the debug build", names[from], names[to]);
#else
	ck_assert_int_eq(lm__pte_settle(r, e, 9, held(from) ? prev : before, to), -EINVAL);
	ck_assert_uint_eq(atomic_load(e), before);
#endif
}
END_TEST

/* A settle may not carry the flags of a held entry into a settled one. */
START_TEST(settle_rejects_held_flags)
{
	struct lm_region *r = &fx->r;
	lm__pte *e = entry(r, 3);
	uint64_t prev = bring_to(r, e, 3, LM_PS_FILLING);
	ck_assert_int_eq(lm__pte_settle(r, e, 3, prev, LM_PS_CLEAN | LM_PTE_WAITERS), -EINVAL);
	ck_assert_uint_eq(LM_PTE_STATE(atomic_load(e)), LM_PS_FILLING);
	ck_assert_int_ge(lm__pte_settle(r, e, 3, prev, LM_PS_CLEAN), 0);
}
END_TEST

/* A swapped page's slot follows the page: kept as the swap cache by a clean refill, freed once written, dropped or poisoned. */
START_TEST(slot_follows_the_page)
{
	struct lm_region *r = &fx->r;
	struct lm__swap *sw = &fx->rt.swap;
	uint64_t slot[3];
	ck_assert_uint_eq(lm__swap_alloc(sw, slot, 3), 3);
	uint64_t prev;
	for (unsigned i = 0; i < 3; i++) {
		lm__pte *e = entry(r, i);
		/* Evicted: CLEAN -> EVICTING -> SWAPPED(slot). */
		uint64_t p = bring_to(r, e, i, LM_PS_EVICTING);
		ck_assert_int_ge(lm__pte_settle(r, e, i, p, LM_PS_SWAPPED | LM_PTE_WITH_SLOT(slot[i])),
				 0);
	}
	ck_assert_uint_eq(counters().swapped_pages, 3);
	ck_assert_uint_eq(lm__swap_used(sw), 3);

	/* Page 0 refilled write-protected: CLEAN, and its slot is the swap cache. */
	lm__pte *e0 = entry(r, 0);
	ck_assert(lm__pte_claim(e0, LM__ST(LM_PS_SWAPPED), LM_PS_FILLING, &prev));
	uint64_t clean = LM_PS_CLEAN | (prev & ~((1ull << LM_PTE_AUX_SHIFT) - 1));
	/* The fill counts ahead, before its install wakes the faulting thread. */
	lm__pte_count(r, prev, clean);
	ck_assert_uint_eq(counters().resident_pages, 1);
	ck_assert_int_ge(lm__pte_settle_counted(r, e0, 0, prev, clean, clean, LM__SETTLE_INSTALLED),
			 0);
	ck_assert_uint_eq(lm__swap_used(sw), 3);
	/* ...then written (a scan saw it): the slot is stale and goes. */
	ck_assert_int_eq(lm__pte_mark_written(r, e0), 1);
	ck_assert_uint_eq(lm__swap_used(sw), 2);
	ck_assert_uint_eq(atomic_load(e0), LM_PS_DIRTY | LM_PTE_REF);

	/* Page 1: a fill that fails puts it back, and the slot stays its own (counted ahead or not). */
	lm__pte *e1 = entry(r, 1);
	ck_assert(lm__pte_claim(e1, LM__ST(LM_PS_SWAPPED), LM_PS_FILLING, &prev));
	lm__pte_count(r, prev, LM_PS_DIRTY);
	ck_assert_int_ge(lm__pte_settle_counted(r, e1, 1, prev, LM_PS_DIRTY, prev, 0), 0);
	ck_assert_uint_eq(lm__swap_used(sw), 2);
	ck_assert_uint_eq(LM_PTE_STATE(atomic_load(e1)), LM_PS_SWAPPED);
	/* ...then its only copy is unreadable: poisoned, and the slot freed. */
	ck_assert(lm__pte_claim(e1, LM__ST(LM_PS_SWAPPED), LM_PS_FILLING, &prev));
	ck_assert_int_ge(lm__pte_settle(r, e1, 1, prev, LM_PS_POISON), 0);
	ck_assert_uint_eq(lm__swap_used(sw), 1);

	/* Page 2 dropped by the application while swapped: MISSING, slot freed. */
	ck_assert_int_eq(lm__pte_forget(r, entry(r, 2), 2), 0);
	ck_assert_uint_eq(lm__swap_used(sw), 0);
	struct lm_stats st = counters();
	ck_assert_uint_eq(st.swapped_pages, 0);
	ck_assert_uint_eq(st.resident_pages, 1);
	ck_assert_uint_eq(st.resident_dirty, 1);
}
END_TEST

/*
 * The one rule for a drop: the application's drop of a held page only
 * marks it; the holder's settle makes it MISSING (the counters and slot
 * following what it was), once, unless the holder installed the page
 * just now.  A settled page is dropped at once.
 */
START_TEST(drop_is_judged_by_the_settle)
{
	struct lm_region *r = &fx->r;
	/* Evictor's page dropped meanwhile: whatever it meant to settle, MISSING. */
	lm__pte *e = entry(r, 10);
	uint64_t prev = bring_to(r, e, 10, LM_PS_EVICTING);
	ck_assert_uint_eq(counters().resident_pages, 1);
	ck_assert_int_eq(lm__pte_forget(r, e, 10), 0);
	ck_assert_uint_eq(LM_PTE_STATE(atomic_load(e)), LM_PS_EVICTING);
	ck_assert(atomic_load(e) & LM_PTE_DROP);
	ck_assert_uint_eq(counters().resident_pages, 1);	/* not judged yet */
	int rc = lm__pte_settle(r, e, 10, prev, LM_PS_CLEAN);
	ck_assert_int_ge(rc, 0);
	ck_assert(rc & LM__SETTLED_DROPPED);
	ck_assert_uint_eq(atomic_load(e), LM_PS_MISSING);
	ck_assert_uint_eq(counters().resident_pages, 0);

	/* A fill that installed the page keeps it resident. */
	e = entry(r, 11);
	prev = bring_to(r, e, 11, LM_PS_FILLING);
	lm__pte_forget(r, e, 11);
	lm__pte_count(r, prev, LM_PS_DIRTY);
	rc = lm__pte_settle_counted(r, e, 11, prev, LM_PS_DIRTY, LM_PS_DIRTY, LM__SETTLE_INSTALLED);
	ck_assert(rc & LM__SETTLED_DROPPED);
	ck_assert_uint_eq(atomic_load(e), LM_PS_DIRTY);
	ck_assert_uint_eq(counters().resident_dirty, 1);

	/* A holder that found the page gone settles it as a drop, without a mark. */
	e = entry(r, 12);
	prev = bring_to(r, e, 12, LM_PS_DIRTY);
	ck_assert(lm__pte_claim(e, LM__ST(LM_PS_DIRTY), LM_PS_FILLING, &prev));
	rc = lm__pte_settle_counted(r, e, 12, prev, prev, prev, LM__SETTLE_GONE);
	ck_assert(rc & LM__SETTLED_DROPPED);
	ck_assert_uint_eq(atomic_load(e), LM_PS_MISSING);
	ck_assert_uint_eq(counters().resident_dirty, 1);	/* page 11's only */

	/* A settled resident page is dropped at once, and said to be. */
	e = entry(r, 13);
	bring_to(r, e, 13, LM_PS_CLEAN);
	ck_assert_int_eq(lm__pte_forget(r, e, 13), 1);
	ck_assert_int_eq(lm__pte_forget(r, e, 13), 0);	/* idempotent */
	ck_assert_uint_eq(counters().resident_pages, 1);
}
END_TEST

/* A write seen while a page is held is applied by the settle: a clean page settles dirty. */
START_TEST(written_while_held_settles_dirty)
{
	struct lm_region *r = &fx->r;
	lm__pte *e = entry(r, 20);
	uint64_t prev = bring_to(r, e, 20, LM_PS_EVICTING);
	ck_assert_int_eq(lm__pte_mark_written(r, e), 1);
	ck_assert_int_eq(lm__pte_mark_written(r, e), 0);	/* once */
	ck_assert_int_ge(lm__pte_settle(r, e, 20, prev, LM_PS_CLEAN), 0);
	ck_assert_uint_eq(atomic_load(e), LM_PS_DIRTY | LM_PTE_REF);
	ck_assert_uint_eq(counters().resident_dirty, 1);
	/* Settled to something else than CLEAN, the mark changes nothing. */
	e = entry(r, 21);
	prev = bring_to(r, e, 21, LM_PS_EVICTING);
	lm__pte_mark_written(r, e);
	ck_assert_int_ge(lm__pte_settle(r, e, 21, prev, LM_PS_MISSING), 0);
	ck_assert_uint_eq(atomic_load(e), LM_PS_MISSING);
	ck_assert_uint_eq(counters().resident_pages, 1);
}
END_TEST

/* mremap: a page changes entry and region, its state, slot and counters with it; a held one is waited for. */
START_TEST(move_carries_the_page)
{
	struct lm_region *a = &fx->r, *b = &fx->r2;
	uint64_t slot;
	ck_assert_uint_eq(lm__swap_alloc(&fx->rt.swap, &slot, 1), 1);
	lm__pte *e = entry(a, 30);
	uint64_t prev = bring_to(a, e, 30, LM_PS_EVICTING);
	lm__pte *d = entry(b, 0);
	ck_assert_int_eq(lm__pte_move(a, e, b, d), -EBUSY);
	ck_assert_int_ge(lm__pte_settle(a, e, 30, prev, LM_PS_SWAPPED | LM_PTE_WITH_SLOT(slot)), 0);
	ck_assert_int_eq(lm__pte_move(a, e, b, d), 1);
	ck_assert_uint_eq(atomic_load(e), LM_PS_MISSING);
	ck_assert_uint_eq(atomic_load(d), LM_PS_SWAPPED | LM_PTE_WITH_SLOT(slot));
	ck_assert_int_eq(atomic_load(&a->swapped), 0);
	ck_assert_int_eq(atomic_load(&b->swapped), 1);
	ck_assert_uint_eq(lm__swap_used(&fx->rt.swap), 1);	/* the slot moved, not freed */
	ck_assert_int_eq(lm__pte_move(a, e, b, entry(b, 1)), 0);	/* nothing left to move */
	/* No entry to move to (out of memory): lost as if unmapped, its slot freed. */
	ck_assert_int_eq(lm__pte_move(b, d, a, NULL), -ENOMEM);
	ck_assert_uint_eq(lm__swap_used(&fx->rt.swap), 0);
	ck_assert_uint_eq(counters().swapped_pages, 0);
}
END_TEST

/* fork(): the child has no holders, so held pages settle back to what they were when claimed. */
START_TEST(fork_child_resets_held_pages)
{
	struct lm_region *r = &fx->r;
	lm__pte *f = entry(r, 40), *v = entry(r, 41), *w = entry(r, 42);
	bring_to(r, f, 40, LM_PS_FILLING);
	bring_to(r, v, 41, LM_PS_EVICTING);
	/* A swapped page being read back: the child reads its slot again, not the source. */
	uint64_t slot, prev;
	ck_assert_uint_eq(lm__swap_alloc(&fx->rt.swap, &slot, 1), 1);
	prev = bring_to(r, w, 42, LM_PS_EVICTING);
	ck_assert_int_ge(lm__pte_settle(r, w, 42, prev, LM_PS_SWAPPED | LM_PTE_WITH_SLOT(slot)), 0);
	ck_assert(lm__pte_claim(w, LM__ST(LM_PS_SWAPPED), LM_PS_FILLING, &prev));
	lm__pte_fork_reset(f);
	lm__pte_fork_reset(v);
	lm__pte_fork_reset(w);
	ck_assert_uint_eq(atomic_load(f), LM_PS_MISSING);
	ck_assert_uint_eq(atomic_load(v), LM_PS_CLEAN);
	ck_assert_uint_eq(atomic_load(w), LM_PS_SWAPPED | LM_PTE_WITH_SLOT(slot));
}
END_TEST

/* The table goes with its region: slots freed, the runtime's totals lose what it counted. */
START_TEST(release_table_returns_everything)
{
	struct lm_region *r = &fx->r;
	uint64_t slot;
	ck_assert_uint_eq(lm__swap_alloc(&fx->rt.swap, &slot, 1), 1);
	bring_to(r, entry(r, 50), 50, LM_PS_DIRTY);
	bring_to(r, entry(r, 51), 51, LM_PS_CLEAN);
	lm__pte *e = entry(r, 52);
	uint64_t prev = bring_to(r, e, 52, LM_PS_EVICTING);
	lm__pte_settle(r, e, 52, prev, LM_PS_SWAPPED | LM_PTE_WITH_SLOT(slot));
	struct lm_stats st = counters();
	ck_assert_uint_eq(st.resident_pages, 2);
	ck_assert_uint_eq(st.swapped_pages, 1);
	lm__pte_release_table(r);
	st = counters();
	ck_assert_uint_eq(st.resident_pages, 0);
	ck_assert_uint_eq(st.resident_dirty, 0);
	ck_assert_uint_eq(st.swapped_pages, 0);
	ck_assert_uint_eq(lm__swap_used(&fx->rt.swap), 0);
}
END_TEST

/*
 * Concurrent claimers of one page: exactly one holds it at a time, the
 * others park on it (and are woken by the settle after their parking)
 * or find it settled and claim it in turn; the counters end exact.
 */
#define CLAIMERS 8
#define ROUNDS 20000

static _Atomic int inside;
static _Atomic long claims, parks, wakes;

static void *claimer(void *arg)
{
	lm__pte *e = arg;
	struct lm_region *r = &fx->r;
	for (int i = 0; i < ROUNDS; i++) {
		uint64_t prev;
		int c = lm__pte_claim_or_park(e, LM__ST(LM_PS_MISSING) | LM__ST(LM_PS_CLEAN) |
						      LM__ST(LM_PS_DIRTY), true, &prev);
		if (c == LM__PTE_PARKED) {
			atomic_fetch_add(&parks, 1);
			continue;
		}
		if (c != LM__PTE_CLAIMED) {
			atomic_store(&inside, -100);	/* no other answer is possible here */
			continue;
		}
		if (atomic_fetch_add(&inside, 1) != 0)
			atomic_store(&inside, -100);
		atomic_fetch_add(&claims, 1);
		unsigned next = (unsigned)i % 3 == 0 ? LM_PS_MISSING :
				(unsigned)i % 3 == 1 ? LM_PS_CLEAN : LM_PS_DIRTY;
		atomic_fetch_sub(&inside, 1);
		int rc = lm__pte_settle(r, e, 0, prev, next);
		if (rc < 0)
			atomic_store(&inside, -100);
		if (rc & LM__SETTLED_WOKE)
			atomic_fetch_add(&wakes, 1);
	}
	return NULL;
}

START_TEST(concurrent_claimers)
{
	lm__pte *e = entry(&fx->r, 0);
	pthread_t th[CLAIMERS];
	for (int i = 0; i < CLAIMERS; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, claimer, e), 0);
	for (int i = 0; i < CLAIMERS; i++)
		pthread_join(th[i], NULL);
	ck_assert_int_eq(atomic_load(&inside), 0);
	ck_assert_int_eq(atomic_load(&claims) + atomic_load(&parks), (long)CLAIMERS * ROUNDS);
	/* Every settle that found a parked fault woke it; there were no more wakes than parks. */
	ck_assert_int_le(atomic_load(&wakes), atomic_load(&parks));
	if (atomic_load(&parks))
		ck_assert_int_gt(atomic_load(&wakes), 0);
	uint64_t v = atomic_load(e);
	struct lm_stats st = counters();
	ck_assert_uint_eq(st.resident_pages, LM_PTE_STATE(v) != LM_PS_MISSING);
	ck_assert_uint_eq(st.resident_dirty, LM_PTE_STATE(v) == LM_PS_DIRTY);
	printf("claimers: %ld claims, %ld parked, %ld woken\n", atomic_load(&claims),
	       atomic_load(&parks), atomic_load(&wakes));
}
END_TEST

static Suite *pte_suite(void)
{
	Suite *s = suite_create("pte");
	TCase *tc = tcase_create("pte");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, table_matches_the_design);
	tcase_add_loop_test(tc, every_legal_transition, 0, LM_PS_NSTATES * LM_PS_NSTATES);
	tcase_add_test(tc, slot_follows_the_page);
	tcase_add_test(tc, drop_is_judged_by_the_settle);
	tcase_add_test(tc, written_while_held_settles_dirty);
	tcase_add_test(tc, move_carries_the_page);
	tcase_add_test(tc, fork_child_resets_held_pages);
	tcase_add_test(tc, release_table_returns_everything);
	tcase_add_test(tc, concurrent_claimers);
	suite_add_tcase(s, tc);

	TCase *bad = tcase_create("illegal");
	tcase_add_checked_fixture(bad, setup, teardown);
#ifdef LM_DEBUG
	/*
	 * The debug build asserts: each illegal settle must stop the
	 * process.  Illegal claims are refused before any settle is tried,
	 * so those pairs end in the test's own abort (also SIGABRT): each
	 * pair is made a separate test so one cannot hide another.
	 */
	for (unsigned i = 0; i < LM_PS_NSTATES * LM_PS_NSTATES; i++) {
		unsigned from = i / LM_PS_NSTATES, to = i % LM_PS_NSTATES;
		if (in_spec(from, to))
			continue;
		if (to == LM_PS_FILLING || to == LM_PS_EVICTING)
			tcase_add_loop_test(bad, every_illegal_transition, (int)i, (int)i + 1);
		else
			tcase_add_loop_test_raise_signal(bad, every_illegal_transition, SIGABRT,
							 (int)i, (int)i + 1);
	}
	tcase_add_test_raise_signal(bad, settle_rejects_held_flags, SIGABRT);
#else
	tcase_add_loop_test(bad, every_illegal_transition, 0, LM_PS_NSTATES * LM_PS_NSTATES);
	tcase_add_test(bad, settle_rejects_held_flags);
#endif
	suite_add_tcase(s, bad);
	return s;
}

int main(void)
{
	return lmt_run(pte_suite());
}
