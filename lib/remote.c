/* SPDX-License-Identifier: MIT */
/* A Redis Cluster as a page store's backend: connections, pipelined batches per node, failover. */
#include "internal.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/*
 * Pages live under keys of one namespace (cluster.c says how a page's key
 * is made: a group of 64 neighbouring pages shares a hash tag, so it is
 * one slot on one master).  A batch of pages is split by the master that
 * serves each key, every master gets its part pipelined on one
 * connection, and all parts are sent before any answer is read: a batch
 * costs one round trip, however many masters it touches.
 *
 * A batch takes a set of connections (one per master) from a pool and
 * puts it back when done, so no lock is held while the network answers
 * and as many batches are in flight as there are threads doing I/O (the
 * handlers, the evictor).  Every connection has a timeout, on connecting
 * and on every answer.
 *
 * The slot map is shared: a batch reads the one published when it began.
 * A map is never changed once published; a topology refresh (after a
 * redirection or a lost connection) builds a new one that keeps the old
 * one's node numbers, so a thread's connections stay indexed by them, and
 * the old maps are kept until the cluster is closed (a refresh that finds
 * the topology unchanged publishes nothing, so there is one map per
 * change the cluster went through).
 * So a set's connections stay indexed by node number across maps.
 *
 * A batch that meets a redirection, a lost connection or a cluster that
 * is failing over is sent again, the parts still missing only, until
 * retry_ms have passed: a master that dies is replaced by its replica
 * within the cluster's node timeout, and the batch carries on.  What is
 * still missing then fails with -errno, page by page; the callers keep a
 * page whose write failed (swap.c) and raise SIGBUS for a page whose read
 * did (fault.c).  A write that failed that way also stops writes for a
 * second, so that eviction gives up at once instead of waiting out a
 * timeout per batch while the cluster is gone.
 *
 * hiredis allocates with malloc: see OWN_MEMORY below.
 */

#define MAX_SEEDS 16
#define REFRESH_MIN_NS 50000000ull	/* one refresh per 50 ms at most */
#define DOWN_NS 1000000000ull	/* writes fail fast this long after one timed out */

struct lm__remote {
	struct lm_runtime *rt;
	char ns[80];
	size_t page_size;
	int timeout_ms;		/* per connect and per answer */
	int retry_ms;		/* how long a batch keeps trying */
	int wait_replicas;	/* WAIT for this many replicas after writes; 0: none */
	unsigned nseeds;
	struct {
		char host[64];
		int port;
	} seeds[MAX_SEEDS];
	struct lm__slotmap *_Atomic map;
	struct lm__slotmap **maps;	/* every map published, freed at close (under lock) */
	unsigned nmaps, maps_cap;
	pid_t pid;			/* the process that opened it: a fork() child never uses it */
	pthread_mutex_t lock;	/* refreshes */
	pthread_mutex_t pool_lock;
	uint64_t refreshed_ns;
	_Atomic uint64_t down_until;
	/* Per node: WAIT found too few replicas; writes there fail fast until then. */
	_Atomic uint64_t short_until[LM__CLUSTER_NODES];
	_Atomic uint64_t hiwater;	/* keys below it may exist: close deletes them */
	bool owned;		/* the namespace is this store's alone: close deletes its keys */
	struct lm__remote_conns *pool;	/* connection sets not in use, under lock */
	struct lm__remote_conns *admin;	/* open's and close's connections */
};

struct lm__remote_conns {
	redisContext *c[LM__CLUSTER_NODES];
	struct lm__remote_conns *next;	/* in the pool */
};

/*
 * hiredis allocates with malloc, from whichever thread calls it: an
 * application thread that opens an image makes connections a handler
 * later uses and frees.  So every entry here runs as a runtime thread
 * (lm__runtime_thread) for its duration, and under the preload library
 * all of hiredis's memory comes from the runtime's own allocator, never
 * from the lazy heap a handler may have to fill (invariant 1).
 */
static bool own_enter(void)
{
	bool was = lm__runtime_thread;
	lm__runtime_thread = true;
	return was;
}

static void own_leave(const bool *was)
{
	lm__runtime_thread = *was;
}

#define OWN_MEMORY \
	const bool own_was_ __attribute__((cleanup(own_leave), unused)) = own_enter()

/*
 * A fork() child has copies of the parent's sockets and, in signal mode,
 * would run hiredis in a SIGBUS handler: it never uses the store.  Its
 * faults on pages in the cluster get SIGBUS; the parent's replies stay
 * the parent's, and the child's close deletes nothing.
 */
static bool foreign(const struct lm__remote *c)
{
	return getpid() != c->pid;
}

/* ---- the URL --------------------------------------------------------------- */

static int parse_ms(const char *v, size_t len, int max, int *out)
{
	unsigned long n;
	if (!len || lm__cluster_uint(v, len, (unsigned long)max, &n) != len)
		return -EINVAL;
	*out = (int)n;
	return 0;
}

