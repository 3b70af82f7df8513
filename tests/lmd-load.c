/* SPDX-License-Identifier: MIT */
/* lmd-load: many clients querying lazymemd at once while live runtimes report to it. */
#include "config.h"
#include "lazymem.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/*
 * The shape of a run: a daemon (ours, or one named by --socket), a set
 * of forked runtime processes whose counters keep moving, and a swarm of
 * client connections that a single epoll thread keeps busy, each doing
 * request, reply, request.  One thread is enough to saturate a daemon
 * that is itself one thread, and it keeps the latency we measure free of
 * any locking of our own.
 */

#define SKIP 77
#define REGION_LEN (16u << 20)		/* each runtime's zero region */
#define TOUCH_PAGES 32			/* pages written per step of a runtime */
#define STEP_MS 10			/* a runtime's pause between steps */
#define HEAD_MAX 320			/* longer than any "ok N" or error line the daemon sends */
#define BODY_MAX (256ull << 20)		/* a reply claiming more is nonsense */
#define HWM_BOUND_KIB (256u * 1024)	/* the daemon's VmHWM must stay under this */
#define REGISTER_S 30			/* how long runtimes get to show up in "stats" */
#define DRAIN_S 5			/* replies still owed at the end get this long */
#define RETRY_MS 100			/* a failed client waits this long to reconnect */
#define STOP_S 10			/* children and the daemon get this long to exit */
#define MAX_ERROR_LOG 10		/* error details printed, at most */

static const char *const requests[] = { "list", "stats", "json", "metrics", "version" };
#define NREQ (sizeof(requests) / sizeof(requests[0]))

struct config {
	const char *daemon;
	const char *socket;
	int clients, runtimes;
	double seconds;
	bool json;
};

/* DOWN: no connection; IDLE: connected, nothing asked; from SEND on, a request in flight. */
enum cstate { C_DOWN, C_IDLE, C_SEND, C_HEAD, C_BODY };

struct client {
	int fd;
	enum cstate state;
	unsigned req;		/* index into requests[] of the one in flight */
	bool out_armed;		/* EPOLLOUT is in the interest set */
	size_t sent;		/* bytes of the request line sent */
	size_t nhead;
	char head[HEAD_MAX];
	uint64_t left;		/* body bytes still to come */
	uint64_t t0;		/* when the request's first byte went out */
	uint64_t retry_ns;	/* DOWN: when to try connecting again */
};

/* Latencies in microseconds, one growable array per request kind. */
struct samples {
	double *v;
	size_t n, cap;
};

static struct {
	struct config cfg;
	char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char dir[PATH_MAX];
	pid_t daemon_pid;	/* ours: forked here; 0 when --socket names one */
	pid_t peer_pid;		/* the daemon's pid however we learnt it */
	pid_t *kids;
	int nkids;
	int stop_w;		/* write end of the pipe whose closing stops the runtimes */
	int epfd;
	struct client *cl;
	struct samples lat[NREQ];
	uint64_t replies, errors, bytes;
	uint64_t inflight, down;	/* clients from SEND on, and DOWN: set_state keeps them */
	int logged;
	bool stopping;
} G;

static volatile sig_atomic_t interrupted;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_signal(int sig)
{
	interrupted = 1;
}

/* Counts an error and, for the first few, says what it was. */
static void fail_client(int i, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_client(int i, const char *fmt, ...)
{
	G.errors++;
	if (G.logged++ >= MAX_ERROR_LOG) {
		if (G.logged == MAX_ERROR_LOG + 1)
			fprintf(stderr, "lmd-load: more errors; not printing them\n");
		return;
	}
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "lmd-load: client %d: %s\n", i, msg);
}

static int connect_unix(const char *path, bool nonblock)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	return fd;
}

/* A wait status in words, for the messages about children that ended badly. */
static const char *status_text(int st, char *buf, size_t len)
{
	if (WIFEXITED(st))
		snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
	else
		snprintf(buf, len, "wait status 0x%x", (unsigned)st);
	return buf;
}

/* ---- the daemon's memory ------------------------------------------------------------- */

/* VmRSS and VmHWM in KiB; false when /proc does not tell (another user's daemon). */
static bool daemon_mem(pid_t pid, long *rss, long *hwm)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "re");
	*rss = *hwm = -1;
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "VmRSS:", 6))
			*rss = strtol(line + 6, NULL, 10);
		else if (!strncmp(line, "VmHWM:", 6))
			*hwm = strtol(line + 6, NULL, 10);
	}
	fclose(f);
	return *rss >= 0 && *hwm >= 0;
}

