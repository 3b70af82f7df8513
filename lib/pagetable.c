/* SPDX-License-Identifier: MIT */
/* The per-region page table: a radix tree of 64-bit page entries, allocated on first use. */
#include "internal.h"

#include <errno.h>
#include <sys/mman.h>

/*
 * Like the kernel's page tables, the tree is indexed by page number and
 * its nodes exist only where pages were touched, so a sparse 1 TiB region
 * costs metadata in proportion to the pages used.  Nodes are small (64
 * slots, 512 bytes) because sparse use is the case that matters: with
 * 4 KiB leaves a few thousand scattered pages would cost tens of MiB.
 *
 * Inner nodes and leaves are installed with compare-and-swap and never
 * freed before the region is, so lookups take no lock and are
 * async-signal-safe: the signal-mode fault path uses them from a SIGBUS
 * handler.  Node memory comes from a bump arena of mmap'ed chunks for the
 * same reason (malloc is not async-signal-safe).
 *
 * Who changes an entry: the thread that moves it out of MISSING (or any
 * settled state) into FILLING or EVICTING with a CAS owns the page until
 * it stores the settled state; a thread that finds a transitional state
 * sets LM_PTE_WAITERS and leaves, and the owner wakes the waiters.
 * Application events (REMOVE, UNMAP) may move settled states to MISSING.
 */

#define NODE_BITS 6
#define NODE_SLOTS (1u << NODE_BITS)
#define NODE_BYTES (NODE_SLOTS * sizeof(uint64_t))
#define CHUNK_MIN 4096u
#define CHUNK_MAX (256u * 1024u)

struct lm__chunk {
	struct lm__chunk *next;
	size_t size;
	_Atomic size_t used;
	/* Aligned so that nodes never straddle cache lines needlessly. */
	_Alignas(64) unsigned char data[];
};

#define CHUNK_HDR offsetof(struct lm__chunk, data)

static void *node_alloc(struct lm__ptable *pt)
{
	for (;;) {
		struct lm__chunk *c = atomic_load_explicit(&pt->chunks, memory_order_acquire);
		if (c) {
			size_t off = atomic_fetch_add_explicit(&c->used, NODE_BYTES,
							       memory_order_relaxed);
			if (off + NODE_BYTES <= c->size - CHUNK_HDR) {
				atomic_fetch_add_explicit(&pt->bytes, NODE_BYTES,
							  memory_order_relaxed);
				if (pt->total)
					atomic_fetch_add_explicit(pt->total, NODE_BYTES,
								  memory_order_relaxed);
				return c->data + off;
			}
		}
		/* Chunks double from one page so that small regions stay small. */
		size_t size = c ? c->size * 2 : CHUNK_MIN;
		if (size > CHUNK_MAX)
			size = CHUNK_MAX;
		struct lm__chunk *n = mmap(NULL, size, PROT_READ | PROT_WRITE,
					   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (n == MAP_FAILED)
			return NULL;
		n->next = c;
		n->size = size;
		atomic_store_explicit(&n->used, 0, memory_order_relaxed);
		if (!atomic_compare_exchange_strong_explicit(&pt->chunks, &c, n,
							     memory_order_acq_rel,
							     memory_order_acquire))
			munmap(n, size);
	}
}

int lm__pt_init(struct lm__ptable *pt, uint64_t npages)
{
	unsigned levels = 1;
	while (levels * NODE_BITS < 64 && (npages - 1) >> (levels * NODE_BITS))
		levels++;
	pt->npages = npages;
	pt->levels = levels;
	atomic_init(&pt->root, NULL);
	atomic_init(&pt->chunks, NULL);
	atomic_init(&pt->bytes, 0);
	pt->total = NULL;
	return 0;
}

void lm__pt_destroy(struct lm__ptable *pt)
{
	struct lm__chunk *c = atomic_exchange(&pt->chunks, NULL);
	while (c) {
		struct lm__chunk *next = c->next;
		munmap(c, c->size);
		c = next;
	}
	atomic_store(&pt->root, NULL);
	size_t had = atomic_exchange(&pt->bytes, 0);
	if (pt->total)
		atomic_fetch_sub(pt->total, had);
}

/* Loads (or, with create, installs) the child node in slot. */
static void *child(struct lm__ptable *pt, _Atomic(void *) *slot, bool create)
{
	void *n = atomic_load_explicit(slot, memory_order_acquire);
	if (n || !create)
		return n;
	void *fresh = node_alloc(pt);
	if (!fresh)
		return NULL;
	/* A losing racer's node stays in the arena: rare, and freed with it. */
	if (atomic_compare_exchange_strong_explicit(slot, &n, fresh, memory_order_acq_rel,
						    memory_order_acquire))
		return fresh;
	return n;
}

lm__pte *lm__pt_get(struct lm__ptable *pt, uint64_t pgno, bool create)
{
	if (LM__UNLIKELY(pgno >= pt->npages))
		return NULL;
	_Atomic(void *) *slot = &pt->root;
	for (unsigned lvl = pt->levels; lvl > 1; lvl--) {
		_Atomic(void *) *node = child(pt, slot, create);
		if (!node)
			return NULL;
		slot = node + ((pgno >> ((lvl - 1) * NODE_BITS)) & (NODE_SLOTS - 1));
	}
	lm__pte *leaf = child(pt, slot, create);
	if (!leaf)
		return NULL;
	return leaf + (pgno & (NODE_SLOTS - 1));
}

static int walk(struct lm__ptable *pt, void *node, unsigned lvl, uint64_t base,
		uint64_t first, uint64_t last,
		int (*fn)(lm__pte *e, uint64_t pgno, void *arg), void *arg)
{
	unsigned shift = (lvl - 1) * NODE_BITS;
	for (unsigned i = 0; i < NODE_SLOTS; i++) {
		uint64_t lo = base + ((uint64_t)i << shift);
		uint64_t hi = lo + ((uint64_t)1 << shift) - 1;
		if (hi < first || lo > last || lo >= pt->npages)
			continue;
		if (lvl == 1) {
			int rc = fn((lm__pte *)node + i, lo, arg);
			if (rc)
				return rc;
			continue;
		}
		void *c = atomic_load_explicit((_Atomic(void *) *)node + i, memory_order_acquire);
		if (!c)
			continue;
		int rc = walk(pt, c, lvl - 1, lo, first, last, fn, arg);
		if (rc)
			return rc;
	}
	return 0;
}

int lm__pt_walk(struct lm__ptable *pt, uint64_t first, uint64_t last,
		int (*fn)(lm__pte *e, uint64_t pgno, void *arg), void *arg)
{
	void *root = atomic_load_explicit(&pt->root, memory_order_acquire);
	if (!root || first > last)
		return 0;
	return walk(pt, root, pt->levels, 0, first, last, fn, arg);
}