/*
 * redis://HOST:PORT[,HOST:PORT...][/NAME][?wait=N&timeout=MS&retry=MS]:
 * the seeds (any nodes of the cluster; the rest is learned from them), a
 * name that goes into the namespace, and the options.
 */
static int parse_url(struct lm__remote *c, const char *url, char *name, size_t namecap)
{
	static const char scheme[] = "redis://";
	if (strncmp(url, scheme, sizeof(scheme) - 1))
		return -EINVAL;
	const char *p = url + sizeof(scheme) - 1;
	size_t hosts = strcspn(p, "/?");
	for (size_t at = 0; at < hosts;) {
		size_t len = strcspn(p + at, ",/?");
		if (len > hosts - at)
			len = hosts - at;
		if (c->nseeds == MAX_SEEDS)
			return -E2BIG;
		if (lm__cluster_endpoint(p + at, len, c->seeds[c->nseeds].host,
					 sizeof(c->seeds[0].host), &c->seeds[c->nseeds].port) < 0)
			return -EINVAL;
		c->nseeds++;
		at += len + 1;
	}
	if (!c->nseeds)
		return -EINVAL;
	p += hosts;
	name[0] = '\0';
	if (*p == '/') {
		size_t len = strcspn(++p, "?");
		if (len >= namecap)
			return -ENAMETOOLONG;
		for (size_t i = 0; i < len; i++)
			if (p[i] <= ' ' || p[i] == '{' || p[i] == '}' || p[i] == 0x7f)
				return -EINVAL;
		memcpy(name, p, len);
		name[len] = '\0';
		p += len;
	}
	if (*p == '?')
		p++;
	while (*p) {
		size_t len = strcspn(p, "&");
		const char *eq = memchr(p, '=', len);
		if (!eq)
			return -EINVAL;
		size_t klen = (size_t)(eq - p), vlen = len - klen - 1;
		int rc;
		if (klen == 4 && !memcmp(p, "wait", 4))
			rc = parse_ms(eq + 1, vlen, 16, &c->wait_replicas);
		else if (klen == 7 && !memcmp(p, "timeout", 7))
			rc = parse_ms(eq + 1, vlen, 3600000, &c->timeout_ms);
		else if (klen == 5 && !memcmp(p, "retry", 5))
			rc = parse_ms(eq + 1, vlen, 3600000, &c->retry_ms);
		else
			rc = -EINVAL;
		if (rc < 0)
			return rc;
		p += len + (p[len] == '&');
	}
	return c->timeout_ms ? 0 : -EINVAL;
}

/* ---- connections ----------------------------------------------------------- */

static struct timeval tv_of(int ms)
{
	return (struct timeval){ .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
}

static redisContext *connect_to(struct lm__remote *c, const char *host, int port)
{
	redisContext *ctx = redisConnectWithTimeout(host, port, tv_of(c->timeout_ms));
	if (ctx && !ctx->err && redisSetTimeout(ctx, tv_of(c->timeout_ms)) == REDIS_OK)
		return ctx;
	if (ctx)
		redisFree(ctx);
	return NULL;
}

/*
 * A set of connections for one batch, from the pool (or new): taken and
 * put back under the lock, used without it, so no lock is held while the
 * network answers and there are as many sets as batches ever in flight.
 */
static struct lm__remote_conns *conns_take(struct lm__remote *c)
{
	pthread_mutex_lock(&c->pool_lock);
	struct lm__remote_conns *cs = c->pool;
	if (cs)
		c->pool = cs->next;
	pthread_mutex_unlock(&c->pool_lock);
	return cs ? cs : lm__calloc(1, sizeof(*cs));
}

static void conns_put(struct lm__remote *c, struct lm__remote_conns *cs)
{
	pthread_mutex_lock(&c->pool_lock);
	cs->next = c->pool;
	c->pool = cs;
	pthread_mutex_unlock(&c->pool_lock);
}

static void conn_drop(struct lm__remote_conns *cs, unsigned node)
{
	if (cs->c[node]) {
		redisFree(cs->c[node]);
		cs->c[node] = NULL;
	}
}

static void conns_free(struct lm__remote_conns *cs)
{
	if (!cs)
		return;
	for (unsigned i = 0; i < LM__CLUSTER_NODES; i++)
		conn_drop(cs, i);
	lm__free(cs);
}

/* This thread's connection to node, made if it has none; NULL when the node cannot be reached. */
static redisContext *conn_of(struct lm__remote *c, struct lm__remote_conns *cs,
			     const struct lm__slotmap *m, unsigned node)
{
	if (cs->c[node] && !cs->c[node]->err)
		return cs->c[node];
	conn_drop(cs, node);
	cs->c[node] = connect_to(c, m->nodes[node].host, m->nodes[node].port);
	return cs->c[node];
}

/* ---- the slot map ------------------------------------------------------------ */

/*
 * CLUSTER SLOTS from one node into m: each entry is [first, last,
 * [host, port, ...], replicas...].  An empty host is the node asked.
 * Node numbers index every thread's connections, so they are kept from
 * map to map and nodes are only ever added.
 */
static int slots_from(redisContext *ctx, const char *asked, struct lm__slotmap *m)
{
	redisReply *r = redisCommand(ctx, "CLUSTER SLOTS");
	if (!r)
		return -EHOSTUNREACH;
	int rc = 0;
	if (r->type != REDIS_REPLY_ARRAY || !r->elements) {
		rc = r->type == REDIS_REPLY_ERROR ? -ENOTSUP : -EPROTO;
		goto out;
	}
	for (size_t i = 0; i < r->elements && rc >= 0; i++) {
		redisReply *e = r->element[i];
		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
		    e->element[0]->type != REDIS_REPLY_INTEGER ||
		    e->element[1]->type != REDIS_REPLY_INTEGER ||
		    e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2 ||
		    e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
		    e->element[2]->element[1]->type != REDIS_REPLY_INTEGER) {
			rc = -EPROTO;
			break;
		}
		const char *host = e->element[2]->element[0]->str;
		long long first = e->element[0]->integer, last = e->element[1]->integer;
		if (first < 0 || last < first || last >= LM__CLUSTER_SLOTS) {
			rc = -EPROTO;
			break;
		}
		rc = lm__slotmap_assign(m, (unsigned)first, (unsigned)last, *host ? host : asked,
					(int)e->element[2]->element[1]->integer);
		/*
		 * Replicas are known too, though they serve no slot: when every
		 * master is gone, they are who can tell which of them took over.
		 */
		for (size_t k = 3; k < e->elements && rc >= 0; k++) {
			redisReply *x = e->element[k];
			if (x->type == REDIS_REPLY_ARRAY && x->elements >= 2 &&
			    x->element[0]->type == REDIS_REPLY_STRING && *x->element[0]->str &&
			    x->element[1]->type == REDIS_REPLY_INTEGER)
				lm__slotmap_node_add(m, x->element[0]->str, (int)x->element[1]->integer);
		}
	}
out:
	freeReplyObject(r);
	return rc < 0 ? rc : 0;
}

