/* SPDX-License-Identifier: MIT */
/* Reporting to lazymemd: the shared stats page and the connection that hands it over. */
#include "internal.h"
#include "sockpath.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/*
 * The counters live in a sealed memfd mapped shared: lazymemd maps the
 * same pages read-only, so a query reads them where the runtime writes
 * them and never waits on the application.  The seals keep the file from
 * shrinking under the daemon's mapping (a read past its end would be a
 * SIGBUS in the daemon) and from growing.
 */
static size_t page_len(void)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	return (sizeof(struct lm__stats) + ps - 1) & ~(ps - 1);
}

int lm__stats_init(struct lm_runtime *rt)
{
	size_t len = page_len();
	void *p = MAP_FAILED;
	rt->stats_fd = memfd_create("lazymem-stats", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (rt->stats_fd >= 0) {
		if (ftruncate(rt->stats_fd, (off_t)len) == 0 &&
		    fcntl(rt->stats_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
			p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, rt->stats_fd, 0);
		if (p == MAP_FAILED) {
			close(rt->stats_fd);
			rt->stats_fd = -1;
		}
	}
	/* Without a memfd the runtime still counts, it just cannot report. */
	if (p == MAP_FAILED)
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	rt->stats = p;
	rt->stats->size = (uint32_t)sizeof(struct lm_stats);
	rt->stats->version = LM_STATS_VERSION;
	rt->nres = (_Atomic int64_t *)&rt->stats->resident_pages;
	rt->ndirty = (_Atomic int64_t *)&rt->stats->resident_dirty;
	LM__STAT_SET(rt, metadata_bytes, sizeof(*rt));
	LM__STAT_SET(rt, page_size, rt->page_size);
	return 0;
}

void lm__stats_fini(struct lm_runtime *rt)
{
	if (rt->stats)
		munmap(rt->stats, page_len());
	rt->stats = NULL;
	if (rt->stats_fd >= 0)
		close(rt->stats_fd);
	rt->stats_fd = -1;
}

/* ---- the connection ----------------------------------------------------------- */

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
/*
 * After the daemon refused the hello (its tables, or this user's share of
 * them, are full): hang up, so as not to hold a connection the user's
 * other programs may need, and ask again this much later.
 */
#define REFUSED_MS 30000

/*
 * fork() copies every descriptor, and the daemon knows a runtime by its
 * connection: a child holding a copy of it would keep its parent in the
 * listing after the parent is gone.  The child closes the descriptors
 * recorded in struct lm__report, so the reporter creates, records,
 * closes and forgets them only under this lock, which fork() holds
 * (lm__report_atfork_prepare): the child finds each descriptor either
 * recorded or not yet made.  Nothing slower than a system call that
 * cannot wait runs under it.
 */
static pthread_mutex_t fd_lock = PTHREAD_MUTEX_INITIALIZER;

struct lm__report {
	struct lm_runtime *rt;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	/* The system daemon's socket, tried after a user's own: "" when there is no second place. */
	char alt[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char altdir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	pthread_t thread;
	int stop_fd;		/* eventfd: the thread exits when readable */
	int sock;		/* connected to lazymemd, or -1 */
	int ino;		/* inotify on the socket's directory (or its parent), or -1 */
	uint64_t connected_ns;	/* when the current connection was made, 0: none */
	bool in_child;		/* a fork() copy: its descriptors and thread are the parent's */
	bool refused;		/* the daemon refused the hello: wait REFUSED_MS before the next */
	size_t skip;		/* bytes of a reply's body still to pass over */
	size_t nin;
	char in[LM__REPORT_LINE + 1];
};

/* Printable, no blanks, at most 32 bytes: the name goes on a line of words. */
static void own_name(char *out, size_t len)
{
	char comm[64] = "";
	int fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, comm, sizeof(comm) - 1);
		comm[n > 0 ? n : 0] = '\0';
		close(fd);
	}
	size_t o = 0;
	for (const char *c = comm; *c && *c != '\n' && o + 1 < len && o < 32; c++)
		out[o++] = *c > ' ' && *c <= '~' ? *c : '_';
	if (!o)
		out[o++] = '?';
	out[o] = '\0';
}

static int send_line(struct lm__report *p, const char *line, int fd)
{
	struct iovec iov = { (void *)line, strlen(line) };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (fd >= 0) {
		memset(&ctl, 0, sizeof(ctl));
		m.msg_control = ctl.buf;
		m.msg_controllen = sizeof(ctl.buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	/* Lines are short and the socket's buffer empty: all or nothing. */
	ssize_t n = sendmsg(p->sock, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
	return n == (ssize_t)iov.iov_len ? 0 : n < 0 ? -errno : -EIO;
}

static int try_connect_at(struct lm__report *p, const char *path)
{
	char name[40], line[128];
	own_name(name, sizeof(name));
	snprintf(line, sizeof(line), "hello %s %s\n", PACKAGE_VERSION, name);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	memcpy(a.sun_path, path, strlen(path) + 1);
	pthread_mutex_lock(&fd_lock);
	int rc = 0, s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	/* Non-blocking: a daemon whose backlog is full is retried, not waited on. */
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0)
		rc = -errno;
	if (!rc) {
		p->sock = s;
		p->nin = p->skip = 0;
		rc = send_line(p, line, p->rt->stats_fd);
	}
	if (rc < 0) {
		if (s >= 0)
			close(s);
		p->sock = -1;
	}
	pthread_mutex_unlock(&fd_lock);
	if (!rc)
		lm__log(p->rt, 3, "reporting to lazymemd at %s", path);
	return rc;
}

/* The user's own daemon first, then the system's. */
static int try_connect(struct lm__report *p)
{
	int rc = try_connect_at(p, p->path);
	return rc < 0 && p->alt[0] ? try_connect_at(p, p->alt) : rc;
}

static void disconnect(struct lm__report *p, const char *why)
{
	lm__log(p->rt, 2, "lazymemd connection closed (%s): reconnecting in the background", why);
	pthread_mutex_lock(&fd_lock);
	close(p->sock);
	p->sock = -1;
	pthread_mutex_unlock(&fd_lock);
}

/* A request from the daemon: "budget BYTES" or "min BYTES".  The answer: "ok 0" or "error NAME message". */
static void request(struct lm__report *p, char *line)
{
	char reply[256];
	unsigned long long bytes;
	char end;
	if (!strncmp(line, "ok ", 3) || !strncmp(line, "error ", 6)) {
		/* The answer to hello: an ok's body is passed over, an error logged. */
		if (line[0] == 'e') {
			lm__log(p->rt, 1, "lazymemd refused this runtime: %s; asking again in %d s",
				line + 6, REFUSED_MS / 1000);
			p->refused = true;
			disconnect(p, "refused");
			return;
		} else if (sscanf(line + 3, "%llu%c", &bytes, &end) == 1)
			p->skip = bytes;
		return;
	}
	if (sscanf(line, "budget %llu%c", &bytes, &end) == 1) {
		int rc = lm_runtime_set_budget(p->rt, bytes);
		lm__log(p->rt, 2, "lazymemd set the budget to %llu bytes: %s", bytes,
			rc < 0 ? lm_strerror(rc) : "done");
		uint64_t least = (uint64_t)LM__BUDGET_MIN << p->rt->page_shift;
		if (rc == -EINVAL && bytes && bytes < least)
			snprintf(reply, sizeof(reply),
				 "error EINVAL a budget of %llu bytes is below the least a runtime takes: "
				 "%d pages, %llu bytes (0 lifts the budget)\n",
				 bytes, LM__BUDGET_MIN, (unsigned long long)least);
		else if (rc == -EOPNOTSUPP)
			snprintf(reply, sizeof(reply),
				 "error EOPNOTSUPP this runtime takes no budget (huge pages, or a fork() "
				 "child)\n");
		else if (rc < 0)
			snprintf(reply, sizeof(reply), "error %s %s\n", strerrorname_np(-rc),
				 lm_strerror(rc));
		else
			snprintf(reply, sizeof(reply), "ok 0\n");
	} else if (sscanf(line, "min %llu%c", &bytes, &end) == 1) {
		/* The floor is the daemon's to respect: the runtime only keeps it, where every reader sees it. */
		LM__STAT_SET(p->rt, budget_min_bytes, bytes);
		lm__log(p->rt, 2, "lazymemd set the least budget to %llu bytes", bytes);
		snprintf(reply, sizeof(reply), "ok 0\n");
	} else {
		snprintf(reply, sizeof(reply), "error EINVAL unknown request\n");
	}
	if (send_line(p, reply, -1) < 0)
		disconnect(p, "cannot answer");
}

/* Reads what the daemon sent; -1 when the connection is gone. */
static int serve(struct lm__report *p)
{
	for (;;) {
		ssize_t n = recv(p->sock, p->in + p->nin, LM__REPORT_LINE - p->nin, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n <= 0) {
			disconnect(p, n ? strerror(errno) : "the daemon went away");
			return -1;
		}
		p->nin += (size_t)n;
		for (;;) {
			size_t k = p->skip < p->nin ? p->skip : p->nin;
			memmove(p->in, p->in + k, p->nin - k);
			p->nin -= k;
			p->skip -= k;
			char *nl = memchr(p->in, '\n', p->nin);
			if (!nl)
				break;
			*nl = '\0';
			size_t used = (size_t)(nl - p->in) + 1;
			request(p, p->in);
			if (p->sock < 0)
				return -1;
			memmove(p->in, p->in + used, p->nin - used);
			p->nin -= used;
		}
		if (p->nin == LM__REPORT_LINE) {
			disconnect(p, "line too long");
			return -1;
		}
	}
}

/*
 * A missing daemon costs one failed connect() per BACKOFF_MAX_MS, and
 * inotify on the socket's directory wakes the thread as soon as the
 * socket appears, so a daemon that starts (or restarts) is found at once.
 */
static void watch_dir(struct lm__report *p, const char *dir)
{
	if (inotify_add_watch(p->ino, dir, IN_CREATE | IN_MOVED_TO | IN_ATTRIB) >= 0)
		return;
	char parent[sizeof(p->dir)];
	memcpy(parent, dir, sizeof(parent));
	char *slash = strrchr(parent, '/');
	if (slash && slash != parent) {
		*slash = '\0';
		inotify_add_watch(p->ino, parent, IN_CREATE | IN_MOVED_TO);
	}
}

static void watch(struct lm__report *p)
{
	if (p->ino < 0) {
		pthread_mutex_lock(&fd_lock);
		p->ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
		pthread_mutex_unlock(&fd_lock);
	}
	if (p->ino < 0)
		return;
	watch_dir(p, p->dir);
	if (p->alt[0])
		watch_dir(p, p->altdir);
}

static void *report_main(void *arg)
{
	lm__thread_mark();
	struct lm__report *p = arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	int backoff = BACKOFF_MIN_MS;
	for (;;) {
		/*
		 * The backoff is reset by a connection that lasted, not by a
		 * connect alone: a daemon that refuses at once (full) is not
		 * hammered.
		 */
		if (p->sock < 0) {
			if (p->connected_ns && lm__now_ns() - p->connected_ns > 10000000000ull)
				backoff = BACKOFF_MIN_MS;
			p->connected_ns = 0;
			if (try_connect(p) == 0)
				p->connected_ns = lm__now_ns();
			else
				watch(p);
		}
		struct pollfd fds[2] = { { p->stop_fd, POLLIN, 0 },
					 { p->sock >= 0 ? p->sock : p->ino, POLLIN, 0 } };
		int rc = poll(fds, 2, p->sock >= 0 ? -1 : backoff);
		if (rc < 0 && errno != EINTR)
			break;
		if (fds[0].revents)
			break;
		if (p->sock >= 0) {
			if (fds[1].revents && serve(p) < 0)
				backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
			if (p->refused) {
				/* No inotify shortcut either: the socket is there, the daemon said no. */
				p->refused = false;
				struct pollfd stop = { p->stop_fd, POLLIN, 0 };
				if (poll(&stop, 1, REFUSED_MS) > 0)
					break;
			}
			continue;
		}
		if (rc > 0 && fds[1].revents) {
			char buf[4096];
			while (read(p->ino, buf, sizeof(buf)) > 0)
				;
			backoff = BACKOFF_MIN_MS;
		} else {
			backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
		}
	}
	return NULL;
}

/* The directory a socket is in, for inotify. */
static void dir_of(const char *path, char *dir)
{
	memcpy(dir, path, sizeof(((struct sockaddr_un *)0)->sun_path));
	char *slash = strrchr(dir, '/');
	if (slash)
		*(slash == dir ? slash + 1 : slash) = '\0';
	else
		strcpy(dir, ".");
}

void lm__report_start(struct lm_runtime *rt)
{
	if ((rt->opt.flags & LM_OPT_NO_REPORT) || rt->stats_fd < 0)
		return;
	struct lm__report *p = lm__calloc(1, sizeof(*p));
	if (!p)
		return;
	p->rt = rt;
	p->sock = p->ino = -1;
	int rc = lm__socket_path(rt->opt.daemon_socket, 0, p->path, sizeof(p->path));
	if (lm__socket_system_too(rt->opt.daemon_socket, 0)) {
		/* A user's own daemon, if there is a place for one; else, or then, the system's. */
		snprintf(rc == -ENOENT ? p->path : p->alt, sizeof(p->path), "%s", LM__SOCKET_ROOT);
		rc = rc == -ENOENT ? 0 : rc;
	}
	if (rc < 0) {
		lm__log(rt, 2, "not reporting to lazymemd: no socket path (%s)", lm_strerror(rc));
		lm__free(p);
		return;
	}
	dir_of(p->path, p->dir);
	if (p->alt[0])
		dir_of(p->alt, p->altdir);
	pthread_mutex_lock(&fd_lock);
	p->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	bool started = p->stop_fd >= 0 && pthread_create(&p->thread, NULL, report_main, p) == 0;
	if (started)
		rt->report = p;
	else if (p->stop_fd >= 0)
		close(p->stop_fd);
	pthread_mutex_unlock(&fd_lock);
	if (!started) {
		lm__log(rt, 1, "not reporting to lazymemd: cannot start its thread");
		lm__free(p);
		return;
	}
	pthread_setname_np(p->thread, "lazymem-report");
}

void lm__report_stop(struct lm_runtime *rt)
{
	struct lm__report *p = rt->report;
	if (!p)
		return;
	if (!p->in_child) {
		uint64_t one = 1;
		if (write(p->stop_fd, &one, sizeof(one)) == sizeof(one))
			pthread_join(p->thread, NULL);
	}
	/* Closed and forgotten together: a fork() until here closes them in its child. */
	pthread_mutex_lock(&fd_lock);
	rt->report = NULL;
	if (!p->in_child) {
		close(p->stop_fd);
		if (p->sock >= 0)
			close(p->sock);
		if (p->ino >= 0)
			close(p->ino);
	}
	pthread_mutex_unlock(&fd_lock);
	lm__free(p);
}

void lm__report_atfork_prepare(void)
{
	pthread_mutex_lock(&fd_lock);
}

void lm__report_atfork_parent(void)
{
	pthread_mutex_unlock(&fd_lock);
}

void lm__report_atfork_child_reset(void)
{
	pthread_mutex_init(&fd_lock, NULL);
}

/*
 * fork(): the child's copy of the page is still the parent's memory, and
 * its copies of the descriptors are the parent's connection.  The child
 * gets private counters (a copy at the fork) and does not report: it did
 * not open a runtime, and lazymemd knows a runtime by its connection.
 */
void lm__report_atfork_child(struct lm_runtime *rt)
{
	struct lm__report *p = rt->report;
	/* Once only: a grandchild must not close numbers its parent has reused. */
	if (p && !p->in_child) {
		p->in_child = true;
		close(p->stop_fd);
		if (p->sock >= 0)
			close(p->sock);
		if (p->ino >= 0)
			close(p->ino);
		p->stop_fd = p->sock = p->ino = -1;
	}
	if (rt->stats_fd < 0)
		return;
	struct lm__stats copy;
	memcpy(&copy, (void *)rt->stats, sizeof(copy));
	void *q = mmap(rt->stats, page_len(), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (q != MAP_FAILED)
		memcpy(q, &copy, sizeof(copy));
	close(rt->stats_fd);
	rt->stats_fd = -1;
}
