/* SPDX-License-Identifier: MIT */
/* The address space: the region table (which region owns an address), region memory, advice lookup, and the application's munmap, mremap and madvise applied to it. */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * The region table is an array of extents (address ranges and the region
 * they belong to), sorted by address and never overlapping.  A region
 * starts as one extent; the application's munmap punches holes into it,
 * and a region the application unmapped entirely has none: lookups then
 * never find it, and a new mapping at the same address (perhaps a new
 * region) is never taken for it.  The table is never modified in place:
 * a writer (holding rt->lock) builds a new array, publishes it, waits out
 * the readers of the old one and frees it, so a fault handler's lookup is
 * a binary search with no lock at all.
 */

/*
 * Publishes a new table: the current one without the extents of drop,
 * with [cut_start, cut_end) cut out of every extent, plus add.  Called
 * with rt->lock held.  The old table is freed only once no reader can
 * see it.
 */
int lm__table_rebuild(struct lm_runtime *rt, struct lm_region *drop, uintptr_t cut_start,
		      uintptr_t cut_end, const struct lm__extent *add)
{
	struct lm__rtable *old = atomic_load_explicit(&rt->table, memory_order_relaxed);
	size_t n = old ? old->n : 0;
	/*
	 * A cut can split one extent in two; add brings one more.  The table
	 * before the current one is no longer read by anyone: reusing it
	 * saves a large allocation (and its page faults) per change.
	 */
	struct lm__rtable *t = rt->spare;
	if (t && t->cap >= n + 2) {
		rt->spare = NULL;
	} else {
		size_t cap = (n + 2) * 2 < 16 ? 16 : (n + 2) * 2;
		t = lm__malloc(sizeof(*t) + cap * sizeof(t->e[0]));
		if (!t)
			return -ENOMEM;
		t->cap = cap;
	}
	size_t k = 0;
	bool placed = !add;
	for (size_t i = 0; i < n; i++) {
		struct lm__extent e = old->e[i];
		if (e.r == drop)
			continue;
		struct lm__extent piece[2];
		int np = 0;
		if (cut_end > e.start && cut_start < e.end) {
			if (e.start < cut_start)
				piece[np++] = (struct lm__extent){ e.start, cut_start, e.r };
			if (cut_end < e.end)
				piece[np++] = (struct lm__extent){ cut_end, e.end, e.r };
		} else {
			piece[np++] = e;
		}
		for (int j = 0; j < np; j++) {
			if (!placed && add->start < piece[j].start) {
				t->e[k++] = *add;
				placed = true;
			}
			t->e[k++] = piece[j];
		}
	}
	if (!placed)
		t->e[k++] = *add;
	t->n = k;
	/* What lookups' binary search relies on: sorted, non-empty, never overlapping. */
	for (size_t i = 0; i < k; i++)
		LM__ASSERT(t->e[i].start < t->e[i].end && (!i || t->e[i - 1].end <= t->e[i].start));
	atomic_store_explicit(&rt->table, t, memory_order_release);
	lm__synchronize(rt);
	lm__free(rt->spare);
	rt->spare = old;
	return 0;
}

/*
 * Under rt->lock a table change must not fail halfway through a destroy
 * or an event: retry the allocation rather than leave a freed region
 * published.
 */
void lm__table_rebuild_must(struct lm_runtime *rt, struct lm_region *drop,
			    uintptr_t cut_start, uintptr_t cut_end, const struct lm__extent *add)
{
	while (lm__table_rebuild(rt, drop, cut_start, cut_end, add) < 0)
		usleep(1000);
}

/* The extent of the table holding addr, or NULL. */
static const struct lm__extent *find_extent(struct lm_runtime *rt, uintptr_t addr)
{
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	size_t lo = 0, hi = t ? t->n : 0;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct lm__extent *e = &t->e[mid];
		if (addr < e->start)
			hi = mid;
		else if (addr >= e->end)
			lo = mid + 1;
		else
			return e;
	}
	return NULL;
}

struct lm_region *lm__region_find(struct lm_runtime *rt, uintptr_t addr)
{
	const struct lm__extent *e = find_extent(rt, addr);
	return e ? e->r : NULL;
}

