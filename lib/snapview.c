/* SPDX-License-Identifier: MIT */
/* Snapshot views: which pages each live snapshot still lacks, where its copies went, and breaking a view that cannot stay exact. */
#include "internal.h"

#include <errno.h>

/*
 * The views are the part of a snapshot the layers below the snapshot
 * engine need: the page-state machine breaks the views that lacked a
 * page the application dropped (pte.c), the fill and copy-on-write paths
 * ask which pages still need preserving.  Lock free and
 * async-signal-safe: they are asked on the signal-mode fault path.
 */

uint64_t lm__view_get(struct lm__snapview *v, uint64_t pgno)
{
	lm__pte *m = lm__pt_get(&v->map, pgno, false);
	return m ? atomic_load_explicit(m, memory_order_acquire) : 0;
}

bool lm__view_set(struct lm__snapview *v, uint64_t pgno, uint64_t val)
{
	lm__pte *m = lm__pt_get(&v->map, pgno, true);
	if (!m)
		return false;
	/* The first location recorded is the view's for good: a page is preserved once. */
	uint64_t zero = 0;
	atomic_compare_exchange_strong_explicit(m, &zero, val, memory_order_acq_rel,
						memory_order_acquire);
	return true;
}

void lm__view_break(struct lm__snapview *v, int err)
{
	int zero = 0;
	if (atomic_compare_exchange_strong(&v->err, &zero, err))
		LM__STAT_ADD(v->rt, snapshot_errors, 1);
}

bool lm__view_lacks(struct lm__snapview *v, uint64_t pgno)
{
	return !atomic_load_explicit(&v->err, memory_order_relaxed) && !lm__view_get(v, pgno);
}

bool lm__snap_needs(const struct lm__snapset *set, uint64_t pgno)
{
	for (unsigned i = 0; i < set->n; i++)
		if (lm__view_lacks(set->v[i], pgno))
			return true;
	return false;
}

void lm__snap_lost(const struct lm__snapset *set, uint64_t pgno)
{
	for (unsigned i = 0; i < set->n; i++)
		if (lm__view_lacks(set->v[i], pgno))
			lm__view_break(set->v[i], -EIO);
}

void lm__views_break(struct lm_region *r, int err)
{
	/* In a read section: a release frees the set only after the readers of it left. */
	int idx = lm__read_lock(r->rt);
	const struct lm__snapset *set = atomic_load(&r->snaps);
	for (unsigned i = 0; set && i < set->n; i++)
		lm__view_break(set->v[i], err);
	lm__read_unlock(r->rt, idx);
}
