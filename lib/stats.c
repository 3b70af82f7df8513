/* SPDX-License-Identifier: MIT */
/* Statistics: the live counters, snapshots of them, and their text and JSON renderings. */
#include "internal.h"
#include "gauges.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

uint64_t lm__now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Bucket i holds fills that took < 2^(i+8) ns per fill (256 ns .. 134 ms). */
void lm__stats_latency(struct lm_runtime *rt, uint64_t ns)
{
	unsigned b = 0;
	while (b < LM_LAT_BUCKETS - 1 && ns >= (1ull << (b + 8)))
		b++;
	LM__STAT_ADD(rt, fill_latency[b], 1);
	LM__STAT_ADD(rt, fill_ns_total, ns);
}

/*
 * Reads the live counters: the same page lazymemd reads, so that the
 * two never disagree about anything but the instant.
 */
int lm_stats_get(struct lm_runtime *rt, struct lm_stats *st)
{
	LM__KEEP_ERRNO;
	if (!rt || !st || st->size < offsetof(struct lm_stats, faults_missing) + sizeof(uint64_t))
		return -EINVAL;
	struct lm_stats full;
	memset(&full, 0, sizeof(full));
#define COPY(name, kind, unit, help) full.name = LM__STAT_GET(rt, name);
	LM_STATS_LIST(COPY)
#undef COPY
	for (int i = 0; i < LM_LAT_BUCKETS; i++)
		full.fill_latency[i] = LM__STAT_GET(rt, fill_latency[i]);
	lm__gauges_settle(&full);
	full.page_size = (uint64_t)rt->page_size;
	/* A caller built against an older, smaller struct gets its prefix. */
	uint32_t size = st->size < sizeof(full) ? st->size : (uint32_t)sizeof(full);
	full.size = size;
	full.version = LM_STATS_VERSION;
	memcpy(st, &full, size);
	return 0;
}

struct out {
	char *buf;
	size_t len, need;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	size_t room = o->need < o->len ? o->len - o->need : 0;
	int n = vsnprintf(room ? o->buf + o->need : NULL, room, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->need += (size_t)n;
}

int lm_stats_free(const struct lm_stats *st, struct lm_free *f)
{
	LM__KEEP_ERRNO;
	if (!st || !f || st->size < offsetof(struct lm_stats, page_size) + sizeof(uint64_t))
		return -EINVAL;
	uint64_t ps = st->page_size;
	memset(f, 0, sizeof(*f));
	f->used = st->resident_dirty * ps;
	f->buff_cache = st->resident_clean * ps;
	if (!st->budget_bytes) {
		/* Without a budget nothing bounds it: not 0 free, as if it were full. */
		f->total = f->free = f->available = LM_UNLIMITED;
	} else {
		f->total = st->budget_bytes;
		f->free = f->total > f->used + f->buff_cache ? f->total - f->used - f->buff_cache : 0;
		f->available = f->free + f->buff_cache;
		if (f->available > f->total)
			f->available = f->total;
	}
	/*
	 * The swap file as it is on disk (it grows a megabyte at a time as
	 * eviction needs it), not the most it may grow to; a stats page too
	 * old to say gives the slots in use.
	 */
	f->swap_used = st->swap_slots_used * ps;
	f->swap_total = st->size >= offsetof(struct lm_stats, swap_file_bytes) + sizeof(uint64_t) ?
				st->swap_file_bytes : f->swap_used;
	if (f->swap_total < f->swap_used)
		f->swap_total = f->swap_used;
	f->swap_free = f->swap_total - f->swap_used;
	return 0;
}

int lm_stats_format(const struct lm_stats *st, int format, char *buf, size_t len)
{
	LM__KEEP_ERRNO;
	if (!st || (len && !buf) ||
	    (format != LM_FORMAT_TEXT && format != LM_FORMAT_JSON && format != LM_FORMAT_FREE))
		return -EINVAL;
	/* A caller's older, smaller struct is formatted as far as it goes. */
	if (st->size < offsetof(struct lm_stats, faults_missing) + sizeof(uint64_t))
		return -EINVAL;
	size_t have = st->size < sizeof(*st) ? st->size : sizeof(*st);
	struct out o = { buf, len, 0 };
	if (len)
		buf[0] = '\0';
	if (format == LM_FORMAT_FREE) {
		struct lm_free f;
		int rc = lm_stats_free(st, &f);
		if (rc < 0)
			return rc;
		put(&o, "%-6s %14s %14s %14s %14s %14s\n", "", "total", "used", "free",
		    "buff/cache", "available");
		char t[3][24];
		const uint64_t *v[3] = { &f.total, &f.free, &f.available };
		for (int i = 0; i < 3; i++)
			snprintf(t[i], sizeof(t[i]), *v[i] == LM_UNLIMITED ? "unlimited" : "%llu",
				 (unsigned long long)*v[i]);
		put(&o, "%-6s %14s %14llu %14s %14llu %14s\n", "Mem:", t[0],
		    (unsigned long long)f.used, t[1], (unsigned long long)f.buff_cache, t[2]);
		put(&o, "%-6s %14llu %14llu %14llu\n", "Swap:", (unsigned long long)f.swap_total,
		    (unsigned long long)f.swap_used, (unsigned long long)f.swap_free);
		return (int)o.need;
	}
	const char *sep = "";
	if (format == LM_FORMAT_JSON)
		put(&o, "{\"version\":%u", st->version), sep = ",";
#define FMT(name, kind, unit, help)                                                  \
	if (offsetof(struct lm_stats, name) + sizeof(st->name) > have)               \
		;                                                                    \
	else if (format == LM_FORMAT_JSON)                                           \
		put(&o, "%s\"%s\":%llu", sep, #name, (unsigned long long)st->name);  \
	else if (lm__enum_name(#name, st->name))                                     \
		put(&o, "%-18s %llu (%s)\n", #name, (unsigned long long)st->name,     \
		    lm__enum_name(#name, st->name));                                 \
	else                                                                         \
		put(&o, "%-18s %llu\n", #name, (unsigned long long)st->name);
	LM_STATS_LIST(FMT)
#undef FMT
	if (format == LM_FORMAT_JSON) {
		put(&o, ",\"fill_latency\":[");
		for (int i = 0; i < LM_LAT_BUCKETS; i++)
			put(&o, "%s%llu", i ? "," : "", (unsigned long long)st->fill_latency[i]);
		put(&o, "]}");
	} else {
		for (int i = 0; i < LM_LAT_BUCKETS; i++)
			if (st->fill_latency[i])
				put(&o, "fill_latency_%s_%lluns %llu\n",
				    i < LM_LAT_BUCKETS - 1 ? "lt" : "ge",
				    1ull << (i < LM_LAT_BUCKETS - 1 ? i + 8 : i + 7),
				    (unsigned long long)st->fill_latency[i]);
	}
	if (o.need > (size_t)0x7fffffff)
		return -EOVERFLOW;
	return (int)o.need;
}