/*
 * Asks the cluster which master serves each slot: the nodes of the
 * current map first (a failed master's replica knows it was promoted),
 * then the seeds.  Publishes the answer as a new map with the old node
 * numbers, unless nothing changed.  One thread refreshes at a time, and
 * no thread waits for it: one that finds a refresh under way, or one
 * done lately, goes back to its batch and tries again after a pause.
 */
static int refresh(struct lm__remote *c, const struct lm__slotmap *seen)
{
	if (pthread_mutex_trylock(&c->lock))
		return 0;
	struct lm__slotmap *cur = atomic_load(&c->map);
	int rc = 0;
	if ((seen && cur != seen) || (cur && lm__now_ns() - c->refreshed_ns < REFRESH_MIN_NS))
		goto out;
	if (c->nmaps == c->maps_cap) {
		unsigned cap = c->maps_cap ? 2 * c->maps_cap : 8;
		struct lm__slotmap **maps = lm__malloc(cap * sizeof(*maps));
		if (!maps) {
			rc = -ENOMEM;
			goto out;
		}
		if (c->nmaps)
			memcpy(maps, c->maps, c->nmaps * sizeof(*maps));
		lm__free(c->maps);
		c->maps = maps;
		c->maps_cap = cap;
	}
	struct lm__slotmap *m = lm__malloc(sizeof(*m));
	if (!m) {
		rc = -ENOMEM;
		goto out;
	}
	rc = -EHOSTUNREACH;
	unsigned known = cur ? cur->nnodes : 0;
	for (unsigned i = 0; i < known + c->nseeds && rc < 0; i++) {
		const char *host = i < known ? cur->nodes[i].host : c->seeds[i - known].host;
		int port = i < known ? cur->nodes[i].port : c->seeds[i - known].port;
		redisContext *ctx = connect_to(c, host, port);
		if (!ctx)
			continue;
		lm__slotmap_init(m);
		if (cur) {
			m->nnodes = cur->nnodes;
			memcpy(m->nodes, cur->nodes, sizeof(m->nodes));
		}
		int r = slots_from(ctx, host, m);
		redisFree(ctx);
		/* A node that lost the cluster answers with holes: ask another. */
		if (r == 0 && lm__slotmap_uncovered(m) && i + 1 < known + c->nseeds)
			r = -EAGAIN;
		if (r == 0 || rc == -EHOSTUNREACH)
			rc = r;
	}
	/* From the end of this one: threads that come by meanwhile do not start another. */
	c->refreshed_ns = lm__now_ns();
	if (rc < 0 || (cur && m->nnodes == cur->nnodes && !memcmp(cur->node, m->node, sizeof(m->node)))) {
		lm__free(m);
		goto out;
	}
	if (cur && memcmp(cur->node, m->node, sizeof(m->node)))
		LM__STAT_ADD(c->rt, remote_failovers, 1);
	c->maps[c->nmaps++] = m;
	atomic_store(&c->map, m);
out:
	pthread_mutex_unlock(&c->lock);
	return rc;
}

/* ---- batches ----------------------------------------------------------------- */

