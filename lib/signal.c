/* SPDX-License-Identifier: MIT */
/* Signal mode: the faulting thread fills its own page in a SIGBUS handler. */
#include "internal.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/ucontext.h>
#include <unistd.h>

/*
 * With UFFD_FEATURE_SIGBUS the kernel does not queue a message for a
 * missing page: the toucher gets SIGBUS (BUS_ADRERR) at the address.
 * The handler here finds the region, fills the page with the same code
 * the handler threads use, and returns, and the access replays.  No
 * thread hand-off and no cross-CPU wake-up, which on this class of
 * machine is most of a fault's cost.
 *
 * Everything reachable from the handler is async-signal-safe: lock-free
 * lookups (epochs, the radix tree), atomics, pread, ioctl and mmap.  The
 * signal-mode runtimes form a list that only attach/detach change, under
 * a mutex; the handler counts itself in flight so detach can wait it out.
 */

static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lm_runtime *_Atomic sig_list;
static _Atomic long sig_inflight;
static struct sigaction sig_old;
static int sig_users;

static void chain(int sig, siginfo_t *si, void *uc)
{
	if (sig_old.sa_flags & SA_SIGINFO) {
		if (sig_old.sa_sigaction) {
			sig_old.sa_sigaction(sig, si, uc);
			return;
		}
	} else if (sig_old.sa_handler == SIG_IGN && si->si_code <= 0) {
		return;	/* a sent SIGBUS the application ignores */
	} else if (sig_old.sa_handler != SIG_DFL && sig_old.sa_handler != SIG_IGN) {
		sig_old.sa_handler(sig);
		return;
	}
	/*
	 * Default action: die with SIGBUS.  For a fault the replayed access
	 * raises it again under the default disposition (an ignored fault
	 * SIGBUS too: the kernel would kill for it, not loop); a sent signal
	 * is raised again explicitly.
	 */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigaction(SIGBUS, &dfl, NULL);
	if (si->si_code <= 0)
		raise(SIGBUS);
}

static bool is_write(void *ucv)
{
#if defined(__x86_64__)
	/* Bit 1 of the page-fault error code: the access was a write. */
	ucontext_t *uc = ucv;
	return (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
	(void)ucv;
	return true;
#endif
}

/*
 * Decodes the SIGBUS (the address, and from the page-fault error code
 * whether it was a write) and hands it to the resolver of each
 * signal-mode runtime in turn, until one owns the address.  Registered
 * memory none of them owns gets the stray rules (resolve.c); anything
 * else is not lazymem's SIGBUS and goes to the application's handler.
 */
static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	lm__in_signal++;
	atomic_fetch_add(&sig_inflight, 1);
	bool handled = false, owned = false;
	if (si->si_code == BUS_ADRERR) {
		uintptr_t addr = (uintptr_t)si->si_addr;
		for (struct lm_runtime *rt = atomic_load(&sig_list); rt && !owned; rt = rt->sig_next) {
			struct lm__fault ft = {
				.addr = addr & ~((uintptr_t)rt->page_size - 1),
				.write = is_write(uc),
				.signal = true,
			};
			int v = lm__resolve(NULL, rt, &ft);
			owned = v != LM__RESOLVE_UNKNOWN;
			handled = v == LM__RESOLVE_DONE || v == LM__RESOLVE_REPLAY;
		}
		for (struct lm_runtime *rt = atomic_load(&sig_list); rt && !owned && !handled;
		     rt = rt->sig_next)
			handled = lm__resolve_stray(rt, addr & ~((uintptr_t)rt->page_size - 1)) !=
				  LM__RESOLVE_NOT_OURS;
	}
	atomic_fetch_sub(&sig_inflight, 1);
	lm__in_signal--;
	if (!handled)
		chain(sig, si, uc);
	errno = saved;
}

/* The staging buffers faulting threads borrow; made once, freed by lm__signal_detach. */
static int pool_init(struct lm_runtime *rt)
{
	if (rt->pool)
		return 0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	rt->npool = (int)(ncpu < 1 ? 8 : ncpu * 4 + 4);
	rt->pool = lm__calloc((size_t)rt->npool, sizeof(*rt->pool));
	if (!rt->pool)
		return -ENOMEM;
	for (int i = 0; i < rt->npool; i++) {
		/* pread: the only file read that is async-signal-safe. */
		int rc = lm__filler_init(&rt->pool[i], rt, false);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Takes SIGBUS for the first signal-mode runtime; called with sig_lock held. */
static int take_sigbus_locked(void)
{
	if (sig_users++ > 0)
		return 0;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, &sig_old) < 0) {
		sig_users--;
		return -errno;
	}
	return 0;
}

int lm__signal_attach(struct lm_runtime *rt)
{
	int rc = pool_init(rt);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&sig_lock);
	rc = take_sigbus_locked();
	if (rc == 0) {
		rt->sig_next = atomic_load(&sig_list);
		atomic_store(&sig_list, rt);
	}
	pthread_mutex_unlock(&sig_lock);
	return rc;
}

void lm__signal_detach(struct lm_runtime *rt)
{
	pthread_mutex_lock(&sig_lock);
	bool listed = false;
	for (struct lm_runtime *_Atomic *pp = &sig_list; atomic_load(pp);
	     pp = &atomic_load(pp)->sig_next) {
		if (atomic_load(pp) == rt) {
			atomic_store(pp, rt->sig_next);
			listed = true;
			break;
		}
	}
	if (listed && --sig_users == 0)
		sigaction(SIGBUS, &sig_old, NULL);
	pthread_mutex_unlock(&sig_lock);
	/* A handler may still be walking the old list. */
	while (atomic_load(&sig_inflight) > 0)
		sched_yield();
	for (int i = 0; rt->pool && i < rt->npool; i++)
		lm__filler_fini(&rt->pool[i]);
	lm__free(rt->pool);
	rt->pool = NULL;
}

/* fork(): the SIGBUS handler's list stays whole across it (fork.c). */
void lm__signal_fork_prepare(void)
{
	pthread_mutex_lock(&sig_lock);
}

void lm__signal_fork_parent(void)
{
	pthread_mutex_unlock(&sig_lock);
}

void lm__signal_fork_child(void)
{
	/* Only the forking thread exists here: nobody is in the handler. */
	atomic_store(&sig_inflight, 0);
	pthread_mutex_init(&sig_lock, NULL);
}

/*
 * Before a fork(), in the parent: a thread-mode runtime's child will
 * resolve faults by signal and needs the pool, made here rather than in
 * the child, where the allocator may not be usable (a malloc that another
 * thread held at the fork: GCC 12's AddressSanitizer does not lock its
 * allocator around fork(), and other allocators need not either).
 */
void lm__signal_fork_prepare_pool(struct lm_runtime *rt)
{
	pool_init(rt);
}

/*
 * In a fork() child, where sig_lock is held by fork.c's prepare handler
 * (the child's copy): a thread-mode runtime has no handler threads
 * there, so it resolves its faults by signal.
 */
int lm__signal_adopt_in_child(struct lm_runtime *rt)
{
	for (int i = 0; i < rt->npool; i++)
		atomic_store(&rt->pool[i].busy, 0);
	if (rt->mode == LM_MODE_SIGNAL)
		return 0;
	rt->mode = LM_MODE_SIGNAL;
	LM__STAT_SET(rt, mode, LM_MODE_SIGNAL);
	int rc = pool_init(rt);
	if (rc < 0 || (rc = take_sigbus_locked()) < 0)
		return rc;
	rt->sig_next = atomic_load(&sig_list);
	atomic_store(&sig_list, rt);
	return 0;
}
