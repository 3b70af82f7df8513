/* SPDX-License-Identifier: MIT */
/* The gauges of a stats page made consistent: one rule for lm_stats_get and lazymemd. */
#ifndef LM_GAUGES_H
#define LM_GAUGES_H

#include <stdint.h>
#include <string.h>

#include "lazymem.h"

/*
 * The page's gauges are signed (a page can leave before its arrival is
 * counted: see struct lm__stats) and read at different instants, so a
 * reader settles them: negative counts are zero, dirty pages are at most
 * the resident ones, and clean is what remains.
 */
static inline void lm__gauges_settle(struct lm_stats *st)
{
	if ((int64_t)st->resident_pages < 0)
		st->resident_pages = 0;
	if ((int64_t)st->resident_dirty < 0)
		st->resident_dirty = 0;
	if ((int64_t)st->swapped_pages < 0)
		st->swapped_pages = 0;
	if (st->resident_dirty > st->resident_pages)
		st->resident_dirty = st->resident_pages;
	st->resident_clean = st->resident_pages - st->resident_dirty;
}

/*
 * The names of the enums in the statistics (mode, uffd_origin): one table
 * for lm_stats_format's text and lazymemd's info metrics.  NULL for a
 * field that is not an enum.
 */
static inline const char *lm__enum_name(const char *field, uint64_t v)
{
	static const char *const modes[] = { "default", "thread", "signal" };
	static const char *const origins[] = { "none", "dev", "syscall", "user" };
	if (!strcmp(field, "mode"))
		return v < 3 ? modes[v] : "unknown";
	if (!strcmp(field, "uffd_origin"))
		return v < 4 ? origins[v] : "unknown";
	return NULL;
}

#endif