/* What one attempt left a page with. */
#define P_DONE 0
#define P_AGAIN 1	/* send again (redirected, connection lost, cluster busy) */

struct part {
	unsigned node;
	uint64_t sent_ns;
};

static int key_of(const struct lm__remote *c, uint64_t k, char *buf, size_t cap)
{
	return lm__cluster_page_key(buf, cap, c->ns, k);
}

static void count_rtt(struct lm__remote *c, uint64_t ns)
{
	LM__STAT_ADD(c->rt, remote_requests, 1);
	LM__STAT_ADD(c->rt, remote_rtt_ns_total, ns);
	if (ns < 100000)
		LM__STAT_ADD(c->rt, remote_rtt_lt_100us, 1);
	else if (ns < 1000000)
		LM__STAT_ADD(c->rt, remote_rtt_lt_1ms, 1);
	else if (ns < 10000000)
		LM__STAT_ADD(c->rt, remote_rtt_lt_10ms, 1);
	else if (ns < 100000000)
		LM__STAT_ADD(c->rt, remote_rtt_lt_100ms, 1);
	else
		LM__STAT_ADD(c->rt, remote_rtt_ge_100ms, 1);
}

/*
 * An error answer to one page's command: a redirection is followed on the
 * next attempt (MOVED by a refresh of the whole map, ASK for this page
 * alone), a cluster in the middle of a change is waited for, and the
 * rest is final: -ENOSPC when the cluster is out of memory.
 */
static int error_of(struct lm__remote *c, const redisReply *r, int *ask)
{
	struct lm__redirect red;
	if (lm__cluster_redirect(r->str, r->len, &red) == 0) {
		if (red.kind == LM__REDIRECT_ASK) {
			struct lm__slotmap *m = atomic_load(&c->map);
			for (unsigned i = 0; i < m->nnodes; i++)
				if (m->nodes[i].port == red.port && !strcmp(m->nodes[i].host, red.host))
					*ask = (int)i;
		}
		return P_AGAIN;
	}
	if (!strncmp(r->str, "TRYAGAIN", 8) || !strncmp(r->str, "CLUSTERDOWN", 11) ||
	    !strncmp(r->str, "LOADING", 7) || !strncmp(r->str, "MASTERDOWN", 10))
		return P_AGAIN;
	if (!strncmp(r->str, "OOM", 3))
		return -ENOSPC;
	if (!strncmp(r->str, "NOREPLICAS", 10))
		return -ENOLINK;
	return -EIO;
}

struct batch {
	unsigned n;
	const uint64_t *key;
	unsigned char *const *wpages;	/* a write's pages */
	unsigned char *const *rpages;	/* a read's destinations */
	int *res;		/* per page: P_DONE, P_AGAIN or -errno */
	int *ask;		/* per page: node an ASK redirection named, or -1 */
};

/*
 * One attempt at the pages still P_AGAIN: every master's part appended,
 * then the answers read, master by master.  Returns whether a connection
 * was lost or a redirection seen (the map may be stale).
 */
