/* SPDX-License-Identifier: MIT */
/* lazymemd: the daemon runtimes report to, answering the lazymem command over a unix socket. */
#include "config.h"
#include "policy.h"
#include "pressure.h"
#include "proto.h"
#include "sockpath.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <linux/magic.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <netdb.h>
#include <netinet/in.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

/*
 * One thread, one epoll set: the listening socket, a signalfd, a
 * once-a-second timerfd, and every connection.  Nothing ever blocks on a
 * client: sockets are non-blocking, a connection with a reply still
 * unsent is not read from (so its input cannot pile up), and every
 * buffer is bounded.  Runtimes are connections too: they say hello with
 * their stats page attached, and the daemon reads the page on each query.
 */

#define MAX_CONNS 16384			/* connections at once; more are told so and closed */
#define MAX_RUNTIMES 4096		/* runtimes registered at once */
#define MAX_OUT_TOTAL (256u << 20)	/* bytes of replies waiting in all buffers */
#define IDLE_NS (300ull * 1000000000ull)	/* a client silent this long is closed */
#define HTTP_IDLE_NS (10ull * 1000000000ull)	/* an HTTP client gets this long to send its request */
#define STALL_NS (30ull * 1000000000ull)	/* a reply not drained this long: the client goes */
#define BUDGET_NS (30ull * 1000000000ull)	/* a runtime's budget answer, at most */
#define MAX_WAITERS 16			/* budget requests queued on one runtime */
#define STATS_MAP_MAX (1u << 20)
#ifndef LMD_CONF
#define LMD_CONF "/etc/lazymem/lazymemd.conf"
#endif

enum { TAG_LISTEN = 1, TAG_SIGNAL, TAG_TIMER, TAG_POLICY, TAG_HTTP_LISTEN, TAG_CONN };

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

static struct {
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
} D = { .hfd = -1 };

/*
 * What one user holds.  The tables are shared (MAX_CONNS, MAX_RUNTIMES),
 * and a user who filled them would lock every other one out; so each
 * user but root gets a share (user_connections, user_runtimes in the
 * settings).  Root is not limited: its processes are the system's.
 */
struct ucount {
	uid_t uid;
	uint32_t conns, runtimes;
	struct ucount *next;
};

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

static const char *const refusal_names[REF_COUNT] = {
	"malformed", "permission", "no_process", "busy", "runtimes_full", "connections_full",
	"user_limit", "other",
};

/* ---- logging ------------------------------------------------------------------------ */

static void logmsg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static uint64_t now_ns(void);

/* The count of uid, made when make is set (NULL when memory is short: then it is not limited). */
static struct ucount *ucount_of(uid_t uid, bool make)
{
	struct ucount **pp = &D.users[uid % 256];
	for (; *pp; pp = &(*pp)->next)
		if ((*pp)->uid == uid)
			return *pp;
	if (!make)
		return NULL;
	*pp = calloc(1, sizeof(**pp));
	if (*pp)
		(*pp)->uid = uid;
	return *pp;
}

static void ucount_put(uid_t uid, bool conn, bool runtime)
{
	struct ucount **pp = &D.users[uid % 256];
	for (; *pp && (*pp)->uid != uid; pp = &(*pp)->next)
		;
	struct ucount *u = *pp;
	if (!u)
		return;
	u->conns -= conn && u->conns;
	u->runtimes -= runtime && u->runtimes;
	if (!u->conns && !u->runtimes) {
		*pp = u->next;
		free(u);
	}
}

/* Whether uid may have one more connection (runtime); counted and logged when not. */
static bool user_may(uid_t uid, bool runtime)
{
	if (uid == 0)
		return true;
	struct ucount *u = ucount_of(uid, false);
	uint32_t have = !u ? 0 : runtime ? u->runtimes : u->conns;
	uint64_t max = runtime ? D.conf.user_runtimes : D.conf.user_connections;
	if (have < max)
		return true;
	D.refusals[REF_USER_LIMIT]++;
	uint64_t now = now_ns();
	if (now - D.user_log_ns > 10000000000ull) {
		D.user_log_ns = now;
		logmsg(1, "uid %u has %u %s, its share: refused (user_%s in the settings)",
		       (unsigned)uid, have, runtime ? "runtimes" : "connections",
		       runtime ? "runtimes" : "connections");
	}
	return false;
}

static void logmsg(int level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };
	if (level > 1 + D.verbosity)
		return;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (D.log_kind == 1) {
		static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
		syslog(prio[level], "%s", msg);
		return;
	}
	FILE *f = D.log_kind == 2 && D.log_file ? D.log_file : stderr;
	fprintf(f, "lazymemd[%d]: %s: %s\n", (int)getpid(), names[level], msg);
	fflush(f);
}