/* ---- one blocking request, for setup and checks ------------------------------------------- */

static bool read_full(int fd, char *buf, size_t len)
{
	while (len) {
		ssize_t n = recv(fd, buf, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		buf += n;
		len -= (size_t)n;
	}
	return true;
}

/*
 * Sends req and returns the reply's body (NUL-terminated, to be freed),
 * or NULL with a reason in why.  The socket has a receive timeout, so a
 * stalled daemon fails the call instead of hanging the run.
 */
static char *query(int fd, const char *req, size_t *len, char *why, size_t whylen)
{
	char line[HEAD_MAX];
	int k = snprintf(line, sizeof(line), "%s\n", req);
	if (send(fd, line, (size_t)k, MSG_NOSIGNAL) != k) {
		snprintf(why, whylen, "send: %s", strerror(errno));
		return NULL;
	}
	size_t n = 0;
	while (n < sizeof(line) - 1) {
		if (!read_full(fd, line + n, 1)) {
			snprintf(why, whylen, "no reply head");
			return NULL;
		}
		if (line[n++] == '\n')
			break;
	}
	line[n] = '\0';
	char *end = line;
	unsigned long long body = strncmp(line, "ok ", 3) ? 0 : strtoull(line + 3, &end, 10);
	if (end == line || *end != '\n' || body > BODY_MAX) {
		snprintf(why, whylen, "reply %.*s", (int)strcspn(line, "\n"), line);
		return NULL;
	}
	char *buf = malloc(body + 1);
	if (!buf || !read_full(fd, buf, body)) {
		snprintf(why, whylen, "short reply body");
		free(buf);
		return NULL;
	}
	buf[body] = '\0';
	*len = body;
	return buf;
}

static int kid_index(pid_t pid)
{
	for (int i = 0; i < G.nkids; i++)
		if (G.kids[i] == pid)
			return i;
	return -1;
}

/*
 * Which of our runtimes a "stats" reply lists (seen[], one per child),
 * and their faults_missing summed.  Other processes reporting to a
 * shared daemon are passed over.  Returns how many of ours it lists.
 */
static int our_runtimes(const char *text, bool *seen, uint64_t *faults)
{
	int count = 0, cur = -1;
	*faults = 0;
	memset(seen, 0, (size_t)G.nkids * sizeof(*seen));
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		if (len > 4 && !strncmp(p, "pid ", 4)) {
			cur = kid_index((pid_t)strtol(p + 4, NULL, 10));
			if (cur >= 0 && !seen[cur]) {
				seen[cur] = true;
				count++;
			}
		} else if (len == 0) {
			cur = -1;
		} else if (cur >= 0 && len > 15 && !strncmp(p, "faults_missing ", 15)) {
			*faults += strtoull(p + 15, NULL, 10);
		}
		p += len + (nl ? 1 : 0);
	}
	return count;
}

/* Polls "stats" until every runtime is listed or the time is up; how many were. */
static int wait_runtimes(int ctl, uint64_t *faults)
{
	bool *seen = calloc((size_t)G.nkids + 1, sizeof(*seen));
	uint64_t deadline = now_ns() + REGISTER_S * 1000000000ull;
	int got = -1;
	char why[200] = "";
	while (seen && !interrupted) {
		size_t len;
		char *text = query(ctl, "stats", &len, why, sizeof(why));
		if (!text) {
			fprintf(stderr, "lmd-load: stats: %s\n", why);
			break;
		}
		got = our_runtimes(text, seen, faults);
		free(text);
		if (got == G.nkids || now_ns() > deadline)
			break;
		poll(NULL, 0, 50);
	}
	free(seen);
	return got;
}

/*
 * The connection setup and checks use, blocking with a receive timeout.
 * Its peer's pid is the daemon's, the way to find a daemon we did not
 * start (its memory is read from /proc).
 */