static bool attempt(struct lm__remote *c, struct lm__remote_conns *cs, struct batch *b)
{
	const struct lm__slotmap *m = atomic_load(&c->map);
	struct part parts[LM__CLUSTER_NODES];
	unsigned nparts = 0;
	int part_of[LM__CLUSTER_NODES];
	bool stale = false;
	for (unsigned i = 0; i < LM__CLUSTER_NODES; i++)
		part_of[i] = -1;
	char key[224];	/* two namespaces (80), a group and a page number */
	size_t ps = c->page_size;
	/* Which master each page goes to; the ones none serves wait for the next map. */
	int node_of[b->n];
	uint64_t now = lm__now_ns();
	for (unsigned i = 0; i < b->n; i++) {
		node_of[i] = -1;
		if (b->res[i] != P_AGAIN)
			continue;
		int klen = key_of(c, b->key[i], key, sizeof(key));
		int node = b->ask[i] >= 0 ? b->ask[i] :
			   lm__slotmap_node(m, lm__cluster_slot(key, (size_t)klen));
		if (node < 0 || (unsigned)node >= m->nnodes) {
			stale = true;
			continue;
		}
		/*
		 * A master that lately had too few replicas to WAIT for: the page
		 * stays in memory rather than leave with one copy, without a
		 * WAIT's timeout per batch.
		 */
		if (b->wpages && c->wait_replicas &&
		    now < atomic_load_explicit(&c->short_until[node], memory_order_relaxed)) {
			b->res[i] = -ENOLINK;
			continue;
		}
		if (part_of[node] < 0) {
			if (!conn_of(c, cs, m, (unsigned)node)) {
				LM__STAT_ADD(c->rt, remote_errors, 1);
				stale = true;
				continue;
			}
			part_of[node] = (int)nparts;
			parts[nparts++] = (struct part){ .node = (unsigned)node };
		}
		redisContext *ctx = cs->c[node];
		if (b->ask[i] >= 0) {
			redisAppendCommand(ctx, "ASKING");
		}
		if (b->wpages) {
			const char *argv[3] = { "SET", key, (const char *)b->wpages[i] };
			size_t len[3] = { 3, (size_t)klen, ps };
			redisAppendCommandArgv(ctx, 3, argv, len);
		} else {
			const char *argv[2] = { "GET", key };
			size_t len[2] = { 3, (size_t)klen };
			redisAppendCommandArgv(ctx, 2, argv, len);
		}
		node_of[i] = node;
	}
	/* Every part goes out before any answer is awaited: one round trip in all. */
	for (unsigned p = 0; p < nparts; p++) {
		redisContext *ctx = cs->c[parts[p].node];
		/* The server gives up on WAIT before the socket's timeout does: its answer comes. */
		if (b->wpages && c->wait_replicas)
			redisAppendCommand(ctx, "WAIT %d %d", c->wait_replicas,
					   c->timeout_ms > 1 ? c->timeout_ms / 2 : 1);
		parts[p].sent_ns = lm__now_ns();
		int done = 0;
		while (!done && redisBufferWrite(ctx, &done) == REDIS_OK)
			;
	}
	for (unsigned p = 0; p < nparts; p++) {
		struct part *pt = &parts[p];
		redisContext *ctx = cs->c[pt->node];
		bool lost = ctx->err != 0;
		int waited = c->wait_replicas;
		for (unsigned i = 0; i < b->n; i++) {
			if (node_of[i] != (int)pt->node)
				continue;
			redisReply *r = NULL;
			int ask = -1;
			if (!lost && b->ask[i] >= 0) {
				if (redisGetReply(ctx, (void **)&r) != REDIS_OK)
					lost = true;
				freeReplyObject(r);
				r = NULL;
			}
			if (!lost && redisGetReply(ctx, (void **)&r) != REDIS_OK)
				lost = true;
			b->ask[i] = -1;
			if (lost) {
				b->res[i] = P_AGAIN;
				continue;
			}
			if (r->type == REDIS_REPLY_ERROR) {
				b->res[i] = error_of(c, r, &ask);
				b->ask[i] = ask;
				stale |= b->res[i] == P_AGAIN && ask < 0;
			} else if (b->wpages) {
				b->res[i] = r->type == REDIS_REPLY_STATUS ? P_DONE : -EPROTO;
				if (!b->res[i])
					LM__STAT_ADD(c->rt, remote_bytes_out, ps);
			} else if (r->type == REDIS_REPLY_NIL) {
				b->res[i] = -ENODATA;	/* every copy of the page is gone */
			} else if (r->type != REDIS_REPLY_STRING || (size_t)r->len != ps) {
				b->res[i] = -EBADMSG;
			} else {
				memcpy(b->rpages[i], r->str, ps);
				LM__STAT_ADD(c->rt, remote_bytes_in, ps);
				b->res[i] = P_DONE;
			}
			freeReplyObject(r);
		}
		if (!lost && b->wpages && c->wait_replicas) {
			redisReply *r = NULL;
			if (redisGetReply(ctx, (void **)&r) != REDIS_OK)
				lost = true;
			else
				waited = r->type == REDIS_REPLY_INTEGER ? (int)r->integer : -1;
			freeReplyObject(r);
			/* Written, but not where a failover would find it: not done. */
			if (!lost && waited < c->wait_replicas) {
				for (unsigned i = 0; i < b->n; i++)
					if (node_of[i] == (int)pt->node && b->res[i] == P_DONE)
						b->res[i] = -ENOLINK;
				atomic_store(&c->short_until[pt->node], lm__now_ns() + DOWN_NS);
			}
		}
		if (lost) {
			/*
			 * With WAIT, a write is done only when its WAIT answered: a
			 * part whose answers stopped is sent again, whole.
			 */
			for (unsigned i = 0; b->wpages && c->wait_replicas && i < b->n; i++)
				if (node_of[i] == (int)pt->node && b->res[i] == P_DONE)
					b->res[i] = P_AGAIN;
			LM__STAT_ADD(c->rt, remote_errors, 1);
			conn_drop(cs, pt->node);
			stale = true;
		} else {
			count_rtt(c, lm__now_ns() - pt->sent_ns);
		}
	}
	return stale;
}

/*
 * Runs a batch to the end: attempts until every page is done or failed,
 * or retry_ms have passed.  Returns 0, or the first page's error.
 */
