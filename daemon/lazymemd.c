/* SPDX-License-Identifier: MIT */
/* lazymemd: the daemon runtimes report to, answering the lazymem command over a unix socket. */
#include "config.h"
#include "lazymemd.h"
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

#ifndef LMD_CONF
#define LMD_CONF "/etc/lazymem/lazymemd.conf"
#endif

enum { TAG_LISTEN = 1, TAG_SIGNAL, TAG_TIMER, TAG_POLICY, TAG_HTTP_LISTEN, TAG_CONN };

struct lmd_daemon D = { .hfd = -1 };

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

/* ---- logging ------------------------------------------------------------------------ */

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
	uint64_t now = lmd_now_ns();
	if (now - D.user_log_ns > 10000000000ull) {
		D.user_log_ns = now;
		lmd_log(1, "uid %u has %u %s, its share: refused (user_%s in the settings)",
			(unsigned)uid, have, runtime ? "runtimes" : "connections",
			runtime ? "runtimes" : "connections");
	}
	return false;
}

void lmd_log(int level, const char *fmt, ...)
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

uint64_t lmd_now_ns(void)
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

void lmd_watch(struct conn *c)
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

void lmd_conn_close(struct conn *c, const char *why)
{
	if (c->runtime) {
		lmd_log(2, "runtime %d (%s) gone: %s", (int)c->pid, c->name, why);
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
				lmd_watch(w);
			}
		}
		for (uint32_t i = 0; i < D.nruntimes; i++)
			if (D.rts[i] == c) {
				D.rts[i] = D.rts[--D.nruntimes];
				break;
			}
		munmap((void *)c->page, c->pagelen);
	} else {
		lmd_log(3, "client %d (uid %u) closed: %s", (int)c->pid, (unsigned)c->uid, why);
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
bool lmd_flush_out(struct conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			lmd_conn_close(c, n < 0 ? strerror(errno) : "send returned 0");
			return false;
		}
		c->outoff += (size_t)n;
		D.out_total -= (size_t)n;
		c->last_ns = lmd_now_ns();
	}
	if (c->outoff == c->outlen) {
		free(c->out);
		c->out = NULL;
		c->outlen = c->outoff = 0;
		if (c->closing) {
			lmd_conn_close(c, "done");
			return false;
		}
	}
	lmd_watch(c);
	return true;
}

/* Appends bytes to the connection's output; a reply past the global cap is refused. */
bool lmd_queue(struct conn *c, const char *data, size_t len)
{
	if (D.out_total + len > MAX_OUT_TOTAL)
		return false;
	char *p = realloc(c->out, c->outlen + len);
	if (!p)
		return false;
	memcpy(p + c->outlen, data, len);
	/* The stall clock starts when there is something to send, not at the last request. */
	if (c->outoff == c->outlen)
		c->last_ns = lmd_now_ns();
	c->out = p;
	c->outlen += len;
	D.out_total += len;
	return true;
}

void lmd_reply_error(struct conn *c, const char *name, const char *fmt, ...)
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
		if (!lmd_queue(c, busy, sizeof(busy) - 1))
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
	if (!lmd_queue(c, line, strlen(line)))
		c->closing = true;
}

/* "ok LENGTH\n" and the body, formatted by fn into one buffer. */
void lmd_reply_body(struct conn *c, const char *body, size_t len)
{
	char head[32];
	int k = snprintf(head, sizeof(head), "ok %zu\n", len);
	if (D.out_total + (size_t)k + len > MAX_OUT_TOTAL) {
		lmd_reply_error(c, "EBUSY", "the daemon has too many replies in flight; try again");
		return;
	}
	if (!lmd_queue(c, head, (size_t)k) || !lmd_queue(c, body, len))
		c->closing = true;
}

/* ---- what a client may see --------------------------------------------------------------- */

