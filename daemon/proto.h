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
 *   list | stats PID | json | metrics | budget PID BYTES | version | help
 */
#define LMD_LINE_MAX 256

enum lmd_req {
	LMD_REQ_LIST = 1,
	LMD_REQ_STATS,
	LMD_REQ_JSON,
	LMD_REQ_METRICS,
	LMD_REQ_BUDGET,
	LMD_REQ_VERSION,
	LMD_REQ_HELP,
};

struct lmd_request {
	int kind;		/* enum lmd_req */
	pid_t pid;		/* stats, budget */
	uint64_t bytes;		/* budget: bytes, suffixes K/M/G/T accepted */
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
};

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
 * "name":"..","stats":{every LM_STATS_LIST field,"fill_latency":[..]}}]},
 * names escaped as JSON strings.  Returns the length needed, like
 * snprintf, or -EINVAL.
 */
int lmd_format_json(const struct lmd_proc *procs, size_t n, char *buf, size_t len);

/* The label value escaping Prometheus wants (backslash, quote, newline). */
size_t lmd_escape_label(const char *in, char *out, size_t len);

#endif