static int run_batch(struct lm__remote *c, struct batch *b)
{
	if (!b->n)
		return 0;
	struct lm__remote_conns *cs = conns_take(c);
	int first = 0;
	if (!cs) {
		for (unsigned i = 0; i < b->n; i++)
			b->res[i] = -ENOMEM;
		return -ENOMEM;
	}
	for (unsigned i = 0; i < b->n; i++) {
		b->res[i] = P_AGAIN;
		b->ask[i] = -1;
	}
	uint64_t deadline = lm__now_ns() + (uint64_t)c->retry_ms * 1000000;
	unsigned tries = 0;
	for (;;) {
		const struct lm__slotmap *m = atomic_load(&c->map);
		bool stale = attempt(c, cs, b);
		unsigned again = 0;
		for (unsigned i = 0; i < b->n; i++)
			again += b->res[i] == P_AGAIN;
		if (!again || lm__now_ns() >= deadline)
			break;
		LM__STAT_ADD(c->rt, remote_retries, 1);
		if (stale)
			refresh(c, m);
		/* A failover takes the cluster's node timeout: back off, up to 100 ms a try. */
		if (tries++)
			nanosleep(&(struct timespec){ 0, (long)(tries < 10 ? tries * 10 : 100) * 1000000 },
				  NULL);
	}
	conns_put(c, cs);
	for (unsigned i = 0; i < b->n; i++) {
		if (b->res[i] == P_AGAIN)
			b->res[i] = -ETIMEDOUT;
		if (b->res[i] && !first)
			first = b->res[i];
	}
	return first;
}

int lm__remote_write(struct lm__remote *c, const uint64_t *key, unsigned char *const *pages,
		     unsigned n, int *res)
{
	OWN_MEMORY;
	if (foreign(c) || lm__now_ns() < atomic_load_explicit(&c->down_until, memory_order_relaxed)) {
		for (unsigned i = 0; i < n; i++)
			res[i] = -EHOSTUNREACH;
		return n ? -EHOSTUNREACH : 0;
	}
	for (unsigned i = 0; i < n; i++) {
		uint64_t hw = atomic_load(&c->hiwater);
		while (key[i] >= hw && !atomic_compare_exchange_weak(&c->hiwater, &hw, key[i] + 1))
			;
	}
	int ask[n ? n : 1];
	struct batch b = { .n = n, .key = key, .wpages = pages, .res = res, .ask = ask };
	int rc = run_batch(c, &b);
	if (rc == -ETIMEDOUT || rc == -EHOSTUNREACH)
		atomic_store(&c->down_until, lm__now_ns() + DOWN_NS);
	return rc;
}

int lm__remote_read(struct lm__remote *c, const uint64_t *key, unsigned char *const *pages,
		    unsigned n, int *res)
{
	OWN_MEMORY;
	if (foreign(c)) {
		for (unsigned i = 0; i < n; i++)
			res[i] = -EIO;
		return n ? -EIO : 0;
	}
	int ask[n ? n : 1];
	struct batch b = { .n = n, .key = key, .rpages = pages, .res = res, .ask = ask };
	return run_batch(c, &b);
}

bool lm__remote_writable(struct lm__remote *c)
{
	return lm__now_ns() >= atomic_load_explicit(&c->down_until, memory_order_relaxed);
}

/* ---- open and close ------------------------------------------------------------ */

/*
 * A cluster that may evict keys would lose pages without telling: every
 * master must say noeviction.  One that cannot say (CONFIG disabled) is
 * refused too.
 */
static int check_policy(struct lm__remote *c)
{
	const struct lm__slotmap *m = atomic_load(&c->map);
	for (unsigned i = 0; i < m->nnodes; i++) {
		redisContext *ctx = conn_of(c, c->admin, m, i);
		if (!ctx) {
			lm__log(c->rt, 1, "remote store: cannot reach %s:%d", m->nodes[i].host,
				m->nodes[i].port);
			return -EHOSTUNREACH;
		}
		redisReply *r = redisCommand(ctx, "CONFIG GET maxmemory-policy");
		bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
			  r->element[1]->type == REDIS_REPLY_STRING &&
			  !strcmp(r->element[1]->str, "noeviction");
		if (!ok)
			lm__log(c->rt, 1,
				"remote store: %s:%d %s%s; a cluster that may evict keys would lose "
				"pages: set maxmemory-policy noeviction on every master",
				m->nodes[i].host, m->nodes[i].port,
				r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 ?
					"has maxmemory-policy " : "does not tell its maxmemory-policy",
				r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
						r->element[1]->type == REDIS_REPLY_STRING ?
					r->element[1]->str : "");
		freeReplyObject(r);
		if (!ok)
			return -EINVAL;
	}
	return 0;
}

