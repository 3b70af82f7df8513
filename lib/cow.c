/* SPDX-License-Identifier: MIT */
/* Copy-on-write: preserving a page for the live snapshots that lack it before its contents change, a block at a time. */
#include "internal.h"

#include <errno.h>
#include <unistd.h>

/*
 * The engine under snapshot.c's rule (docs/DESIGN.md, invariant 6): a
 * page's contents change only after every live snapshot that lacks them
 * has a copy.  The fill path calls lm__snap_preserve before it installs
 * a written page, the first-write path lm__snap_cow; the snapshot calls
 * (dont-need advice, rollback, the saver) use the same functions.
 * Everything here is async-signal-safe: signal mode runs it in a SIGBUS
 * handler, with the filler's arrays as scratch, never the stack.
 */

static inline uintptr_t addr_of(struct lm_region *r, uint64_t pgno)
{
	return r->start + (pgno << r->rt->page_shift);
}

/* Sets entry val for pgno, or breaks the snapshot (err, or out of memory). */
static void record(struct lm__snapview *s, uint64_t pgno, uint64_t val, int err)
{
	if (err)
		lm__view_break(s, err);
	else if (!lm__view_set(s, pgno, val))
		lm__view_break(s, -ENOMEM);
}

void lm__snap_preserve(struct lm__filler *f, struct lm_region *r, const struct lm__snapset *set,
		       const uint64_t *pg, const unsigned char *const *data, unsigned n)
{
	/* A bit per page below: batches of 64. */
	for (; n > 64; n -= 64, pg += 64, data += 64)
		lm__snap_preserve(f, r, set, pg, data, 64);
	struct lm__snap_scratch *sc = f->snap;
	struct lm_runtime *rt = r->rt;
	size_t ps = (size_t)rt->page_size;
	/* Pages some snapshot lacks; of those with contents, the ones a snapshot not being saved lacks. */
	uint64_t need = 0, spill = 0;
	for (unsigned i = 0; i < n; i++)
		for (unsigned x = 0; x < set->n; x++)
			if (lm__view_lacks(set->v[x], pg[i])) {
				need |= 1ull << i;
				if (data[i] && !atomic_load(&set->v[x]->stream))
					spill |= 1ull << i;
			}
	if (!need)
		return;
	/* Copies take consecutive pages of the spill file: one pwritev. */
	uint64_t k0 = 0;
	int err = 0;
	if (spill) {
		struct iovec *iov = sc->iov;
		unsigned k = 0;
		for (unsigned i = 0; i < n; i++)
			if (spill & (1ull << i))
				iov[k++] = (struct iovec){ (void *)data[i], ps };
		k0 = atomic_fetch_add(&r->spill_next, k);
		err = lm__pwritev_all(r->spill_fd, iov, k, k0 * ps);
		LM__STAT_ADD(rt, snapshot_spilled, k);
	}
	for (unsigned x = 0; x < set->n; x++) {
		struct lm__snapview *s = set->v[x];
		struct lm__image_writer *w = atomic_load(&s->stream);
		uint64_t *pgs = sc->pgs;
		const unsigned char **ptr = sc->ptr;
		int64_t *idx = sc->idx;
		unsigned m = 0;
		int werr = 0;
		/* Being saved: its copies go into the image, in one write. */
		for (unsigned i = 0; w && i < n; i++)
			if (data[i] && lm__view_lacks(s, pg[i])) {
				pgs[m] = pg[i];
				ptr[m++] = data[i];
			}
		if (m)
			werr = lm__image_add_run(w, pgs, ptr, m, idx);
		for (unsigned i = 0, j = 0; i < n; i++) {
			if (!lm__view_lacks(s, pg[i]))
				continue;
			if (!data[i])
				record(s, pg[i], MAP_SOURCE, 0);
			else if (w) {
				record(s, pg[i],
				       idx[j] < 0 ? MAP_MAKE(MAP_ZERO, 0) : MAP_MAKE(MAP_IMAGE, idx[j]), werr);
				j++;
			} else
				record(s, pg[i],
				       MAP_MAKE(MAP_SPILL,
						k0 + (uint64_t)__builtin_popcountll(spill & ((1ull << i) - 1))),
				       err);
		}
	}
	LM__STAT_ADD(rt, snapshot_preserved, __builtin_popcountll(need));
}

/* A held resident page loses its protection: it settles DIRTY, its writes unseen from now on. */
void lm__cow_release_unprotected(struct lm_region *r, lm__pte *e, uint64_t pgno, uint64_t prev)
{
	lm__pte_settle(r, e, pgno, prev, (uint64_t)LM_PS_DIRTY | (prev & LM_PTE_REF));
}

/*
 * Lifts the protection of the pages of mask (bits of [first, first + n)),
 * one ioctl per run: each is a TLB shootdown, and one per page cost the
 * saver more than its writes.  Returns the pages whose protection went.
 */
