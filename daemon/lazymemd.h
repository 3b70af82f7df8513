/* SPDX-License-Identifier: MIT */
/* lazymemd's insides, shared by its files: connections, the policy's scopes, the daemon's state. */
#ifndef LMD_LAZYMEMD_H
#define LMD_LAZYMEMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "policy.h"
#include "pressure.h"
#include "proto.h"

#define MAX_CONNS 16384			/* connections at once; more are told so and closed */
#define MAX_RUNTIMES 4096		/* runtimes registered at once */
#define MAX_OUT_TOTAL (256u << 20)	/* bytes of replies waiting in all buffers */
#define IDLE_NS (300ull * 1000000000ull)	/* a client silent this long is closed */
#define HTTP_IDLE_NS (10ull * 1000000000ull)	/* an HTTP client gets this long to send its request */
#define STALL_NS (30ull * 1000000000ull)	/* a reply not drained this long: the client goes */
#define BUDGET_NS (30ull * 1000000000ull)	/* a runtime's budget answer, at most */
#define MAX_WAITERS 16			/* budget requests queued on one runtime */
#define STATS_MAP_MAX (1u << 20)

#define POLICY_SLOT UINT32_MAX	/* a waiter that is the pressure policy's own request */
#define MAX_SCOPES 64		/* memory cgroups (and the machine) the policy follows at once */
#define MAX_ACTIONS 64		/* the policy's recent actions, for lazymem pressure */
#define SCOPE_NS (2ull * 1000000000ull)	/* how long a runtime's scope is trusted before a new lookup */

struct waiter {
	uint32_t slot, gen;
	uint32_t seq;		/* the client's budget request it answers */
	uint64_t bytes;		/* the budget asked for (policy requests) */
};

struct conn {
	int fd;
	uint32_t slot, gen;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	bool runtime;
	bool http;		/* a connection to the HTTP endpoint (/metrics) */
	bool http_line;		/* its request line is in, headers are being skipped */
	bool http_eol;		/* the last header byte ended a line */
	bool http_head;		/* a HEAD request: headers only */
	size_t http_bytes;	/* header bytes so far */
	bool discard;		/* skipping the rest of an overlong line */
	bool closing;		/* close once the reply is out */
	bool rdhup;		/* the peer shut its side: no more EPOLLRDHUP */
	uint64_t last_ns;	/* last request, or last progress of a reply */
	size_t nin;
	char in[LMD_LINE_MAX + 2];
	char *out;
	size_t outlen, outoff;
	int passed_fd;		/* a descriptor that came with the input, for hello */
	/* Runtimes. */
	const void *page;
	size_t pagelen;
	char name[LMD_NAME_MAX + 1];
	char version[LMD_VERSION_MAX + 1];
	uint64_t faults_last, rate_ns;
	double rate;
	struct waiter waiters[MAX_WAITERS];
	int nwait;
	/* A client waiting for runtimes to take a budget. */
	int waiting;
	uint32_t wait_seq;	/* which budget request is waited on: late answers are dropped */
	uint64_t wait_deadline;
	pid_t wait_pid;
	uint64_t wait_bytes;
	bool wait_min;		/* the request is min PID BYTES, not budget */
	char wait_err[200];
	/* The pressure policy's view of a runtime. */
	int scope;			/* index in D.scopes this interval; -1: none */
	int scope_kind;
	char scope_path[LMD_SCOPE_PATH];
	uint64_t scope_ns;		/* when scope_kind and scope_path were looked up */
	uint64_t own;			/* its budget apart from the policy (0: none) */
	uint64_t applied;		/* the budget the daemon last knew it to have */
	uint64_t stall_last, stall_ns;	/* fill and throttle time at the last interval */
	double stall;			/* percent of the last interval spent in them */
	uint64_t want;			/* what the policy wanted last */
	int why;			/* and why (enum lmd_why) */
	bool refused;			/* it refused a policy budget: left alone */
	uint64_t page_size;		/* of its statistics: budgets are whole pages */
};

/* A memory cgroup or the machine, as the policy saw it at its last interval. */
struct scope {
	struct lmd_scope s;
	int state;		/* enum lmd_state */
	int members;
	uint64_t low, high;
	uint64_t seen_ns;	/* last interval a runtime lived in it */
	uint64_t onset_ns;	/* when the current pressure began; 0: none */
	uint64_t calm_ns;	/* when the last pressure ended; 0: never was any */
	uint64_t last_available;	/* at the previous look; 0: none yet */
	double fall;		/* how fast available memory fell lately, bytes a second (smoothed) */
	bool reacted;		/* a lowering since the onset was acknowledged */
};