static int open_log(void)
{
	if (D.log_kind == 1) {
		closelog();
		openlog("lazymemd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	} else if (D.log_kind == 2) {
		FILE *f = fopen(D.log_path, "ae");
		if (!f)
			return -errno;
		if (D.log_file)
			fclose(D.log_file);
		D.log_file = f;
	}
	return 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- connections ---------------------------------------------------------------------- */

static uint64_t tag_of(const struct conn *c)
{
	return (uint64_t)TAG_CONN | (uint64_t)c->slot << 8 | (uint64_t)c->gen << 32;
}

static struct conn *conn_at(uint32_t slot, uint32_t gen)
{
	if (slot >= MAX_CONNS || !D.conns[slot] || D.conns[slot]->gen != gen)
		return NULL;
	return D.conns[slot];
}

static void watch(struct conn *c)
{
	/* While a reply is going out, nothing more is read: input cannot pile up. */
	bool sending = c->outoff < c->outlen;
	struct epoll_event ev = {
		.events = (sending ? EPOLLOUT : c->waiting || c->closing ? 0 : EPOLLIN) |
			  (c->rdhup ? 0 : EPOLLRDHUP),
		.data.u64 = tag_of(c),
	};
	epoll_ctl(D.epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void budget_done(struct conn *c);
static void conn_input(struct conn *c);

static void conn_close(struct conn *c, const char *why)
{
	if (c->runtime) {
		logmsg(2, "runtime %d (%s) gone: %s", (int)c->pid, c->name, why);
		/*
		 * Clients waiting on this runtime's budget answer get an error;
		 * their replies go out from the event loop, not from here.
		 */
		for (int i = 0; i < c->nwait; i++) {
			struct conn *w = conn_at(c->waiters[i].slot, c->waiters[i].gen);
			if (!w || w->waiting <= 0 || w->wait_seq != c->waiters[i].seq)
				continue;
			if (!w->wait_err[0])
				snprintf(w->wait_err, sizeof(w->wait_err),
					 "error ESRCH process %d went away\n", (int)c->pid);
			if (--w->waiting == 0) {
				budget_done(w);
				watch(w);
			}
		}
		for (uint32_t i = 0; i < D.nruntimes; i++)
			if (D.rts[i] == c) {
				D.rts[i] = D.rts[--D.nruntimes];
				break;
			}
		munmap((void *)c->page, c->pagelen);
	} else {
		logmsg(3, "client %d (uid %u) closed: %s", (int)c->pid, (unsigned)c->uid, why);
	}
	epoll_ctl(D.epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->passed_fd >= 0)
		close(c->passed_fd);
	D.out_total -= c->outlen - c->outoff;
	free(c->out);
	D.conns[c->slot] = NULL;
	D.nconns--;
	if (!c->http)
		ucount_put(c->uid, true, c->runtime);
	free(c);
}

/* Sends what it can; false when the connection had to go. */
static bool flush_out(struct conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			conn_close(c, n < 0 ? strerror(errno) : "send returned 0");
			return false;
		}
		c->outoff += (size_t)n;
		D.out_total -= (size_t)n;
		c->last_ns = now_ns();
	}
	if (c->outoff == c->outlen) {
		free(c->out);
		c->out = NULL;
		c->outlen = c->outoff = 0;
		if (c->closing) {
			conn_close(c, "done");
			return false;
		}
	}
	watch(c);
	return true;
}

/* Appends bytes to the connection's output; a reply past the global cap is refused. */
static bool queue(struct conn *c, const char *data, size_t len)
{
	if (D.out_total + len > MAX_OUT_TOTAL)
		return false;
	char *p = realloc(c->out, c->outlen + len);
	if (!p)
		return false;
	memcpy(p + c->outlen, data, len);
	/* The stall clock starts when there is something to send, not at the last request. */
	if (c->outoff == c->outlen)
		c->last_ns = now_ns();
	c->out = p;
	c->outlen += len;
	D.out_total += len;
	return true;
}

static void reply_error(struct conn *c, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void reply_error(struct conn *c, const char *name, const char *fmt, ...)
{
	D.refusals[!strcmp(name, "EINVAL") ? REF_MALFORMED :
		   !strcmp(name, "EPERM")  ? REF_DENIED :
		   !strcmp(name, "ESRCH")  ? REF_NO_PROCESS :
		   !strcmp(name, "EBUSY")  ? REF_BUSY :
		   !strcmp(name, "EMFILE") ? REF_RUNTIMES :
					     REF_OTHER]++;
	if (c->http) {
		/* Only the daemon's own troubles reach here: out of memory, too busy. */
		static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
					   "Retry-After: 1\r\nConnection: close\r\n\r\n";
		if (!queue(c, busy, sizeof(busy) - 1))
			c->closing = true;
		c->closing = true;
		return;
	}
	char line[300];
	int k = snprintf(line, sizeof(line), "error %s ", name);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line + k, sizeof(line) - (size_t)k - 1, fmt, ap);
	va_end(ap);
	strcat(line, "\n");
	if (!queue(c, line, strlen(line)))
		c->closing = true;
}

/* "ok LENGTH\n" and the body, formatted by fn into one buffer. */
static void reply_body(struct conn *c, const char *body, size_t len)
{
	char head[32];
	int k = snprintf(head, sizeof(head), "ok %zu\n", len);
	if (D.out_total + (size_t)k + len > MAX_OUT_TOTAL) {
		reply_error(c, "EBUSY", "the daemon has too many replies in flight; try again");
		return;
	}
	if (!queue(c, head, (size_t)k) || !queue(c, body, len))
		c->closing = true;
}

/* ---- what a client may see --------------------------------------------------------------- */

static bool may_see(const struct conn *client, const struct conn *rt)
{
	return client->uid == 0 || client->uid == rt->uid;
}

struct view {
	struct lmd_proc *procs;
	struct lm_stats *stats;
	size_t n;
};

static int by_pid(const void *a, const void *b)
{
	const struct conn *x = *(struct conn *const *)a, *y = *(struct conn *const *)b;
	return (x->pid > y->pid) - (x->pid < y->pid);
}

/*
 * The processes a client may see (only pid when not 0), their runtimes'
 * pages read once, here, so that a reply is formatted from one instant.
 */
static int gather(const struct conn *client, pid_t pid, struct view *v, bool *denied)
{
	memset(v, 0, sizeof(*v));
	*denied = false;
	struct conn **rts = malloc((D.nruntimes + 1) * sizeof(*rts));
	if (!rts)
		return -ENOMEM;
	size_t k = 0;
	for (uint32_t i = 0; i < D.nruntimes; i++) {
		struct conn *c = D.rts[i];
		if (pid && c->pid != pid)
			continue;
		if (!may_see(client, c)) {
			*denied = true;
			continue;
		}
		rts[k++] = c;
	}
	qsort(rts, k, sizeof(*rts), by_pid);
	v->procs = calloc(k + 1, sizeof(*v->procs));
	v->stats = calloc(k + 1, sizeof(*v->stats));
	if (!v->procs || !v->stats) {
		free(rts);
		free(v->procs);
		free(v->stats);
		return -ENOMEM;
	}
	struct lm_stats one;
	for (size_t i = 0; i < k; i++) {
		struct conn *c = rts[i];
		lmd_stats_load(c->page, c->pagelen, &one);
		if (v->n && v->procs[v->n - 1].pid == c->pid) {
			struct lmd_proc *p = &v->procs[v->n - 1];
			lmd_stats_add(&v->stats[v->n - 1], &one);
			p->runtimes++;
			p->faults_per_s += c->rate;
			continue;
		}
		v->stats[v->n] = one;
		v->procs[v->n] = (struct lmd_proc){ .pid = c->pid, .uid = c->uid, .name = c->name,
						    .st = &v->stats[v->n], .version = c->version,
						    .runtimes = 1, .faults_per_s = c->rate };
		v->n++;
	}
	free(rts);
	return 0;
}

static void view_free(struct view *v)
{
	free(v->procs);
	free(v->stats);
}

typedef int (*formatter)(const struct lmd_proc *, size_t, char *, size_t);

static void reply_formatted(struct conn *c, formatter fn, pid_t pid, size_t *hint)
{
	struct view v;
	bool denied;
	if (gather(c, pid, &v, &denied) < 0) {
		reply_error(c, "ENOMEM", "out of memory");
		return;
	}
	if (pid && !v.n) {
		if (denied)
			reply_error(c, "EPERM", "process %d belongs to another user", (int)pid);
		else
			reply_error(c, "ESRCH", "no lazymem runtime reports from process %d", (int)pid);
		view_free(&v);
		return;
	}
	/*
	 * One pass, into a buffer sized by the last reply of the kind (a
	 * second only when it grew), with room in front for the head: the
	 * buffer becomes the connection's output as it is, no copy.
	 */
	enum { HEAD = 192 };
	size_t cap = *hint + *hint / 4 + 4096;
	char *buf = malloc(HEAD + cap);
	int need = buf ? fn(v.procs, v.n, buf + HEAD, cap) : -ENOMEM;
	if (need >= 0 && (size_t)need >= cap) {
		cap = (size_t)need + 1;
		char *bigger = realloc(buf, HEAD + cap);
		if (!bigger) {
			need = -ENOMEM;
		} else {
			buf = bigger;
			need = fn(v.procs, v.n, buf + HEAD, cap);
		}
	}
	if (need >= 0)
		*hint = (size_t)need;
	char head[HEAD];
	int k = need < 0 ? 0 :
		c->http ? snprintf(head, sizeof(head),
				   "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; "
				   "charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
				   need) :
			  snprintf(head, sizeof(head), "ok %d\n", need);
	if (need >= 0 && c->http && c->http_head)
		need = 0;	/* HEAD: the length of the body that GET would get, and no body */
	if (need < 0) {
		reply_error(c, need == -ENOMEM ? "ENOMEM" : "EOVERFLOW", "the reply does not fit");
		free(buf);
	} else if (D.out_total + (size_t)k + (size_t)need > MAX_OUT_TOTAL || c->outlen) {
		reply_error(c, "EBUSY", "the daemon has too many replies in flight; try again");
		free(buf);
	} else {
		memcpy(buf + HEAD - k, head, (size_t)k);
		c->out = buf;
		c->outoff = HEAD - (size_t)k;
		c->outlen = HEAD + (size_t)need;
		D.out_total += (size_t)k + (size_t)need;
	}
	view_free(&v);
}

/* ---- requests ---------------------------------------------------------------------------- */

/* ---- the pressure policy ------------------------------------------------------------------- */

/*
 * Every interval the policy reads the scopes its runtimes live in (the
 * machine, or the memory cgroup with a limit around them), asks policy.c
 * what each runtime's budget should be, and sends the budgets that
 * changed enough to matter.  A runtime has at most one request in flight:
 * a lowering is answered once its pages are out, and until then the
 * policy does not pile more on it.
 */

static const char *scope_name(const struct lmd_scope *s)
{
	return s->kind == LMD_SCOPE_SYSTEM ? "the machine" : s->path;
}

static struct scope *scope_of(const struct conn *rt)
{
	return rt->scope >= 0 && rt->scope < D.nscopes ? &D.scopes[rt->scope] : NULL;
}

static void record(const struct conn *rt, uint64_t from, uint64_t to)
{
	const struct scope *sc = scope_of(rt);
	struct action *a = &D.actions[D.nactions++ % MAX_ACTIONS];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	a->wall_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	a->pid = rt->pid;
	a->uid = rt->uid;
	snprintf(a->name, sizeof(a->name), "%s", rt->name);
	a->from = from;
	a->to = to;
	a->why = rt->why;
	a->state = sc ? sc->state : 0;
	a->available = sc ? sc->s.available : 0;
	a->low = sc ? sc->low : 0;
	const char *p = sc ? scope_name(&sc->s) : "?";
	size_t l = strlen(p);
	snprintf(a->scope, sizeof(a->scope), "%s", l >= sizeof(a->scope) ? p + l - sizeof(a->scope) + 1 : p);
}

/* A runtime's answer to the policy's budget. */
static void policy_answer(struct conn *rt, const struct waiter *w, bool ok, const char *line,
			  size_t len)
{
	uint64_t from = rt->applied;
	/* ENOSPC: the budget holds, eviction just could not reach it (the swap file is full). */
	if (!ok && !(len >= 12 && !memcmp(line, "error ENOSPC", 12))) {
		D.policy_errors++;
		rt->refused = true;
		logmsg(1, "runtime %d (%s) refused the budget %llu: %.*s; the policy leaves it alone",
		       (int)rt->pid, rt->name, (unsigned long long)w->bytes, (int)len, line);
		return;
	}
	rt->applied = w->bytes;
	struct scope *sc = scope_of(rt);
	if (w->bytes && (!from || w->bytes < from)) {
		D.lowered++;
		if (sc && sc->onset_ns && !sc->reacted) {
			sc->reacted = true;
			D.last_reaction_ms = (double)(now_ns() - sc->onset_ns) / 1e6;
			logmsg(1, "pressure on %s: a budget lowered %.0f ms after it began",
			       scope_name(&sc->s), D.last_reaction_ms);
		}
	} else {
		D.raised++;
	}
	record(rt, from, w->bytes);
	logmsg(2, "runtime %d (%s): budget %llu -> %llu (%s)%s", (int)rt->pid, rt->name,
	       (unsigned long long)from, (unsigned long long)w->bytes, lmd_why_name(rt->why),
	       ok ? "" : ", over it for now");
}

/* Worth a message: lowerings to the megabyte, the rest when they move an eighth. */
static bool worth_sending(const struct conn *rt, uint64_t want)
{
	uint64_t have = rt->applied;
	if (want == have)
		return false;
	if (!want || !have)
		return true;
	uint64_t diff = want > have ? want - have : have - want;
	/* Lowerings (and the proactive mode's small steps) to the megabyte. */
	if (want < have && (rt->why == LMD_WHY_LOWER || rt->why == LMD_WHY_FLOOR ||
			    rt->why == LMD_WHY_PROACTIVE))
		return diff >= (1u << 20);
	return diff >= (1u << 20) && diff >= have / 8;
}

static void policy_send(struct conn *rt, uint64_t bytes)
{
	/* Whole pages, as the runtime keeps it: what it reports back is then what was sent. */
	uint64_t ps = rt->page_size ? rt->page_size : 4096;
	bytes = bytes && bytes < ps ? ps : bytes & ~(ps - 1);
	char line[64];
	int k = snprintf(line, sizeof(line), "budget %llu\n", (unsigned long long)bytes);
	if (rt->nwait == MAX_WAITERS || !queue(rt, line, (size_t)k))
		return;
	rt->waiters[rt->nwait++] = (struct waiter){ POLICY_SLOT, 0, 0, bytes };
	watch(rt);
}

/* Puts each runtime in its scope: looked up again every SCOPE_NS, as processes move between cgroups. */
static void assign_scopes(uint64_t now)
{
	/* Scopes nobody lived in for ten intervals of lookups go. */
	int keep = 0;
	for (int i = 0; i < D.nscopes; i++)
		if (now - D.scopes[i].seen_ns < 5 * SCOPE_NS)
			D.scopes[keep++] = D.scopes[i];
	D.nscopes = keep;
	for (int i = 0; i < D.nscopes; i++)
		D.scopes[i].members = 0;
	for (uint32_t i = 0; i < D.nruntimes; i++) {
		struct conn *c = D.rts[i];
		c->scope = -1;
		if (!c->scope_ns || now - c->scope_ns > SCOPE_NS) {
			struct lmd_scope s;
			if (lmd_scope_find(c->pid, D.v1root, D.v2root, D.mem_total, &s) < 0)
				continue;	/* gone: its connection closes soon */
			c->scope_kind = s.kind;
			memcpy(c->scope_path, s.path, sizeof(c->scope_path));
			c->scope_ns = now;
		}
		int k = 0;
		while (k < D.nscopes &&
		       (D.scopes[k].s.kind != c->scope_kind || strcmp(D.scopes[k].s.path, c->scope_path)))
			k++;
		if (k == MAX_SCOPES)
			continue;
		if (k == D.nscopes) {
			memset(&D.scopes[k], 0, sizeof(D.scopes[k]));
			D.scopes[k].s.kind = c->scope_kind;
			memcpy(D.scopes[k].s.path, c->scope_path, sizeof(c->scope_path));
			D.nscopes++;
		}
		c->scope = k;
		D.scopes[k].members++;
		D.scopes[k].seen_ns = now;
	}
}

/* The policy's view of one runtime, from its stats page; notices budgets set behind its back. */
static void member_of(struct conn *c, uint64_t now, struct lmd_member *m)
{
	struct lm_stats st;
	lmd_stats_load(c->page, c->pagelen, &st);
	uint64_t ps = st.page_size ? st.page_size : 4096;
	/*
	 * Nothing in flight and a budget that is not the last one known: the
	 * application set it.  Pages, not bytes, are compared: the runtime
	 * keeps its budget in whole pages.
	 */
	c->page_size = ps;
	if (!c->nwait && st.budget_bytes / ps != c->applied / ps)
		c->own = c->applied = st.budget_bytes;
	uint64_t x = st.fill_ns_total + st.throttle_ns;
	c->stall = c->stall_ns && now > c->stall_ns && x >= c->stall_last ?
			   100.0 * (double)(x - c->stall_last) / (double)(now - c->stall_ns) :
			   0;
	c->stall_last = x;
	c->stall_ns = now;
	*m = (struct lmd_member){
		.resident = st.resident_pages * ps,
		.budget = c->applied,
		.own = c->own,
		.floor = st.budget_min_bytes,
		.stall = c->stall,
	};
}

static void policy_scope(struct scope *sc, uint64_t now, double dt)
{
	int n = sc->members, k = 0;
	struct lmd_member *m = calloc((size_t)n, sizeof(*m));
	struct conn **who = calloc((size_t)n, sizeof(*who));
	if (!m || !who)
		goto out;
	int idx = (int)(sc - D.scopes);
	for (uint32_t i = 0; i < D.nruntimes && k < n; i++)
		if (D.rts[i]->scope == idx) {
			who[k] = D.rts[i];
			member_of(who[k], now, &m[k]);
			k++;
		}
	lmd_policy_marks(&D.conf, sc->s.limit, &sc->low, &sc->high);
	/* cgroup v1 has no pressure of its own: the machine's stalls say nothing about it. */
	double psi = sc->s.kind != LMD_SCOPE_V1 && sc->s.psi.valid ? sc->s.psi.some10 : -1;
	int prev = sc->state;
	double calm = prev >= LMD_STATE_PRESSURE ? 0 :
		      sc->calm_ns ? (double)(now - sc->calm_ns) / 1e9 : 1e9;
	/* The fall, halved each look: one jump counts, a steady climb counts fully. */
	if (sc->last_available && dt > 0) {
		double f = ((double)sc->last_available - (double)sc->s.available) / dt;
		sc->fall = sc->fall / 2 + (f > 0 ? f : 0) / 2;
	}
	sc->last_available = sc->s.available;
	uint64_t ahead = lmd_policy_ahead(&D.conf, sc->s.available, sc->fall);
	sc->state = lmd_policy_decide(&D.conf, sc->s.limit, sc->s.available, ahead, psi, dt, calm, m,
				      (size_t)k);
	if (sc->state >= LMD_STATE_PRESSURE && !sc->onset_ns) {
		sc->onset_ns = now;
		sc->reacted = false;
	} else if (sc->state < LMD_STATE_PRESSURE && sc->onset_ns) {
		sc->onset_ns = 0;
		sc->calm_ns = now;
	}
	if (sc->state != prev)
		logmsg(sc->state >= LMD_STATE_PRESSURE ? 1 : 2,
		       "%s: %s (limit %llu, available %llu, low mark %llu, high %llu)",
		       scope_name(&sc->s), lmd_state_name(sc->state),
		       (unsigned long long)sc->s.limit, (unsigned long long)sc->s.available,
		       (unsigned long long)sc->low, (unsigned long long)sc->high);
	for (int i = 0; i < k; i++) {
		struct conn *c = who[i];
		c->want = m[i].want;
		c->why = m[i].why;
		if (D.conf.enabled && !c->refused && !c->nwait && worth_sending(c, c->want))
			policy_send(c, c->want);
	}
out:
	free(m);
	free(who);
}

static void policy_tick(void)
{
	uint64_t exp;
	if (read(D.ptimerfd, &exp, sizeof(exp)) < 0) {
		/* Nothing to do: the next expiry comes anyway. */
	}
	uint64_t now = now_ns();
	double dt = D.policy_ns ? (double)(now - D.policy_ns) / 1e9 : (double)D.conf.interval_ms / 1e3;
	D.policy_ns = now;
	assign_scopes(now);
	for (int i = 0; i < D.nscopes; i++) {
		struct scope *sc = &D.scopes[i];
		if (!sc->members)
			continue;
		if (lmd_scope_read(&sc->s) < 0) {
			/* The cgroup went: its runtimes are looked up again next time. */
			for (uint32_t j = 0; j < D.nruntimes; j++)
				if (D.rts[j]->scope == i)
					D.rts[j]->scope_ns = 0;
			continue;
		}
		policy_scope(sc, now, dt);
	}
}

/* The reply to "pressure": what the policy sees, what it did and why. */
static int format_pressure(const struct conn *client, char *buf, size_t len)
{
	struct lmd_out o = { buf, len, 0 };
#define OUT(...) lmd_put(&o, __VA_ARGS__)
	char a[5][24];
	lmd_size_str(D.conf.low_min, a[0], sizeof(a[0]));
	lmd_size_str(D.conf.floor, a[1], sizeof(a[1]));
	OUT("policy %s: every %llu ms; low %.3g%% (at least %s), high %.3g%%, psi %.3g%%, hold %.3gs, "
	    "floor %s, proactive %s (target %.3g%%, step %.3g%%/s)\n",
	    D.conf.enabled ? "on" : "off (watching only)", (unsigned long long)D.conf.interval_ms,
	    D.conf.low_pct, a[0], D.conf.high_pct, D.conf.psi_some, D.conf.hold_s, a[1],
	    D.conf.proactive ? "on" : "off", D.conf.target, D.conf.step);
	OUT("budgets lowered %llu, raised %llu, refused %llu; last reaction %.0f ms\n",
	    (unsigned long long)D.lowered, (unsigned long long)D.raised,
	    (unsigned long long)D.policy_errors, D.last_reaction_ms);
	for (int i = 0; i < D.nscopes; i++) {
		const struct scope *sc = &D.scopes[i];
		if (!sc->members)
			continue;
		lmd_size_str(sc->s.limit, a[0], sizeof(a[0]));
		lmd_size_str(sc->s.usage, a[1], sizeof(a[1]));
		lmd_size_str(sc->s.available, a[2], sizeof(a[2]));
		lmd_size_str(sc->low, a[3], sizeof(a[3]));
		lmd_size_str(sc->high, a[4], sizeof(a[4]));
		static const char *const kinds[] = { "", " (cgroup v1)", " (cgroup v2)" };
		OUT("\nscope %s%s: %s\n", scope_name(&sc->s), kinds[sc->s.kind % 3],
		    lmd_state_name(sc->state));
		char psi[24] = "-";
		if (sc->s.psi.valid)
			snprintf(psi, sizeof(psi), "%.2f%%", sc->s.psi.some10);
		OUT("  limit %s  usage %s  available %s  low %s  high %s  psi %s  oom kills %llu\n",
		    a[0], a[1], a[2], a[3], a[4], psi, (unsigned long long)sc->s.oom_kills);
		lmd_size_str((uint64_t)sc->fall, a[0], sizeof(a[0]));
		OUT("  falling %s/s, %.3gs ahead: taken as available %s\n", a[0], D.conf.lookahead_s,
		    (lmd_size_str(lmd_policy_ahead(&D.conf, sc->s.available, sc->fall), a[1],
				  sizeof(a[1])),
		     a[1]));
		OUT("  %8s %6s %-16s %9s %9s %9s %9s %9s %7s %s\n", "PID", "UID", "NAME", "RESIDENT",
		    "BUDGET", "OWN", "FLOOR", "WANT", "STALL%", "WHY");
		for (uint32_t j = 0; j < D.nruntimes; j++) {
			const struct conn *c = D.rts[j];
			if (c->scope != i || !may_see(client, c))
				continue;
			struct lm_stats st;
			lmd_stats_load(c->page, c->pagelen, &st);
			uint64_t ps = st.page_size ? st.page_size : 4096;
			uint64_t fl = st.budget_min_bytes ? st.budget_min_bytes : D.conf.floor;
			char r[24], b[24], w[24], f[24], ow[24];
			lmd_size_str(st.resident_pages * ps, r, sizeof(r));
			if (st.budget_bytes)
				lmd_size_str(st.budget_bytes, b, sizeof(b));
			else
				snprintf(b, sizeof(b), "-");
			if (c->own)
				lmd_size_str(c->own, ow, sizeof(ow));
			else
				snprintf(ow, sizeof(ow), "-");
			lmd_size_str(fl, f, sizeof(f));
			if (c->want)
				lmd_size_str(c->want, w, sizeof(w));
			else
				snprintf(w, sizeof(w), "-");
			OUT("  %8d %6u %-16s %9s %9s %9s %9s %9s %7.2f %s%s\n", (int)c->pid,
			    (unsigned)c->uid, c->name, r, b, ow, f, w, c->stall, lmd_why_name(c->why),
			    c->refused ? " (refused: left alone)" : "");
		}
	}
	uint64_t first = D.nactions > MAX_ACTIONS ? D.nactions - MAX_ACTIONS : 0;
	OUT("\nrecent actions (%llu in all):\n", (unsigned long long)D.nactions);
	for (uint64_t i = first; i < D.nactions; i++) {
		const struct action *x = &D.actions[i % MAX_ACTIONS];
		if (client->uid != 0 && client->uid != x->uid)
			continue;
		time_t t = (time_t)(x->wall_ms / 1000);
		struct tm tm;
		char when[32], f[24], to[24], av[24], lo[24];
		strftime(when, sizeof(when), "%F %T", localtime_r(&t, &tm));
		if (x->from)
			lmd_size_str(x->from, f, sizeof(f));
		else
			snprintf(f, sizeof(f), "none");
		if (x->to)
			lmd_size_str(x->to, to, sizeof(to));
		else
			snprintf(to, sizeof(to), "none");
		lmd_size_str(x->available, av, sizeof(av));
		lmd_size_str(x->low, lo, sizeof(lo));
		OUT("  %s.%03u pid %d (%s) budget %s -> %s: %s; %s %s, available %s, low mark %s\n",
		    when, (unsigned)(x->wall_ms % 1000), (int)x->pid, x->name, f, to,
		    lmd_why_name(x->why), x->scope, lmd_state_name(x->state), av, lo);
	}
#undef OUT
	return (int)o.need;
}

static void pressure(struct conn *c)
{
	int need = format_pressure(c, NULL, 0);
	char *buf = malloc((size_t)need + 1);
	if (!buf) {
		reply_error(c, "ENOMEM", "out of memory");
		return;
	}
	format_pressure(c, buf, (size_t)need + 1);
	reply_body(c, buf, (size_t)need);
	free(buf);
}

/* ---- the daemon's own metrics, and HTTP for Prometheus ----------------------------------------- */

static void self_metric(struct lmd_out *o, const char *name, const char *type, const char *help)
{
	lmd_put(o, "# HELP lazymemd_%s %s\n# TYPE lazymemd_%s %s\n", name, help, name, type);
}

/* lazymemd_*: the daemon itself and its pressure policy, after the runtimes' counters. */
static size_t format_self(char *buf, size_t len)
{
	struct lmd_out o = { buf, len, 0 };
	self_metric(&o, "build_info", "gauge", "The daemon's version and protocol, as labels");
	lmd_put(&o, "lazymemd_build_info{version=\"%s\",protocol=\"%d\"} 1\n", PACKAGE_VERSION,
	     LMD_PROTOCOL);
	self_metric(&o, "runtimes", "gauge", "Runtimes registered");
	lmd_put(&o, "lazymemd_runtimes %u\n", D.nruntimes);
	self_metric(&o, "connections", "gauge", "Open connections: runtimes, clients and HTTP");
	lmd_put(&o, "lazymemd_connections %u\n", D.nconns);
	static const char *const kinds[] = { "http", "list", "stats", "json", "metrics", "budget",
					     "version", "help", "hello", "min", "pressure" };
	_Static_assert(sizeof(kinds) / sizeof(kinds[0]) == LMD_REQ_PRESSURE + 1, "a name per kind");
	self_metric(&o, "requests_total", "counter", "Requests served, by kind");
	for (int i = 0; i <= LMD_REQ_PRESSURE; i++)
		lmd_put(&o, "lazymemd_requests_total{kind=\"%s\"} %llu\n", kinds[i],
		     (unsigned long long)D.requests[i]);
	self_metric(&o, "refusals_total", "counter", "Requests and connections refused, by reason");
	for (int i = 0; i < REF_COUNT; i++)
		lmd_put(&o, "lazymemd_refusals_total{reason=\"%s\"} %llu\n", refusal_names[i],
		     (unsigned long long)D.refusals[i]);
	self_metric(&o, "policy_info", "gauge", "The pressure policy's switches, as labels");
	lmd_put(&o, "lazymemd_policy_info{policy=\"%s\",proactive=\"%s\"} 1\n",
	     D.conf.enabled ? "on" : "off", D.conf.proactive ? "on" : "off");
	self_metric(&o, "policy_budgets_lowered_total", "counter",
		    "Budgets the pressure policy lowered, acknowledged");
	lmd_put(&o, "lazymemd_policy_budgets_lowered_total %llu\n", (unsigned long long)D.lowered);
	self_metric(&o, "policy_budgets_raised_total", "counter",
		    "Budgets the pressure policy raised or lifted, acknowledged");
	lmd_put(&o, "lazymemd_policy_budgets_raised_total %llu\n", (unsigned long long)D.raised);
	self_metric(&o, "policy_budgets_refused_total", "counter",
		    "Budgets of the pressure policy a runtime refused");
	lmd_put(&o, "lazymemd_policy_budgets_refused_total %llu\n",
	     (unsigned long long)D.policy_errors);
	self_metric(&o, "policy_reaction_seconds", "gauge",
		    "The last time from the onset of pressure to a budget lowered");
	lmd_put(&o, "lazymemd_policy_reaction_seconds %.3f\n", D.last_reaction_ms / 1000);
	/* One sample per scope with runtimes; the machine is scope="machine". */
	static const char *const fams[][3] = {
		{ "scope_limit_bytes", "gauge", "A scope's memory limit (the machine: MemTotal)" },
		{ "scope_available_bytes", "gauge", "A scope's memory left, inactive file pages included" },
		{ "scope_oom_kills_total", "counter", "OOM kills in a scope, as the kernel counts them" },
		{ "scope_state_info", "gauge", "A scope's state for the pressure policy, as a label" },
	};
	for (size_t f = 0; f < sizeof(fams) / sizeof(fams[0]); f++) {
		self_metric(&o, fams[f][0], fams[f][1], fams[f][2]);
		for (int i = 0; i < D.nscopes; i++) {
			const struct scope *sc = &D.scopes[i];
			if (!sc->members)
				continue;
			char esc[2 * LMD_SCOPE_PATH];
			lmd_escape_label(sc->s.kind == LMD_SCOPE_SYSTEM ? "machine" : sc->s.path, esc,
					 sizeof(esc));
			uint64_t v = f == 0 ? sc->s.limit : f == 1 ? sc->s.available : sc->s.oom_kills;
			if (f == 3)
				lmd_put(&o, "lazymemd_scope_state_info{scope=\"%s\",state=\"%s\"} 1\n", esc,
				     lmd_state_name(sc->state));
			else
				lmd_put(&o, "lazymemd_%s{scope=\"%s\"} %llu\n", fams[f][0], esc,
				     (unsigned long long)v);
		}
	}
	return o.need;
}

/* The metrics request's formatter: every runtime's counters, then the daemon's own. */
static int metrics_all(const struct lmd_proc *procs, size_t n, char *buf, size_t len)
{
	int k = lmd_format_metrics(procs, n, buf, len);
	if (k < 0)
		return k;
	size_t at = (size_t)k < len ? (size_t)k : len;
	size_t self = format_self(len > at ? buf + at : NULL, len > at ? len - at : 0);
	if ((size_t)k + self > 0x7fffffff)
		return -EOVERFLOW;
	return k + (int)self;
}

/* A whole small HTTP reply; the connection closes once it is out. */
static void http_reply(struct conn *c, int code, const char *reason, const char *extra,
		       const char *body)
{
	char buf[512];
	int k = snprintf(buf, sizeof(buf),
			 "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
			 "Content-Length: %zu\r\n%sConnection: close\r\n\r\n%s",
			 code, reason, strlen(body), extra, c->http_head ? "" : body);
	if (k < 0 || (size_t)k >= sizeof(buf) || !queue(c, buf, (size_t)k))
		c->closing = true;
	c->closing = true;
}

/*
 * One request: GET or HEAD of /metrics (what Prometheus scrapes) or of
 * / (a line saying where the metrics are); HTTP/1.0 and 1.1.  The
 * headers are read and ignored; every reply closes the connection.
 */
static void http_request(struct conn *c, const char *line, size_t len)
{
	D.requests[0]++;
	char method[8], target[LMD_LINE_MAX + 1], version[16];
	char copy[LMD_LINE_MAX + 1];
	snprintf(copy, sizeof(copy), "%.*s", (int)len, line);
	if (sscanf(copy, "%7s %256s %15s", method, target, version) != 3 ||
	    strncmp(version, "HTTP/1.", 7) || target[0] != '/') {
		D.refusals[REF_MALFORMED]++;
		http_reply(c, 400, "Bad Request", "", "malformed request line\n");
		return;
	}
	c->http_head = !strcmp(method, "HEAD");
	if (strcmp(method, "GET") && !c->http_head) {
		D.refusals[REF_MALFORMED]++;
		http_reply(c, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", "GET or HEAD\n");
		return;
	}
	target[strcspn(target, "?#")] = '\0';
	if (!strcmp(target, "/metrics")) {
		reply_formatted(c, metrics_all, 0, &D.hint[3]);
		c->closing = true;
	} else if (!strcmp(target, "/")) {
		http_reply(c, 200, "OK", "", "lazymemd: the metrics are at /metrics\n");
	} else {
		http_reply(c, 404, "Not Found", "", "not found: the metrics are at /metrics\n");
	}
}

/*
 * Reads an HTTP request: the request line into c->in (at most a
 * request line's worth), then the headers, skipped byte by byte up to
 * the empty line without keeping them, at most 16 KiB.
 */
static void http_input(struct conn *c)
{
	char skip[1024];
	while (!c->closing && c->outoff == c->outlen) {
		char *dst = c->http_line ? skip : c->in + c->nin;
		size_t room = c->http_line ? sizeof(skip) : sizeof(c->in) - c->nin;
		ssize_t n = recv(c->fd, dst, room, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			conn_close(c, n < 0 ? strerror(errno) : "end of file");
			return;
		}
		c->last_ns = now_ns();
		const char *p = dst, *end = dst + n;
		if (!c->http_line) {
			c->nin += (size_t)n;
			char *nl = memchr(c->in, '\n', c->nin);
			if (!nl) {
				if (c->nin == sizeof(c->in)) {
					D.refusals[REF_MALFORMED]++;
					http_reply(c, 414, "URI Too Long", "", "request line too long\n");
				}
				continue;
			}
			c->http_line = true;
			c->http_eol = true;
			p = nl + 1;
			end = c->in + c->nin;
			c->nin = (size_t)(nl - c->in);
			if (c->nin && c->in[c->nin - 1] == '\r')
				c->nin--;
		}
		for (; p < end; p++) {
			c->http_bytes++;
			if (*p == '\n' && c->http_eol) {
				http_request(c, c->in, c->nin);
				break;
			}
			if (*p != '\r')
				c->http_eol = *p == '\n';
		}
		if (!c->closing && c->http_bytes > 16384) {
			D.refusals[REF_MALFORMED]++;
			http_reply(c, 431, "Request Header Fields Too Large", "", "headers too large\n");
		}
	}
	flush_out(c);
}

static void hello(struct conn *c, const struct lmd_request *r)
{
	int fd = c->passed_fd;
	c->passed_fd = -1;
	if (c->runtime) {
		reply_error(c, "EALREADY", "this connection already said hello");
	} else if (fd < 0) {
		reply_error(c, "EINVAL", "hello needs the runtime's stats page (SCM_RIGHTS)");
	} else if (!user_may(c->uid, true)) {
		reply_error(c, "EMFILE", "uid %u has its share of runtimes (%llu)", (unsigned)c->uid,
			    (unsigned long long)D.conf.user_runtimes);
		D.refusals[REF_RUNTIMES]--;	/* counted as the user's limit, not the table's */
	} else if (D.nruntimes >= MAX_RUNTIMES) {
		reply_error(c, "EMFILE", "too many runtimes");
	} else {
		/*
		 * Only a sealed memfd that cannot shrink is mapped: a file
		 * truncated under the mapping would SIGBUS the daemon.  And
		 * only one of tmpfs, what memfd_create makes for a runtime:
		 * a sealed file of another filesystem (a hugetlb memfd) is
		 * not a stats page, whether or not it could be mapped.
		 */
		struct stat sb;
		struct statfs fs;
		int seals = fcntl(fd, F_GET_SEALS);
		void *p = MAP_FAILED;
		size_t len = 0;
		if (seals >= 0 && (seals & F_SEAL_SHRINK) && fstatfs(fd, &fs) == 0 &&
		    fs.f_type == TMPFS_MAGIC && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) &&
		    sb.st_size >= (off_t)(offsetof(struct lm_stats, faults_missing) + 8)) {
			len = sb.st_size > STATS_MAP_MAX ? STATS_MAP_MAX : (size_t)sb.st_size;
			p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
		}
		if (p == MAP_FAILED) {
			reply_error(c, "EINVAL", "the stats page is not a sealed memfd of a stats page");
		} else {
			c->runtime = true;
			c->page = p;
			c->pagelen = len;
			snprintf(c->name, sizeof(c->name), "%.*s", (int)r->name_len, r->name);
			snprintf(c->version, sizeof(c->version), "%.*s", (int)r->version_len,
				 r->version);
			struct lm_stats st;
			lmd_stats_load(p, len, &st);
			c->faults_last = st.faults_missing + st.faults_wp;
			c->rate_ns = now_ns();
			c->own = c->applied = st.budget_bytes;
			c->scope = -1;
			D.rts[D.nruntimes++] = c;
			struct ucount *u = ucount_of(c->uid, true);
			if (u)
				u->runtimes++;
			logmsg(2, "runtime %d (%s, uid %u, lazymem %s) registered", (int)c->pid,
			       c->name, (unsigned)c->uid, c->version);
			reply_body(c, "", 0);
		}
	}
	if (fd >= 0)
		close(fd);
}

static void budget(struct conn *c, const struct lmd_request *r)
{
	int found = 0;
	bool denied = false;
	for (uint32_t i = 0; i < D.nruntimes; i++) {
		struct conn *rt = D.rts[i];
		if (rt->pid != r->pid)
			continue;
		if (!may_see(c, rt)) {
			denied = true;
			continue;
		}
		if (rt->nwait == MAX_WAITERS) {
			reply_error(c, "EBUSY", "process %d has budget requests pending", (int)r->pid);
			return;
		}
		found++;
	}
	if (!found) {
		if (denied)
			reply_error(c, "EPERM", "process %d belongs to another user: not yours to budget",
				    (int)r->pid);
		else
			reply_error(c, "ESRCH", "no lazymem runtime reports from process %d",
				    (int)r->pid);
		return;
	}
	bool min = r->kind == LMD_REQ_MIN;
	char line[64];
	int k = snprintf(line, sizeof(line), "%s %llu\n", min ? "min" : "budget",
			 (unsigned long long)r->bytes);
	c->waiting = 0;
	c->wait_err[0] = '\0';
	c->wait_seq++;
	for (uint32_t i = 0; i < D.nruntimes; i++) {
		struct conn *rt = D.rts[i];
		if (rt->pid != r->pid || !may_see(c, rt))
			continue;
		if (!queue(rt, line, (size_t)k))
			continue;
		rt->waiters[rt->nwait++] = (struct waiter){ c->slot, c->gen, c->wait_seq, r->bytes };
		c->waiting++;
		if (!min) {
			/* The operator's budget is the one the policy gives back when pressure is gone. */
			rt->own = rt->applied = r->bytes;
			rt->refused = false;
		}
		/* Sent from the event loop: a runtime that fails here must not close under us. */
		watch(rt);
	}
	if (!c->waiting) {
		reply_error(c, "EBUSY", "could not pass the budget on");
		return;
	}
	c->wait_pid = r->pid;
	c->wait_bytes = r->bytes;
	c->wait_min = min;
	c->wait_deadline = now_ns() + BUDGET_NS;
	logmsg(2, "uid %u sets the %s of %d to %llu bytes", (unsigned)c->uid,
	       min ? "least budget" : "budget", (int)r->pid, (unsigned long long)r->bytes);
}

/* Every runtime asked has answered (or gone, or timed out): the client gets one reply. */
static void budget_done(struct conn *c)
{
	if (c->wait_err[0]) {
		if (!queue(c, c->wait_err, strlen(c->wait_err)))
			c->closing = true;
	} else {
		char body[96];
		int k = snprintf(body, sizeof(body), "pid %d %s %llu\n", (int)c->wait_pid,
				 c->wait_min ? "min" : "budget", (unsigned long long)c->wait_bytes);
		reply_body(c, body, (size_t)k);
	}
	c->waiting = 0;
}

/* A line from a runtime: the answer to the oldest budget request sent to it. */
static void runtime_line(struct conn *c, const char *line, size_t len)
{
	if (!c->nwait) {
		logmsg(3, "runtime %d: unexpected line ignored", (int)c->pid);
		return;
	}
	struct waiter w = c->waiters[0];
	memmove(c->waiters, c->waiters + 1, (size_t)--c->nwait * sizeof(c->waiters[0]));
	if (w.slot == POLICY_SLOT) {
		policy_answer(c, &w, len >= 2 && !memcmp(line, "ok", 2), line, len);
		return;
	}
	struct conn *client = conn_at(w.slot, w.gen);
	if (!client || client->waiting <= 0 || client->wait_seq != w.seq)
		return;
	if (len > 6 && !memcmp(line, "error ", 6) && !client->wait_err[0]) {
		/* Relayed as it came, after a check that it is one printable line. */
		size_t n = len < sizeof(client->wait_err) - 2 ? len : sizeof(client->wait_err) - 2;
		for (size_t i = 0; i < n; i++)
			client->wait_err[i] = line[i] >= ' ' && line[i] <= '~' ? line[i] : '?';
		client->wait_err[n] = '\n';
		client->wait_err[n + 1] = '\0';
	} else if (!(len >= 2 && !memcmp(line, "ok", 2)) && !client->wait_err[0]) {
		snprintf(client->wait_err, sizeof(client->wait_err),
			 "error EPROTO process %d answered nonsense\n", (int)c->pid);
	}
	if (--client->waiting == 0) {
		budget_done(client);
		conn_input(client);	/* the reply, then any request queued behind it */
	}
}

static const char help_text[] =
	"requests, one a line:\n"
	"  list               processes and their lazy memory, a table\n"
	"  stats [PID]        every counter, per process, as key value lines\n"
	"  json [PID]         the same as one JSON object\n"
	"  metrics            Prometheus text exposition format\n"
	"  budget PID BYTES   set a process's memory budget (K, M, G, T suffixes)\n"
	"  min PID BYTES      the least budget the pressure policy may give it\n"
	"  pressure           what the pressure policy sees, what it did and why\n"
	"  version            the daemon's version and protocol\n"
	"  help               this text\n"
	"replies: \"ok LENGTH\" and LENGTH bytes, or \"error NAME message\"\n";

static void request(struct conn *c, const char *line, size_t len)
{
	/* From a runtime, a line is an answer, but a second hello is a request to refuse. */
	if (c->runtime && !(len >= 6 && !memcmp(line, "hello ", 6))) {
		runtime_line(c, line, len);
		return;
	}
	struct lmd_request r;
	const char *why;
	D.served++;
	if (lmd_parse(line, len, &r, &why) < 0) {
		reply_error(c, "EINVAL", "%s", why);
		return;
	}
	if (r.kind > 0 && r.kind <= LMD_REQ_PRESSURE)
		D.requests[r.kind]++;
	switch (r.kind) {
	case LMD_REQ_LIST:
		reply_formatted(c, lmd_format_list, 0, &D.hint[0]);
		break;
	case LMD_REQ_STATS:
		reply_formatted(c, lmd_format_stats, r.pid, &D.hint[1]);
		break;
	case LMD_REQ_JSON:
		reply_formatted(c, lmd_format_json, r.pid, &D.hint[2]);
		break;
	case LMD_REQ_METRICS:
		reply_formatted(c, metrics_all, 0, &D.hint[3]);
		break;
	case LMD_REQ_BUDGET:
	case LMD_REQ_MIN:
		budget(c, &r);
		break;
	case LMD_REQ_PRESSURE:
		pressure(c);
		break;
	case LMD_REQ_VERSION: {
		char body[96];
		int k = snprintf(body, sizeof(body), "lazymemd %s protocol %d pid %d\n",
				 PACKAGE_VERSION, LMD_PROTOCOL, (int)getpid());
		reply_body(c, body, (size_t)k);
		break;
	}
	case LMD_REQ_HELP:
		reply_body(c, help_text, sizeof(help_text) - 1);
		break;
	case LMD_REQ_HELLO:
		hello(c, &r);
		break;
	}
}

/* Keeps at most one descriptor that came along (hello's page); closes the rest. */
static void take_fds(struct conn *c, struct msghdr *m)
{
	for (struct cmsghdr *h = CMSG_FIRSTHDR(m); h; h = CMSG_NXTHDR(m, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
			if (c->passed_fd < 0 && !c->runtime)
				c->passed_fd = fd;
			else
				close(fd);
		}
	}
}

/* Reads and serves one request at a time: a reply must be out before the next is read. */
static void conn_input(struct conn *c)
{
	if (c->http) {
		http_input(c);
		return;
	}
	for (;;) {
		/* A reply goes out before the next request is read: pipelined lines wait here. */
		if (c->outoff < c->outlen) {
			if (!flush_out(c))
				return;
			if (c->outoff < c->outlen)
				return;
		}
		if (c->waiting || c->closing)
			break;
		char *nl = memchr(c->in, '\n', c->nin);
		if (nl) {
			size_t len = (size_t)(nl - c->in), used = len + 1;
			if (c->discard)
				c->discard = false;
			else
				request(c, c->in, len);
			if (D.conns[c->slot] != c)
				return;
			memmove(c->in, c->in + used, c->nin - used);
			c->nin -= used;
			c->last_ns = now_ns();
			continue;
		}
		if (c->nin > LMD_LINE_MAX) {
			/* Too long to be a request: say so once and skip to its end. */
			if (!c->discard)
				reply_error(c, "EINVAL", "request line too long (at most %d bytes)",
					    LMD_LINE_MAX);
			if (c->runtime)
				c->closing = true;
			c->discard = true;
			c->nin = 0;
			continue;
		}
		union {
			struct cmsghdr h;
			char buf[CMSG_SPACE(4 * sizeof(int))];
		} ctl;
		struct iovec iov = { c->in + c->nin, sizeof(c->in) - c->nin };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
				    .msg_controllen = sizeof(ctl.buf) };
		ssize_t n = recvmsg(c->fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		/* A failed recvmsg leaves msg_controllen as it was: nothing came. */
		if (n > 0 && m.msg_controllen)
			take_fds(c, &m);
		if (n <= 0) {
			conn_close(c, n < 0 ? strerror(errno) : "end of file");
			return;
		}
		c->nin += (size_t)n;
	}
	flush_out(c);
}

static void conn_event(struct conn *c, uint32_t events)
{
	if (events & EPOLLRDHUP)
		c->rdhup = true;
	/* Gone for good while it waits for runtimes: nothing to answer to. */
	if ((events & (EPOLLHUP | EPOLLERR)) && c->waiting) {
		conn_close(c, "hung up");
		return;
	}
	if (events & EPOLLOUT) {
		if (!flush_out(c))
			return;
		conn_input(c);	/* requests that came while the reply went out */
		return;
	}
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		conn_input(c);
}

/* A listening socket that cannot accept (out of descriptors) must not spin. */
static void accept_all(int lfd, bool http)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			/*
			 * Out of descriptors: the spare one makes room to take the
			 * connection and close it, so that it is refused rather
			 * than left to wake the loop for ever.  Linux says EMFILE
			 * even with nothing pending: then accept() finds nothing.
			 */
			if ((errno == EMFILE || errno == ENFILE) && D.spare_fd >= 0) {
				close(D.spare_fd);
				fd = accept(lfd, NULL, NULL);
				if (fd >= 0)
					close(fd);
				D.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
				if (fd < 0)
					return;
				logmsg(1, "out of file descriptors: a connection was refused");
				continue;
			}
			return;
		}
		/*
		 * HTTP peers have no credentials: the operator chose who can
		 * reach the address, and they see what root sees.
		 */
		struct ucred cred = { 0, 0, 0 };
		socklen_t cl = sizeof(cred);
		if (!http && getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
			close(fd);
			continue;
		}
		if (!http && !user_may(cred.uid, false)) {
			static const char mine[] = "error EMFILE this user has its share of connections\n";
			if (send(fd, mine, sizeof(mine) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
				/* The client learns it from the closed connection anyway. */
			}
			close(fd);
			continue;
		}
		uint32_t slot = 0;
		if (D.nconns < MAX_CONNS)
			while (D.conns[slot])
				slot++;
		struct conn *c = D.nconns < MAX_CONNS ? calloc(1, sizeof(*c)) : NULL;
		if (!c) {
			static const char full[] = "error EMFILE too many connections\n";
			static const char full_http[] = "HTTP/1.1 503 Service Unavailable\r\n"
							"Content-Length: 0\r\nConnection: close\r\n\r\n";
			D.refusals[REF_CONNECTIONS]++;
			if (send(fd, http ? full_http : full,
				 http ? sizeof(full_http) - 1 : sizeof(full) - 1,
				 MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
				/* The client learns it from the closed connection anyway. */
			}
			close(fd);
			continue;
		}
		c->fd = fd;
		c->slot = slot;
		c->gen = ++D.gens[slot];
		c->pid = cred.pid;
		c->uid = cred.uid;
		c->gid = cred.gid;
		c->passed_fd = -1;
		c->http = http;
		c->last_ns = now_ns();
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.u64 = tag_of(c) };
		if (epoll_ctl(D.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c);
			continue;
		}
		D.conns[slot] = c;
		D.nconns++;
		struct ucount *u = http ? NULL : ucount_of(c->uid, true);
		if (u)
			u->conns++;
	}
}