uint64_t lm__cow_unprotect(struct lm_region *r, uint64_t first, unsigned n, uint64_t mask)
{
	size_t ps = (size_t)r->rt->page_size;
	uint64_t lifted = 0;
	for (unsigned i = 0; i < n;) {
		if (!(mask & (1ull << i))) {
			i++;
			continue;
		}
		unsigned j = i + 1;
		while (j < n && (mask & (1ull << j)))
			j++;
		if (lm__uffd_writeprotect(r->rt->ufd, addr_of(r, first + i), (size_t)(j - i) * ps,
					  false) == 0)
			lifted |= (j - i == 64 ? ~0ull : ((1ull << (j - i)) - 1)) << i;
		i = j;
	}
	return lifted;
}

/*
 * Reads resident pages [first, first + n) through /proc/self/mem, which
 * fails on a page that is not there instead of faulting: a thread that
 * holds the page must never fault on it.  Returns the pages read.
 */
unsigned lm__cow_read_resident(struct lm_region *r, uint64_t first, unsigned n, unsigned char *buf)
{
	size_t ps = (size_t)r->rt->page_size, want = (size_t)n * ps, got = 0;
	while (got < want) {
		ssize_t k = pread(r->rt->snap_memfd, buf + got, want - got,
				  (off_t)(addr_of(r, first) + got));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		got += (size_t)k;
	}
	return (unsigned)(got / ps);
}

int lm__snap_cow(struct lm__filler *f, struct lm_region *r, const struct lm__snapset *set,
		 uint64_t pgno, uint64_t prev)
{
	/* The caller holds the written page: only a holder may preserve and unprotect it. */
	LM__ASSERT(LM_PTE_STATE(atomic_load(lm__pt_get(&r->pt, pgno, false))) == LM_PS_FILLING);
	struct lm_runtime *rt = r->rt;
	size_t ps = (size_t)rt->page_size;
	unsigned k = (unsigned)(f->stage_len / ps);
	if (k > LM__SNAP_BATCH)
		k = LM__SNAP_BATCH;
	/*
	 * The aligned block around the page, like a readahead window: its
	 * neighbours that some snapshot lacks are held and preserved now,
	 * in the same round trip, and a sequential writer takes one fault
	 * per block.  Pages in transition are simply left out.
	 */
	uint64_t base = pgno - pgno % k, end = base + k < r->npages ? base + k : r->npages;
	unsigned cnt = (unsigned)(end - base), me = (unsigned)(pgno - base);
	lm__pte **ents = f->ents;
	uint64_t *pv = f->prev;
	uint64_t held = 1ull << me;
	ents[me] = lm__pt_get(&r->pt, pgno, false);
	pv[me] = prev;
	for (unsigned i = 0; i < cnt; i++) {
		if (i == me)
			continue;
		lm__pte *e = lm__pt_get(&r->pt, base + i, false);
		if (!e || !lm__snap_needs(set, base + i) ||
		    !lm__pte_claim(e, LM__ST(LM_PS_CLEAN) | LM__ST(LM_PS_DIRTY), LM_PS_FILLING, &pv[i]))
			continue;
		ents[i] = e;
		held |= 1ull << i;
	}
	/*
	 * Contents: a clean page of an immutable source without a swap slot
	 * is its source's (no copy at all); the others are read in runs.
	 */
	bool immut = lm__source_immutable(r);
	const unsigned char **data = f->snap->data;
	uint64_t *pgs = f->snap->pg;
	uint64_t failed = 0;
	for (unsigned i = 0; i < cnt;) {
		if (!(held & (1ull << i)) ||
		    (immut && LM_PTE_STATE(pv[i]) == LM_PS_CLEAN && !LM_PTE_HAS_SLOT(pv[i]))) {
			data[i] = NULL;
			i++;
			continue;
		}
		unsigned j = i + 1;
		while (j < cnt && (held & (1ull << j)) &&
		       !(immut && LM_PTE_STATE(pv[j]) == LM_PS_CLEAN && !LM_PTE_HAS_SLOT(pv[j])))
			j++;
		unsigned got = lm__cow_read_resident(r, base + i, j - i, f->stage + (size_t)i * ps);
		for (unsigned x = i; x < j; x++) {
			data[x] = f->stage + (size_t)x * ps;
			if (x >= i + got)
				failed |= 1ull << x;
		}
		i = j;
	}
	/*
	 * A page that could not be read is not there: the application dropped
	 * it itself.  It settles as gone, which judges the drop (pte.c): the
	 * snapshots that lacked contents its source does not have break,
	 * never wrong.  The written page too: its write replays as a missing
	 * fault.
	 */
	unsigned n = 0;
	for (unsigned i = 0; i < cnt; i++) {
		if (!(held & (1ull << i)))
			continue;
		if (failed & (1ull << i)) {
			lm__pte_settle_counted(r, ents[i], base + i, pv[i], pv[i], pv[i],
					       LM__SETTLE_GONE);
			held &= ~(1ull << i);
			continue;
		}
		pgs[n] = base + i;
		data[n] = data[i];
		n++;
	}
	lm__snap_preserve(f, r, set, pgs, data, n);
	uint64_t lifted = lm__cow_unprotect(r, base, cnt, held);
	/* A neighbour still protected (the ioctl failed) is DIRTY all the same: its next write lifts it. */
	for (unsigned x = 0; x < cnt; x++)
		if ((held & (1ull << x)) && x != me)
			lm__cow_release_unprotected(r, ents[x], base + x, pv[x]);
	if (!(held & (1ull << me)))
		return -1;
	return (int)((lifted >> me) & 1);
}
