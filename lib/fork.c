/* SPDX-License-Identifier: MIT */
/* fork(): the process's runtimes, and everything they do around a fork, in the parent and in the child. */
#include "internal.h"

#include <errno.h>
#include <unistd.h>

/*
 * Every runtime of the process, so that a memory source inside any of
 * their regions is refused: the handler would fault on registered memory
 * while copying (docs/DESIGN.md, invariant 1), and a signal-mode or user-mode-only
 * runtime's unfilled page would even make the copy fail with EFAULT.
 */
static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lm_runtime *all_list;

bool lm__overlaps_any_runtime(uintptr_t start, size_t len)
{
	bool hit = false;
	pthread_mutex_lock(&all_lock);
	for (struct lm_runtime *rt = all_list; rt && !hit; rt = rt->all_next) {
		int idx = lm__read_lock(rt);
		hit = lm__overlaps_region(rt, start, len);
		lm__read_unlock(rt, idx);
	}
	pthread_mutex_unlock(&all_lock);
	return hit;
}

/*
 * A fork() child inherits the regions but not the registration (the
 * runtime asks for no fork events: see lm_runtime_open).  So the child
 * takes a userfaultfd of its own and registers its copy of the regions
 * again: pages it inherited stay, pages it did not are filled from the
 * source on its own first touch, from the regions as they were at the
 * fork.  It has no handler threads, so it resolves faults by signal.  No
 * events are enabled in the child: nobody would read them, and
 * munmap/madvise would wait for that forever.
 */
static int reset_filling(lm__pte *e, uint64_t pgno, void *arg)
{
	(void)pgno;
	(void)arg;
	lm__pte_fork_reset(e);
	return 0;
}

static void follow_into_child(struct lm_runtime *rt)
{
	int origin;
	unsigned limits;
	uint64_t features;
	int fd = lm__uffd_open(rt->origin,
			       UFFD_FEATURE_SIGBUS | UFFD_FEATURE_POISON, &origin,
			       &limits, &features);
	/* The parent's descriptor number now serves nothing in the child. */
	close(rt->ufd);
	rt->ufd = fd;
	rt->ufd_pid = getpid();
	if (fd < 0)
		return;
	/* No handler threads here: the child resolves its faults by signal. */
	if (lm__signal_adopt_in_child(rt) < 0)
		return;
	/*
	 * Snapshots are the parent's: the child registers without write
	 * protection, and its copy of the spill file's descriptor and
	 * of /proc/self/mem still point at the parent's.
	 */
	if (rt->snap_memfd >= 0)
		close(rt->snap_memfd);
	rt->snap_memfd = -1;
	for (struct lm_region *r = rt->regions; r; r = r->next) {
		lm__pt_walk(&r->pt, 0, r->npages - 1, reset_filling, NULL);
		atomic_store(&r->snaps, NULL);
		if (r->spill_fd >= 0)
			close(r->spill_fd);
		r->spill_fd = -1;
	}
	struct lm__rtable *t = atomic_load(&rt->table);
	for (size_t i = 0; t && i < t->n; i++)
		lm__uffd_register(fd, t->e[i].start, t->e[i].end - t->e[i].start, false);
}

/*
 * fork(): the child gets a copy of every runtime with only the forking
 * thread alive.  Taking each runtime's lock around the fork keeps tables
 * and lists whole; in the child, locks and counters that other threads
 * held are reset, and every runtime follows the fork (follow_into_child).
 */
/*
 * Sections a fork() must not split: between them the parent's pages are
 * neither what they were nor what they will be, and a child has no one
 * to finish them (rollback drops a page before it installs the
 * snapshot's contents).  They hold the gate for reading; fork()'s prepare
 * handler takes it for writing first, holding nothing else, so a section
 * that waits for a handler thread never waits for the fork.
 */
static pthread_rwlock_t fork_gate = PTHREAD_RWLOCK_INITIALIZER;

void lm__fork_gate_enter(void)
{
	pthread_rwlock_rdlock(&fork_gate);
}

void lm__fork_gate_exit(void)
{
	pthread_rwlock_unlock(&fork_gate);
}

static void atfork_prepare(void)
{
	pthread_rwlock_wrlock(&fork_gate);
	pthread_mutex_lock(&all_lock);
	for (struct lm_runtime *rt = all_list; rt; rt = rt->all_next) {
		/* The child must not allocate: what it will need is made now. */
		lm__signal_fork_prepare_pool(rt);
		pthread_mutex_lock(&rt->lock);
		/* Between eviction batches: no page is half moved out in the child. */
		lm__evict_pause(rt);
	}
	lm__report_atfork_prepare();
	lm__signal_fork_prepare();
}

static void atfork_parent(void)
{
	lm__signal_fork_parent();
	lm__report_atfork_parent();
	for (struct lm_runtime *rt = all_list; rt; rt = rt->all_next) {
		LM__STAT_ADD(rt, forks_followed, 1);
		lm__evict_resume(rt);
		pthread_mutex_unlock(&rt->lock);
	}
	pthread_mutex_unlock(&all_lock);
	pthread_rwlock_unlock(&fork_gate);
}

static void atfork_child(void)
{
	for (struct lm_runtime *rt = all_list; rt; rt = rt->all_next) {
		/* Private counters first: every write below must miss the parent's page. */
		lm__report_atfork_child(rt);
		pthread_mutex_init(&rt->lock, NULL);
		pthread_mutex_init(&rt->ev_lock, NULL);
		pthread_mutex_init(&rt->pf_lock, NULL);
		pthread_cond_init(&rt->pf_cond, NULL);
		lm__epoch_init(&rt->rcu);
		lm__epoch_init(&rt->evq);
		atomic_store(&rt->ev_unapplied, 0);
		/*
		 * The parent's threads, prefetcher included, do not exist here:
		 * nothing to join on close (a prefetcher the child starts is).
		 */
		rt->nthreads = 0;
		rt->pf_started = false;
		/*
		 * No evictor either, and the child's pages are its own: no
		 * budget and no write tracking.  Pages swapped out before the
		 * fork are read from the shared swap file while the parent has
		 * not reused their slots (a checksum tells, and the toucher gets
		 * SIGBUS rather than another page's data).
		 */
		pthread_mutex_init(&rt->evict_lock, NULL);
		pthread_mutex_init(&rt->ev_setup_lock, NULL);
		atomic_store(&rt->ev_paused, false);
		rt->ev_started = false;
		atomic_store(&rt->budget, 0);
		atomic_store(&rt->track, false);
		LM__STAT_SET(rt, budget_bytes, 0);
	}
	for (struct lm_runtime *rt = all_list; rt; rt = rt->all_next)
		follow_into_child(rt);
	lm__signal_fork_child();
	lm__report_atfork_child_reset();
	pthread_mutex_init(&all_lock, NULL);
	pthread_rwlock_init(&fork_gate, NULL);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_register(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

void lm__runtime_register(struct lm_runtime *rt)
{
	pthread_once(&atfork_once, atfork_register);
	pthread_mutex_lock(&all_lock);
	rt->all_next = all_list;
	all_list = rt;
	pthread_mutex_unlock(&all_lock);
}

void lm__runtime_unregister(struct lm_runtime *rt)
{
	pthread_mutex_lock(&all_lock);
	for (struct lm_runtime **pp = &all_list; *pp; pp = &(*pp)->all_next)
		if (*pp == rt) {
			*pp = rt->all_next;
			break;
		}
	pthread_mutex_unlock(&all_lock);
}