static int control_open(void)
{
	int fd = connect_unix(G.sock, false);
	if (fd < 0) {
		fprintf(stderr, "lmd-load: connect %s: %s\n", G.sock, strerror(-fd));
		return -1;
	}
	struct timeval tv = { 10, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	pid_t peer = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 ? cred.pid : 0;
	if (G.daemon_pid && peer != G.daemon_pid)
		fprintf(stderr, "lmd-load: the socket's peer is %d, not our daemon %d\n", (int)peer,
			(int)G.daemon_pid);
	if (!G.peer_pid)
		G.peer_pid = peer;
	return fd;
}

/* ---- runtimes --------------------------------------------------------------------------------- */

struct ready {
	pid_t pid;
	int stage;		/* 0: lm_runtime_open, 1: the region */
	int rc;
};

/*
 * A runtime child: writes pages of a zero region (each write a missing
 * fault) and drops those written a quarter of the region before, so its
 * counters and its resident gauge keep moving while the daemon reads
 * them.  A short pause per step keeps twenty of these from eating the
 * CPUs the daemon and the clients need.  It stops when the parent's end
 * of stop_r closes, and dies with the parent in any case.
 */
static void runtime_child(int stop_r, int ready_w, pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(1);
	struct ready r = { .pid = getpid() };
	struct lm_options o;
	struct lm_runtime *rt = NULL;
	struct lm_region *reg = NULL;
	lm_options_init(&o);
	o.daemon_socket = G.sock;
	o.handler_threads = 1;
	r.rc = lm_runtime_open(&o, &rt);
	if (r.rc == 0) {
		r.stage = 1;
		r.rc = lm_region_create_zero(rt, REGION_LEN, 0, &reg);
	}
	if (write(ready_w, &r, sizeof(r)) != sizeof(r) || r.rc < 0)
		_exit(1);
	close(ready_w);
	size_t ps = (size_t)sysconf(_SC_PAGESIZE), pages = REGION_LEN / ps, at = 0;
	size_t lag = pages - pages / 4;
	volatile char *base = lm_region_addr(reg);
	for (;;) {
		for (size_t i = 0; i < TOUCH_PAGES; i++)
			base[((at + i) % pages) * ps] = (char)(at + i + 1);
		size_t drop = (at + lag) % pages;
		if (drop + TOUCH_PAGES <= pages)
			lm_region_advise(reg, drop * ps, TOUCH_PAGES * ps, LM_ADV_DONTNEED);
		at = (at + TOUCH_PAGES) % pages;
		struct pollfd pfd = { stop_r, POLLIN, 0 };
		if (poll(&pfd, 1, STEP_MS) > 0)
			break;
	}
	lm_region_destroy(reg);
	lm_runtime_close(rt);
	_exit(0);
}

/* Forks the runtimes; returns how many said they are running, or -1. */
static int start_runtimes(void)
{
	int stop[2], ready[2];
	if (pipe2(stop, O_CLOEXEC) < 0 || pipe2(ready, O_CLOEXEC) < 0)
		return -1;
	G.kids = calloc((size_t)G.cfg.runtimes, sizeof(*G.kids));
	if (!G.kids)
		return -1;
	pid_t self = getpid();
	for (int i = 0; i < G.cfg.runtimes; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			fprintf(stderr, "lmd-load: fork: %s\n", strerror(errno));
			break;
		}
		if (pid == 0) {
			close(stop[1]);
			close(ready[0]);
			runtime_child(stop[0], ready[1], self);
		}
		G.kids[G.nkids++] = pid;
	}
	close(stop[0]);
	close(ready[1]);
	G.stop_w = stop[1];
	int ok = 0;
	for (int got = 0; got < G.nkids;) {
		struct pollfd pfd = { ready[0], POLLIN, 0 };
		struct ready r;
		if (poll(&pfd, 1, REGISTER_S * 1000) <= 0 || read(ready[0], &r, sizeof(r)) != sizeof(r))
			break;
		got++;
		if (r.rc < 0)
			fprintf(stderr, "lmd-load: runtime %d: %s: %s\n", (int)r.pid,
				r.stage ? "lm_region_create_zero" : "lm_runtime_open",
				lm_strerror(r.rc));
		else
			ok++;
	}
	close(ready[0]);
	return ok;
}

/* Closes the stop pipe, reaps every runtime, kills the late; false if one did not exit 0. */
static bool stop_runtimes(void)
{
	bool clean = true;
	if (G.stop_w >= 0)
		close(G.stop_w);
	G.stop_w = -1;
	uint64_t deadline = now_ns() + STOP_S * 1000000000ull;
	for (int i = 0; i < G.nkids; i++) {
		int st;
		pid_t w;
		while ((w = waitpid(G.kids[i], &st, WNOHANG)) == 0 && now_ns() < deadline)
			poll(NULL, 0, 10);
		if (w == 0) {
			fprintf(stderr, "lmd-load: runtime %d did not stop: killed\n", (int)G.kids[i]);
			kill(G.kids[i], SIGKILL);
			waitpid(G.kids[i], &st, 0);
			clean = false;
		} else if (w < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			char why[80];
			fprintf(stderr, "lmd-load: runtime %d ended badly: %s\n", (int)G.kids[i],
				w < 0 ? strerror(errno) : status_text(st, why, sizeof(why)));
			clean = false;
		}
	}
	G.nkids = 0;
	return clean;
}

