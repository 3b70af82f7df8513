/* SPDX-License-Identifier: MIT */
/* lazymemd's protocol: request parsing and reply formatting, apart from any socket. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE	/* memmem */
#endif
#include "proto.h"
#include "gauges.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
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

int lmd_parse_size(const char *s, uint64_t *out)
{
	return number(s, strlen(s), true, UINT64_MAX, out) ? 0 : -EINVAL;
}

void lmd_size_str(uint64_t bytes, char *buf, size_t len)
{
	static const char units[] = "BKMGTPE";
	double v = (double)bytes;
	int u = 0;
	while (v >= 1024 && u < 6) {
		v /= 1024;
		u++;
	}
	if (!u)
		snprintf(buf, len, "%lluB", (unsigned long long)bytes);
	else
		snprintf(buf, len, v < 10 ? "%.1f%ci" : "%.0f%ci", v, units[u]);
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
	else if (w.count == 1 && is(&w, 0, "stats"))
		req->kind = LMD_REQ_STATS;
	else if (w.count == 1 && is(&w, 0, "metrics"))
		req->kind = LMD_REQ_METRICS;
	else if (w.count == 1 && is(&w, 0, "version"))
		req->kind = LMD_REQ_VERSION;
	else if (w.count == 1 && is(&w, 0, "help"))
		req->kind = LMD_REQ_HELP;
	else if (w.count == 1 && is(&w, 0, "pressure"))
		req->kind = LMD_REQ_PRESSURE;
	else if (w.count == 2 && (is(&w, 0, "stats") || is(&w, 0, "json")) &&
		 number(w.w[1], w.n[1], false, INT32_MAX, &v) && v > 0) {
		req->kind = is(&w, 0, "stats") ? LMD_REQ_STATS : LMD_REQ_JSON;
		req->pid = (pid_t)v;
	} else if (w.count == 3 && is(&w, 0, "hello")) {
		if (w.n[1] > LMD_VERSION_MAX || w.n[2] > LMD_NAME_MAX) {
			*why = "hello: version or name too long";
			return -EINVAL;
		}
		req->kind = LMD_REQ_HELLO;
		req->version = w.w[1];
		req->version_len = w.n[1];
		req->name = w.w[2];
		req->name_len = w.n[2];
	} else if (w.count == 3 && (is(&w, 0, "budget") || is(&w, 0, "min")) &&
		   number(w.w[1], w.n[1], false, INT32_MAX, &v) && v > 0) {
		req->kind = is(&w, 0, "budget") ? LMD_REQ_BUDGET : LMD_REQ_MIN;
		req->pid = (pid_t)v;
		if (!number(w.w[2], w.n[2], true, UINT64_MAX, &req->bytes)) {
			*why = req->kind == LMD_REQ_BUDGET ?
				       "budget: BYTES is a number, with an optional K, M, G or T" :
				       "min: BYTES is a number, with an optional K, M, G or T";
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


#define LABEL 320	/* {pid="..",name=".." with the name escaped: at most 32 bytes, doubled */

/*
 * Replies are made of many short pieces: numbers and names go in with
 * memcpy and a hand-rolled conversion, printf only where a format earns
 * its cost.  The output stays NUL-terminated however far it is cut.
 */
static void put_mem(struct lmd_out *o, const char *s, size_t k)
{
	if (o->need < o->len) {
		size_t room = o->len - o->need - 1, c = k < room ? k : room;
		memcpy(o->buf + o->need, s, c);
		o->buf[o->need + c] = '\0';
	}
	o->need += k;
}

#define put_lit(o, s) put_mem(o, s, sizeof(s) - 1)

static void put_str(struct lmd_out *o, const char *s)
{
	put_mem(o, s, strlen(s));
}

static void put_u64(struct lmd_out *o, uint64_t v)
{
	char d[20];
	int i = 20;
	do {
		d[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put_mem(o, d + i, (size_t)(20 - i));
}

/* Nanoseconds as seconds, exactly: integer part, a point, nine digits. */
static void put_seconds(struct lmd_out *o, uint64_t ns)
{
	put_u64(o, ns / 1000000000u);
	char f[10] = ".";
	uint64_t r = ns % 1000000000u;
	for (int i = 9; i >= 1; i--, r /= 10)
		f[i] = (char)('0' + r % 10);
	put_mem(o, f, 10);
}

void lmd_put(struct lmd_out *o, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	size_t room = o->need < o->len ? o->len - o->need : 0;
	int n = vsnprintf(room ? o->buf + o->need : NULL, room, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->need += (size_t)n;
}

/* The field at offset of a stats struct, when its size covers it (an older runtime's may not). */
static bool field_at(const struct lm_stats *st, size_t offset, uint64_t *v)
{
	if (st->size < offset + sizeof(uint64_t))
		return false;
	memcpy(v, (const char *)st + offset, sizeof(*v));
	return true;
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
static void metric(struct lmd_out *o, const struct lmd_proc *procs, size_t n, char (*labels)[LABEL],
		   const char *name, bool counter, const char *unit, const char *help, size_t offset)
{
	bool pages = !strcmp(unit, "pages"), ns = !strcmp(unit, "ns"), bytes = !strcmp(unit, "bytes");
	char full[128];
	size_t nl = strlen(name);
	/* A gauge may not end in _total: "swap_slots_total" is a maximum. */
	bool max = !counter && ends_with(name, nl, "_total");
	if (ends_with(name, nl, "_total"))
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
	/* A name that already says bytes (snapshot_bytes_written) is not told twice. */
	bool says_bytes = memmem(name, nl, "bytes", 5) != NULL;
	const char *suffix = to_bytes || (bytes && !says_bytes) ? "_bytes" :
			     pages ? "_pages" : ns ? "_seconds" : "";
	snprintf(full, sizeof(full), "lazymem_%.*s%s%s", (int)nl, name, suffix,
		 counter ? "_total" : max ? "_max" : "");
	lmd_put(o, "# HELP %s %s.\n# TYPE %s %s\n", full, help, full, counter ? "counter" : "gauge");
	for (size_t i = 0; i < n; i++) {
		const struct lm_stats *st = procs[i].st;
		uint64_t v;
		if (!field_at(st, offset, &v))
			continue;
		put_str(o, full);
		put_str(o, labels[i]);
		put_lit(o, "} ");
		if (ns)
			put_seconds(o, v);
		else
			put_u64(o, to_bytes ? v * (st->page_size ? st->page_size : 4096) : v);
		put_lit(o, "\n");
	}
}

/*
 * An enum is an info metric: one sample of 1 per process, its value a
 * label ("mode" for mode, "origin" for uffd_origin), which PromQL can
 * match on; a number would need the header to read.
 */
static void info_metric(struct lmd_out *o, const struct lmd_proc *procs, size_t n,
			char (*labels)[LABEL], const char *name, const char *help, size_t offset)
{
	const char *label = !strcmp(name, "uffd_origin") ? "origin" : name;
	lmd_put(o, "# HELP lazymem_%s_info %s, as a label.\n# TYPE lazymem_%s_info gauge\n", name, help,
	    name);
	for (size_t i = 0; i < n; i++) {
		uint64_t v;
		if (!field_at(procs[i].st, offset, &v))
			continue;
		lmd_put(o, "lazymem_%s_info%s,%s=\"%s\"} 1\n", name, labels[i], label, lm__enum_name(name, v));
	}
}

/* Each process's labels, escaped once per reply: {pid="..",name=".." without the brace's end. */
static char (*make_labels(const struct lmd_proc *procs, size_t n))[LABEL]
{
	char (*labels)[LABEL] = malloc((n ? n : 1) * sizeof(*labels));
	for (size_t i = 0; labels && i < n; i++) {
		char esc[LABEL - 32];
		lmd_escape_label(procs[i].name ? procs[i].name : "", esc, sizeof(esc));
		snprintf(labels[i], LABEL, "{pid=\"%d\",name=\"%s\"", (int)procs[i].pid, esc);
	}
	return labels;
}

/*
 * One process's series of a Prometheus histogram: nb bucket counts (each
 * its own, made cumulative here) with their le labels, and the sum in ns.
 */
static void series(struct lmd_out *o, const char *name, const char *label,
		   const char *const *le, const uint64_t *count, int nb, uint64_t sum_ns)
{
	uint64_t total = 0;
	for (int b = 0; b < nb; b++) {
		total += count[b];
		put_str(o, name);
		put_lit(o, "_bucket");
		put_str(o, label);
		put_str(o, le[b]);
		put_u64(o, total);
		put_lit(o, "\n");
	}
	put_str(o, name);
	put_lit(o, "_sum");
	put_str(o, label);
	put_lit(o, "} ");
	put_seconds(o, sum_ns);
	put_lit(o, "\n");
	put_str(o, name);
	put_lit(o, "_count");
	put_str(o, label);
	put_lit(o, "} ");
	put_u64(o, total);
	put_lit(o, "\n");
}

/*
 * The fill latencies as a Prometheus histogram: bucket b of the runtime
 * holds fills shorter than 2^(b+8) ns, so its cumulative count is the
 * bucket le="2^(b+8)/1e9"; the last bucket is +Inf.
 */
static void histogram(struct lmd_out *o, const struct lmd_proc *procs, size_t n,
		      char (*labels)[LABEL])
{
	static const char name[] = "lazymem_fill_latency_seconds";
	char le[LM_LAT_BUCKETS][32];
	const char *lep[LM_LAT_BUCKETS];
	for (int b = 0; b < LM_LAT_BUCKETS; b++) {
		if (b < LM_LAT_BUCKETS - 1)
			snprintf(le[b], sizeof(le[b]), ",le=\"%.9g\"} ",
				 (double)(1ull << (b + 8)) / 1e9);
		else
			snprintf(le[b], sizeof(le[b]), ",le=\"+Inf\"} ");
		lep[b] = le[b];
	}
	lmd_put(o, "# HELP %s Time from fault to install, per fill.\n# TYPE %s histogram\n", name, name);
	for (size_t i = 0; i < n; i++)
		series(o, name, labels[i], lep, procs[i].st->fill_latency, LM_LAT_BUCKETS,
		       procs[i].st->fill_ns_total);
}

/*
 * The remote store's round trips as a Prometheus histogram, from its five
 * bucket counters (under 100 us, 1 ms, 10 ms, 100 ms, and the rest).
 */
static void remote_histogram(struct lmd_out *o, const struct lmd_proc *procs, size_t n,
			     char (*labels)[LABEL])
{
	static const char *const le[] = { ",le=\"0.0001\"} ", ",le=\"0.001\"} ", ",le=\"0.01\"} ",
					   ",le=\"0.1\"} ", ",le=\"+Inf\"} " };
	lmd_put(o, "# HELP lazymem_remote_rtt_seconds Round trips to the remote page store "
		   "(a pipelined batch to one master).\n"
		   "# TYPE lazymem_remote_rtt_seconds histogram\n");
	for (size_t i = 0; i < n; i++) {
		const struct lm_stats *st = procs[i].st;
		const uint64_t b[5] = { st->remote_rtt_lt_100us, st->remote_rtt_lt_1ms,
					st->remote_rtt_lt_10ms, st->remote_rtt_lt_100ms,
					st->remote_rtt_ge_100ms };
		series(o, "lazymem_remote_rtt_seconds", labels[i], le, b, 5, st->remote_rtt_ns_total);
	}
}

/* The arguments of a formatter checked, and its output started empty. */
static int begin(const struct lmd_proc *procs, size_t n, char *buf, size_t len, struct lmd_out *o)
{
	if ((n && !procs) || (len && !buf))
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!procs[i].st)
			return -EINVAL;
	*o = (struct lmd_out){ buf, len, 0 };
	if (len)
		buf[0] = '\0';
	return 0;
}

int lmd_format_metrics(const struct lmd_proc *procs, size_t n, char *buf, size_t len)
{
	struct lmd_out o;
	if (begin(procs, n, buf, len, &o) < 0)
		return -EINVAL;
	char (*labels)[LABEL] = make_labels(procs, n);
	if (!labels)
		return -ENOMEM;
#define METRIC(name, kind, unit, help)                                                     \
	if (!strncmp(#name, "remote_rtt_", 11))                                            \
		; /* the histogram below */                                                \
	else if (!strcmp(unit, "enum"))                                                    \
		info_metric(&o, procs, n, labels, #name, help, offsetof(struct lm_stats, name)); \
	else                                                                               \
		metric(&o, procs, n, labels, #name, !strcmp(#kind, "COUNTER"), unit, help,  \
		       offsetof(struct lm_stats, name));
	LM_STATS_LIST(METRIC)
#undef METRIC
	histogram(&o, procs, n, labels);
	remote_histogram(&o, procs, n, labels);
	free(labels);
	if (o.need > 0x7fffffff)
		return -EOVERFLOW;
	return (int)o.need;
}

/* The length of the valid UTF-8 sequence at s (at most n bytes), or 0 when it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 :
		   (c & 0xf8) == 0xf0 ? 4 : 0;
	if (!k || k > n)
		return 0;
	uint32_t cp = k == 1 ? c : c & (0x7f >> k);
	for (size_t i = 1; i < k; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	/* Overlong forms, surrogates and past U+10FFFF are not UTF-8. */
	static const uint32_t least[] = { 0, 0, 0x80, 0x800, 0x10000 };
	if (cp < least[k] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
		return 0;
	return k;
}

/* in as a JSON string, appended to o (see lmd_json_string). */
static void json_put(struct lmd_out *o, const char *in)
{
	const unsigned char *s = (const unsigned char *)(in ? in : "");
	size_t n = strlen((const char *)s);
	put_lit(o, "\"");
	for (size_t i = 0; i < n;) {
		unsigned char c = s[i];
		size_t k = utf8_len(s + i, n - i);
		if (c == '"' || c == '\\') {
			char esc[2] = { '\\', (char)c };
			put_mem(o, esc, 2);
		} else if (c >= '\b' && c <= '\r' && c != 0x0b) {
			char esc[2] = { '\\', "btn\0fr"[c - '\b'] };
			put_mem(o, esc, 2);
		} else if (c < 0x20 || c == 0x7f) {
			lmd_put(o, "\\u%04x", c);
		} else if (!k) {
			/* Not UTF-8 (a name is any bytes): the replacement character, one per byte. */
			put_lit(o, "\\ufffd");
			k = 1;
		} else if (k == 3 && c == 0xe2 && s[i + 1] == 0x80 && (s[i + 2] | 1) == 0xa9) {
			/* U+2028 and U+2029 are JSON but end a line in JavaScript: escaped. */
			lmd_put(o, "\\u%04x", s[i + 2] == 0xa8 ? 0x2028 : 0x2029);
		} else {
			put_mem(o, (const char *)s + i, k);
		}
		i += k ? k : 1;
	}
	put_lit(o, "\"");
}

size_t lmd_json_string(const char *in, char *out, size_t len)
{
	struct lmd_out o = { out, len, 0 };
	if (len)
		out[0] = '\0';
	json_put(&o, in);
	return o.need;
}

int lmd_format_json(const struct lmd_proc *procs, size_t n, char *buf, size_t len)
{
	struct lmd_out o;
	if (begin(procs, n, buf, len, &o) < 0)
		return -EINVAL;
	lmd_put(&o, "{\"processes\":[");
	for (size_t i = 0; i < n; i++) {
		const struct lm_stats *st = procs[i].st;
		lmd_put(&o, "%s{\"pid\":%d,\"uid\":%u,\"name\":", i ? "," : "", (int)procs[i].pid,
		    (unsigned)procs[i].uid);
		json_put(&o, procs[i].name ? procs[i].name : "");
		lmd_put(&o, ",\"version\":");
		json_put(&o, procs[i].version ? procs[i].version : "");
		lmd_put(&o, ",\"runtimes\":%d,\"faults_per_s\":%.1f,\"stats\":{",
		    procs[i].runtimes > 0 ? procs[i].runtimes : 1, procs[i].faults_per_s);
		const char *sep = "";
		/* Fields past the end of an older client's struct are left out, not invented. */
#define FIELD(name, kind, unit, help)                                                  \
		if (offsetof(struct lm_stats, name) + sizeof(uint64_t) <= st->size) {  \
			put_str(&o, sep);                                              \
			put_lit(&o, "\"" #name "\":");                                 \
			put_u64(&o, st->name);                                         \
			sep = ",";                                                     \
		}
		LM_STATS_LIST(FIELD)
#undef FIELD
		put_str(&o, sep);
		put_lit(&o, "\"fill_latency\":[");
		for (int b = 0; b < LM_LAT_BUCKETS; b++) {
			if (b)
				put_lit(&o, ",");
			put_u64(&o, st->fill_latency[b]);
		}
		put_lit(&o, "]}}");
	}
	lmd_put(&o, "]}");
	if (o.need > 0x7fffffff)
		return -EOVERFLOW;
	return (int)o.need;
}

/* ---- stats pages, sums, and the "stats" and "list" replies ------------------------ */

void lmd_stats_load(const void *page, size_t maplen, struct lm_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->size = sizeof(*out);
	out->version = LM_STATS_VERSION;
	if (!page || maplen < offsetof(struct lm_stats, faults_missing) + sizeof(uint64_t))
		return;
	/*
	 * The runtime writes while we read, and may write anything: every
	 * field is read once, with an atomic load, and only the part that
	 * both the page's own size and the mapping cover.
	 */
	const uint32_t *hdr = page;
	uint32_t size = __atomic_load_n(&hdr[0], __ATOMIC_RELAXED);
	size_t have = size < maplen ? size : maplen;
	if (have > sizeof(*out))
		have = sizeof(*out);
	if (have < offsetof(struct lm_stats, fill_latency))
		have = offsetof(struct lm_stats, fill_latency);
	const uint64_t *src = (const uint64_t *)((const char *)page + offsetof(struct lm_stats,
									      fill_latency));
	uint64_t *dst = out->fill_latency;
	size_t words = (have - offsetof(struct lm_stats, fill_latency)) / sizeof(uint64_t);
	for (size_t i = 0; i < words; i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
	lm__gauges_settle(out);
}

/* Counts of pages (and of swap slots, a page each) in st, from st's page size to the smaller ps. */
static void rescale(struct lm_stats *st, uint64_t ps)
{
	uint64_t f = (st->page_size ? st->page_size : 4096) / ps;
#define SCALE(name, kind, unit, help)                                      \
	if (!strcmp(unit, "pages") || !strcmp(unit, "slots"))              \
		st->name *= f;
	LM_STATS_LIST(SCALE)
#undef SCALE
	st->page_size = ps;
}

void lmd_stats_add(struct lm_stats *sum, const struct lm_stats *one)
{
	/* Runtimes of one process may differ in page size (hugetlb): the smaller one counts. */
	struct lm_stats scaled = *one;
	const struct lm_stats *b = &scaled;
	uint64_t sp = sum->page_size ? sum->page_size : 4096;
	uint64_t bp = one->page_size ? one->page_size : 4096;
	if (bp < sp)
		rescale(sum, bp);
	else if (bp > sp)
		rescale(&scaled, sp);
#define ADD(name, kind, unit, help)                                        \
	if (!strcmp(unit, "enum") || !strcmp(#name, "page_size"))          \
		;                                                          \
	else if (!strcmp(unit, "bits"))                                    \
		sum->name |= b->name;                                      \
	else if (!strcmp(#name, "snapshot_pause_ns"))                      \
		sum->name = sum->name > b->name ? sum->name : b->name;     \
	else                                                               \
		sum->name += b->name;
	LM_STATS_LIST(ADD)
#undef ADD
	for (int i = 0; i < LM_LAT_BUCKETS; i++)
		sum->fill_latency[i] += b->fill_latency[i];
}

/* Names travel as one word: anything else becomes '_' (runtimes send them so already). */
static void word(struct lmd_out *o, const char *s)
{
	if (!s || !*s) {
		lmd_put(o, "?");
		return;
	}
	for (; *s; s++)
		lmd_put(o, "%c", *s > ' ' && *s <= '~' ? *s : '_');
}

int lmd_format_stats(const struct lmd_proc *procs, size_t n, char *buf, size_t len)
{
	struct lmd_out o;
	if (begin(procs, n, buf, len, &o) < 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		const struct lmd_proc *p = &procs[i];
		const struct lm_stats *st = p->st;
		lmd_put(&o, "pid %d\nuid %u\nname ", (int)p->pid, (unsigned)p->uid);
		word(&o, p->name);
		lmd_put(&o, "\nversion ");
		word(&o, p->version);
		lmd_put(&o, "\nruntimes %d\nfaults_per_s %.1f\n", p->runtimes > 0 ? p->runtimes : 1,
		    p->faults_per_s);
#define LINE(name, kind, unit, help)                                                \
		if (offsetof(struct lm_stats, name) + sizeof(uint64_t) <= st->size) { \
			put_lit(&o, #name " ");                                     \
			put_u64(&o, st->name);                                      \
			put_lit(&o, "\n");                                          \
		}
		LM_STATS_LIST(LINE)
#undef LINE
		put_lit(&o, "fill_latency");
		for (int b = 0; b < LM_LAT_BUCKETS; b++) {
			put_lit(&o, " ");
			put_u64(&o, st->fill_latency[b]);
		}
		put_lit(&o, "\n\n");
	}
	if (o.need > 0x7fffffff)
		return -EOVERFLOW;
	return (int)o.need;
}

int lmd_format_list(const struct lmd_proc *procs, size_t n, char *buf, size_t len)
{
	struct lmd_out o;
	if (begin(procs, n, buf, len, &o) < 0)
		return -EINVAL;
	lmd_put(&o, "%7s %6s %7s %14s %14s %14s %14s %10s %s\n", "PID", "UID", "REGIONS", "RESIDENT",
	    "DIRTY", "SWAPPED", "BUDGET", "FAULTS/S", "NAME");
	for (size_t i = 0; i < n; i++) {
		const struct lm_stats *st = procs[i].st;
		unsigned long long ps = st->page_size ? st->page_size : 4096;
		lmd_put(&o, "%7d %6u %7llu %14llu %14llu %14llu %14llu %10.1f ", (int)procs[i].pid,
		    (unsigned)procs[i].uid, (unsigned long long)st->regions_live,
		    (unsigned long long)st->resident_pages * ps,
		    (unsigned long long)st->resident_dirty * ps,
		    (unsigned long long)st->swapped_pages * ps, (unsigned long long)st->budget_bytes,
		    procs[i].faults_per_s);
		word(&o, procs[i].name);
		lmd_put(&o, "\n");
	}
	if (o.need > 0x7fffffff)
		return -EOVERFLOW;
	return (int)o.need;
}

/* One line of a "stats" reply: key and the rest, without the newline. */
static bool next_line(const char **s, const char *end, const char **line, size_t *n)
{
	if (*s >= end)
		return false;
	const char *nl = memchr(*s, '\n', (size_t)(end - *s));
	*line = *s;
	*n = nl ? (size_t)(nl - *s) : (size_t)(end - *s);
	*s = nl ? nl + 1 : end;
	return true;
}

static bool key_is(const char *line, size_t n, const char *key, const char **val, size_t *vn)
{
	size_t k = strlen(key);
	if (n <= k || memcmp(line, key, k) || line[k] != ' ')
		return false;
	*val = line + k + 1;
	*vn = n - k - 1;
	return true;
}

static bool decimal(const char *s, size_t n, uint64_t *out)
{
	return number(s, n, false, UINT64_MAX, out);
}

static void copy_word(char *dst, size_t cap, const char *s, size_t n)
{
	size_t k = n < cap - 1 ? n : cap - 1;
	memcpy(dst, s, k);
	dst[k] = '\0';
}

int lmd_parse_stats(const char *text, size_t len, struct lmd_entry *out, size_t max)
{
	if (!text && len)
		return -EINVAL;
	const char *s = text, *end = text + len, *line, *val;
	size_t n, vn;
	int count = 0;
	struct lmd_entry scratch, *e = NULL;
	while (next_line(&s, end, &line, &n)) {
		if (!n) {
			e = NULL;	/* a block ends */
			continue;
		}
		uint64_t v;
		if (key_is(line, n, "pid", &val, &vn)) {
			if (!decimal(val, vn, &v) || !v || v > INT32_MAX)
				return -EINVAL;
			e = (size_t)count < max ? &out[count] : &scratch;
			count++;
			memset(e, 0, sizeof(*e));
			e->pid = (pid_t)v;
			e->runtimes = 1;
			e->st.size = sizeof(e->st);
			e->st.version = LM_STATS_VERSION;
			continue;
		}
		if (!e)
			return -EINVAL;	/* every block starts with its pid */
		if (key_is(line, n, "name", &val, &vn)) {
			copy_word(e->name, sizeof(e->name), val, vn);
		} else if (key_is(line, n, "version", &val, &vn)) {
			copy_word(e->version, sizeof(e->version), val, vn);
		} else if (key_is(line, n, "faults_per_s", &val, &vn)) {
			char tmp[32];
			copy_word(tmp, sizeof(tmp), val, vn);
			char *stop;
			e->faults_per_s = strtod(tmp, &stop);
			if (stop == tmp || *stop)
				return -EINVAL;
		} else if (key_is(line, n, "fill_latency", &val, &vn)) {
			const char *p = val, *q = val + vn;
			for (int b = 0; b < LM_LAT_BUCKETS && p < q; b++) {
				const char *sp = memchr(p, ' ', (size_t)(q - p));
				size_t wn = sp ? (size_t)(sp - p) : (size_t)(q - p);
				if (!decimal(p, wn, &e->st.fill_latency[b]))
					return -EINVAL;
				p += wn + (sp ? 1 : 0);
			}
		} else {
			const char *sp = memchr(line, ' ', n);
			if (!sp || !decimal(sp + 1, n - (size_t)(sp - line) - 1, &v))
				return -EINVAL;
			size_t kn = (size_t)(sp - line);
#define FIELD(name, kind, unit, help)                                  \
			if (kn == strlen(#name) && !memcmp(line, #name, kn)) \
				e->st.name = v;
			LM_STATS_LIST(FIELD)
#undef FIELD
			if (kn == 3 && !memcmp(line, "uid", 3))
				e->uid = (uid_t)v;
			if (kn == 8 && !memcmp(line, "runtimes", 8))
				e->runtimes = (int)(v > 1000000 ? 1000000 : v);
		}
	}
	return count;
}