/* Once a second: fault rates, and connections that stalled or idled too long. */
static void tick(void)
{
	uint64_t exp;
	if (read(D.timerfd, &exp, sizeof(exp)) < 0) {
		/* Nothing to do: the next expiry comes anyway. */
	}
	uint64_t now = now_ns();
	for (uint32_t s = 0; s < MAX_CONNS; s++) {
		struct conn *c = D.conns[s];
		if (!c)
			continue;
		if (c->runtime) {
			struct lm_stats st;
			lmd_stats_load(c->page, c->pagelen, &st);
			uint64_t f = st.faults_missing + st.faults_wp;
			double dt = (double)(now - c->rate_ns) / 1e9;
			c->rate = dt > 0 && f >= c->faults_last ? (double)(f - c->faults_last) / dt : 0;
			c->faults_last = f;
			c->rate_ns = now;
		}
		if (c->waiting && now > c->wait_deadline) {
			snprintf(c->wait_err, sizeof(c->wait_err),
				 "error ETIMEDOUT process %d did not answer in time\n", (int)c->wait_pid);
			budget_done(c);
			conn_input(c);
			if (D.conns[s] != c)
				continue;
		}
		/* Signed: a flush above may have stamped last_ns after now. */
		if (c->outoff < c->outlen && (int64_t)(now - c->last_ns) > (int64_t)STALL_NS)
			conn_close(c, "it stopped reading its reply");
		else if (c->http && (int64_t)(now - c->last_ns) > (int64_t)HTTP_IDLE_NS)
			conn_close(c, "an HTTP request not sent in time");
		else if (!c->runtime && !c->waiting && (int64_t)(now - c->last_ns) > (int64_t)IDLE_NS)
			conn_close(c, "idle");
	}
}

