/* SPDX-License-Identifier: MIT */
/* Epochs: lock-free read sections, safe in a signal handler, and a writer's wait for the readers that might see the old state. */
#include "internal.h"

#include <sched.h>

/*
 * Readers (fault handling, stats) run inside an epoch; a writer that
 * replaces the region table waits for the readers of the old epoch to
 * leave before it frees anything they could see.  The read side is two
 * atomic operations and safe in a signal handler, unlike a rwlock.
 */
void lm__epoch_init(struct lm__epoch *e)
{
	atomic_init(&e->epoch, 0);
	atomic_init(&e->readers[0], 0);
	atomic_init(&e->readers[1], 0);
	pthread_mutex_init(&e->sync_lock, NULL);
}

void lm__epoch_fini(struct lm__epoch *e)
{
	pthread_mutex_destroy(&e->sync_lock);
}

int lm__epoch_enter(struct lm__epoch *e)
{
	for (;;) {
		int idx = (int)(atomic_load_explicit(&e->epoch, memory_order_acquire) & 1);
		atomic_fetch_add_explicit(&e->readers[idx], 1, memory_order_seq_cst);
		if ((int)(atomic_load_explicit(&e->epoch, memory_order_seq_cst) & 1) == idx)
			return idx;
		atomic_fetch_sub_explicit(&e->readers[idx], 1, memory_order_release);
	}
}

void lm__epoch_exit(struct lm__epoch *e, int idx)
{
	atomic_fetch_sub_explicit(&e->readers[idx], 1, memory_order_release);
}

/*
 * Never called from inside a section of the same epoch.  One flip
 * suffices: a reader re-checks the epoch after counting itself, so it
 * either is counted in the old parity (and waited for) or sees the flip
 * and everything published before it.  Waiters are serialized so that two
 * flips never interleave, which could make one of them wait for readers of
 * the parity now being entered.
 */
void lm__epoch_wait(struct lm__epoch *e)
{
	pthread_mutex_lock(&e->sync_lock);
	unsigned old = atomic_fetch_add_explicit(&e->epoch, 1, memory_order_seq_cst);
	int idx = (int)(old & 1);
	while (atomic_load_explicit(&e->readers[idx], memory_order_seq_cst) > 0)
		sched_yield();
	pthread_mutex_unlock(&e->sync_lock);
}