uint64_t lm__region_extent_pages(struct lm_region *r, uint64_t pgno)
{
	uintptr_t addr = r->start + (pgno << r->rt->page_shift);
	const struct lm__extent *e = find_extent(r->rt, addr);
	return e && e->r == r ? (e->end - addr) >> r->rt->page_shift : 0;
}

bool lm__region_live(struct lm_runtime *rt, const struct lm_region *r)
{
	/* Pointers only: r is not read before it is found. */
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	for (size_t i = 0; t && i < t->n; i++)
		if (t->e[i].r == r)
			return true;
	return false;
}

/* The extents of r within [start, end), copied out (caller frees); NULL if none or no memory. */
struct lm__extent *lm__region_extents(struct lm_runtime *rt, struct lm_region *r, uintptr_t start,
				      uintptr_t end, size_t *count)
{
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	size_t n = 0;
	for (size_t i = 0; t && i < t->n; i++)
		n += t->e[i].r == r && t->e[i].start < end && start < t->e[i].end;
	*count = 0;
	if (!n)
		return NULL;
	struct lm__extent *out = lm__malloc(n * sizeof(*out));
	if (!out)
		return NULL;
	for (size_t i = 0; i < t->n; i++) {
		struct lm__extent e = t->e[i];
		if (e.r != r || e.start >= end || start >= e.end)
			continue;
		out[(*count)++] = (struct lm__extent){ e.start > start ? e.start : start,
						       e.end < end ? e.end : end, r };
	}
	return out;
}

/* True when [start, start + len) overlaps a live extent of rt; called in a read section. */
bool lm__overlaps_region(struct lm_runtime *rt, uintptr_t start, size_t len)
{
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	for (size_t i = 0; t && i < t->n; i++)
		if (start < t->e[i].end && t->e[i].start < start + len)
			return true;
	return false;
}

/* The list of every region of a runtime, for stats and close; guarded by rt->lock. */
void lm__region_list_add(struct lm_runtime *rt, struct lm_region *r)
{
	r->prev = NULL;
	r->next = rt->regions;
	if (rt->regions)
		rt->regions->prev = r;
	rt->regions = r;
}

void lm__region_list_del(struct lm_runtime *rt, struct lm_region *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else if (rt->regions == r)
		rt->regions = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->next = r->prev = NULL;
}

struct lm_region *lm__region_alloc(struct lm_runtime *rt, size_t len)
{
	struct lm_region *r = lm__calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->rt = rt;
	r->len = len;
	r->npages = len >> rt->page_shift;
	r->fd = -1;
	r->spill_fd = -1;
	pthread_mutex_init(&r->snap_lock, NULL);
	r->id = atomic_fetch_add(&rt->next_region_id, 1) + 1;
	lm__pt_init(&r->pt, r->npages);
	r->pt.total = &rt->stats->metadata_bytes;
	LM__STAT_ADD(rt, metadata_bytes, sizeof(*r));
	for (int i = 0; i < LM__ADV_SLOTS; i++) {
		atomic_init(&r->adv[i].first, 1);
		atomic_init(&r->adv[i].last, 0);
	}
	atomic_init(&r->ra_win, 0);
	atomic_init(&r->ra_low, UINT64_MAX);
	atomic_init(&r->ra_dwin, 0);
	atomic_init(&r->ra_cursor, 0);
	atomic_init(&r->ra_limit, 0);
	atomic_init(&r->ra_flags, 0);
	return r;
}

void lm__region_release(struct lm_region *r)
{
	/* Its slots go back to the swap file, its pages out of the budget. */
	lm__pte_release_table(r);
	lm__pt_destroy(&r->pt);
	LM__STAT_SUB(r->rt, metadata_bytes, sizeof(*r));
	if (r->fd >= 0 && !r->parent)
		close(r->fd);
	if (r->spill_fd >= 0)
		close(r->spill_fd);
	pthread_mutex_destroy(&r->snap_lock);
	if (!r->parent)
		lm__image_free(r->image);
	lm__free(r->aliases);
	lm__free(r);
}