/*
 * lm_runtime_open in a throwaway child with reporting off: a kernel or a
 * sandbox without userfaultfd is a skip, and the parent stays free of the
 * library's threads, which it must be to fork the runtimes cleanly.
 */
static int probe_uffd(void)
{
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		struct lm_options o;
		struct lm_runtime *rt;
		lm_options_init(&o);
		o.flags |= LM_OPT_NO_REPORT;
		int rc = lm_runtime_open(&o, &rt);
		if (rc == 0)
			lm_runtime_close(rt);
		_exit(rc < 0 && -rc < 256 ? -rc : rc < 0 ? 255 : 0);
	}
	int st;
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st))
		return -ECHILD;
	return -WEXITSTATUS(st);
}

/* ---- our own daemon ------------------------------------------------------------------------- */

static int start_daemon(void)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(G.dir, sizeof(G.dir), "%s/lmd-load.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(G.dir)) {
		fprintf(stderr, "lmd-load: mkdtemp %s: %s\n", G.dir, strerror(errno));
		G.dir[0] = '\0';
		return -1;
	}
	if ((size_t)snprintf(G.sock, sizeof(G.sock), "%s/lazymemd.sock", G.dir) >= sizeof(G.sock)) {
		fprintf(stderr, "lmd-load: %s: too long for a socket path\n", G.dir);
		return -1;
	}
	pid_t self = getpid();
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		/* Our daemon must not outlive us, even if we are killed. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != self)
			_exit(127);
		execlp(G.cfg.daemon, G.cfg.daemon, "-f", "-s", G.sock, "-l", "stderr",
		       (char *)NULL);
		fprintf(stderr, "lmd-load: cannot run %s: %s\n", G.cfg.daemon, strerror(errno));
		_exit(127);
	}
	G.daemon_pid = pid;
	/* Ready when it accepts a connection; dead or silent for 10 s is a failure. */
	for (int i = 0; i < 1000; i++) {
		int fd = connect_unix(G.sock, false);
		if (fd >= 0) {
			close(fd);
			return 0;
		}
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			char why[80];
			fprintf(stderr, "lmd-load: %s ended before listening: %s\n", G.cfg.daemon,
				status_text(st, why, sizeof(why)));
			G.daemon_pid = 0;
			return -1;
		}
		poll(NULL, 0, 10);
	}
	fprintf(stderr, "lmd-load: %s did not listen on %s in 10 s\n", G.cfg.daemon, G.sock);
	return -1;
}

/* SIGTERM, then the exit status, which must be 0; false otherwise. */
static bool stop_daemon(void)
{
	bool clean = true;
	if (G.daemon_pid > 0) {
		kill(G.daemon_pid, SIGTERM);
		uint64_t deadline = now_ns() + STOP_S * 1000000000ull;
		int st = 0;
		pid_t w;
		while ((w = waitpid(G.daemon_pid, &st, WNOHANG)) == 0 && now_ns() < deadline)
			poll(NULL, 0, 10);
		if (w == 0) {
			fprintf(stderr, "lmd-load: the daemon ignored SIGTERM for %d s: killed\n",
				STOP_S);
			kill(G.daemon_pid, SIGKILL);
			waitpid(G.daemon_pid, &st, 0);
			clean = false;
		} else if (w < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			char why[80];
			fprintf(stderr, "lmd-load: FAIL: the daemon, sent SIGTERM, ended with %s\n",
				w < 0 ? strerror(errno) : status_text(st, why, sizeof(why)));
			clean = false;
		}
		G.daemon_pid = 0;
	}
	if (G.dir[0]) {
		/* The daemon removes its socket itself; this is for one that was killed. */
		unlink(G.sock);
		rmdir(G.dir);
		G.dir[0] = '\0';
	}
	return clean;
}

/* ---- the clients ------------------------------------------------------------------------------ */

/* Every change of state goes through here, so the two counts the loop runs on stay true. */
static void set_state(struct client *c, enum cstate s)
{
	G.inflight -= c->state >= C_SEND;
	G.down -= c->state == C_DOWN;
	c->state = s;
	G.inflight += s >= C_SEND;
	G.down += s == C_DOWN;
}

