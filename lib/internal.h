/* SPDX-License-Identifier: MIT */
/* Internal interfaces shared by the files of liblazymem; nothing here is ABI. */
#ifndef LM_INTERNAL_H
#define LM_INTERNAL_H

#include "config.h"
#include "lazymem.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#define LM__LIKELY(x) __builtin_expect(!!(x), 1)
#define LM__UNLIKELY(x) __builtin_expect(!!(x), 0)
#define LM__ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Invariants are checked where they are enforced.  A debug build
 * (./configure --enable-debug) aborts with the broken one's text when
 * one fails; a release build compiles the check away, since the library
 * never aborts the application's process.
 */
#ifdef LM_DEBUG
void lm__assert_fail(const char *expr, const char *file, int line, const char *func)
	__attribute__((noreturn));
#define LM__ASSERT(x) \
	(LM__LIKELY(x) ? (void)0 : lm__assert_fail(#x, __FILE__, __LINE__, __func__))
#else
#define LM__ASSERT(x) ((void)sizeof(!(x)))
#endif

/*
 * Public functions never change errno (lazymem.h promises it), though the
 * syscalls under them do: each entry point declares LM__KEEP_ERRNO, which
 * puts errno back however the function returns.
 */
static inline void lm__errno_restore(const int *saved)
{
	errno = *saved;
}
#define LM__KEEP_ERRNO \
	const int lm__saved_errno __attribute__((cleanup(lm__errno_restore), unused)) = errno

/* ---- uffd.c: the only file that issues userfaultfd ioctls ------------ */

/* Feature bits newer than the installed linux/userfaultfd.h may know. */
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

/*
 * Result of an install: 0 when every page was installed, otherwise
 * -errno with *done set to the bytes that were installed before it.
 * -EEXIST: the page at *done already exists; -EAGAIN: the address space
 * is changing (mremap, fork) and the caller must back off, not spin.
 */
int lm__uffd_open(int forced_origin, uint64_t want_features,
		  int *origin, unsigned *limits, uint64_t *features);
int lm__uffd_register(int ufd, uintptr_t start, size_t len, bool wp);
int lm__uffd_unregister(int ufd, uintptr_t start, size_t len);
int lm__uffd_copy(int ufd, uintptr_t dst, const void *src, size_t len, bool wp,
		  size_t *done);
int lm__uffd_zeropage(int ufd, uintptr_t dst, size_t len, size_t *done);
int lm__uffd_poison(int ufd, uintptr_t dst, size_t len);
int lm__uffd_wake(int ufd, uintptr_t start, size_t len);
int lm__uffd_move(int ufd, uintptr_t dst, uintptr_t src, size_t len, size_t *done);
int lm__uffd_writeprotect(int ufd, uintptr_t start, size_t len, bool protect);
struct lm__range {
	uintptr_t start, end;
};
int lm__uffd_scan_written(int pagemap_fd, uintptr_t start, uintptr_t end,
			  struct lm__range *out, unsigned n, uintptr_t *next);

/* ---- alloc.c: the runtime's own memory -------------------------------- */

/*
 * An allocator for the runtime's structures other than malloc (the
 * preload library's, whose malloc serves lazy memory).  calloc takes one
 * size, already checked for overflow, and returns zeroed memory.
 */
struct lm__allocator {
	void *(*malloc)(size_t n);
	void *(*calloc)(size_t n);
	void *(*realloc)(void *p, size_t n);
	void (*free)(void *p);
};
void lm__alloc_set(const struct lm__allocator *a);
/*
 * True in the threads the runtime starts (each calls lm__thread_mark
 * first): a host whose malloc is lazy memory serves their allocations,
 * their libraries' included, from memory that never is (preload.c).
 */
extern __thread bool lm__runtime_thread __attribute__((tls_model("initial-exec")));
void lm__thread_mark(void);
void *lm__malloc(size_t n);
void *lm__calloc(size_t n, size_t size);
void *lm__realloc(void *p, size_t n);
void lm__free(void *p);
char *lm__strdup(const char *s);

/* ---- checksum.c: hashes of metadata, sums of data pages --------------- */

uint64_t lm__hash64(const void *p, size_t len, uint64_t seed);
/* A page's 32-bit checksum, never 0 (0 means "none" where sums are kept). */
uint32_t lm__page_sum(const void *p, size_t len);
/* A 64-bit hash folded into a 32-bit sum, never 0. */
uint32_t lm__sum_fold(uint64_t h);

/* ---- epoch.c: read sections for the region table and the event queue --- */

/*
 * Epochs: a read side of two atomic operations, safe in a signal handler,
 * and a writer's wait for the readers that might have seen the old state.
 */
struct lm__epoch {
	_Atomic unsigned epoch;
	_Atomic long readers[2];
	pthread_mutex_t sync_lock;	/* serializes waiters */
};

void lm__epoch_init(struct lm__epoch *e);
void lm__epoch_fini(struct lm__epoch *e);
int lm__epoch_enter(struct lm__epoch *e);
void lm__epoch_exit(struct lm__epoch *e, int idx);
void lm__epoch_wait(struct lm__epoch *e);

/* ---- log.c ------------------------------------------------------------ */

/* Set while a thread runs the SIGBUS handler: nothing there may log (vsnprintf is not async-signal-safe). */
extern __thread int lm__in_signal __attribute__((tls_model("initial-exec")));
struct lm_runtime;
void lm__log(struct lm_runtime *rt, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- pagetable.c: the radix tree of page entries --------------------- */

/* Page states; see pagetable.c for who may change which. */
enum {
	LM_PS_MISSING = 0,	/* never filled, or dropped: contents are the source's */
	LM_PS_FILLING = 1,	/* one thread is filling it */
	LM_PS_CLEAN = 2,	/* resident, equal to its source (or swap slot) */
	LM_PS_DIRTY = 3,	/* resident and written since filled */
	LM_PS_SWAPPED = 4,	/* only copy is in a swap slot (aux) */
	LM_PS_EVICTING = 5,	/* being written out */
	LM_PS_POISON = 6,	/* could not be filled: touching it raises SIGBUS */
	LM_PS_NSTATES
};

#define LM_PTE_STATE_MASK 0xfull
#define LM_PTE_WAITERS (1ull << 4)	/* a fault was parked on this page */
#define LM_PTE_REF (1ull << 5)		/* referenced since the clock hand passed: a second chance */
#define LM_PTE_EVICTED (1ull << 6)	/* evicted since its last fill: the next fill is a refault */
#define LM_PTE_DROP (1ull << 7)	/* dropped by the application while being evicted */
#define LM_PTE_WRITTEN (1ull << 8)	/* async tracking: written while being filled */
#define LM_PTE_AGE_SHIFT 9		/* evicted pages: a 13-bit eviction stamp (refault distance) */
/*
 * A held page (FILLING, EVICTING) keeps in its entry the state it was
 * claimed from, in the age field, and its slot: what a fork() child, where
 * no holder exists, settles it back to (lm__pte_fork_reset).
 */
#define LM_PTE_HELD_FROM(e) ((unsigned)(((e) >> LM_PTE_AGE_SHIFT) & LM_PTE_STATE_MASK))
#define LM_PTE_AGE_BITS 12
#define LM_PTE_AGE_MASK (((1ull << LM_PTE_AGE_BITS) - 1) << LM_PTE_AGE_SHIFT)
/*
 * Resident and evicted pages: the hot count, kept through evictions.  A
 * page back soon after its eviction gets the maximum; each pass of the
 * clock hand over it unreferenced takes one off, and it is taken at 0
 * (evict.c, select_one; fault.c, installed_value).
 */
#define LM_PTE_HOT_SHIFT 21
#define LM_PTE_HOT_MAX 7ull
#define LM_PTE_HOT_MASK (LM_PTE_HOT_MAX << LM_PTE_HOT_SHIFT)
#define LM_PTE_HOT(e) ((unsigned)(((e) & LM_PTE_HOT_MASK) >> LM_PTE_HOT_SHIFT))
#define LM_PTE_AUX_SHIFT 24
_Static_assert(LM_PTE_AGE_SHIFT + LM_PTE_AGE_BITS <= LM_PTE_HOT_SHIFT &&
	       LM_PTE_HOT_SHIFT + 3 <= LM_PTE_AUX_SHIFT, "page entry fields overlap");
#define LM_PTE_STATE(e) ((unsigned)((e) & LM_PTE_STATE_MASK))
/* The swap slot of a SWAPPED page, or of a CLEAN one that kept it (the swap cache). */
#define LM_PTE_HAS_SLOT(e) (((e) >> LM_PTE_AUX_SHIFT) != 0)
#define LM_PTE_SLOT(e) (((e) >> LM_PTE_AUX_SHIFT) - 1)
#define LM_PTE_WITH_SLOT(slot) (((uint64_t)(slot) + 1) << LM_PTE_AUX_SHIFT)

/*
 * Whether a settled page in state v, dropped by the application, takes
 * contents with it that its source does not have: a written page, a
 * swapped one, a clean one whose contents are its swap slot's.
 */
static inline bool lm__contents_lost(uint64_t v)
{
	unsigned s = LM_PTE_STATE(v);
	return s == LM_PS_DIRTY || s == LM_PS_SWAPPED || (s == LM_PS_CLEAN && LM_PTE_HAS_SLOT(v));
}

typedef _Atomic uint64_t lm__pte;

struct lm__chunk;

struct lm__ptable {
	uint64_t npages;
	unsigned levels;		/* 1 = the root is a leaf */
	_Atomic(void *) root;
	_Atomic(struct lm__chunk *) chunks;	/* node arena, freed on destroy */
	_Atomic size_t bytes;		/* node bytes handed out */
	_Atomic uint64_t *total;	/* ...also added here when not NULL (metadata_bytes) */
};

int lm__pt_init(struct lm__ptable *pt, uint64_t npages);
void lm__pt_destroy(struct lm__ptable *pt);
/*
 * The entry of page pgno; with create, allocates the path to it (lock
 * free and async-signal-safe).  NULL when absent (no create) or when
 * memory ran out.
 */
lm__pte *lm__pt_get(struct lm__ptable *pt, uint64_t pgno, bool create);
/* Calls fn for every allocated entry in [first, last]; stops when fn returns non-zero. */
int lm__pt_walk(struct lm__ptable *pt, uint64_t first, uint64_t last,
		int (*fn)(lm__pte *e, uint64_t pgno, void *arg), void *arg);

/* ---- snapview.c: what each live snapshot still lacks -------------------- */

/*
 * A snapshot's view of its region: per page, 0 while the snapshot sees
 * the region's current contents (it lacks its own copy), or where the
 * page's contents went when it first changed after the take.  A view
 * that can no longer be exact is broken (err) and lacks nothing.
 */
struct lm__snapview {
	struct lm_runtime *rt;
	struct lm__ptable map;
	_Atomic int err;
	/*
	 * The first save's image writer while it runs: pages preserved
	 * meanwhile go straight into it (written once) instead of into the
	 * spill file and then the image.  Read in read sections; cleared and
	 * waited out before the commit.
	 */
	struct lm__image_writer *_Atomic stream;
};

/* A view's entry: where a page's contents went (kind and index). */
#define MAP_SOURCE 1u	/* the region's immutable source's contents */
#define MAP_SPILL 2u	/* page IDX of the region's spill file */
#define MAP_IMAGE 3u	/* data page IDX of the snapshot's first image */
#define MAP_ZERO 4u	/* zeros */
#define MAP_KIND(m) ((unsigned)((m) & 7))
#define MAP_IDX(m) ((m) >> 3)
#define MAP_MAKE(k, i) (((uint64_t)(i) << 3) | (uint64_t)(k))


/* The live snapshots of a region, an immutable array replaced under snap_lock. */
struct lm__snapset {
	unsigned n;
	struct lm__snapview *v[];
};

uint64_t lm__view_get(struct lm__snapview *v, uint64_t pgno);
/* Sets an unset entry; false when memory ran out. */
bool lm__view_set(struct lm__snapview *v, uint64_t pgno, uint64_t val);
/* Breaks the view with err (the first error stays), counted once. */
void lm__view_break(struct lm__snapview *v, int err);
/* True when v is unbroken and has no copy of page pgno. */
bool lm__view_lacks(struct lm__snapview *v, uint64_t pgno);
/* True when some live, unbroken snapshot of set has not preserved page pgno. */
bool lm__snap_needs(const struct lm__snapset *set, uint64_t pgno);
/* The application discarded page pgno's contents: the snapshots of set that lacked them break (-EIO). */
void lm__snap_lost(const struct lm__snapset *set, uint64_t pgno);
/* Every live snapshot of r breaks with err (a part of it moved away, memory ran out). */
struct lm_region;
void lm__views_break(struct lm_region *r, int err);

/* ---- pte.c: the page-state machine, the only code that changes an entry ---- */

/* A set of page states, as claims accept them. */
#define LM__ST(s) (1u << (s))

/* Whether the state machine lets an entry go from state `from` to state `to`. */
bool lm__pte_legal(unsigned from, unsigned to);
/*
 * Claims a page: moves its entry from a state in accept (bits 1 << state)
 * to `to` (LM_PS_FILLING or LM_PS_EVICTING), if the table allows it.
 * The caller then holds the page until it settles it; *prev gets the
 * settled value it had.
 */
bool lm__pte_claim(lm__pte *e, unsigned accept, unsigned to, uint64_t *prev);
enum {
	LM__PTE_CLAIMED,	/* held now: settle it */
	LM__PTE_PARKED,		/* held by someone else, who wakes the fault on settling */
	LM__PTE_BUSY,		/* held by someone else (no parking asked for) */
	LM__PTE_POISONED,	/* poisoned, and not accepted */
	LM__PTE_REFUSED,	/* settled in a state not accepted */
};
/* Claims (FILLING) a page for a fault, or parks the fault on it while someone else holds it. */
int lm__pte_claim_or_park(lm__pte *e, unsigned accept, bool park, uint64_t *prev);
/* lm__pte_settle_counted's how: */
#define LM__SETTLE_INSTALLED 1u	/* the holder just installed the page: a drop leaves it resident */
#define LM__SETTLE_GONE 2u	/* the holder found the page gone: judged as a drop */
/* Its results (bits): */
#define LM__SETTLED_DROPPED 1	/* the page was dropped while held: it settled MISSING (or as installed) */
#define LM__SETTLED_WOKE 2	/* faults were parked on it, and were woken */
/*
 * The one way out of FILLING and EVICTING: gives a held page its settled
 * value val, applies what happened while it was held (WRITTEN: a clean
 * page settles dirty; DROP, or how's GONE: judged once, see pte.c) and
 * wakes the faults parked on it.  prev is what the page was when claimed;
 * counted what the counters count it as (prev, unless the holder moved
 * them ahead with lm__pte_count).  -EINVAL, entry unchanged, when the
 * page is not held or val is not a legal next state.
 */
int lm__pte_settle_counted(struct lm_region *r, lm__pte *e, uint64_t pgno, uint64_t prev,
			   uint64_t counted, uint64_t val, unsigned how);
int lm__pte_settle(struct lm_region *r, lm__pte *e, uint64_t pgno, uint64_t prev, uint64_t val);
/*
 * Moves the counters of a page from settled value from to settled value
 * to (resident, dirty, swapped; its swap slot is the settle's business).
 * Called by the transitions above; a fill calls it itself before an
 * install wakes the faulting thread, so that its access completes with
 * the counters already right, and settles with counted = to.
 */
void lm__pte_count(struct lm_region *r, uint64_t from, uint64_t to);
/* A write was seen (asynchronous tracking): CLEAN becomes DIRTY, a held page is marked WRITTEN.  1 if changed. */
int lm__pte_mark_written(struct lm_region *r, lm__pte *e);
/* The clock's referenced bit of a resident page whose value was *v: CAS, false when it changed. */
bool lm__pte_ref(lm__pte *e, uint64_t *v, bool set);
/* One pass of the hand over a hot, unreferenced resident page: its count goes down by one.  CAS, as above. */
bool lm__pte_cool(lm__pte *e, uint64_t *v);
/*
 * The application dropped page pgno: a settled page becomes MISSING (the
 * drop judged now), a held one is marked for its holder.  Returns 1 when
 * a resident page went.
 */
int lm__pte_forget(struct lm_region *r, lm__pte *e, uint64_t pgno);
/*
 * mremap moved a page to another region: its value goes from e to the
 * fresh entry d (NULL: out of memory, the page is lost as if unmapped).
 * -EBUSY while the page is held: the caller waits and retries.
 */
int lm__pte_move(struct lm_region *from, lm__pte *e, struct lm_region *to, lm__pte *d);
/* A fork() child's entry: the holders did not follow it into the child. */
void lm__pte_fork_reset(lm__pte *e);
/* The region is being freed: its slots and counters go. */
void lm__pte_release_table(struct lm_region *r);
/* Waits until no page of [first, first + count) is held by someone else. */
void lm__pte_wait_settled(struct lm_region *r, uint64_t first, uint64_t count);

/* ---- stats.c ---------------------------------------------------------- */

/*
 * The live counters, laid out exactly as struct lm_stats so that lazymemd
 * reads them from the page the runtime shares with it (report.c).  The
 * gauges resident_pages, resident_dirty and swapped_pages are kept signed
 * (two's complement in the unsigned field): counted at different instants
 * they may dip below zero for a moment, and readers clamp.
 */
#define LM__ATOMIC_FIELD(name, kind, unit, help) _Atomic uint64_t name;
struct lm__stats {
	uint32_t size;
	uint32_t version;
	_Atomic uint64_t fill_latency[LM_LAT_BUCKETS];
	LM_STATS_LIST(LM__ATOMIC_FIELD)
};
#undef LM__ATOMIC_FIELD
_Static_assert(sizeof(struct lm__stats) == sizeof(struct lm_stats) &&
	       offsetof(struct lm__stats, restore_faults) == offsetof(struct lm_stats, restore_faults),
	       "the shared stats page is a struct lm_stats");

#define LM__STAT_ADD(rt, field, n) \
	atomic_fetch_add_explicit(&(rt)->stats->field, (uint64_t)(n), memory_order_relaxed)
#define LM__STAT_SUB(rt, field, n) \
	atomic_fetch_sub_explicit(&(rt)->stats->field, (uint64_t)(n), memory_order_relaxed)
#define LM__STAT_SET(rt, field, v) \
	atomic_store_explicit(&(rt)->stats->field, (uint64_t)(v), memory_order_relaxed)
#define LM__STAT_GET(rt, field) atomic_load_explicit(&(rt)->stats->field, memory_order_relaxed)

void lm__stats_latency(struct lm_runtime *rt, uint64_t ns);

/* ---- report.c: the stats page and the connection to lazymemd ------------- */
#define LM__REPORT_LINE 256
struct lm__report;
/* Maps the stats page (a sealed memfd when possible); first thing a runtime does. */
int lm__stats_init(struct lm_runtime *rt);
void lm__stats_fini(struct lm_runtime *rt);
/* Starts the reporter thread; a missing daemon or a failure here is never an error. */
void lm__report_start(struct lm_runtime *rt);
void lm__report_stop(struct lm_runtime *rt);
/* fork(): the reporter's descriptors are whole in the child (held from prepare to parent/child). */
void lm__report_atfork_prepare(void);
void lm__report_atfork_parent(void);
void lm__report_atfork_child(struct lm_runtime *rt);
void lm__report_atfork_child_reset(void);
uint64_t lm__now_ns(void);

/* ---- fileio.c: reads from file sources -------------------------------- */

/*
 * A filler is what a thread needs to fill pages: a staging buffer of
 * readahead_max pages and, for file sources, an io_uring whose fixed
 * buffer is that staging buffer.  Each handler thread owns one; the
 * signal path borrows one from a pool.
 */
struct lm__filler {
	struct lm_runtime *rt;
	unsigned char *stage;
	size_t stage_len;
	void *ring;		/* struct io_uring *, NULL: use pread */
	const unsigned char *zeros;	/* readahead_max pages that read as zeros */
	_Atomic uint64_t **ents;	/* readahead_max entries being filled */
	uint64_t *prev;			/* and their states before */
	uint64_t *keys;			/* readahead_max store keys (store.c) */
	int *res;			/* readahead_max per-page results */
	struct lm__snap_scratch *snap;	/* the copy-on-write path's arrays (snapshot.c) */
	_Atomic int busy;	/* pool slots only */
	int epfd;		/* a handler thread's own epoll set (handler.c), -1: none */
	int cpu;		/* the CPU its handler thread runs on, -1: any */
	uint64_t spin_after;	/* its handler does not linger before this (handler.c) */
	bool dormant;		/* its handler left the userfaultfd's waiters until spin_after */
};

int lm__filler_init(struct lm__filler *f, struct lm_runtime *rt, bool want_ring);
void lm__filler_fini(struct lm__filler *f);
/* Reads up to len bytes at off into f->stage; returns bytes read or -errno. */
ssize_t lm__file_read(struct lm__filler *f, int fd, uint64_t off, size_t len);

/* One transfer of a batch (lm__io_batch): res is the bytes moved or -errno. */
struct lm__io {
	unsigned char *buf;
	uint64_t off;
	uint32_t len;
	int res;
};
void lm__io_batch(struct lm__filler *f, int fd, struct lm__io *io, unsigned n, bool write);
/*
 * pwritev until done: a short write goes on from where it stopped (iov is
 * consumed).  Async-signal-safe.
 */
int lm__pwritev_all(int fd, struct iovec *iov, unsigned n, uint64_t off);

/* ---- cluster.c: Redis Cluster routing (the remote page store's) ---------- */

#define LM__CLUSTER_SLOTS 16384
#define LM__CLUSTER_NODES 64	/* masters a slot map can name */
#define LM__CLUSTER_GROUP 64	/* pages under one hash tag: one node, one round trip */
#define LM__SLOT_NONE 0xffffu

/* CRC16 (XMODEM), the cluster's key hash. */
uint16_t lm__cluster_crc16(const void *buf, size_t len);
/* A key's slot: its hash tag's (the first non-empty {...}) or the whole key's. */
unsigned lm__cluster_slot(const void *key, size_t len);
/* A page's key in namespace ns (see cluster.c); its length, or -ENAMETOOLONG. */
int lm__cluster_page_key(char *buf, size_t cap, const char *ns, uint64_t pgno);

#define LM__REDIRECT_MOVED 1	/* the slot lives there now: update the map */
#define LM__REDIRECT_ASK 2	/* this key only, this once, after ASKING */
struct lm__redirect {
	int kind;
	unsigned slot;
	char host[64];
	int port;
};
/* Leading digits of s[0..len) as a number up to max into *out: how many (0: none, or too large). */
size_t lm__cluster_uint(const char *s, size_t len, unsigned long max, unsigned long *out);
/* "host:port" (len bytes) into host (hostcap with its zero) and port; -EINVAL if malformed. */
int lm__cluster_endpoint(const char *s, size_t len, char *host, size_t hostcap, int *port);
/* Parses a MOVED or ASK error reply (len bytes, no terminator needed); -EINVAL if it is neither. */
int lm__cluster_redirect(const char *err, size_t len, struct lm__redirect *out);

/* Which master serves each slot. */
struct lm__slotmap {
	uint16_t node[LM__CLUSTER_SLOTS];	/* index into nodes, LM__SLOT_NONE: unassigned */
	unsigned nnodes;
	struct {
		char host[64];
		int port;
	} nodes[LM__CLUSTER_NODES];
};
void lm__slotmap_init(struct lm__slotmap *m);
/* The node's index, added if new; -EINVAL for a bad endpoint, -ENOSPC when the map is full. */
int lm__slotmap_node_add(struct lm__slotmap *m, const char *host, int port);
/* Slots [first, last] are served by host:port; its node index or -errno. */
int lm__slotmap_assign(struct lm__slotmap *m, unsigned first, unsigned last, const char *host,
		       int port);
/* The node serving slot, -ENOENT when none does. */
int lm__slotmap_node(const struct lm__slotmap *m, unsigned slot);
/* Slots no node serves (a cluster that is not whole). */
unsigned lm__slotmap_uncovered(const struct lm__slotmap *m);

/* ---- remote.c: a Redis Cluster as a page store's backend ------------------ */

struct lm__remote;		/* one cluster: its slot map, namespace, options, connections */

#define LM__REMOTE_NAMED 1u	/* the URL names the keys (/NAME): an image others find by it */
#define LM__REMOTE_READER 2u	/* reads only (a restore): the eviction policy is the writer's to check */

/*
 * Connects to the cluster a redis:// URL names (see lm_options.swap_url),
 * learns its slot map and checks that no master may evict keys.  Page
 * keys go in a namespace: a new one of this store's own, deleted at
 * close, or with LM__REMOTE_NAMED "lm:img:NAME", kept.  -EINVAL: a
 * malformed URL or a master that may evict; -EHOSTUNREACH: no node
 * answered; -ENXIO: slots have no master.
 */
int lm__remote_open(struct lm_runtime *rt, const char *url, size_t page_size, unsigned flags,
		    struct lm__remote **out);
/* Disconnects, deleting the keys an unnamed store wrote. */
void lm__remote_close(struct lm__remote *c);
const char *lm__remote_ns(const struct lm__remote *c);
/*
 * Writes page i to key key[i] (reads key[i] into pages[i]) of the
 * namespace, res[i] its result: one pipelined round trip per master,
 * sent again through redirections and failovers for up to the URL's
 * retry time, on a set of connections taken from a pool for the batch
 * (no lock held while the network answers).  Returns 0 or the first
 * error: -ENODATA for a page the cluster does not have, -ETIMEDOUT when
 * it could not be reached in time.
 */
int lm__remote_write(struct lm__remote *c, const uint64_t *key, unsigned char *const *pages,
		     unsigned n, int *res);
int lm__remote_read(struct lm__remote *c, const uint64_t *key, unsigned char *const *pages,
		    unsigned n, int *res);
/* False for a while after a write timed out: the cluster is gone, eviction waits. */
bool lm__remote_writable(struct lm__remote *c);
/*
 * The calls below are for the store's one owner (open, an image's upload,
 * close), not for concurrent batches: they share one set of connections.
 */
/* Key's value into buf (cap with its zero): its length, -ENOENT when there is none. */
int lm__remote_get(struct lm__remote *c, const char *key, char *buf, size_t cap);
int lm__remote_set(struct lm__remote *c, const char *key, const char *val);
/* Page keys go in namespace ns from now on. */
void lm__remote_set_ns(struct lm__remote *c, const char *ns);
/* Deletes the page keys [0, n) of namespace ns. */
int lm__remote_delete(struct lm__remote *c, const char *ns, uint64_t n);

/* ---- swap.c: the swap file --------------------------------------------- */

struct lm__swap {
	int fd;				/* -1: the slots live in remote */
	struct lm__remote *remote;
	size_t page_size;
	uint64_t nslots;		/* capacity: the maximum size in pages */
	_Atomic uint64_t used;
	_Atomic uint64_t *used_mirror;	/* the same count in the stats page, or NULL */
	_Atomic uint64_t *backed_mirror;	/* backed, in the stats page, or NULL */
	uint64_t hint;			/* bitmap word to look at first (allocator only) */
	_Atomic uint64_t low;		/* a remote store's lowest word freed since (UINT64_MAX: none) */
	_Atomic uint64_t *bitmap;	/* 1: slot in use */
	uint32_t *sums;			/* per-slot checksum of what was written; 0: none */
	/*
	 * A page whose write failed stays in memory, here, until its slot is
	 * freed: nothing is lost, and it counts against the budget (*held_pages).
	 */
	_Atomic uintptr_t *held;	/* the copy, marked once its slot was freed or it was written (swap.c) */
	_Atomic int64_t *held_pages;
	_Atomic int64_t nheld;		/* pages held, not freed nor written since */
	uint64_t held_hint;		/* where the next rewrite looks first (evictor only) */
	uint64_t top;			/* slots below it were ever handed out (allocator only) */
	uint64_t backed;		/* bytes of the file allocated on disk (allocator only) */
	pthread_mutex_t lock;		/* serializes allocators; freeing is lock free */
	bool lock_ok;
};

/* Test hook: when set, every swap write fails with this error. */
extern _Atomic int lm__swap_fail_writes;

int lm__swap_open(struct lm__swap *s, const char *dir, uint64_t max_bytes, size_t page_size);
/* The same slots in a Redis Cluster (remote.c), which the swap owns from now on. */
int lm__swap_open_remote(struct lm__swap *s, struct lm__remote *remote, uint64_t max_bytes,
			 size_t page_size);
/* A file in dir that has no name (O_TMPFILE, else created and unlinked), mode 0600. */
int lm__open_unnamed(const char *dir);
void lm__swap_close(struct lm__swap *s);
unsigned lm__swap_alloc(struct lm__swap *s, uint64_t *slots, unsigned n);
/* Lock free and async-signal-safe: a write fault in signal mode frees a page's slot. */
void lm__swap_free(struct lm__swap *s, uint64_t slot);
uint64_t lm__swap_used(struct lm__swap *s);
/* Writes n pages (page i at pages[i]; fixed-buffer I/O where they lie in f->stage). */
int lm__swap_write(struct lm__swap *s, struct lm__filler *f, unsigned char *const *pages,
		   const uint64_t *slots, unsigned n, int *done);
int lm__swap_read(struct lm__swap *s, struct lm__filler *f, const uint64_t *slots, unsigned n,
		  int *done);
/*
 * Writes up to max held pages to their slots again (the disk has room
 * again, the cluster answers again); those written are no longer held.
 * Returns how many were.  The allocator's thread only.
 */
unsigned lm__swap_rewrite_held(struct lm__swap *s, struct lm__filler *f, unsigned max);

/* ---- store.c: page stores, behind one interface ------------------------- */

#define LM__STORE_IMMUTABLE 1u	/* its contents never change (zero, memory, image) */
#define LM__STORE_ZEROS 2u	/* every page reads as zeros: the shared zero page may stand in */
#define LM__STORE_RETRY_SHORT 4u	/* a failed batch may hide good pages: read the first alone */
#define LM__STORE_AROUND 8u	/* a read costs a device access: a random fault reads a window (fault.c) */

struct lm__store;

/* The operations of one kind of store; see store.c for the contract.  NULL: not supported. */
struct lm__store_ops {
	const char *name;
	unsigned flags;
	size_t fill_stat;	/* offset in struct lm__stats: pages filled from it */
	size_t err_stat;	/* ...and faults it could not answer (0: none) */
	size_t fault_stat;	/* ...and faults it answered (0: none) */
	long (*read)(struct lm__store *s, struct lm__filler *f, const uint64_t *key, unsigned n,
		     const unsigned char **out);
	int (*write)(struct lm__store *s, struct lm__filler *f, const uint64_t *key,
		     unsigned char *const *pages, unsigned n, int *res);
	unsigned (*alloc)(struct lm__store *s, uint64_t *key, unsigned n);
	void (*release)(struct lm__store *s, uint64_t key);
	bool (*verify)(struct lm__store *s, struct lm__filler *f, uint64_t key,
		       const unsigned char *page);
	uint64_t (*avail)(struct lm__store *s, uint64_t key, uint64_t n);
};

struct lm__store {
	const struct lm__store_ops *ops;
	struct lm_runtime *rt;
	struct lm_region *r;		/* a source: its region (buffer, file, image) */
	struct lm__swap *swap;		/* the swap store: its file */
};

void lm__store_init_source(struct lm__store *s, struct lm_region *r);
void lm__store_init_swap(struct lm__store *s, struct lm_runtime *rt, struct lm__swap *swap);
/* Reads pages key[0..n) (n at most the stage): pages good before the first bad one, 0 past the end, or -errno. */
long lm__store_read(struct lm__store *s, struct lm__filler *f, const uint64_t *key, unsigned n,
		    const unsigned char **out);
/* Writes page i to key[i]; res[i] its result.  -errno when any failed (a store without writes: -EROFS). */
int lm__store_write(struct lm__store *s, struct lm__filler *f, const uint64_t *key,
		    unsigned char *const *pages, unsigned n, int *res);
/* Reserves up to n keys to write to; returns how many (0: the store is full, or has no writes). */
unsigned lm__store_alloc(struct lm__store *s, uint64_t *key, unsigned n);
void lm__store_release(struct lm__store *s, uint64_t key);
/* Whether the store holds exactly page for key (false when it cannot tell). */
bool lm__store_verify(struct lm__store *s, struct lm__filler *f, uint64_t key,
		      const unsigned char *page);
/* How many of n pages from key exist, as last seen (at least one). */
uint64_t lm__store_avail(struct lm__store *s, uint64_t key, uint64_t n);
/* Adds n to the statistic at offset stat (one of the ops' *_stat; 0: none). */
void lm__store_count(struct lm__store *s, size_t stat, long n);
/* Region r's source contents of pages [pgno, pgno + n) (region page numbers): lm__store_read of r->src. */
long lm__source_read(struct lm__filler *f, struct lm_region *r, uint64_t pgno, unsigned n,
		     const unsigned char **out);

/* ---- image.c: snapshot images ------------------------------------------- */

/* An index entry: page pgno of the region is data page `data` of the image. */
struct lm__image_ent {
	uint64_t pgno;
	uint32_t data;
	uint32_t sum;		/* lm__image_page_sum of the page */
};

struct lm__image_dir;

/*
 * An open image: its header's fields and directory, read when the region
 * is created; its index, read a page at a time on first use.
 */
struct lm__image {
	struct lm__image_ent *ents;	/* the index, its pages loaded lazily (loaded[i]) */
	size_t ents_len;
	struct lm__image_dir *dir;
	_Atomic unsigned char *loaded;	/* per index page: 0 not yet, 1 checked, 2 damaged */
	uint64_t stored;
	uint64_t length;
	uint64_t data_off, index_off;
	uint64_t npages, ipages;
	unsigned per;			/* entries per index page */
	size_t page_size;
	uint32_t version;		/* of the format: 2 or 3 */
	struct lm__remote *remote;	/* its data pages live in a cluster (lm__image_fetch), or NULL */
};

struct lm__image_writer;

/* A data page's checksum as im's version of the format computes it. */
uint32_t lm__image_page_sum(const struct lm__image *im, const void *p);
int lm__image_create(const char *path, uint64_t length, size_t page_size,
		     struct lm__image_writer **out);
/* The same at a path or a cluster's redis:// URL (written in tmpdir first; see image.c). */
int lm__image_create_at(struct lm_runtime *rt, const char *where, const char *tmpdir,
			uint64_t length, size_t page_size, struct lm__image_writer **out);
/* Tests only: write version 2 of the format (data checksums of lm__hash64), before any add. */
void lm__image_set_version(struct lm__image_writer *w, uint32_t version);
/* Adds page pgno's contents (any order, each page once); zero pages are not stored. */
int lm__image_add(struct lm__image_writer *w, uint64_t pgno, const void *page);
/*
 * Adds n pages (n <= LM__IMAGE_RUN), page pgno[i] from pages[i], in one
 * write: idx[i] is its data page in the image, or -1 for a zero page
 * (not stored).  Several threads may add at once (each page once), a
 * signal handler too: async-signal-safe.  A failure half-way (a short
 * write, a page added twice) makes the commit fail.
 */
#define LM__IMAGE_RUN 64
int lm__image_add_run(struct lm__image_writer *w, const uint64_t *pgno,
		      const unsigned char *const *pages, unsigned n, int64_t *idx);
/* The writer's file (its data pages are final once added); -1 for NULL. */
int lm__image_fd(const struct lm__image_writer *w);
/* Bytes of data written so far. */
uint64_t lm__image_bytes(const struct lm__image_writer *w);
/*
 * Writes the index and header, fsyncs, renames over the path; frees w
 * either way.  Every add must have returned.
 */
int lm__image_commit(struct lm__image_writer *w);
void lm__image_abort(struct lm__image_writer *w);
int lm__image_open(int fd, size_t page_size, struct lm__image **out);
/* Frees im, and closes its cluster. */
void lm__image_free(struct lm__image *im);
/*
 * Images in a Redis Cluster: the file's pages are keys of a generation
 * of the name (lm:img:NAME:GEN), published by one key (lm:img:NAME) set
 * after every page is in.  lm__image_upload puts a committed image file
 * (fd) there under the URL's name, keeping the previous generation (a
 * restore may still read it) and deleting the one before.
 * lm__image_fetch reads the published generation's header and directory
 * into a file of its own (*fd, the data and the index holes: pass it to
 * lm__image_open, then set im->remote) and opens the cluster its index
 * and data pages are read from, when first needed (*remote).  -ENOENT:
 * no image of that name.
 */
int lm__image_upload(struct lm_runtime *rt, int fd, const char *url);
int lm__image_fetch(struct lm_runtime *rt, const char *url, size_t page_size, int *fd,
		    struct lm__remote **remote);

/*
 * The first index entry at or after page pgno, reading the index page it
 * lies in if needed; -EBADMSG when that page is damaged.  fd: the image.
 * Lock free, async-signal-safe.
 */
int64_t lm__image_find(struct lm__image *im, int fd, uint64_t pgno);
/* Index entry k (its page read if needed), or NULL when k is past the end or its page damaged. */
const struct lm__image_ent *lm__image_ent(struct lm__image *im, int fd, uint64_t k);

/* ---- evict.c: the budget, the evictor and writeback ------------------- */

int lm__evict_setup(struct lm_runtime *rt);
void lm__evict_shutdown(struct lm_runtime *rt);
/* After a fill: wakes the evictor when the resident pages pass the high watermark. */
void lm__evict_check(struct lm_runtime *rt);
/* Before a fill: waits while the resident pages are at the budget.  Async-signal-safe. */
void lm__throttle(struct lm_runtime *rt);
/* fork()'s prepare and after handlers: eviction stops between batches, and no fill waits for it. */
void lm__evict_pause(struct lm_runtime *rt);
void lm__evict_resume(struct lm_runtime *rt);
/* Async tracking: pages of [first, last] written since protected become DIRTY. */
void lm__harvest(struct lm_region *r, uint64_t first, uint64_t last);
/* Writes the dirty pages of [first, first + count) of a shared region to its file. */
int lm__writeback(struct lm_region *r, uint64_t first, uint64_t count);
/* Counts pages entering (n > 0) or leaving residency, for the region and the budget. */
static inline void lm__resident_add(struct lm_region *r, int64_t n);
static inline void lm__dirty_add(struct lm_region *r, int64_t n);
/* The eviction stamp to store in an evicted entry, and whether its refault is a hot one. */
uint64_t lm__evict_stamp(struct lm_runtime *rt);
bool lm__refault_hot(struct lm_runtime *rt, uint64_t prev);
/* Where the runtime's files go: lm_options.swap_dir, else $TMPDIR, else /tmp. */
const char *lm__swap_dir(const struct lm_runtime *rt);

/* ---- cow.c: preserving pages before they change (snapshot.c: the API) ---- */


/* Pages preserved in one write-protect fault at most (the aligned block around it). */
#define LM__SNAP_BATCH 64

/* The region's source never changes under it: zero, memory, image. */
#define lm__source_immutable(r) (((r)->src.ops->flags & LM__STORE_IMMUTABLE) != 0)

/*
 * The arrays of a copy-on-write round trip, in the filler: it may run in
 * a signal handler, on a small signal stack.
 */
struct lm__snap_scratch {
	const unsigned char *data[LM__SNAP_BATCH];	/* lm__snap_cow: contents of the block */
	uint64_t pg[LM__SNAP_BATCH];
	struct iovec iov[LM__SNAP_BATCH];		/* lm__snap_preserve: spill writes */
	uint64_t pgs[LM__SNAP_BATCH];			/* ...and image writes */
	const unsigned char *ptr[LM__SNAP_BATCH];
	int64_t idx[LM__SNAP_BATCH];
};

/*
 * Records the current contents of pages pg[0..n) (n <= LM__SNAP_BATCH)
 * for every snapshot of set that lacks them; the caller holds each page.
 * data[i]: the page's contents, or NULL when they are the region's
 * immutable source's.  Async-signal-safe; f->snap is its scratch.
 */
void lm__snap_preserve(struct lm__filler *f, struct lm_region *r, const struct lm__snapset *set,
		       const uint64_t *pg, const unsigned char *const *data, unsigned n);
/*
 * A write hit page pgno (held by the caller, its value before prev)
 * while a snapshot lacks it: preserves it and its neighbours in one round
 * trip and lifts their protection.  Returns 1 when pgno's was lifted, 0
 * when not, -1 when pgno was gone (dropped): then it is settled already.
 */
int lm__snap_cow(struct lm__filler *f, struct lm_region *r, const struct lm__snapset *set,
		  uint64_t pgno, uint64_t prev);
/* A held resident page loses its protection: it settles DIRTY, its writes unseen from now on. */
void lm__cow_release_unprotected(struct lm_region *r, lm__pte *e, uint64_t pgno, uint64_t prev);
/* Lifts the protection of the pages of mask (bits of [first, first + n)); returns those lifted. */
uint64_t lm__cow_unprotect(struct lm_region *r, uint64_t first, unsigned n, uint64_t mask);
/* Reads resident pages through /proc/self/mem, which fails on a missing page instead of faulting; returns the pages read. */
unsigned lm__cow_read_resident(struct lm_region *r, uint64_t first, unsigned n, unsigned char *buf);
/* Before dont-need advice drops [first, first + count): preserves what snapshots lack. */
void lm__snap_before_drop(struct lm_region *r, uint64_t first, uint64_t count);
/* The region goes: cancels its snapshots' saves and detaches them (they fail with -ENXIO). */
void lm__snap_detach_all(struct lm_region *r);

/* ---- space.c: regions in the address space (region.c: the public calls) -- */

#define LM__ADV_SLOTS 8

struct lm__adv_range {
	_Atomic uint64_t first, last;	/* page numbers, inclusive; last < first: unused */
	_Atomic int advice;
};

/* A range of the address space that belongs to a region (see space.c). */
struct lm__extent {
	uintptr_t start, end;
	struct lm_region *r;
};

struct lm_region {
	struct lm_runtime *rt;
	uintptr_t start;		/* changes only under rt->lock, published by the table */
	size_t len;
	uint64_t npages;
	int kind;			/* enum lm_source_kind */
	struct lm__store src;		/* the source's store: the only way to its contents */
	const unsigned char *buf;	/* memory source */
	uint64_t buflen;		/* memory source: bytes of buf (the rest reads as zeros) */
	int fd;				/* file source, our own dup */
	uint64_t foff;
	_Atomic uint64_t fsize;		/* file size as last seen */
	uint64_t src_shift;		/* pages: region page p reads source page p + src_shift */
	struct lm_region *parent;	/* internal region split off by mremap */
	struct lm__ptable pt;
	_Atomic int64_t resident;
	_Atomic int64_t dirty;		/* resident pages in state DIRTY */
	_Atomic int64_t swapped;	/* pages in state SWAPPED */
	bool shared;			/* file source written back to (LM_REGION_SHARED) */
	struct lm__image *image;	/* image source: the index (owned by the root region) */
	_Atomic uint64_t ra_next;	/* readahead: page expected next */
	_Atomic unsigned ra_win;	/* readahead: current window */
	_Atomic uint64_t ra_low;	/* readahead: first page of the last fill */
	_Atomic unsigned ra_dwin;	/* readahead: current window of a descending run */
	_Atomic uint64_t ra_cursor;	/* a sequential stream: the next window's first page (fault.c) */
	_Atomic uint64_t ra_limit;	/* and where it stops, until the next fault moves it */
	_Atomic unsigned ra_flags;	/* and how it fills: LM_FILL_WRITE for a scan that writes */
	_Atomic int advice;		/* region-wide advice */
	struct lm__adv_range adv[LM__ADV_SLOTS];
	_Atomic unsigned adv_next;
	uint64_t id;			/* unique in the runtime: tells a new region from a freed one */
	struct lm_region *next, *prev;	/* rt->regions, guarded by rt->lock */
	struct lm_region **aliases;	/* parts moved away by mremap (guarded by rt->lock) */
	size_t naliases;
	/* Snapshots (snapshot.c): the live ones, read under lm__read_lock. */
	struct lm__snapset *_Atomic snaps;
	pthread_mutex_t snap_lock;	/* serializes take, release, rollback and detach */
	int spill_fd;			/* preserved copies, shared by the live snapshots */
	_Atomic uint64_t spill_next;	/* next free page of the spill file */
};

struct lm__rtable {
	size_t n;
	size_t cap;
	struct lm__extent e[];
};

/* Lookup under lm__read_lock; the region stays valid until lm__read_unlock. */
struct lm_region *lm__region_find(struct lm_runtime *rt, uintptr_t addr);
/*
 * Pages from pgno to the end of r's extent that holds it, 0 when no
 * extent of r does (unmapped, or another region's now).  Under
 * lm__read_lock: what a fill may install without writing past r.
 */
uint64_t lm__region_extent_pages(struct lm_region *r, uint64_t pgno);
/* Whether r, seen earlier and maybe freed since, is a region of rt's table.  Under lm__read_lock. */
bool lm__region_live(struct lm_runtime *rt, const struct lm_region *r);
/*
 * Publishes a new region table (rt->lock held): the current one without
 * drop's extents, with [cut_start, cut_end) cut out, plus add.  -ENOMEM
 * leaves the table as it was; the _must form retries until it can.
 */
int lm__table_rebuild(struct lm_runtime *rt, struct lm_region *drop, uintptr_t cut_start,
		      uintptr_t cut_end, const struct lm__extent *add);
void lm__table_rebuild_must(struct lm_runtime *rt, struct lm_region *drop, uintptr_t cut_start,
			    uintptr_t cut_end, const struct lm__extent *add);
/* r's extents within [start, end), malloc'ed (*n of them); NULL when none or out of memory. */
struct lm__extent *lm__region_extents(struct lm_runtime *rt, struct lm_region *r, uintptr_t start,
				      uintptr_t end, size_t *n);
/* True when [start, start + len) overlaps a region of rt (in a read section). */
bool lm__overlaps_region(struct lm_runtime *rt, uintptr_t start, size_t len);
/* A region's memory and page table, and its release (slots, counters, descriptors). */
struct lm_region *lm__region_alloc(struct lm_runtime *rt, size_t len);
void lm__region_release(struct lm_region *r);
/* rt->regions, under rt->lock. */
void lm__region_list_add(struct lm_runtime *rt, struct lm_region *r);
void lm__region_list_del(struct lm_runtime *rt, struct lm_region *r);
/* The advice in force at page pgno: the newest range that covers it, else the region's. */
int lm__region_advice_at(struct lm_region *r, uint64_t pgno);
void lm__region_set_advice(struct lm_region *r, uint64_t first, uint64_t last, int advice);
/* The application's events: pages dropped (madvise), unmapped, moved (mremap). */
void lm__region_forget(struct lm_region *r, uintptr_t start, uintptr_t end, bool dropped);
void lm__region_unmapped(struct lm_runtime *rt, uintptr_t start, uintptr_t end);
int lm__region_remap(struct lm_runtime *rt, uintptr_t from, uintptr_t to, size_t len);

/* ---- region.c: the public region calls ---------------------------------- */

void lm__region_free_all(struct lm_runtime *rt);

/* ---- runtime.c ------------------------------------------------------- */


struct lm__prefetch {
	struct lm_region *r;
	uint64_t id;			/* r->id when queued: r may be gone and its memory reused */
	uint64_t first, count;
	struct lm__prefetch *next;
};

/* Pages: the smallest budget the evictor can keep (lm_runtime_set_budget refuses less). */
#define LM__BUDGET_MIN 16

struct lm_runtime {
	struct lm_options opt;
	bool io_required;		/* io_uring asked for by name: no pread fallback */
	long page_size;
	unsigned page_shift;
	bool huge;			/* hugetlb pages (lm_options.page_size) */
	const unsigned char *zeros;	/* huge: a page of zeros to copy in (no UFFDIO_ZEROPAGE) */
	unsigned batch;			/* pages per snapshot batch: LM__SNAP_BATCH base pages' worth */
	int mode;
	int ufd;
	int origin;
	unsigned limits;
	uint64_t features;
	int epfd;
	int stop_fd;			/* eventfd: handler threads exit when readable */
	pthread_t *threads;
	struct lm__filler *fillers;	/* one per handler thread */
	int nthreads;
	_Atomic bool stopping;
	_Atomic uint64_t faults_read;	/* fault messages read: lingering handlers watch it */
	_Atomic int armed;		/* pinned handlers waiting on the userfaultfd (handler.c) */
	struct lm_region *_Atomic stream;	/* the last region a sequential stream ran in (fault.c) */
	_Atomic bool stream_work;	/* and it may have windows left to fill */

	/* Regions: writers hold lock and publish a new table; readers use epochs. */
	pthread_mutex_t lock;
	struct lm_region *regions;	/* every region, aliases too (guarded by lock) */
	_Atomic uint64_t next_region_id;
	struct lm_runtime *all_next;	/* every runtime of the process (runtime.c) */
	_Atomic(struct lm__rtable *) table;
	struct lm__rtable *spare;	/* the table before, no longer read: reused (guarded by lock) */
	struct lm__epoch rcu;		/* readers of the table and its regions */
	struct lm__epoch evq;		/* handlers between reading events and applying them */
	pthread_mutex_t ev_lock;	/* one reader of the parent's userfaultfd applies its events at a time */
	_Atomic int ev_unapplied;	/* a read in progress, or its events not applied yet */

	/* Background prefetch (will-need advice). */
	pthread_mutex_t pf_lock;
	pthread_cond_t pf_cond;
	struct lm__prefetch *pf_head, **pf_tail;
	pthread_t pf_thread;
	bool pf_started;
	struct lm__filler pf_filler;

	/* Signal mode: staging buffers for faulting threads. */
	struct lm__filler *pool;
	int npool;
	struct lm_runtime *_Atomic sig_next;
	pid_t pid;			/* the process that opened the runtime */
	pid_t ufd_pid;			/* the process whose address space ufd serves */

	/* Memory budget and eviction (evict.c). */
	_Atomic uint64_t budget;	/* pages; 0: none */
	_Atomic int64_t *nres;		/* resident pages of every region: what the budget bounds */
	_Atomic int64_t *ndirty;	/* of which dirty (both in the stats page) */
	_Atomic bool ev_wanted;		/* a kick is pending */
	_Atomic bool ev_stop;
	unsigned char *wbuf;		/* EVICT_BATCH pages: writeback copies (evictor only) */
	_Atomic bool track;		/* install pages write-protected, so writes are seen */
	bool wp_async;			/* ...and the kernel lifts it (LM_DIRTY_ASYNC): harvest with scans */
	int pagemap_fd;			/* /proc/self/pagemap, for PAGEMAP_SCAN (async tracking) */
	struct lm__swap swap;
	struct lm__store swap_store;	/* the swap file as a page store: keys are slots */
	bool swap_ok;
	int stage_ufd;			/* a second userfaultfd, no events: the evictor's staging area */
	unsigned char *estage;		/* EVICT_BATCH pages registered with stage_ufd */
	struct lm__filler ev_filler;
	pthread_t ev_thread;
	bool ev_started;
	int ev_kick;			/* eventfd: wakes the evictor (async-signal-safe) */
	int ev_pagemap;			/* /proc/self/pagemap: is a staging slot filled? */
	pthread_mutex_t ev_setup_lock;	/* serializes lm__evict_setup */
	pthread_mutex_t evict_lock;	/* held for each eviction or writeback batch; fork() takes it */
	_Atomic unsigned ev_gen;	/* eviction rounds finished */
	_Atomic uint64_t ev_count;	/* pages evicted, ever: the clock of refault distances */
	_Atomic bool ev_stuck;		/* the last round ended over the budget */
	_Atomic bool ev_paused;		/* a fork() holds evict_lock: fills must not wait for the evictor */
	size_t hand_ext;		/* the clock hand: extent index and page (evictor only) */
	uint64_t hand_pg;

	int snap_memfd;			/* /proc/self/mem: snapshots read resident pages with it */
	struct lm__stats *stats;	/* the page shared with lazymemd (report.c) */
	int stats_fd;			/* its memfd; -1 when it is private memory */
	struct lm__report *report;	/* the connection to lazymemd, NULL if none */
};

static inline void lm__resident_add(struct lm_region *r, int64_t n)
{
	atomic_fetch_add_explicit(&r->resident, n, memory_order_relaxed);
	atomic_fetch_add_explicit(r->rt->nres, n, memory_order_relaxed);
}

static inline void lm__dirty_add(struct lm_region *r, int64_t n)
{
	atomic_fetch_add_explicit(&r->dirty, n, memory_order_relaxed);
	atomic_fetch_add_explicit(r->rt->ndirty, n, memory_order_relaxed);
}

static inline void lm__swapped_add(struct lm_region *r, int64_t n)
{
	atomic_fetch_add_explicit(&r->swapped, n, memory_order_relaxed);
	LM__STAT_ADD(r->rt, swapped_pages, n);
}

static inline int lm__read_lock(struct lm_runtime *rt)
{
	return lm__epoch_enter(&rt->rcu);
}

static inline void lm__read_unlock(struct lm_runtime *rt, int idx)
{
	lm__epoch_exit(&rt->rcu, idx);
}

/* Waits until every reader that might see the previous table has left. */
static inline void lm__synchronize(struct lm_runtime *rt)
{
	lm__epoch_wait(&rt->rcu);
}

/* ---- install.c: the one installer ---------------------------------------- */

#define LM__INSTALL_WP 1u	/* write-protected: the first write faults (tracked) */
#define LM__INSTALL_ZEROS 2u	/* zeros, not write-protected: the shared zero page where there is one */
/*
 * Installs the run of n pages at addr (contents at src, or zeros) through
 * ufd.  0, or -errno with *done the pages installed before the one that
 * failed: -EEXIST there means present already, -EAGAIN the address space
 * changing (see install.c).  Async-signal-safe.
 */
int lm__install(struct lm_runtime *rt, int ufd, uintptr_t addr, const unsigned char *src,
		unsigned n, unsigned how, unsigned *done);

/* ---- fault.c: filling pages and the handler loop --------------------- */

#define LM_FILL_WRITE 1u	/* the fault was a write */
#define LM_FILL_PREFETCH 2u	/* advice, not a fault: never poison, never wait */
#define LM_FILL_AHEAD 4u	/* asynchronous readahead after a sequential fault */
#define LM_FILL_WILLNEED 8u	/* with PREFETCH: will-need advice, which never waits for the evictor */
#define LM__RA_START 4		/* readahead: the first window of a sequential run */
#define LM__RA_AROUND 32	/* readahead: the window of a random fault on a file (mmap's read-around) */

/*
 * Sequential streams (thread mode with two handlers or more, unless
 * LM_OPT_NO_STREAM; fault.c).
 * After a fault's fill in a scan at full window, lm__stream_fault fills
 * ahead, from the region's cursor to a limit past the fault, and other
 * handlers join in (a fault of the scan that caught up, or an idle
 * handler through lm__stream_help), so that two CPUs fill at once.
 * next: the fault is where the last fill ended (or at page 0).
 * lm__stream_fault returns false when the fault is not one of a stream
 * (the caller fills ahead as before); lm__stream_help true if it filled.
 */
bool lm__stream_fault(struct lm__filler *f, struct lm_region *r, uint64_t pgno, long n,
		      unsigned flags, bool next);
bool lm__stream_help(struct lm__filler *f);
/* The readahead window below a descending fault at pgno (fault.c); 0: not descending. */
unsigned lm__window_down(struct lm_region *r, uint64_t pgno, uint64_t low);
/* The read-around block of a random fault at pgno, in pages (fault.c); 0: none for r. */
unsigned lm__window_around(struct lm_region *r, uint64_t pgno);
/*
 * Fills page pgno of r (and readahead pages after it) and installs them
 * through ufd.  Returns the number of pages installed, 0 when there was
 * nothing to do (another thread owns the page, or it is resident), or
 * -errno; a page that cannot be filled is poisoned and counted.
 */
long lm__fill(struct lm__filler *f, struct lm_region *r, uint64_t pgno,
	      unsigned want, unsigned flags, int ufd);
void *lm__prefetch_main(void *arg);
/*
 * Fills [first, first + count) for advice: populate (flags 0: waits for
 * the evictor like a fault) or will-need (LM_FILL_WILLNEED: stops with
 * -ENOSPC at the budget, the rest undone).  The pages installed or the
 * first hard error.
 */
long lm__fill_range(struct lm__filler *f, struct lm_region *r, uint64_t first, uint64_t count,
		    unsigned flags);
/*
 * A write hit a write-protected page: marks it dirty and lifts the
 * protection.  park: a thread-mode fault may wait on a page in
 * transition (its owner wakes it); a signal-mode one replays instead.
 */
void lm__wp_fault(struct lm__filler *f, struct lm_region *r, uint64_t pgno, uintptr_t addr,
		  int ufd, bool park);

/* ---- resolve.c: the one resolver both front ends call --------------------- */

/* A fault as a front end decoded it. */
struct lm__fault {
	uintptr_t addr;		/* the page's address */
	bool write;		/* the access was a write */
	bool wp;		/* a write-protect fault (handler threads know; SIGBUS does not) */
	bool signal;		/* the faulting thread itself, in a SIGBUS handler */
};
enum {
	LM__RESOLVE_DONE,	/* answered: installed, poisoned, parked, or woken */
	LM__RESOLVE_REPLAY,	/* nothing to do yet: the access replays */
	LM__RESOLVE_UNKNOWN,	/* no region of the runtime owns the address */
	LM__RESOLVE_NOT_OURS,	/* a SIGBUS that is not the runtime's (poison, a child's own) */
};
/* Resolves a fault of rt; f: the handler thread's filler (signal mode borrows one). */
int lm__resolve(struct lm__filler *f, struct lm_runtime *rt, const struct lm__fault *ft);
/* Registered memory no region of rt owns: replay while an event is pending, else zeros (DONE), or NOT_OURS. */
int lm__resolve_stray(struct lm_runtime *rt, uintptr_t addr);

/* ---- handler.c: the handler threads (a front end) ---------------------------- */

/* A handler thread: epoll on the runtime's userfaultfd, events applied in order, faults resolved. */
void *lm__handler_main(void *arg);

/* ---- signal.c: resolution in the faulting thread ---------------------- */

int lm__signal_attach(struct lm_runtime *rt);
void lm__signal_detach(struct lm_runtime *rt);
/* fork() (fork.c): the handler's list kept whole, then reset in the child. */
void lm__signal_fork_prepare(void);
void lm__signal_fork_parent(void);
void lm__signal_fork_child(void);
/* Before a fork(): the buffers the child's signal mode will need, made in the parent. */
void lm__signal_fork_prepare_pool(struct lm_runtime *rt);
/* In a fork() child: the runtime resolves its faults by signal from now on. */
int lm__signal_adopt_in_child(struct lm_runtime *rt);

/* ---- fork.c: the process's runtimes, and fork() ------------------------------ */

/* Every runtime of the process is registered while open: fork() follows them all. */
void lm__runtime_register(struct lm_runtime *rt);
void lm__runtime_unregister(struct lm_runtime *rt);
/* True when [start, start + len) overlaps a region of any runtime of the process. */
bool lm__overlaps_any_runtime(uintptr_t start, size_t len);
/* A section fork() waits for rather than split (see fork.c). */
void lm__fork_gate_enter(void);
void lm__fork_gate_exit(void);

#endif /* LM_INTERNAL_H */