/* ---- the socket ----------------------------------------------------------------------------- */

/* systemd's socket activation, without libsystemd: LISTEN_PID, LISTEN_FDS, fd 3. */
static int activated_socket(void)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
	if (!pid || !fds || atol(pid) != (long)getpid())
		return -1;
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	int n = atoi(fds), unix_fd = -1;
	if (n < 1 || n > 2) {
		logmsg(0, "LISTEN_FDS=%s: one unix socket and at most one TCP socket (HTTP)", fds);
		return n < 1 ? -1 : -2;
	}
	/* The unix one for runtimes and clients, a TCP one (lazymemd-http.socket) for /metrics. */
	for (int fd = 3; fd < 3 + n; fd++) {
		int type = 0, acc = 0;
		socklen_t l = sizeof(type);
		struct sockaddr_storage ss;
		socklen_t al = sizeof(ss);
		if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0 || type != SOCK_STREAM ||
		    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &(socklen_t){ sizeof(acc) }) < 0 ||
		    !acc || getsockname(fd, (struct sockaddr *)&ss, &al) < 0 ||
		    (ss.ss_family == AF_UNIX ? unix_fd >= 0 : D.hfd >= 0 ||
		     (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))) {
			logmsg(0, "LISTEN_FDS: descriptor %d is not a listening unix or TCP stream socket, "
				  "or a second one of its kind", fd);
			return -2;
		}
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		if (ss.ss_family != AF_UNIX) {
			D.hfd = fd;
			snprintf(D.http_addr, sizeof(D.http_addr), "socket activation");
			continue;
		}
		unix_fd = fd;
		struct sockaddr_un *a = (struct sockaddr_un *)&ss;
		if (al > offsetof(struct sockaddr_un, sun_path) && a->sun_path[0])
			snprintf(D.path, sizeof(D.path), "%.*s",
				 (int)(al - offsetof(struct sockaddr_un, sun_path)), a->sun_path);
	}
	return unix_fd;
}