bool lmd_may_see(const struct conn *client, const struct conn *rt)
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
		if (!lmd_may_see(client, c)) {
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

void lmd_reply_formatted(struct conn *c, formatter fn, pid_t pid, size_t *hint)
{
	struct view v;
	bool denied;
	if (gather(c, pid, &v, &denied) < 0) {
		lmd_reply_error(c, "ENOMEM", "out of memory");
		return;
	}
	if (pid && !v.n) {
		if (denied)
			lmd_reply_error(c, "EPERM", "process %d belongs to another user", (int)pid);
		else
			lmd_reply_error(c, "ESRCH", "no lazymem runtime reports from process %d", (int)pid);
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
		lmd_reply_error(c, need == -ENOMEM ? "ENOMEM" : "EOVERFLOW", "the reply does not fit");
		free(buf);
	} else if (D.out_total + (size_t)k + (size_t)need > MAX_OUT_TOTAL || c->outlen) {
		lmd_reply_error(c, "EBUSY", "the daemon has too many replies in flight; try again");
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

static void hello(struct conn *c, const struct lmd_request *r)
{
	int fd = c->passed_fd;
	c->passed_fd = -1;
	if (c->runtime) {
		lmd_reply_error(c, "EALREADY", "this connection already said hello");
	} else if (fd < 0) {
		lmd_reply_error(c, "EINVAL", "hello needs the runtime's stats page (SCM_RIGHTS)");
	} else if (!user_may(c->uid, true)) {
		lmd_reply_error(c, "EMFILE", "uid %u has its share of runtimes (%llu)", (unsigned)c->uid,
				(unsigned long long)D.conf.user_runtimes);
		D.refusals[REF_RUNTIMES]--;	/* counted as the user's limit, not the table's */
	} else if (D.nruntimes >= MAX_RUNTIMES) {
		lmd_reply_error(c, "EMFILE", "too many runtimes");
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
			lmd_reply_error(c, "EINVAL", "the stats page is not a sealed memfd of a stats page");
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
			c->rate_ns = lmd_now_ns();
			c->own = c->applied = st.budget_bytes;
			c->scope = -1;
			D.rts[D.nruntimes++] = c;
			struct ucount *u = ucount_of(c->uid, true);
			if (u)
				u->runtimes++;
			lmd_log(2, "runtime %d (%s, uid %u, lazymem %s) registered", (int)c->pid,
				c->name, (unsigned)c->uid, c->version);
			lmd_reply_body(c, "", 0);
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
		if (!lmd_may_see(c, rt)) {
			denied = true;
			continue;
		}
		if (rt->nwait == MAX_WAITERS) {
			lmd_reply_error(c, "EBUSY", "process %d has budget requests pending", (int)r->pid);
			return;
		}
		found++;
	}
	if (!found) {
		if (denied)
			lmd_reply_error(c, "EPERM", "process %d belongs to another user: not yours to budget",
					(int)r->pid);
		else
			lmd_reply_error(c, "ESRCH", "no lazymem runtime reports from process %d",
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
		if (rt->pid != r->pid || !lmd_may_see(c, rt))
			continue;
		if (!lmd_queue(rt, line, (size_t)k))
			continue;
		rt->waiters[rt->nwait++] = (struct waiter){ c->slot, c->gen, c->wait_seq, r->bytes };
		c->waiting++;
		if (!min) {
			/* The operator's budget is the one the policy gives back when pressure is gone. */
			rt->own = rt->applied = r->bytes;
			rt->refused = false;
		}
		/* Sent from the event loop: a runtime that fails here must not close under us. */
		lmd_watch(rt);
	}
	if (!c->waiting) {
		lmd_reply_error(c, "EBUSY", "could not pass the budget on");
		return;
	}
	c->wait_pid = r->pid;
	c->wait_bytes = r->bytes;
	c->wait_min = min;
	c->wait_deadline = lmd_now_ns() + BUDGET_NS;
	lmd_log(2, "uid %u sets the %s of %d to %llu bytes", (unsigned)c->uid,
		min ? "least budget" : "budget", (int)r->pid, (unsigned long long)r->bytes);
}

/* Every runtime asked has answered (or gone, or timed out): the client gets one reply. */
static void budget_done(struct conn *c)
{
	if (c->wait_err[0]) {
		if (!lmd_queue(c, c->wait_err, strlen(c->wait_err)))
			c->closing = true;
	} else {
		char body[96];
		int k = snprintf(body, sizeof(body), "pid %d %s %llu\n", (int)c->wait_pid,
				 c->wait_min ? "min" : "budget", (unsigned long long)c->wait_bytes);
		lmd_reply_body(c, body, (size_t)k);
	}
	c->waiting = 0;
}

/* A line from a runtime: the answer to the oldest budget request sent to it. */
static void runtime_line(struct conn *c, const char *line, size_t len)
{
	if (!c->nwait) {
		lmd_log(3, "runtime %d: unexpected line ignored", (int)c->pid);
		return;
	}
	struct waiter w = c->waiters[0];
	memmove(c->waiters, c->waiters + 1, (size_t)--c->nwait * sizeof(c->waiters[0]));
	if (w.slot == POLICY_SLOT) {
		lmd_policy_answer(c, &w, len >= 2 && !memcmp(line, "ok", 2), line, len);
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
		lmd_reply_error(c, "EINVAL", "%s", why);
		return;
	}
	if (r.kind > 0 && r.kind <= LMD_REQ_PRESSURE)
		D.requests[r.kind]++;
	switch (r.kind) {
	case LMD_REQ_LIST:
		lmd_reply_formatted(c, lmd_format_list, 0, &D.hint[0]);
		break;
	case LMD_REQ_STATS:
		lmd_reply_formatted(c, lmd_format_stats, r.pid, &D.hint[1]);
		break;
	case LMD_REQ_JSON:
		lmd_reply_formatted(c, lmd_format_json, r.pid, &D.hint[2]);
		break;
	case LMD_REQ_METRICS:
		lmd_reply_formatted(c, lmd_metrics_all, 0, &D.hint[3]);
		break;
	case LMD_REQ_BUDGET:
	case LMD_REQ_MIN:
		budget(c, &r);
		break;
	case LMD_REQ_PRESSURE:
		lmd_pressure(c);
		break;
	case LMD_REQ_VERSION: {
		char body[96];
		int k = snprintf(body, sizeof(body), "lazymemd %s protocol %d pid %d\n",
				 PACKAGE_VERSION, LMD_PROTOCOL, (int)getpid());
		lmd_reply_body(c, body, (size_t)k);
		break;
	}
	case LMD_REQ_HELP:
		lmd_reply_body(c, help_text, sizeof(help_text) - 1);
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
		lmd_http_input(c);
		return;
	}
	for (;;) {
		/* A reply goes out before the next request is read: pipelined lines wait here. */
		if (c->outoff < c->outlen) {
			if (!lmd_flush_out(c))
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
			c->last_ns = lmd_now_ns();
			continue;
		}
		if (c->nin > LMD_LINE_MAX) {
			/* Too long to be a request: say so once and skip to its end. */
			if (!c->discard)
				lmd_reply_error(c, "EINVAL", "request line too long (at most %d bytes)",
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
			lmd_conn_close(c, n < 0 ? strerror(errno) : "end of file");
			return;
		}
		c->nin += (size_t)n;
	}
	lmd_flush_out(c);
}

static void conn_event(struct conn *c, uint32_t events)
{
	if (events & EPOLLRDHUP)
		c->rdhup = true;
	/* Gone for good while it waits for runtimes: nothing to answer to. */
	if ((events & (EPOLLHUP | EPOLLERR)) && c->waiting) {
		lmd_conn_close(c, "hung up");
		return;
	}
	if (events & EPOLLOUT) {
		if (!lmd_flush_out(c))
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
				lmd_log(1, "out of file descriptors: a connection was refused");
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
		c->last_ns = lmd_now_ns();
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
	uint64_t now = lmd_now_ns();
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
			lmd_conn_close(c, "it stopped reading its reply");
		else if (c->http && (int64_t)(now - c->last_ns) > (int64_t)HTTP_IDLE_NS)
			lmd_conn_close(c, "an HTTP request not sent in time");
		else if (!c->runtime && !c->waiting && (int64_t)(now - c->last_ns) > (int64_t)IDLE_NS)
			lmd_conn_close(c, "idle");
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
		lmd_log(0, "LISTEN_FDS=%s: one unix socket and at most one TCP socket (HTTP)", fds);
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
			lmd_log(0, "LISTEN_FDS: descriptor %d is not a listening unix or TCP stream socket, "
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
		lmd_log(0, "cannot create the directory of %s: %s", path, strerror(-rc));
		return -1;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	/* A socket left by a daemon that died is replaced; a live daemon is not. */
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
		lmd_log(0, "another lazymemd already listens on %s", path);
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
		lmd_log(0, "cannot bind %s: %s", path, strerror(errno));
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
		lmd_log(0, "cannot set the owner or mode of %s: %s", path, strerror(errno));
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
		lmd_log(0, "--http %s: not ADDRESS:PORT (127.0.0.1:9187, [::1]:9187)", spec);
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
		lmd_log(0, "--http %s:%s: %s", host, port, gai_strerror(rc));
		return -1;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
		lmd_log(0, "cannot listen on %s:%s for HTTP: %s", host, port, strerror(errno));
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
			lmd_log(1, "cannot give %s to uid %u: %s", D.log_path, (unsigned)uid,
				strerror(errno));
		if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 ||
		    setresuid(uid, uid, uid) < 0) {
			lmd_log(0, "cannot become uid %u: %s", (unsigned)uid, strerror(errno));
			return -1;
		}
	}
	cap_t none = cap_init();
	int rc = none ? cap_set_proc(none) : -1;
	if (none)
		cap_free(none);
	cap_reset_ambient();
	if (rc < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		lmd_log(0, "cannot drop capabilities: %s", strerror(errno));
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
			lmd_log(0, "%s:%d: %s", path, line, why);
		else
			lmd_log(0, "cannot read %s: %s", path, strerror(-rc));
		return rc;
	}
	for (int i = 0; i < n; i++) {
		char key[64];
		const char *eq = strchr(sets[i], '=');
		if (!eq || (size_t)(eq - sets[i]) >= sizeof(key)) {
			lmd_log(0, "-o %s: not KEY=VALUE", sets[i]);
			return -EINVAL;
		}
		memcpy(key, sets[i], (size_t)(eq - sets[i]));
		key[eq - sets[i]] = '\0';
		if (lmd_policy_set(&c, key, eq + 1, &why) < 0) {
			lmd_log(0, "-o %s: %s", sets[i], why);
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
		lmd_log(0, "SIGHUP: the settings were not changed");
		return;
	}
	arm_policy();
	lmd_log(2, "SIGHUP: settings reloaded: policy %s, every %llu ms", D.conf.enabled ? "on" : "off",
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
			lmd_log(0, "no socket path: %s (use -s, LAZYMEM_SOCKET or XDG_RUNTIME_DIR)",
				strerror(-rc));
			return 1;
		}
	}
	if (!foreground && daemonize(&ready) < 0) {
		lmd_log(0, "cannot detach: %s", strerror(errno));
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
		lmd_log(0, "cannot set up the event loop: %s", strerror(errno));
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
		lmd_log(2, "serving /metrics over HTTP on %s", D.http_addr);
	}
	lmd_log(2, "lazymemd %s listening on %s%s", PACKAGE_VERSION, D.path,
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
			lmd_log(0, "epoll_wait: %s", strerror(errno));
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
				lmd_policy_tick();
				break;
			case TAG_SIGNAL: {
				struct signalfd_siginfo si;
				while (read(D.sigfd, &si, sizeof(si)) == sizeof(si)) {
					if (si.ssi_signo == SIGHUP) {
						int r = open_log();
						if (r < 0)
							lmd_log(0, "SIGHUP: cannot reopen the log: %s",
								strerror(-r));
						else
							lmd_log(2, "SIGHUP: log reopened");
						reload_conf();
					} else {
						lmd_log(2, "signal %u: stopping", si.ssi_signo);
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
				lmd_conn_close(D.conns[s], "the daemon stops");
	if (D.own_socket && unlink(D.path) < 0)
		lmd_log(1, "cannot remove %s: %s", D.path, strerror(errno));
	free(D.conns);
	free(D.gens);
	free(D.rts);
	lmd_log(2, "stopped after %llu requests", (unsigned long long)D.served);
	if (D.log_file)
		fclose(D.log_file);
	return D.stop ? 0 : 1;
}