static void arm(int i, bool out)
{
	struct client *c = &G.cl[i];
	if (c->out_armed == out)
		return;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0),
				  .data.u32 = (uint32_t)i };
	epoll_ctl(G.epfd, EPOLL_CTL_MOD, c->fd, &ev);
	c->out_armed = out;
}

/* Drops the connection; the loop reconnects it after RETRY_MS while the run lasts. */
static void client_down(int i)
{
	struct client *c = &G.cl[i];
	if (c->state == C_DOWN)
		return;
	epoll_ctl(G.epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	set_state(c, C_DOWN);
	c->retry_ns = now_ns() + RETRY_MS * 1000000ull;
}

/* Sends what is left of the request line; EPOLLOUT finishes a partial send. */
static void client_send(int i)
{
	struct client *c = &G.cl[i];
	char line[16];
	int len = snprintf(line, sizeof(line), "%s\n", requests[c->req]);
	while (c->sent < (size_t)len) {
		ssize_t n = send(c->fd, line + c->sent, (size_t)len - c->sent,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			arm(i, true);
			return;
		}
		if (n <= 0) {
			fail_client(i, "send %s: %s", requests[c->req], n < 0 ? strerror(errno) : "0");
			client_down(i);
			return;
		}
		c->sent += (size_t)n;
	}
	arm(i, false);
	set_state(c, C_HEAD);
}

/* A request goes out on an idle connection; its latency is counted from here. */
static void client_ask(int i)
{
	struct client *c = &G.cl[i];
	c->sent = c->nhead = 0;
	c->left = 0;
	c->t0 = now_ns();
	set_state(c, C_SEND);
	client_send(i);
}

static void sample(unsigned req, uint64_t ns)
{
	struct samples *s = &G.lat[req];
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 4096;
		double *v = realloc(s->v, cap * sizeof(*v));
		if (!v)
			return;
		s->v = v;
		s->cap = cap;
	}
	s->v[s->n++] = (double)ns / 1000.0;
}

/* A reply is in (an error reply too): the next request of the rotation, unless the run is over. */
static void reply_done(int i, bool ok)
{
	struct client *c = &G.cl[i];
	G.replies++;
	if (ok)
		sample(c->req, now_ns() - c->t0);
	set_state(c, C_IDLE);
	c->req = (c->req + 1) % NREQ;
	if (!G.stopping)
		client_ask(i);
}

/*
 * Bytes from the daemon: the head line, then the body, counted and
 * thrown away.  Returns how many bytes the reply in flight took, so the
 * caller can tell bytes that belong to no request (a protocol error: the
 * next request is only sent once the reply is complete), or -1 when the
 * connection had to go.
 */
static ssize_t client_feed(int i, const char *p, size_t n)
{
	struct client *c = &G.cl[i];
	size_t used = 0;
	while (used < n && c->state == C_HEAD) {
		char ch = p[used++];
		if (c->nhead == HEAD_MAX - 1) {
			fail_client(i, "%s: reply head longer than %d bytes", requests[c->req],
				    HEAD_MAX);
			client_down(i);
			return -1;
		}
		c->head[c->nhead++] = ch;
		if (ch != '\n')
			continue;
		c->head[c->nhead - 1] = '\0';
		char *end = c->head;
		unsigned long long len = 0;
		if (!strncmp(c->head, "ok ", 3) && c->head[3] >= '0' && c->head[3] <= '9')
			len = strtoull(c->head + 3, &end, 10);
		if (end != c->head && !*end && len <= BODY_MAX) {
			c->left = len;
			set_state(c, C_BODY);
		} else if (!strncmp(c->head, "error ", 6)) {
			fail_client(i, "%s: %s", requests[c->req], c->head);
			reply_done(i, false);
			return (ssize_t)used;
		} else {
			fail_client(i, "%s: not a reply head: %.60s", requests[c->req], c->head);
			client_down(i);
			return -1;
		}
	}
	if (c->state == C_BODY) {
		size_t k = n - used < c->left ? n - used : (size_t)c->left;
		c->left -= k;
		used += k;
		if (!c->left)
			reply_done(i, true);
	}
	return (ssize_t)used;
}

static void client_read(int i)
{
	static char buf[256 << 10];
	struct client *c = &G.cl[i];
	while (c->state != C_DOWN) {
		ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			const char *what = c->state == C_IDLE ? "idle connection: " :
					   c->state == C_HEAD && !c->nhead ? "no reply: " :
					   "short reply: ";
			fail_client(i, "%s: %s%s", requests[c->req], what,
				    n < 0 ? strerror(errno) : "the daemon closed the connection");
			client_down(i);
			return;
		}
		G.bytes += (uint64_t)n;
		ssize_t used = c->state == C_SEND ? 0 : client_feed(i, buf, (size_t)n);
		if (used < 0)
			return;
		if (used < n) {
			/* Bytes no request asked for: the stream is out of step, start over. */
			fail_client(i, "%zd bytes no request asked for", n - used);
			client_down(i);
			return;
		}
	}
}