static int mkdirs(const char *path, uid_t uid)
{
	char dir[sizeof(D.path)];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(dir, 0755) == 0) {
		/* Ours: the user we drop to must be able to remove the socket at exit. */
		if (uid != (uid_t)-1 && chown(dir, uid, (gid_t)-1) < 0)
			return -errno;
	} else if (errno != EEXIST) {
		return -errno;
	}
	return 0;
}

static int listen_on(const char *path, gid_t group, uid_t owner)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	int rc = mkdirs(path, owner);
	if (rc < 0) {
		logmsg(0, "cannot create the directory of %s: %s", path, strerror(-rc));
		return -1;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	/* A socket left by a daemon that died is replaced; a live daemon is not. */
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
		logmsg(0, "another lazymemd already listens on %s", path);
		close(fd);
		return -1;
	}
	/* Only a socket is removed: -s naming a regular file by mistake must not delete it. */
	struct stat sb;
	if (errno == ECONNREFUSED && lstat(path, &sb) == 0 && S_ISSOCK(sb.st_mode))
		unlink(path);
	close(fd);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	mode_t old = umask(0117);
	rc = bind(fd, (struct sockaddr *)&a, sizeof(a));
	umask(old);
	if (rc < 0) {
		logmsg(0, "cannot bind %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	D.own_socket = true;
	/*
	 * Anyone may connect unless a group is named: each connection's
	 * credentials decide what it sees and may do, and each user has a
	 * share of the tables (see lazymemd(8), Limits).
	 */
	if (chmod(path, group != (gid_t)-1 ? 0660 : 0666) < 0 ||
	    ((group != (gid_t)-1 || owner != (uid_t)-1) && chown(path, owner, group) < 0)) {
		logmsg(0, "cannot set the owner or mode of %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	if (listen(fd, 4096) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * The HTTP endpoint's socket, on the address the operator gave: an IPv4
 * or a bracketed IPv6 literal and a port ("127.0.0.1:9187",
 * "[::1]:9187").  Numbers only: no name lookup in a daemon that starts
 * before the network may be up.
 */
static int listen_http(const char *spec)
{
	char host[64], port[16];
	const char *colon = strrchr(spec, ':');
	size_t hl = colon ? (size_t)(colon - spec) : 0;
	if (hl >= 2 && spec[0] == '[' && spec[hl - 1] == ']') {
		spec++;
		hl -= 2;
	}
	if (!colon || !hl || hl >= sizeof(host) || !colon[1] || strlen(colon + 1) >= sizeof(port)) {
		logmsg(0, "--http %s: not ADDRESS:PORT (127.0.0.1:9187, [::1]:9187)", spec);
		return -1;
	}
	memcpy(host, spec, hl);
	host[hl] = '\0';
	snprintf(port, sizeof(port), "%s", colon + 1);
	struct addrinfo hints = { .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
				  .ai_socktype = SOCK_STREAM };
	struct addrinfo *ai;
	int rc = getaddrinfo(host, port, &hints, &ai);
	if (rc) {
		logmsg(0, "--http %s:%s: %s", host, port, gai_strerror(rc));
		return -1;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
		logmsg(0, "cannot listen on %s:%s for HTTP: %s", host, port, strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

/*
 * Least privilege: once the socket is bound the daemon needs no
 * capability at all.  It reads pages runtimes hand it, checks peers with
 * SO_PEERCRED and writes to sockets it holds, none of which is
 * privileged; removing its socket at exit needs only the ownership of
 * the directory, which -u gives the user.  So every capability goes,
 * from the bounding set too, and no exec can win one back.
 */
static int drop_privileges(uid_t uid, gid_t gid)
{
	/* The bounding set first: emptying it needs CAP_SETPCAP, which the user change takes. */
	for (cap_value_t v = 0; v <= CAP_LAST_CAP; v++)
		if (CAP_IS_SUPPORTED(v) && cap_drop_bound(v) < 0 && errno != EINVAL &&
		    errno != EPERM)
			break;
	if (uid != (uid_t)-1) {
		/* The log file stays reopenable on SIGHUP by the user the daemon becomes. */
		if (D.log_kind == 2 && chown(D.log_path, uid, gid) < 0)
			logmsg(1, "cannot give %s to uid %u: %s", D.log_path, (unsigned)uid,
			       strerror(errno));
		if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 ||
		    setresuid(uid, uid, uid) < 0) {
			logmsg(0, "cannot become uid %u: %s", (unsigned)uid, strerror(errno));
			return -1;
		}
	}
	cap_t none = cap_init();
	int rc = none ? cap_set_proc(none) : -1;
	if (none)
		cap_free(none);
	cap_reset_ambient();
	if (rc < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		logmsg(0, "cannot drop capabilities: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* ---- settings ---------------------------------------------------------------------------------- */

static const char *set_args[32];
static int set_count;

/*
 * The config file (a missing default one is no error: every setting has
 * a default), then the -o settings over it.  Errors name the file and
 * line.  The result replaces the settings only when all of it parsed.
 */
static int load_conf(const char *const *sets, int n)
{
	struct lmd_policy_conf c;
	lmd_policy_defaults(&c);
	const char *path = D.conf_path ? D.conf_path : LMD_CONF;
	int line = 0;
	const char *why = NULL;
	int rc = lmd_policy_load(&c, path, &line, &why);
	if (rc == -ENOENT && !D.conf_path)
		rc = 0;
	if (rc < 0) {
		if (rc == -EINVAL)
			logmsg(0, "%s:%d: %s", path, line, why);
		else
			logmsg(0, "cannot read %s: %s", path, strerror(-rc));
		return rc;
	}
	for (int i = 0; i < n; i++) {
		char key[64];
		const char *eq = strchr(sets[i], '=');
		if (!eq || (size_t)(eq - sets[i]) >= sizeof(key)) {
			logmsg(0, "-o %s: not KEY=VALUE", sets[i]);
			return -EINVAL;
		}
		memcpy(key, sets[i], (size_t)(eq - sets[i]));
		key[eq - sets[i]] = '\0';
		if (lmd_policy_set(&c, key, eq + 1, &why) < 0) {
			logmsg(0, "-o %s: %s", sets[i], why);
			return -EINVAL;
		}
	}
	D.conf = c;
	set_count = n < 32 ? n : 32;
	for (int i = 0; i < set_count; i++)
		set_args[i] = sets[i];
	return 0;
}

/* The policy looks every interval while it is on, and once a second for lazymem pressure while off. */
static int arm_policy(void)
{
	uint64_t ms = D.conf.enabled ? D.conf.interval_ms : 1000;
	struct itimerspec its = { { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000 },
				  { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000 } };
	return timerfd_settime(D.ptimerfd, 0, &its, NULL);
}

/* SIGHUP: the settings again, from the file and the same -o settings; kept as they were on error. */
static void reload_conf(void)
{
	if (load_conf(set_args, set_count) < 0) {
		logmsg(0, "SIGHUP: the settings were not changed");
		return;
	}
	arm_policy();
	logmsg(2, "SIGHUP: settings reloaded: policy %s, every %llu ms", D.conf.enabled ? "on" : "off",
	       (unsigned long long)D.conf.interval_ms);
}

/* Where the memory cgroups are (the v1 memory hierarchy, the v2 one, either or both), and the memory they divide. */
static void find_cgroups(void)
{
	D.mem_total = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
	struct statfs fs;
	if (statfs("/sys/fs/cgroup/memory", &fs) == 0 && fs.f_type == CGROUP_SUPER_MAGIC)
		snprintf(D.v1root, sizeof(D.v1root), "/sys/fs/cgroup/memory");
	if (statfs("/sys/fs/cgroup", &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC)
		snprintf(D.v2root, sizeof(D.v2root), "/sys/fs/cgroup");
	else if (statfs("/sys/fs/cgroup/unified", &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC)
		snprintf(D.v2root, sizeof(D.v2root), "/sys/fs/cgroup/unified");
}

/* ---- main -------------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lazymemd [-f] [-s SOCKET] [-g GROUP] [-u USER] [-l stderr|syslog|FILE] [-v]\n"
		"                [-c CONFIG] [-o KEY=VALUE]...\n"
		"  -f, --foreground   do not detach (logs to stderr unless -l says otherwise)\n"
		"  -s, --socket PATH  listen on PATH (default: $LAZYMEM_SOCKET, else\n"
		"                     /run/lazymem/lazymemd.sock for root,\n"
		"                     $XDG_RUNTIME_DIR/lazymem/lazymemd.sock otherwise)\n"
		"  -g, --group GROUP  the socket's group (mode 0660)\n"
		"  -u, --user USER    run as USER once the socket is bound (default for root:\n"
		"                     lazymem if that user exists, else nobody; -u root stays)\n"
		"  -l, --log WHERE    stderr, syslog, or a file (SIGHUP reopens it)\n"
		"  -c, --config FILE  the pressure policy's settings (default " LMD_CONF ")\n"
		"  -o, --set KEY=VALUE  one setting, over the file's (policy=off, proactive=on, ...)\n"
		"      --http ADDR:PORT  serve /metrics over HTTP there (127.0.0.1:9187, [::1]:9187)\n"
		"  -v, --verbose      more log (twice: debug)\n"
		"  -V, --version      print the version and exit\n");
}

/* A user or group not in the databases may still be given by number. */
static int numeric_id(const char *name, unsigned *id)
{
	char *end;
	unsigned long v = strtoul(name, &end, 10);
	if (!*name || *end || v > UINT32_MAX - 1)
		return -1;
	*id = (unsigned)v;
	return 0;
}

static int lookup_user(const char *name, uid_t *uid, gid_t *gid)
{
	struct passwd *pw = getpwnam(name);
	unsigned id;
	if (!pw && numeric_id(name, &id) < 0)
		return -1;
	*uid = pw ? pw->pw_uid : (uid_t)id;
	*gid = pw ? pw->pw_gid : (gid_t)id;
	return 0;
}

static int lookup_group(const char *name, gid_t *gid)
{
	struct group *gr = getgrnam(name);
	unsigned id;
	if (!gr && numeric_id(name, &id) < 0)
		return -1;
	*gid = gr ? gr->gr_gid : (gid_t)id;
	return 0;
}

/* Detaches; the parent exits once the child listens (or says why it cannot). */
static int daemonize(int *ready_fd)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid > 0) {
		close(p[1]);
		char ok = 0;
		ssize_t n = read(p[0], &ok, 1);
		_exit(n == 1 && ok == 1 ? 0 : 1);
	}
	close(p[0]);
	setsid();
	if (chdir("/") < 0)
		return -1;
	int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nul >= 0) {
		dup2(nul, 0);
		dup2(nul, 1);
		if (D.log_kind != 0)
			dup2(nul, 2);
		close(nul);
	}
	*ready_fd = p[1];
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longs[] = {
		{ "foreground", no_argument, NULL, 'f' }, { "socket", required_argument, NULL, 's' },
		{ "group", required_argument, NULL, 'g' }, { "user", required_argument, NULL, 'u' },
		{ "log", required_argument, NULL, 'l' }, { "verbose", no_argument, NULL, 'v' },
		{ "version", no_argument, NULL, 'V' }, { "help", no_argument, NULL, 'H' },
		{ "config", required_argument, NULL, 'c' }, { "set", required_argument, NULL, 'o' },
		{ "http", required_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sets[32];
	int nsets = 0;
	const char *http = NULL;
	lmd_policy_defaults(&D.conf);
	bool foreground = false, log_set = false;
	const char *sock = NULL;
	uid_t uid = (uid_t)-1;
	gid_t gid = (gid_t)-1, group = (gid_t)-1;
	int opt;
	while ((opt = getopt_long(argc, argv, "fs:g:u:l:vVc:o:", longs, NULL)) != -1) {
		switch (opt) {
		case 'c': D.conf_path = optarg; break;
		case 'p': http = optarg; break;
		case 'o':
			if (nsets == 32) {
				fprintf(stderr, "lazymemd: at most 32 -o settings\n");
				return 2;
			}
			sets[nsets++] = optarg;
			break;
		case 'f': foreground = true; break;
		case 's': sock = optarg; break;
		case 'g':
			if (lookup_group(optarg, &group) < 0) {
				fprintf(stderr, "lazymemd: no group %s\n", optarg);
				return 2;
			}
			break;
		case 'u':
			if (lookup_user(optarg, &uid, &gid) < 0) {
				fprintf(stderr, "lazymemd: no user %s\n", optarg);
				return 2;
			}
			break;
		case 'l':
			log_set = true;
			if (!strcmp(optarg, "stderr")) {
				D.log_kind = 0;
			} else if (!strcmp(optarg, "syslog")) {
				D.log_kind = 1;
			} else {
				D.log_kind = 2;
				D.log_path = optarg;
			}
			break;
		case 'v': D.verbosity++; break;
		case 'V': printf("lazymemd %s protocol %d\n", PACKAGE_VERSION, LMD_PROTOCOL); return 0;
		case 'H': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	if (load_conf(sets, nsets) < 0)
		return 2;
	/*
	 * Root only as long as it takes to bind: without -u the daemon
	 * becomes the lazymem user, else nobody (-u root keeps uid 0, without
	 * capabilities all the same).  Nothing it does afterwards needs more:
	 * the pages come with the hellos, /proc/PID/cgroup and the cgroup
	 * files are readable by all.
	 */
	if (uid == (uid_t)-1 && geteuid() == 0 && lookup_user("lazymem", &uid, &gid) < 0 &&
	    lookup_user("nobody", &uid, &gid) < 0)
		uid = gid = 65534;
	if (!foreground && !log_set)
		D.log_kind = 1;
	if (D.log_kind == 2 && D.log_path[0] != '/') {
		/* A relative log path would be reopened from / after detaching. */
		fprintf(stderr, "lazymemd: the log file must be an absolute path\n");
		return 2;
	}
	int rc = open_log();
	if (rc < 0) {
		fprintf(stderr, "lazymemd: cannot open %s: %s\n", D.log_path, strerror(-rc));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	int ready = -1;
	D.lfd = activated_socket();
	if (D.lfd == -2)
		return 1;
	if (D.lfd < 0) {
		rc = lm__socket_path(sock, 1, D.path, sizeof(D.path));
		if (rc < 0) {
			logmsg(0, "no socket path: %s (use -s, LAZYMEM_SOCKET or XDG_RUNTIME_DIR)",
			       strerror(-rc));
			return 1;
		}
	}
	if (!foreground && daemonize(&ready) < 0) {
		logmsg(0, "cannot detach: %s", strerror(errno));
		return 1;
	}
	if (D.lfd < 0 && (D.lfd = listen_on(D.path, group, uid)) < 0)
		return 1;
	if (http && D.hfd < 0) {
		if ((D.hfd = listen_http(http)) < 0)
			goto out;
		snprintf(D.http_addr, sizeof(D.http_addr), "%s", http);
	}
	/* As many connections as the hard limit allows. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (drop_privileges(uid, gid) < 0)
		goto out;
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	D.sigfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	D.timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	D.ptimerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	find_cgroups();
	D.epfd = epoll_create1(EPOLL_CLOEXEC);
	D.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	D.conns = calloc(MAX_CONNS, sizeof(*D.conns));
	D.gens = calloc(MAX_CONNS, sizeof(*D.gens));
	D.rts = calloc(MAX_RUNTIMES, sizeof(*D.rts));
	struct itimerspec its = { { 1, 0 }, { 1, 0 } };
	if (D.sigfd < 0 || D.timerfd < 0 || D.ptimerfd < 0 || D.epfd < 0 || !D.conns || !D.gens ||
	    !D.rts || timerfd_settime(D.timerfd, 0, &its, NULL) < 0 || arm_policy() < 0) {
		logmsg(0, "cannot set up the event loop: %s", strerror(errno));
		goto out;
	}
	struct epoll_event ev = { .events = EPOLLIN };
	ev.data.u64 = TAG_LISTEN;
	epoll_ctl(D.epfd, EPOLL_CTL_ADD, D.lfd, &ev);
	ev.data.u64 = TAG_SIGNAL;
	epoll_ctl(D.epfd, EPOLL_CTL_ADD, D.sigfd, &ev);
	ev.data.u64 = TAG_TIMER;
	epoll_ctl(D.epfd, EPOLL_CTL_ADD, D.timerfd, &ev);
	ev.data.u64 = TAG_POLICY;
	epoll_ctl(D.epfd, EPOLL_CTL_ADD, D.ptimerfd, &ev);
	if (D.hfd >= 0) {
		ev.data.u64 = TAG_HTTP_LISTEN;
		epoll_ctl(D.epfd, EPOLL_CTL_ADD, D.hfd, &ev);
		logmsg(2, "serving /metrics over HTTP on %s", D.http_addr);
	}
	logmsg(2, "lazymemd %s listening on %s%s", PACKAGE_VERSION, D.path,
	       D.own_socket ? "" : " (socket activation)");
	if (ready >= 0) {
		char ok = 1;
		if (write(ready, &ok, 1) < 0) {
			/* The parent is gone; nothing to tell. */
		}
		close(ready);
		ready = -1;
	}
	struct epoll_event evs[256];
	while (!D.stop) {
		int n = epoll_wait(D.epfd, evs, 256, -1);
		if (n < 0 && errno != EINTR) {
			logmsg(0, "epoll_wait: %s", strerror(errno));
			break;
		}
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;
			switch (tag & 0xff) {
			case TAG_LISTEN:
				accept_all(D.lfd, false);
				break;
			case TAG_HTTP_LISTEN:
				accept_all(D.hfd, true);
				break;
			case TAG_TIMER:
				tick();
				break;
			case TAG_POLICY:
				policy_tick();
				break;
			case TAG_SIGNAL: {
				struct signalfd_siginfo si;
				while (read(D.sigfd, &si, sizeof(si)) == sizeof(si)) {
					if (si.ssi_signo == SIGHUP) {
						int r = open_log();
						if (r < 0)
							logmsg(0, "SIGHUP: cannot reopen the log: %s",
							       strerror(-r));
						else
							logmsg(2, "SIGHUP: log reopened");
						reload_conf();
					} else {
						logmsg(2, "signal %u: stopping", si.ssi_signo);
						D.stop = true;
					}
				}
				break;
			}
			default: {
				struct conn *c = conn_at((uint32_t)(tag >> 8) & 0xffffff,
							 (uint32_t)(tag >> 32));
				if (c)
					conn_event(c, evs[i].events);
				break;
			}
			}
		}
	}
out:
	if (D.conns)
		for (uint32_t s = 0; s < MAX_CONNS; s++)
			if (D.conns[s])
				conn_close(D.conns[s], "the daemon stops");
	if (D.own_socket && unlink(D.path) < 0)
		logmsg(1, "cannot remove %s: %s", D.path, strerror(errno));
	free(D.conns);
	free(D.gens);
	free(D.rts);
	logmsg(2, "stopped after %llu requests", (unsigned long long)D.served);
	if (D.log_file)
		fclose(D.log_file);
	return D.stop ? 0 : 1;
}
