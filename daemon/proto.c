/* SPDX-License-Identifier: MIT */
/* lazymemd's protocol: request parsing and reply formatting, apart from any socket. */
#include "proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/*
 * The parser never trusts its input: any byte may arrive, lines may be
 * cut anywhere, numbers may overflow.  It copies nothing and allocates
 * nothing, so a client cannot make it use more than the line it sent.
 */

struct words {
	const char *w[4];
	size_t n[4];
	int count;
};

static bool blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/* Splits into at most 4 words; false when there are more, or a byte that is not printable ASCII. */
static bool split(const char *s, size_t len, struct words *w)
{
	w->count = 0;
	size_t i = 0;
	while (i < len) {
		while (i < len && blank(s[i]))
			i++;
		if (i == len)
			break;
		if (w->count == 4)
			return false;
		size_t start = i;
		while (i < len && !blank(s[i])) {
			unsigned char c = (unsigned char)s[i];
			if (c < 0x21 || c > 0x7e)
				return false;
			i++;
		}
		w->w[w->count] = s + start;
		w->n[w->count++] = i - start;
	}
	return true;
}

static bool is(const struct words *w, int i, const char *word)
{
	return strlen(word) == w->n[i] && !memcmp(w->w[i], word, w->n[i]);
}

/* A decimal number with an optional K/M/G/T suffix; false on overflow or junk. */
static bool number(const char *s, size_t n, bool suffix, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	size_t i = 0;
	if (!n)
		return false;
	for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (!i)
		return false;
	if (i < n && suffix) {
		unsigned shift;
		switch (s[i]) {
		case 'k': case 'K': shift = 10; break;
		case 'm': case 'M': shift = 20; break;
		case 'g': case 'G': shift = 30; break;
		case 't': case 'T': shift = 40; break;
		default: return false;
		}
		if (v > (UINT64_MAX >> shift))
			return false;
		v <<= shift;
		i++;
	}
	if (i != n || v > max)
		return false;
	*out = v;
	return true;
}

int lmd_parse(const char *line, size_t len, struct lmd_request *req, const char **why)
{
	static const char *const bad = "malformed request (try: help)";
	memset(req, 0, sizeof(*req));
	*why = NULL;
	if (!line || len > LMD_LINE_MAX) {
		*why = "request line too long";
		return -EINVAL;
	}
	struct words w;
	if (!split(line, len, &w) || w.count == 0) {
		*why = bad;
		return -EINVAL;
	}
	uint64_t v;
	if (w.count == 1 && is(&w, 0, "list"))
		req->kind = LMD_REQ_LIST;
	else if (w.count == 1 && is(&w, 0, "json"))
		req->kind = LMD_REQ_JSON;
	else if (w.count == 1 && is(&w, 0, "metrics"))
		req->kind = LMD_REQ_METRICS;
	else if (w.count == 1 && is(&w, 0, "version"))
		req->kind = LMD_REQ_VERSION;
	else if (w.count == 1 && is(&w, 0, "help"))
		req->kind = LMD_REQ_HELP;
	else if (w.count == 2 && is(&w, 0, "stats") && number(w.w[1], w.n[1], false, INT32_MAX, &v) &&
		 v > 0) {
		req->kind = LMD_REQ_STATS;
		req->pid = (pid_t)v;
	} else if (w.count == 3 && is(&w, 0, "budget") &&
		   number(w.w[1], w.n[1], false, INT32_MAX, &v) && v > 0) {
		req->kind = LMD_REQ_BUDGET;
		req->pid = (pid_t)v;
		if (!number(w.w[2], w.n[2], true, UINT64_MAX, &req->bytes)) {
			*why = "budget: BYTES is a number, with an optional K, M, G or T";
			return -EINVAL;
		}
	} else {
		*why = bad;
		return -EINVAL;
	}
	return 0;
}