struct action {
	uint64_t wall_ms;	/* CLOCK_REALTIME */
	pid_t pid;
	uid_t uid;
	char name[LMD_NAME_MAX + 1];
	uint64_t from, to;
	int why;
	int state;
	uint64_t available, low;
	char scope[64];		/* the end of the scope's path */
};

struct ucount;		/* what one user holds (lazymemd.c) */

/* The daemon's state: one, D, in lazymemd.c. */
struct lmd_daemon {
	int epfd, lfd, sigfd, timerfd, spare_fd;
	bool own_socket;	/* created here (not socket activation): removed on exit */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct conn **conns;	/* by slot */
	struct conn **rts;	/* the runtimes, in no order: what queries walk */
	uint32_t *gens;
	uint32_t nconns, nruntimes;
	size_t out_total;
	bool stop;
	int log_kind;		/* 0 stderr, 1 syslog, 2 file */
	const char *log_path;
	FILE *log_file;
	int verbosity;		/* 0 errors and warnings, 1 info, 2 debug */
	uint64_t served;
	size_t hint[4];		/* the last reply's length, per kind: the next one's buffer */
	/* The pressure policy (see lazymemd(8)). */
	struct lmd_policy_conf conf;
	const char *conf_path;
	int ptimerfd;
	char v1root[64], v2root[64];	/* the memory cgroup mounts; "" when absent */
	uint64_t mem_total;		/* the machine's memory: a cgroup limit under it is a limit */
	struct scope scopes[MAX_SCOPES];
	int nscopes;
	uint64_t policy_ns;		/* the last interval */
	struct action actions[MAX_ACTIONS];
	uint64_t nactions;		/* ever: the ring holds the last MAX_ACTIONS */
	uint64_t lowered, raised, policy_errors;
	double last_reaction_ms;	/* pressure onset to the first lowering acknowledged */
	/* The HTTP endpoint, and the daemon's own counters for /metrics. */
	int hfd;			/* listening; -1: none */
	char http_addr[80];
	uint64_t requests[LMD_REQ_PRESSURE + 1];	/* by enum lmd_req; [0]: HTTP requests */
	uint64_t refusals[9];		/* by enum refusal */
	struct ucount *users[256];	/* connections and runtimes per uid, hashed */
	uint64_t user_log_ns;		/* the last refusal for a user's limit that was logged */
};

extern struct lmd_daemon D;

/* Why the daemon said no, for lazymemd_refusals_total. */
enum refusal {
	REF_MALFORMED,		/* EINVAL: a request, a hello, an HTTP request it cannot parse */
	REF_DENIED,		/* EPERM: another user's process */
	REF_NO_PROCESS,		/* ESRCH */
	REF_BUSY,		/* EBUSY: replies or budget requests piled up */
	REF_RUNTIMES,		/* EMFILE at hello: the runtime table is full */
	REF_CONNECTIONS,	/* a connection refused: the connection table is full */
	REF_USER_LIMIT,		/* one user's share of runtimes or connections is used up */
	REF_OTHER,
	REF_COUNT,
};

/* lazymemd.c: the log, the clock, connections and their replies. */
void lmd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t lmd_now_ns(void);
void lmd_watch(struct conn *c);
void lmd_conn_close(struct conn *c, const char *why);
bool lmd_flush_out(struct conn *c);
bool lmd_queue(struct conn *c, const char *data, size_t len);
void lmd_reply_error(struct conn *c, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void lmd_reply_body(struct conn *c, const char *body, size_t len);
bool lmd_may_see(const struct conn *client, const struct conn *rt);

typedef int (*formatter)(const struct lmd_proc *, size_t, char *, size_t);

void lmd_reply_formatted(struct conn *c, formatter fn, pid_t pid, size_t *hint);

/* enforce.c: the pressure policy. */
void lmd_policy_answer(struct conn *rt, const struct waiter *w, bool ok, const char *line,
		       size_t len);
void lmd_policy_tick(void);
void lmd_pressure(struct conn *c);

/* http.c: the daemon's own metrics, and HTTP. */
int lmd_metrics_all(const struct lmd_proc *procs, size_t n, char *buf, size_t len);
void lmd_http_input(struct conn *c);

#endif