int lm__region_advice_at(struct lm_region *r, uint64_t pgno)
{
	/* Newest first: later advice on the same range overrides earlier. */
	unsigned next = atomic_load_explicit(&r->adv_next, memory_order_relaxed);
	for (unsigned k = 1; k <= LM__ADV_SLOTS; k++) {
		unsigned i = (next - k) % LM__ADV_SLOTS;
		uint64_t first = atomic_load_explicit(&r->adv[i].first, memory_order_relaxed);
		uint64_t last = atomic_load_explicit(&r->adv[i].last, memory_order_relaxed);
		if (first <= pgno && pgno <= last)
			return atomic_load_explicit(&r->adv[i].advice, memory_order_relaxed);
	}
	return atomic_load_explicit(&r->advice, memory_order_relaxed);
}

void lm__region_set_advice(struct lm_region *r, uint64_t first, uint64_t last, int advice)
{
	if (first == 0 && last == r->npages - 1) {
		for (int i = 0; i < LM__ADV_SLOTS; i++) {
			atomic_store(&r->adv[i].first, 1);
			atomic_store(&r->adv[i].last, 0);
		}
		atomic_store(&r->advice, advice);
		return;
	}
	/* A few ranges are remembered; the oldest is forgotten first. */
	unsigned i = atomic_fetch_add(&r->adv_next, 1) % LM__ADV_SLOTS;
	atomic_store(&r->adv[i].last, 0);
	atomic_store(&r->adv[i].first, 1);
	atomic_store(&r->adv[i].advice, advice);
	atomic_store(&r->adv[i].first, first);
	atomic_store(&r->adv[i].last, last);
}

struct forget_ctx {
	struct lm_region *r;
	uint64_t dropped;
};

static int forget_one(lm__pte *e, uint64_t pgno, void *arg)
{
	struct forget_ctx *c = arg;
	c->dropped += (uint64_t)lm__pte_forget(c->r, e, pgno);
	return 0;
}

/*
 * The application dropped (madvise) or unmapped [start, end) of r: the
 * pages' contents are the source's again.  Idempotent.
 */
void lm__region_forget(struct lm_region *r, uintptr_t start, uintptr_t end, bool dropped)
{
	if (start < r->start)
		start = r->start;
	if (end > r->start + r->len)
		end = r->start + r->len;
	if (start >= end)
		return;
	uint64_t first = (start - r->start) >> r->rt->page_shift;
	uint64_t last = (end - 1 - r->start) >> r->rt->page_shift;
	/* A stream running here is over: what it would fill next is gone or unwanted. */
	atomic_store_explicit(&r->ra_cursor, 0, memory_order_relaxed);
	atomic_store_explicit(&r->ra_limit, 0, memory_order_relaxed);
	int idx = lm__read_lock(r->rt);
	struct forget_ctx c = { r, 0 };
	lm__pt_walk(&r->pt, first, last, forget_one, &c);
	lm__read_unlock(r->rt, idx);
	if (dropped)
		LM__STAT_ADD(r->rt, dontneed_pages, c.dropped);
}

/*
 * The application unmapped [start, end): every region's pages there are
 * gone, and the range leaves the table, so nothing there is taken for a
 * region any more.  Called by the event handler, outside read sections.
 */
void lm__region_unmapped(struct lm_runtime *rt, uintptr_t start, uintptr_t end)
{
	pthread_mutex_lock(&rt->lock);
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_relaxed);
	bool any = false;
	for (size_t i = 0; t && i < t->n; i++) {
		const struct lm__extent *e = &t->e[i];
		if (e->start < end && start < e->end) {
			lm__region_forget(e->r, e->start > start ? e->start : start,
					  e->end < end ? e->end : end, false);
			any = true;
		}
	}
	if (any)
		lm__table_rebuild_must(rt, NULL, start, end, NULL);
	pthread_mutex_unlock(&rt->lock);
}

struct move_ctx {
	struct lm_region *to, *from;
	uint64_t first;
};

/*
 * Hands one page's state, and its swap slot, to the alias region.  A page
 * held meanwhile is waited for: one the evictor claimed after
 * lm__wait_settled has not moved out yet (that needs ev_lock, which the
 * caller holds), and the kernel has just moved it to the alias, so the
 * evictor gives it back when it cannot take the lock; a fill that claimed
 * it after the wait fails its install at the old address and puts it
 * back (a swapped page keeps its slot), or installed before the move and
 * settles it resident.
 */