size_t lmd_escape_label(const char *in, char *out, size_t len)
{
	size_t o = 0;
	for (; in && *in; in++) {
		const char *rep = *in == '\\' ? "\\\\" : *in == '"' ? "\\\"" : *in == '\n' ? "\\n" : NULL;
		size_t k = rep ? 2 : 1;
		if (o + k >= len)
			break;
		if (rep)
			memcpy(out + o, rep, 2);
		else
			out[o] = *in;
		o += k;
	}
	if (len)
		out[o < len ? o : len - 1] = '\0';
	return o;
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

static bool ends_with(const char *s, size_t n, const char *suffix)
{
	size_t k = strlen(suffix);
	return n > k && !memcmp(s + n - k, suffix, k);
}

/*
 * A sample in base units: memory in bytes, time in seconds; the metric's
 * name says the unit, counters end in _total.
 */
static void metric(struct out *o, const struct lmd_proc *procs, size_t n, const char *name,
		   bool counter, const char *unit, const char *help, size_t offset)
{
	bool pages = !strcmp(unit, "pages"), ns = !strcmp(unit, "ns"), bytes = !strcmp(unit, "bytes");
	char full[128];
	size_t nl = strlen(name);
	if (counter && ends_with(name, nl, "_total"))
		nl -= 6;
	if (pages && ends_with(name, nl, "_pages"))
		nl -= 6;
	if (ns && ends_with(name, nl, "_ns"))
		nl -= 3;
	/*
	 * Gauges of pages are memory: bytes.  Counters of pages count
	 * events that happened to pages (evicted, filled, raised SIGBUS):
	 * they stay counts, and say so.
	 */
	bool to_bytes = pages && !counter;
	const char *suffix = to_bytes || (bytes && !ends_with(name, nl, "_bytes")) ? "_bytes" :
			     pages ? "_pages" : ns ? "_seconds" : "";
	snprintf(full, sizeof(full), "lazymem_%.*s%s%s", (int)nl, name, suffix,
		 counter ? "_total" : "");
	put(o, "# HELP %s %s.\n# TYPE %s %s\n", full, help, full, counter ? "counter" : "gauge");
	for (size_t i = 0; i < n; i++) {
		const struct lm_stats *st = procs[i].st;
		if (st->size < offset + sizeof(uint64_t))
			continue;
		uint64_t v;
		memcpy(&v, (const char *)st + offset, sizeof(v));
		char label[256];
		lmd_escape_label(procs[i].name ? procs[i].name : "", label, sizeof(label));
		if (ns)
			put(o, "%s{pid=\"%d\",name=\"%s\"} %.9f\n", full, (int)procs[i].pid, label,
			    (double)v / 1e9);
		else
			put(o, "%s{pid=\"%d\",name=\"%s\"} %llu\n", full, (int)procs[i].pid, label,
			    (unsigned long long)(to_bytes ? v * (st->page_size ? st->page_size : 4096) :
						 v));
	}
}

/* The arguments of a formatter checked, and its output started empty. */
static int begin(const struct lmd_proc *procs, size_t n, char *buf, size_t len, struct out *o)
{
	if ((n && !procs) || (len && !buf))
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!procs[i].st)
			return -EINVAL;
	*o = (struct out){ buf, len, 0 };
	if (len)
		buf[0] = '\0';
	return 0;
}

int lmd_format_metrics(const struct lmd_proc *procs, size_t n, char *buf, size_t len)
{
	struct out o;
	if (begin(procs, n, buf, len, &o) < 0)
		return -EINVAL;
#define METRIC(name, kind, unit, help) \
	metric(&o, procs, n, #name, !strcmp(#kind, "COUNTER"), unit, help, \
	       offsetof(struct lm_stats, name));
	LM_STATS_LIST(METRIC)
#undef METRIC
	if (o.need > 0x7fffffff)
		return -EOVERFLOW;
	return (int)o.need;
}

/* A JSON string: quotes, backslashes and control bytes escaped; other bytes as they are. */
static void json_string(struct out *o, const char *s)
{
	put(o, "\"");
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			put(o, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			put(o, "\\u%04x", c);
		else
			put(o, "%c", c);
	}
	put(o, "\"");
}

int lmd_format_json(const struct lmd_proc *procs, size_t n, char *buf, size_t len)
{
	struct out o;
	if (begin(procs, n, buf, len, &o) < 0)
		return -EINVAL;
	put(&o, "{\"processes\":[");
	for (size_t i = 0; i < n; i++) {
		const struct lm_stats *st = procs[i].st;
		put(&o, "%s{\"pid\":%d,\"uid\":%u,\"name\":", i ? "," : "", (int)procs[i].pid,
		    (unsigned)procs[i].uid);
		json_string(&o, procs[i].name ? procs[i].name : "");
		put(&o, ",\"stats\":{");
		const char *sep = "";
		/* Fields past the end of an older client's struct are left out, not invented. */
#define FIELD(name, kind, unit, help)                                                       \
		if (offsetof(struct lm_stats, name) + sizeof(uint64_t) <= st->size) {       \
			put(&o, "%s\"%s\":%llu", sep, #name, (unsigned long long)st->name); \
			sep = ",";                                                          \
		}
		LM_STATS_LIST(FIELD)
#undef FIELD
		put(&o, "%s\"fill_latency\":[", sep);
		for (int b = 0; b < LM_LAT_BUCKETS; b++)
			put(&o, "%s%llu", b ? "," : "", (unsigned long long)st->fill_latency[b]);
		put(&o, "]}}");
	}
	put(&o, "]}");
	if (o.need > 0x7fffffff)
		return -EOVERFLOW;
	return (int)o.need;
}
