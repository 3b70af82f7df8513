/* SPDX-License-Identifier: MIT */
/* lazymemd's protocol: request parsing and reply formatting, apart from any socket. */
#ifndef LMD_PROTO_H
#define LMD_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "lazymem.h"

/*
 * One request per line, words separated by blanks, at most LMD_LINE_MAX
 * bytes without the newline (see lazymemd(8)):
 *
 *   list | stats [PID] | json [PID] | metrics | budget PID BYTES | min PID BYTES |
 *   pressure | version | help
 *
 * and, from a runtime registering itself, "hello VERSION NAME" with its
 * stats page attached (SCM_RIGHTS).  A reply is "ok LENGTH" and a newline
 * followed by LENGTH bytes, or one line "error NAME message" where NAME is
 * an errno name (EPERM, ESRCH, EINVAL...).
 */
#define LMD_LINE_MAX 256
#define LMD_NAME_MAX 32		/* a process name, as runtimes send it */
#define LMD_VERSION_MAX 32
#define LMD_PROTOCOL 1

enum lmd_req {
	LMD_REQ_LIST = 1,
	LMD_REQ_STATS,
	LMD_REQ_JSON,
	LMD_REQ_METRICS,
	LMD_REQ_BUDGET,
	LMD_REQ_VERSION,
	LMD_REQ_HELP,
	LMD_REQ_HELLO,
	LMD_REQ_MIN,
	LMD_REQ_PRESSURE,
};

struct lmd_request {
	int kind;		/* enum lmd_req */
	pid_t pid;		/* stats, json (0: every process), budget, min */
	uint64_t bytes;		/* budget, min: bytes, suffixes K/M/G/T accepted */
	const char *version;	/* hello: pointers into the line, not terminated */
	const char *name;
	size_t version_len, name_len;
};

/*
 * Parses one line (no newline; any bytes, not necessarily NUL-terminated).
 * Returns 0, or -EINVAL with *why set to a static message for the reply.
 */
int lmd_parse(const char *line, size_t len, struct lmd_request *req, const char **why);

/* A process as the daemon knows it: its identity and its live counters. */
struct lmd_proc {
	pid_t pid;
	uid_t uid;
	const char *name;
	const struct lm_stats *st;
	const char *version;	/* the runtime's lazymem version; NULL: unknown */
	int runtimes;		/* runtimes of the process summed in st; 0 counts as 1 */
	double faults_per_s;	/* missing and write-protect faults, over the last second */
};

/*
 * A struct lm_stats read from a runtime's stats page (maplen bytes
 * mapped), trusting nothing in it: the fields the page's size does not
 * cover are zero, the signed gauges are clamped at zero and
 * resident_clean is derived, as lm_stats_get does it.
 */
void lmd_stats_load(const void *page, size_t maplen, struct lm_stats *out);

/*
 * Adds b to sum for a process with several runtimes: counters and
 * amounts add up (pages in the smaller of the two page sizes), bit sets
 * are or'ed, enums are the first runtime's, the last pause is the longest.
 */
void lmd_stats_add(struct lm_stats *sum, const struct lm_stats *b);

/*
 * The reply to "stats": per process a block of "key value" lines, pid,
 * uid, name, version, runtimes, faults_per_s, then every LM_STATS_LIST
 * field, then "fill_latency" with LM_LAT_BUCKETS numbers, then an empty
 * line.  Returns the length needed, like snprintf, or -EINVAL.
 */
int lmd_format_stats(const struct lmd_proc *procs, size_t n, char *buf, size_t len);

/* The reply to "list": a header and one line per process, for people. */
int lmd_format_list(const struct lmd_proc *procs, size_t n, char *buf, size_t len);

/* A process as "stats" describes it, parsed back (the command's side). */
struct lmd_entry {
	pid_t pid;
	uid_t uid;
	int runtimes;
	double faults_per_s;
	char name[LMD_NAME_MAX + 1];
	char version[LMD_VERSION_MAX + 1];
	struct lm_stats st;	/* st.size: sizeof(struct lm_stats) */
};

/*
 * Parses a "stats" reply into at most max entries.  Unknown keys are
 * skipped (a newer daemon), missing ones are zero.  Returns the number of
 * processes described (which may exceed max: only max are stored), or
 * -EINVAL for text that is not such a reply.
 */
int lmd_parse_stats(const char *text, size_t len, struct lmd_entry *out, size_t max);

/*
 * Prometheus text exposition (version 0.0.4) of the processes' counters,
 * generated from LM_STATS_LIST: HELP and TYPE lines, base units (gauges
 * of pages become bytes, nanoseconds seconds), "_total" on counters, one
 * sample per process labelled pid and name.  Returns the length needed, like
 * snprintf, or -EINVAL.
 */
int lmd_format_metrics(const struct lmd_proc *procs, size_t n, char *buf, size_t len);

/*
 * One JSON object for the processes: {"processes":[{"pid":..,"uid":..,
 * "name":"..","version":"..","runtimes":..,"faults_per_s":..,
 * "stats":{every LM_STATS_LIST field,"fill_latency":[..]}}]},
 * names escaped as JSON strings.  Returns the length needed, like
 * snprintf, or -EINVAL.
 */
int lmd_format_json(const struct lmd_proc *procs, size_t n, char *buf, size_t len);

/*
 * A reply built in pieces into a caller's buffer of len bytes: need
 * counts what the whole reply takes, past the end of the buffer too, like
 * snprintf, and what fits stays NUL-terminated.
 */
struct lmd_out {
	char *buf;
	size_t len, need;
};

void lmd_put(struct lmd_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A size as requests and settings spell it: digits, then K, M, G or T.  0 or -EINVAL. */
int lmd_parse_size(const char *s, uint64_t *out);

/* A size for people: "512B", "1.5Mi", "64Gi". */
void lmd_size_str(uint64_t bytes, char *buf, size_t len);

/*
 * in as a JSON string, quotes included, into out (len bytes with the
 * NUL), like snprintf: returns the length needed.  The one JSON string
 * writer of the daemon and the command: quotes and backslashes escaped,
 * every control character (U+0000-U+001F, DEL) too (\\n, \\t... or \\u00XX),
 * U+2028 and U+2029 as \\u escapes, valid UTF-8 as it is, and each byte
 * that is not UTF-8 as U+FFFD: the result is valid JSON whatever the bytes.
 */
size_t lmd_json_string(const char *in, char *out, size_t len);

/* The label value escaping Prometheus wants (backslash, quote, newline). */
size_t lmd_escape_label(const char *in, char *out, size_t len);

#endif