int lm__remote_open(struct lm_runtime *rt, const char *url, size_t page_size, unsigned flags,
		    struct lm__remote **out)
{
	OWN_MEMORY;
	struct lm__remote *c = lm__calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->rt = rt;
	c->pid = getpid();
	c->page_size = page_size;
	c->timeout_ms = 1000;
	c->retry_ms = 10000;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->pool_lock, NULL);
	char name[32];
	int rc = parse_url(c, url, name, sizeof(name));
	if (!rc && (flags & LM__REMOTE_NAMED) && !*name)
		rc = -EINVAL;
	if (rc < 0) {
		lm__log(rt, 1, "remote store: %s: not redis://HOST:PORT[,HOST:PORT...]%s"
			"[?wait=N&timeout=MS&retry=MS]", url,
			flags & LM__REMOTE_NAMED ? "/NAME" : "[/NAME]");
		goto fail;
	}
	if (flags & LM__REMOTE_NAMED) {
		/* A name others find it by: the caller's to manage. */
		snprintf(c->ns, sizeof(c->ns), "lm:img:%s", name);
	} else {
		/*
		 * A namespace no other runtime uses: name, pid, time and a random
		 * part; under lazymem run --swap, after the run's token
		 * ($LAZYMEM_SWAP_RUN), so that lazymem run deletes what the
		 * program's runtimes leave (they are never closed: see preload.c).
		 */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint32_t rnd = (uint32_t)lm__hash64(&ts, sizeof(ts), (uint64_t)getpid()) ^
			       (uint32_t)(uintptr_t)c;
		const char *run = rt && !(rt->opt.flags & LM_OPT_NO_ENV) ?
			getenv("LAZYMEM_SWAP_RUN") : NULL;
		bool run_ok = run && *run && strlen(run) <= 24 &&
			      strspn(run, "abcdefghijklmnopqrstuvwxyz0123456789-") == strlen(run);
		snprintf(c->ns, sizeof(c->ns), "lm:%s:%s%s%d:%08" PRIx32, *name ? name : "swap",
			 run_ok ? run : "", run_ok ? ":" : "", (int)getpid(), rnd);
		c->owned = true;
	}
	c->admin = conns_take(c);
	if (!c->admin) {
		rc = -ENOMEM;
		goto fail;
	}
	if ((rc = refresh(c, NULL)) < 0) {
		lm__log(rt, 1, "remote store: no node of %s answered CLUSTER SLOTS (%s)", url,
			lm_strerror(rc));
		goto fail;
	}
	unsigned holes = lm__slotmap_uncovered(atomic_load(&c->map));
	if (holes) {
		lm__log(rt, 1, "remote store: %u slots of %s have no master: the cluster is not whole",
			holes, url);
		rc = -ENXIO;
		goto fail;
	}
	/*
	 * Who writes pages checks that none can be evicted; a restore only
	 * reads what a save checked (and a page gone is SIGBUS, never wrong):
	 * it opens in a few round trips, not one per node.
	 */
	if (!(flags & LM__REMOTE_READER) && (rc = check_policy(c)) < 0)
		goto fail;
	lm__log(rt, 2, "remote store: %s, %u nodes, namespace %s", url,
		atomic_load(&c->map)->nnodes, c->ns);
	*out = c;
	return 0;
fail:
	lm__remote_close(c);
	return rc;
}

/*
 * One command on one key, on the master that serves it, through
 * redirections and failovers as a batch is; the answer, or NULL when
 * the cluster could not be reached in time.
 */
static redisReply *key_command(struct lm__remote *c, const char *key, int argc,
			       const char **argv, const size_t *len)
{
	uint64_t deadline = lm__now_ns() + (uint64_t)c->retry_ms * 1000000;
	redisReply *r = NULL;
	int ask = -1;
	for (unsigned tries = 0;; tries++) {
		const struct lm__slotmap *m = atomic_load(&c->map);
		int node = ask >= 0 ? ask : lm__slotmap_node(m, lm__cluster_slot(key, strlen(key)));
		redisContext *ctx = node < 0 || (unsigned)node >= m->nnodes ?
			NULL : conn_of(c, c->admin, m, (unsigned)node);
		if (ctx && ask >= 0)
			freeReplyObject(redisCommand(ctx, "ASKING"));
		r = ctx ? redisCommandArgv(ctx, argc, argv, len) : NULL;
		ask = -1;
		if (!r && ctx) {
			LM__STAT_ADD(c->rt, remote_errors, 1);
			conn_drop(c->admin, (unsigned)node);
		}
		if (r && (r->type != REDIS_REPLY_ERROR || error_of(c, r, &ask) != P_AGAIN))
			return r;
		freeReplyObject(r);
		r = NULL;
		if (lm__now_ns() >= deadline)
			return NULL;
		LM__STAT_ADD(c->rt, remote_retries, 1);
		if (ask < 0)
			refresh(c, m);
		if (tries)
			nanosleep(&(struct timespec){ 0, (long)(tries < 10 ? tries * 10 : 100) * 1000000 },
				  NULL);
	}
}

int lm__remote_get(struct lm__remote *c, const char *key, char *buf, size_t cap)
{
	OWN_MEMORY;
	const char *argv[2] = { "GET", key };
	size_t len[2] = { 3, strlen(key) };
	redisReply *r = key_command(c, key, 2, argv, len);
	int rc = !r ? -ETIMEDOUT : r->type == REDIS_REPLY_NIL ? -ENOENT :
		 r->type != REDIS_REPLY_STRING ? -EIO : r->len >= cap ? -EMSGSIZE : (int)r->len;
	if (rc >= 0) {
		memcpy(buf, r->str, (size_t)r->len);
		buf[r->len] = '\0';
	}
	freeReplyObject(r);
	return rc;
}