/* Connects client i, idle; a failure counts as an error and is retried after RETRY_MS. */
static void client_up(int i, bool blocking)
{
	struct client *c = &G.cl[i];
	int fd = connect_unix(G.sock, !blocking);
	if (fd < 0) {
		fail_client(i, "connect: %s", strerror(-fd));
		c->retry_ns = now_ns() + RETRY_MS * 1000000ull;
		return;
	}
	if (blocking)
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)i };
	if (epoll_ctl(G.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		fail_client(i, "epoll_ctl: %s", strerror(errno));
		close(fd);
		c->retry_ns = now_ns() + RETRY_MS * 1000000ull;
		return;
	}
	c->fd = fd;
	c->out_armed = false;
	set_state(c, C_IDLE);
}

/*
 * The timed run.  Every client is connected first (blocking connects:
 * the daemon's backlog absorbs them), so the clock measures queries, not
 * connection setup; then each keeps one request in flight until the time
 * is up, and the replies still owed get DRAIN_S to arrive.
 */
static double run_load(void)
{
	int n = G.cfg.clients;
	G.cl = calloc((size_t)n, sizeof(*G.cl));
	G.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (!G.cl || G.epfd < 0)
		return -1;
	for (int i = 0; i < n; i++) {
		G.cl[i].fd = -1;
		G.cl[i].req = (unsigned)i % NREQ;
		G.down++;
	}
	for (int i = 0; i < n && !interrupted; i++)
		client_up(i, true);
	uint64_t start = now_ns(), end = start + (uint64_t)(G.cfg.seconds * 1e9);
	for (int i = 0; i < n; i++)
		if (G.cl[i].state == C_IDLE)
			client_ask(i);
	static struct epoll_event evs[1024];
	uint64_t drain_end = UINT64_MAX, t;
	while ((t = now_ns()) < drain_end) {
		if (!G.stopping && (t >= end || interrupted)) {
			G.stopping = true;
			drain_end = t + DRAIN_S * 1000000000ull;
		}
		if (G.stopping && !G.inflight)
			break;
		uint64_t until = G.stopping ? drain_end : end;
		int ms = (int)((until - t + 999999) / 1000000);
		if (G.down && !G.stopping && ms > RETRY_MS)
			ms = RETRY_MS;
		int k = epoll_wait(G.epfd, evs, (int)(sizeof(evs) / sizeof(evs[0])), ms);
		if (k < 0 && errno != EINTR)
			break;
		for (int e = 0; e < k; e++) {
			int i = (int)evs[e].data.u32;
			uint32_t what = evs[e].events;
			if ((what & EPOLLOUT) && G.cl[i].state == C_SEND)
				client_send(i);
			if (what & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
				client_read(i);
		}
		if (G.down && !G.stopping) {
			t = now_ns();
			for (int i = 0; i < n; i++) {
				if (G.cl[i].state != C_DOWN || t < G.cl[i].retry_ns)
					continue;
				client_up(i, false);
				if (G.cl[i].state == C_IDLE)
					client_ask(i);
			}
		}
	}
	for (int i = 0; i < n; i++)
		if (G.cl[i].state >= C_SEND)
			fail_client(i, "%s: no reply %d s after the end of the run",
				    requests[G.cl[i].req], DRAIN_S);
	return (double)(now_ns() - start) / 1e9;
}

static void close_clients(void)
{
	for (int i = 0; i < G.cfg.clients && G.cl; i++)
		if (G.cl[i].fd >= 0)
			close(G.cl[i].fd);
	if (G.epfd >= 0)
		close(G.epfd);
	G.epfd = -1;
}

/* ---- figures ---------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The nearest-rank percentile of sorted v. */
static double pct(const double *v, size_t n, double p)
{
	if (!n)
		return 0;
	size_t r = (size_t)(p * (double)n + 0.999999);
	return v[r ? r - 1 : 0];
}

static void json_line(const char *name, const char *unit, double value)
{
	printf("{\"name\":\"%s\",\"unit\":\"%s\",\"value\":%.1f}\n", name, unit, value);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lmd-load [--daemon LAZYMEMD] [--socket PATH] [--clients N] [--runtimes N]\n"
		"                [--seconds S] [--json]\n"
		"  --daemon PATH   the lazymemd to start (default: lazymemd from $PATH)\n"
		"  --socket PATH   use the daemon already listening on PATH instead\n"
		"  --clients N     client connections, all driven at once (default 1000)\n"
		"  --runtimes N    runtime processes reporting to the daemon (default 20)\n"
		"  --seconds S     length of the run (default 10)\n"
		"  --json          one JSON object per figure on stdout\n"
		"exit: 0 no errors, every runtime listed, daemon VmHWM under %u MiB;\n"
		"      1 otherwise; 77 when no userfaultfd can be opened\n",
		HWM_BOUND_KIB / 1024);
}

