/* SPDX-License-Identifier: MIT */
/* Statistics: the live counters, snapshots of them, and their text and JSON renderings. */
#include "internal.h"

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

static void sum_metadata(struct lm_runtime *rt, uint64_t *meta, uint64_t *resident)
{
	pthread_mutex_lock(&rt->lock);
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	uint64_t m = sizeof(*rt), res = 0;
	if (t)
		m += sizeof(*t) + t->n * sizeof(t->e[0]);
	for (struct lm_region *r = rt->regions; r; r = r->next) {
		m += sizeof(*r) + atomic_load_explicit(&r->pt.bytes, memory_order_relaxed);
		int64_t n = atomic_load_explicit(&r->resident, memory_order_relaxed);
		res += n > 0 ? (uint64_t)n : 0;
	}
	pthread_mutex_unlock(&rt->lock);
	*meta = m;
	*resident = res;
}

int lm_stats_get(struct lm_runtime *rt, struct lm_stats *st)
{
	LM__KEEP_ERRNO;
	if (!rt || !st || st->size < offsetof(struct lm_stats, faults_missing) + sizeof(uint64_t))
		return -EINVAL;
	struct lm_stats full;
	memset(&full, 0, sizeof(full));
#define COPY(name, kind, unit, help) \
	full.name = atomic_load_explicit(&rt->stats.name, memory_order_relaxed);
	LM_STATS_LIST(COPY)
#undef COPY
	for (int i = 0; i < LM_LAT_BUCKETS; i++)
		full.fill_latency[i] = atomic_load_explicit(&rt->stats.fill_latency[i],
							    memory_order_relaxed);
	sum_metadata(rt, &full.metadata_bytes, &full.resident_pages);
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

int lm_stats_format(const struct lm_stats *st, int format, char *buf, size_t len)
{
	LM__KEEP_ERRNO;
	if (!st || (len && !buf) || (format != LM_FORMAT_TEXT && format != LM_FORMAT_JSON))
		return -EINVAL;
	/* A caller's older, smaller struct is formatted as far as it goes. */
	if (st->size < offsetof(struct lm_stats, faults_missing) + sizeof(uint64_t))
		return -EINVAL;
	size_t have = st->size < sizeof(*st) ? st->size : sizeof(*st);
	struct out o = { buf, len, 0 };
	if (len)
		buf[0] = '\0';
	const char *sep = "";
	if (format == LM_FORMAT_JSON)
		put(&o, "{\"version\":%u", st->version), sep = ",";
#define FMT(name, kind, unit, help)                                                  \
	if (offsetof(struct lm_stats, name) + sizeof(st->name) > have)               \
		;                                                                    \
	else if (format == LM_FORMAT_JSON)                                           \
		put(&o, "%s\"%s\":%llu", sep, #name, (unsigned long long)st->name);  \
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