int lm__remote_set(struct lm__remote *c, const char *key, const char *val)
{
	OWN_MEMORY;
	const char *argv[3] = { "SET", key, val };
	size_t len[3] = { 3, strlen(key), strlen(val) };
	redisReply *r = key_command(c, key, 3, argv, len);
	int rc = !r ? -ETIMEDOUT : r->type == REDIS_REPLY_STATUS ? 0 : -EIO;
	if (r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "OOM", 3))
		rc = -ENOSPC;
	freeReplyObject(r);
	if (!rc && c->wait_replicas) {
		const struct lm__slotmap *m = atomic_load(&c->map);
		int node = lm__slotmap_node(m, lm__cluster_slot(key, strlen(key)));
		redisContext *ctx = node < 0 ? NULL : conn_of(c, c->admin, m, (unsigned)node);
		r = ctx ? redisCommand(ctx, "WAIT %d %d", c->wait_replicas, c->timeout_ms) : NULL;
		rc = r && r->type == REDIS_REPLY_INTEGER && r->integer >= c->wait_replicas ? 0 : -ENOLINK;
		freeReplyObject(r);
	}
	return rc;
}

void lm__remote_set_ns(struct lm__remote *c, const char *ns)
{
	snprintf(c->ns, sizeof(c->ns), "%s", ns);
}

/*
 * UNLINK of one group (its keys share a slot) of namespace ns, appended
 * to its master's connection; the master's node number, or -1.
 */
static int append_unlink(struct lm__remote *c, const struct lm__slotmap *m, const char *ns,
			 uint64_t g, uint64_t n)
{
	char keys[LM__CLUSTER_GROUP][224];
	const char *argv[LM__CLUSTER_GROUP + 1] = { "UNLINK" };
	size_t len[LM__CLUSTER_GROUP + 1] = { 6 };
	unsigned k = 0;
	for (uint64_t p = g * LM__CLUSTER_GROUP; p < n && k < LM__CLUSTER_GROUP; p++, k++) {
		len[k + 1] = (size_t)lm__cluster_page_key(keys[k], sizeof(keys[k]), ns, p);
		argv[k + 1] = keys[k];
	}
	int node = lm__slotmap_node(m, lm__cluster_slot(keys[0], len[1]));
	redisContext *ctx = node < 0 || (unsigned)node >= m->nnodes ?
		NULL : conn_of(c, c->admin, m, (unsigned)node);
	if (!ctx || redisAppendCommandArgv(ctx, (int)k + 1, argv, len) != REDIS_OK)
		return -1;
	return node;
}

/*
 * Deletes the page keys [0, n) of namespace ns: a command per group, up
 * to 256 groups pipelined to their masters before the answers are read.
 * A chunk that meets a redirection or a lost connection is done again
 * after a refresh, until the store's retry time is up.
 */
int lm__remote_delete(struct lm__remote *c, const char *ns, uint64_t n)
{
	OWN_MEMORY;
	if (foreign(c))
		return -EIO;
	enum { CHUNK = 256 };
	uint64_t groups = (n + LM__CLUSTER_GROUP - 1) / LM__CLUSTER_GROUP;
	uint64_t deadline = lm__now_ns() + (uint64_t)c->retry_ms * 1000000;
	for (uint64_t g0 = 0; g0 < groups;) {
		const struct lm__slotmap *m = atomic_load(&c->map);
		uint64_t end = g0 + CHUNK < groups ? g0 + CHUNK : groups;
		int node[CHUNK];
		bool again = false;
		for (uint64_t g = g0; g < end; g++)
			again |= (node[g - g0] = append_unlink(c, m, ns, g, n)) < 0;
		for (uint64_t g = g0; g < end; g++) {
			redisReply *r = NULL;
			if (node[g - g0] < 0)
				continue;
			redisContext *ctx = c->admin->c[node[g - g0]];
			if (!ctx || redisGetReply(ctx, (void **)&r) != REDIS_OK) {
				conn_drop(c->admin, (unsigned)node[g - g0]);
				again = true;
			} else if (r->type != REDIS_REPLY_INTEGER) {
				again = true;
			}
			freeReplyObject(r);
		}
		if (!again) {
			g0 = end;
			continue;
		}
		if (lm__now_ns() >= deadline)
			return -ETIMEDOUT;
		LM__STAT_ADD(c->rt, remote_retries, 1);
		refresh(c, m);
		nanosleep(&(struct timespec){ 0, 20000000 }, NULL);
	}
	return 0;
}

void lm__remote_close(struct lm__remote *c)
{
	OWN_MEMORY;
	if (!c)
		return;
	uint64_t hw = atomic_load(&c->hiwater);
	if (c->owned && hw && !foreign(c) && atomic_load(&c->map) && c->admin &&
	    lm__remote_delete(c, c->ns, hw) < 0)
		lm__log(c->rt, 1, "remote store: could not delete the keys of %s", c->ns);
	conns_free(c->admin);
	while (c->pool) {
		struct lm__remote_conns *cs = c->pool;
		c->pool = cs->next;
		conns_free(cs);
	}
	for (unsigned i = 0; i < c->nmaps; i++)
		lm__free(c->maps[i]);
	lm__free(c->maps);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->pool_lock);
	lm__free(c);
}

const char *lm__remote_ns(const struct lm__remote *c)
{
	return c->ns;
}