static bool parse_int(const char *s, int min, int max, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || !*s || *end || v < min || v > max)
		return false;
	*out = (int)v;
	return true;
}

static int parse_args(int argc, char **argv)
{
	enum { O_DAEMON = 256, O_SOCKET, O_CLIENTS, O_RUNTIMES, O_SECONDS, O_JSON, O_HELP };
	static const struct option longs[] = {
		{ "daemon", required_argument, NULL, O_DAEMON },
		{ "socket", required_argument, NULL, O_SOCKET },
		{ "clients", required_argument, NULL, O_CLIENTS },
		{ "runtimes", required_argument, NULL, O_RUNTIMES },
		{ "seconds", required_argument, NULL, O_SECONDS },
		{ "json", no_argument, NULL, O_JSON },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	struct config *c = &G.cfg;
	*c = (struct config){ .daemon = "lazymemd", .clients = 1000, .runtimes = 20, .seconds = 10 };
	int opt;
	char *end;
	while ((opt = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		switch (opt) {
		case O_DAEMON: c->daemon = optarg; break;
		case O_SOCKET: c->socket = optarg; break;
		case O_CLIENTS:
			if (!parse_int(optarg, 1, 1000000, &c->clients))
				goto bad;
			break;
		case O_RUNTIMES:
			if (!parse_int(optarg, 0, 4000, &c->runtimes))
				goto bad;
			break;
		case O_SECONDS:
			c->seconds = strtod(optarg, &end);
			if (!*optarg || *end || !(c->seconds > 0 && c->seconds < 86400))
				goto bad;
			break;
		case O_JSON: c->json = true; break;
		case O_HELP: usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind == argc)
		return 0;
bad:
	usage(stderr);
	return -1;
}

/*
 * A thousand clients need more descriptors than the usual soft limit of
 * 1024: the soft limit goes up to the hard one, and a hard limit too low
 * for the run is said up front rather than found as EMFILE half way.
 */
static int raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -1;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	rlim_t need = (rlim_t)G.cfg.clients + 64;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
		fprintf(stderr, "lmd-load: %d clients need %llu descriptors; RLIMIT_NOFILE allows %llu\n",
			G.cfg.clients, (unsigned long long)need, (unsigned long long)rl.rlim_cur);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (parse_args(argc, argv) < 0)
		return 2;
	G.stop_w = G.epfd = -1;
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (raise_nofile() < 0)
		return 1;
	int rc = probe_uffd();
	if (rc == -ECHILD) {
		fprintf(stderr, "lmd-load: the userfaultfd probe crashed\n");
		return 1;
	}
	if (rc < 0) {
		printf("SKIP: no userfaultfd here: %s\n", lm_strerror(rc));
		return SKIP;
	}

	bool pass = true;
	if (G.cfg.socket) {
		snprintf(G.sock, sizeof(G.sock), "%s", G.cfg.socket);
	} else if (start_daemon() < 0) {
		stop_daemon();
		return 1;
	}
	int ctl = control_open();
	if (ctl < 0) {
		stop_daemon();
		return 1;
	}
	int running = start_runtimes();
	uint64_t faults0 = 0, faults1 = 0;
	int listed0 = running < 0 ? -1 : wait_runtimes(ctl, &faults0);
	/* Idle through a long run, it would be closed by the daemon: a fresh one checks the end. */
	close(ctl);
	if (listed0 != G.cfg.runtimes) {
		fprintf(stderr, "lmd-load: FAIL: the daemon lists %d of %d runtimes (%d running)\n",
			listed0, G.cfg.runtimes, running);
		pass = false;
	}

	long rss0, hwm0, rss1 = -1, hwm1 = -1;
	bool mem = G.peer_pid > 0 && daemon_mem(G.peer_pid, &rss0, &hwm0);
	double elapsed = interrupted ? 0 : run_load();
	if (mem)
		mem = daemon_mem(G.peer_pid, &rss1, &hwm1);
	close_clients();
	/* Runtimes listed at the end too: none may have been dropped under the load. */
	ctl = G.nkids && !interrupted ? control_open() : -1;
	int listed1 = ctl >= 0 ? wait_runtimes(ctl, &faults1) : 0;
	if (listed1 != G.cfg.runtimes && listed0 == G.cfg.runtimes && !interrupted) {
		fprintf(stderr, "lmd-load: FAIL: after the load the daemon lists %d of %d runtimes\n",
			listed1, G.cfg.runtimes);
		pass = false;
	}
	if (ctl >= 0)
		close(ctl);
	if (!stop_runtimes())
		pass = false;
	if (!stop_daemon())
		pass = false;
	if (interrupted) {
		fprintf(stderr, "lmd-load: FAIL: interrupted\n");
		pass = false;
	}
	if (elapsed < 0) {
		fprintf(stderr, "lmd-load: FAIL: cannot set up the clients: %s\n", strerror(errno));
		return 1;
	}

	size_t total = 0;
	for (size_t r = 0; r < NREQ; r++)
		total += G.lat[r].n;
	double *all = malloc((total + 1) * sizeof(*all));
	size_t k = 0;
	for (size_t r = 0; r < NREQ && all; r++) {
		memcpy(all + k, G.lat[r].v, G.lat[r].n * sizeof(*all));
		k += G.lat[r].n;
		qsort(G.lat[r].v, G.lat[r].n, sizeof(double), cmp_double);
	}
	if (all)
		qsort(all, total, sizeof(*all), cmp_double);
	else
		total = 0;
	double p50 = pct(all, total, 0.50), p99 = pct(all, total, 0.99);
	double max = total ? all[total - 1] : 0;
	double rate = elapsed > 0 ? (double)G.replies / elapsed : 0;

	if (G.cfg.json) {
		json_line("daemon.query.p50", "us", p50);
		json_line("daemon.query.p99", "us", p99);
		json_line("daemon.query.max", "us", max);
		json_line("daemon.requests_per_s", "requests_per_s", rate);
		json_line("daemon.errors", "count", (double)G.errors);
		if (mem)
			json_line("daemon.rss_hwm_kib", "KiB", (double)hwm1);
	} else {
		printf("clients      %d\n", G.cfg.clients);
		printf("runtimes     %d (listed %d before the load, %d after", G.cfg.runtimes, listed0,
		       listed1);
		if (listed0 == G.cfg.runtimes && listed1 == G.cfg.runtimes)
			printf("; their missing faults +%" PRIu64, faults1 - faults0);
		printf(")\n");
		printf("seconds      %.2f\n", elapsed);
		printf("requests     %" PRIu64 " (%.1f/s), %.1f MiB of replies\n", G.replies, rate,
		       (double)G.bytes / (1 << 20));
		printf("errors       %" PRIu64 "\n", G.errors);
		printf("latency      median %.1f us, p99 %.1f us, max %.1f us\n", p50, p99, max);
		for (size_t r = 0; r < NREQ; r++) {
			const struct samples *s = &G.lat[r];
			printf("  %-8s   %8zu  median %8.1f  p99 %8.1f  max %8.1f us\n", requests[r],
			       s->n, pct(s->v, s->n, 0.5), pct(s->v, s->n, 0.99),
			       s->n ? s->v[s->n - 1] : 0);
		}
		if (mem)
			printf("daemon       pid %d: VmRSS %ld KiB before, %ld KiB after; VmHWM %ld KiB "
			       "before, %ld KiB after (bound %u KiB)\n", (int)G.peer_pid, rss0, rss1,
			       hwm0, hwm1, HWM_BOUND_KIB);
		else
			printf("daemon       pid %d: memory unknown (no /proc/PID/status)\n",
			       (int)G.peer_pid);
	}
	if (G.errors) {
		fprintf(stderr, "lmd-load: FAIL: %" PRIu64 " errors\n", G.errors);
		pass = false;
	}
	if (mem && hwm1 >= (long)HWM_BOUND_KIB) {
		fprintf(stderr, "lmd-load: FAIL: daemon VmHWM %ld KiB, bound %u KiB\n", hwm1,
			HWM_BOUND_KIB);
		pass = false;
	}
	free(all);
	for (size_t r = 0; r < NREQ; r++)
		free(G.lat[r].v);
	free(G.cl);
	free(G.kids);
	return pass ? 0 : 1;
}