static int move_state(lm__pte *e, uint64_t pgno, void *arg)
{
	struct move_ctx *c = arg;
	for (;;) {
		unsigned s = LM_PTE_STATE(atomic_load(e));
		if (s == LM_PS_MISSING)
			return 0;
		if (s == LM_PS_FILLING || s == LM_PS_EVICTING) {
			sched_yield();
			continue;
		}
		/* No destination entry (out of memory): the page is lost to the runtime, as if unmapped. */
		lm__pte *d = lm__pt_get(&c->to->pt, pgno - c->first, true);
		if (lm__pte_move(c->from, e, c->to, d) != -EBUSY)
			return 0;
	}
}

/*
 * mremap moved [from, from + len) to `to`.  A whole region simply moves
 * (its page table is indexed by page number, not address).  A part moved
 * away becomes an internal alias region over the same source, so faults
 * at its new address still get the right contents; it is destroyed (and
 * unregistered) with the region it came from.
 */
int lm__region_remap(struct lm_runtime *rt, uintptr_t from, uintptr_t to, size_t len)
{
	pthread_mutex_lock(&rt->lock);
	int idx = lm__read_lock(rt);
	struct lm_region *r = lm__region_find(rt, from);
	lm__read_unlock(rt, idx);
	int rc = 0;
	if (!r)
		goto out;
	if (from == r->start && len >= r->len) {
		/*
		 * Readers may hold r while its start changes; a lookup racing
		 * the move can miss it, and that fault is simply replayed.
		 */
		struct lm__extent ext = { to, to + r->len, r };
		r->start = to;
		lm__table_rebuild_must(rt, r, 0, 0, &ext);
		goto out;
	}
	size_t part = r->start + r->len - from < len ? r->start + r->len - from : len;
	/*
	 * Every alias hangs off the region the application created, even
	 * one split from an alias: the root's list is what destroy frees and
	 * what writeback walks (src_shift is absolute, relative to the root's
	 * source).  Nested lists went unflushed (found by review).
	 */
	struct lm_region *root = r;
	while (root->parent)
		root = root->parent;
	/* A snapshot covers the region's pages where they were: a part moved away breaks it. */
	lm__views_break(root, -EBUSY);
	struct lm_region *a = lm__region_alloc(rt, part);
	struct lm_region **al = lm__realloc(root->aliases, (root->naliases + 1) * sizeof(*al));
	if (!a || !al) {
		lm__free(a);
		if (al)
			root->aliases = al;
		rc = -ENOMEM;
		goto out;
	}
	root->aliases = al;
	a->parent = root;
	a->start = to;
	a->kind = r->kind;
	a->buf = r->buf;
	a->buflen = r->buflen;
	a->fd = r->fd;
	a->image = r->image;
	a->shared = r->shared;
	a->foff = r->foff;
	atomic_init(&a->fsize, atomic_load(&r->fsize));
	a->src_shift = r->src_shift + ((from - r->start) >> rt->page_shift);
	lm__store_init_source(&a->src, a);
	root->aliases[root->naliases++] = a;
	/*
	 * The moved pages keep their contents, so they keep their states.  A
	 * page whose fill woke the application (which then called mremap) may
	 * not be settled yet: its owner settles it right after the install.
	 */
	struct move_ctx mc = { a, r, (from - r->start) >> rt->page_shift };
	lm__pte_wait_settled(r, mc.first, part >> rt->page_shift);
	lm__pt_walk(&r->pt, mc.first, mc.first + (part >> rt->page_shift) - 1, move_state, &mc);
	lm__region_forget(r, from, from + part, false);
	struct lm__extent ext = { to, to + part, a };
	lm__table_rebuild_must(rt, NULL, from, from + part, &ext);
	lm__region_list_add(rt, a);
	pthread_mutex_unlock(&rt->lock);
	return 0;
out:
	pthread_mutex_unlock(&rt->lock);
	return rc;
}

