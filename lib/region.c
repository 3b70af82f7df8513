/* SPDX-License-Identifier: MIT */
/* Regions: creation and destruction, the address-ordered region table, advice, and the application's munmap/mremap/madvise. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * The region table is an array of extents (address ranges and the region
 * they belong to), sorted by address and never overlapping.  A region
 * starts as one extent; the application's munmap punches holes into it,
 * and a region the application unmapped entirely has none: lookups then
 * never find it, and a new mapping at the same address (perhaps a new
 * region) is never taken for it.  The table is never modified in place:
 * a writer (holding rt->lock) builds a new array, publishes it, waits out
 * the readers of the old one and frees it, so a fault handler's lookup is
 * a binary search with no lock at all.
 */

/*
 * Publishes a new table: the current one without the extents of drop,
 * with [cut_start, cut_end) cut out of every extent, plus add.  Called
 * with rt->lock held.  The old table is freed only once no reader can
 * see it.
 */
static int table_rebuild(struct lm_runtime *rt, struct lm_region *drop, uintptr_t cut_start,
			 uintptr_t cut_end, const struct lm__extent *add)
{
	struct lm__rtable *old = atomic_load_explicit(&rt->table, memory_order_relaxed);
	size_t n = old ? old->n : 0;
	/*
	 * A cut can split one extent in two; add brings one more.  The table
	 * before the current one is no longer read by anyone: reusing it
	 * saves a large allocation (and its page faults) per change.
	 */
	struct lm__rtable *t = rt->spare;
	if (t && t->cap >= n + 2) {
		rt->spare = NULL;
	} else {
		size_t cap = (n + 2) * 2 < 16 ? 16 : (n + 2) * 2;
		t = malloc(sizeof(*t) + cap * sizeof(t->e[0]));
		if (!t)
			return -ENOMEM;
		t->cap = cap;
	}
	size_t k = 0;
	bool placed = !add;
	for (size_t i = 0; i < n; i++) {
		struct lm__extent e = old->e[i];
		if (e.r == drop)
			continue;
		struct lm__extent piece[2];
		int np = 0;
		if (cut_end > e.start && cut_start < e.end) {
			if (e.start < cut_start)
				piece[np++] = (struct lm__extent){ e.start, cut_start, e.r };
			if (cut_end < e.end)
				piece[np++] = (struct lm__extent){ cut_end, e.end, e.r };
		} else {
			piece[np++] = e;
		}
		for (int j = 0; j < np; j++) {
			if (!placed && add->start < piece[j].start) {
				t->e[k++] = *add;
				placed = true;
			}
			t->e[k++] = piece[j];
		}
	}
	if (!placed)
		t->e[k++] = *add;
	t->n = k;
	atomic_store_explicit(&rt->table, t, memory_order_release);
	lm__synchronize(rt);
	free(rt->spare);
	rt->spare = old;
	return 0;
}

/*
 * Under rt->lock a table change must not fail halfway through a destroy
 * or an event: retry the allocation rather than leave a freed region
 * published.
 */
static void table_rebuild_must(struct lm_runtime *rt, struct lm_region *drop,
			       uintptr_t cut_start, uintptr_t cut_end, const struct lm__extent *add)
{
	while (table_rebuild(rt, drop, cut_start, cut_end, add) < 0)
		usleep(1000);
}

struct lm_region *lm__region_find(struct lm_runtime *rt, uintptr_t addr)
{
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	if (!t)
		return NULL;
	size_t lo = 0, hi = t->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct lm__extent *e = &t->e[mid];
		if (addr < e->start)
			hi = mid;
		else if (addr >= e->end)
			lo = mid + 1;
		else
			return e->r;
	}
	return NULL;
}

/* The extents of r within [start, end), copied out (caller frees); NULL if none or no memory. */
static struct lm__extent *extents_of(struct lm_runtime *rt, struct lm_region *r, uintptr_t start,
				     uintptr_t end, size_t *count)
{
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	size_t n = 0;
	for (size_t i = 0; t && i < t->n; i++)
		n += t->e[i].r == r && t->e[i].start < end && start < t->e[i].end;
	*count = 0;
	if (!n)
		return NULL;
	struct lm__extent *out = malloc(n * sizeof(*out));
	if (!out)
		return NULL;
	for (size_t i = 0; i < t->n; i++) {
		struct lm__extent e = t->e[i];
		if (e.r != r || e.start >= end || start >= e.end)
			continue;
		out[(*count)++] = (struct lm__extent){ e.start > start ? e.start : start,
						       e.end < end ? e.end : end, r };
	}
	return out;
}

/* True when [start, start + len) overlaps a live extent of rt; called in a read section. */
bool lm__overlaps_region(struct lm_runtime *rt, uintptr_t start, size_t len)
{
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	for (size_t i = 0; t && i < t->n; i++)
		if (start < t->e[i].end && t->e[i].start < start + len)
			return true;
	return false;
}

/* The list of every region of a runtime, for stats and close; guarded by rt->lock. */
static void list_add(struct lm_runtime *rt, struct lm_region *r)
{
	r->prev = NULL;
	r->next = rt->regions;
	if (rt->regions)
		rt->regions->prev = r;
	rt->regions = r;
}

static void list_del(struct lm_runtime *rt, struct lm_region *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else if (rt->regions == r)
		rt->regions = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->next = r->prev = NULL;
}

static struct lm_region *region_alloc(struct lm_runtime *rt, size_t len)
{
	struct lm_region *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->rt = rt;
	r->len = len;
	r->npages = len >> rt->page_shift;
	r->fd = -1;
	r->spill_fd = -1;
	pthread_mutex_init(&r->snap_lock, NULL);
	r->id = atomic_fetch_add(&rt->next_region_id, 1) + 1;
	lm__pt_init(&r->pt, r->npages);
	r->pt.total = &rt->stats->metadata_bytes;
	LM__STAT_ADD(rt, metadata_bytes, sizeof(*r));
	for (int i = 0; i < LM__ADV_SLOTS; i++) {
		atomic_init(&r->adv[i].first, 1);
		atomic_init(&r->adv[i].last, 0);
	}
	atomic_init(&r->ra_win, 0);
	return r;
}

static void region_free(struct lm_region *r)
{
	/* Its slots go back to the swap file, its pages out of the budget. */
	lm__pte_release_table(r);
	lm__pt_destroy(&r->pt);
	LM__STAT_SUB(r->rt, metadata_bytes, sizeof(*r));
	if (r->fd >= 0 && !r->parent)
		close(r->fd);
	if (r->spill_fd >= 0)
		close(r->spill_fd);
	pthread_mutex_destroy(&r->snap_lock);
	if (!r->parent)
		lm__image_free(r->image);
	free(r->aliases);
	free(r);
}

/*
 * The region reads its file through an open file description of its own
 * when it can (reopening /proc/self/fd/N): the kernel's readahead state
 * and the file offset then belong to lazymem, and the application's
 * sequential reads and ours do not disturb each other.  Failing that (no
 * /proc, a file since renamed over), a dup shares the caller's.
 */
static int reopen(int fd, const struct stat *st, bool rw)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int nfd = open(path, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (nfd >= 0) {
		struct stat nst;
		if (fstat(nfd, &nst) == 0 && nst.st_dev == st->st_dev && nst.st_ino == st->st_ino)
			return nfd;
		close(nfd);
	}
	nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	return nfd < 0 ? -errno : nfd;
}

static int create(struct lm_runtime *rt, size_t length, unsigned flags, int kind,
		  const void *buf, int fd, off_t offset, struct lm_region **out)
{
	bool image = kind == LM_SOURCE_IMAGE;
	if (!rt || !out || (!length && !image) || (flags & ~LM_REGION_SHARED) ||
	    ((flags & LM_REGION_SHARED) && kind != LM_SOURCE_FILE))
		return -EINVAL;
	bool shared = flags & LM_REGION_SHARED;
	size_t ps = (size_t)rt->page_size;
	struct stat st;
	if (kind == LM_SOURCE_MEMORY && !buf)
		return -EINVAL;
	if (kind == LM_SOURCE_FILE || image) {
		if (fd < 0)
			return -EBADF;
		if (offset < 0 || ((size_t)offset & (ps - 1)))
			return -EINVAL;
		int fl = fcntl(fd, F_GETFL);
		if (fl < 0)
			return -errno;
		if ((fl & O_ACCMODE) == O_WRONLY || (fl & O_PATH) ||
		    (shared && (fl & O_ACCMODE) != O_RDWR))
			return -EACCES;
		if (fstat(fd, &st) < 0)
			return -errno;
		if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
			return -ENODEV;
	}
	/* An image says how long its region is, once its header and index check out. */
	struct lm__image *im = NULL;
	if (image) {
		int rc = lm__image_open(fd, ps, &im);
		if (rc < 0)
			return rc;
		length = im->length;
	}
	if (length > SIZE_MAX - ps) {
		lm__image_free(im);
		return -EINVAL;
	}
	size_t len = (length + ps - 1) & ~(ps - 1);
	/* Writeback must see writes: shared regions need write-protect tracking. */
	if (shared) {
		/*
		 * Async tracking could only write clean pages back blindly (see
		 * evict.c), and a flush could not be torn-free: not offered.
		 */
		if (!(rt->features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) || getpid() != rt->ufd_pid ||
		    rt->wp_async || rt->huge)
			return -EOPNOTSUPP;
		atomic_store(&rt->track, true);
	}

	struct lm_region *r = region_alloc(rt, len);
	if (!r) {
		lm__image_free(im);
		return -ENOMEM;
	}
	r->kind = kind;
	r->buf = buf;
	r->buflen = length;
	r->image = im;
	if (kind == LM_SOURCE_FILE || image) {
		r->fd = reopen(fd, &st, shared);
		r->shared = shared;
		if (r->fd < 0) {
			int err = r->fd;
			r->fd = -1;
			region_free(r);
			return err;
		}
		r->foff = (uint64_t)offset;
		uint64_t size = (uint64_t)st.st_size;
		/* A block device's st_size is 0: ask the device. */
		if (S_ISBLK(st.st_mode) && ioctl(r->fd, BLKGETSIZE64, &size) < 0)
			size = 0;
		atomic_init(&r->fsize, size);
	}
	/*
	 * Hugetlb pages are reserved here, so that a fill never finds the
	 * pool empty: the region fails now with -ENOMEM instead of a
	 * thread with SIGBUS later.  Base pages are not: lazy memory costs
	 * nothing until it is touched.
	 */
	int mflags = MAP_PRIVATE | MAP_ANONYMOUS;
	if (rt->huge)
		mflags |= MAP_HUGETLB | (int)(rt->page_shift << MAP_HUGE_SHIFT);
	else
		mflags |= MAP_NORESERVE;
	void *addr = mmap(NULL, len, PROT_READ | PROT_WRITE, mflags, -1, 0);
	if (addr == MAP_FAILED) {
		int err = -errno;
		region_free(r);
		return err;
	}
	r->start = (uintptr_t)addr;
	int rc = lm__uffd_register(rt->ufd, r->start, len,
				   (rt->features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) != 0);
	if (rc < 0) {
		munmap(addr, len);
		region_free(r);
		return rc;
	}
	/*
	 * A memory source inside a region would make the handler fault on
	 * registered memory while it copies (docs/DESIGN.md, invariant 1): refuse it.
	 * Checked before rt->lock: the check takes the process-wide lock of
	 * all runtimes, which fork() takes before each runtime's lock.
	 */
	if (kind == LM_SOURCE_MEMORY && lm__overlaps_any_runtime((uintptr_t)buf, length)) {
		lm__uffd_unregister(rt->ufd, r->start, len);
		munmap(addr, len);
		region_free(r);
		return -EINVAL;
	}
	/*
	 * mmap may have handed out an address the application just unmapped
	 * from another region.  Its munmap returned once a handler had read
	 * the UNMAP event, a moment before the handler cuts that range out of
	 * the table: wait for the event batches in flight, or a fault here
	 * could find the old region, and the late cut would remove the new one.
	 */
	if (getpid() == rt->ufd_pid && rt->nthreads)
		lm__epoch_wait(&rt->evq);
	pthread_mutex_lock(&rt->lock);
	struct lm__extent ext = { r->start, r->start + len, r };
	rc = table_rebuild(rt, NULL, 0, 0, &ext);
	if (rc == 0)
		list_add(rt, r);
	pthread_mutex_unlock(&rt->lock);
	if (rc < 0) {
		lm__uffd_unregister(rt->ufd, r->start, len);
		munmap(addr, len);
		region_free(r);
		return rc;
	}
	LM__STAT_ADD(rt, regions_live, 1);
	LM__STAT_ADD(rt, regions_created, 1);
	LM__STAT_ADD(rt, region_bytes, len);
	*out = r;
	return 0;
}

int lm_region_create_zero(struct lm_runtime *rt, size_t length, unsigned flags,
			  struct lm_region **out)
{
	LM__KEEP_ERRNO;
	return create(rt, length, flags, LM_SOURCE_ZERO, NULL, -1, 0, out);
}

int lm_region_create_image(struct lm_runtime *rt, int fd, unsigned flags, struct lm_region **out)
{
	LM__KEEP_ERRNO;
	if (flags)
		return -EINVAL;
	return create(rt, 0, flags, LM_SOURCE_IMAGE, NULL, fd, 0, out);
}

int lm_region_create_memory(struct lm_runtime *rt, const void *buf, size_t length,
			    unsigned flags, struct lm_region **out)
{
	LM__KEEP_ERRNO;
	return create(rt, length, flags, LM_SOURCE_MEMORY, buf, -1, 0, out);
}

int lm_region_create_file(struct lm_runtime *rt, int fd, off_t offset, size_t length,
			  unsigned flags, struct lm_region **out)
{
	LM__KEEP_ERRNO;
	return create(rt, length, flags, LM_SOURCE_FILE, NULL, fd, offset, out);
}

static void drop_prefetch(struct lm_runtime *rt, struct lm_region *r)
{
	pthread_mutex_lock(&rt->pf_lock);
	struct lm__prefetch **pp = &rt->pf_head;
	while (*pp) {
		struct lm__prefetch *p = *pp;
		if (p->r == r) {
			*pp = p->next;
			free(p);
		} else {
			pp = &p->next;
		}
	}
	rt->pf_tail = pp;
	pthread_mutex_unlock(&rt->pf_lock);
}

/* Called with rt->lock held. */
static void destroy_locked(struct lm_runtime *rt, struct lm_region *r)
{
	/* Snapshots first: their savers read the region's pages. */
	if (!r->parent)
		lm__snap_detach_all(r);
	for (size_t i = 0; i < r->naliases; i++)
		destroy_locked(rt, r->aliases[i]);
	/*
	 * Only the region's own extents: what the application unmapped, and
	 * whatever it mapped there since (maybe another region), is not ours.
	 * Unregistering wakes any thread still blocked on one of its pages.
	 * In a fork() child whose descriptor still serves the parent, an
	 * ioctl would act on the parent's address space: skip it.
	 */
	size_t n;
	struct lm__extent *ext = extents_of(rt, r, 0, UINTPTR_MAX, &n);
	for (size_t i = 0; i < n && getpid() == rt->ufd_pid; i++)
		lm__uffd_unregister(rt->ufd, ext[i].start, ext[i].end - ext[i].start);
	drop_prefetch(rt, r);
	table_rebuild_must(rt, r, 0, 0, NULL);
	list_del(rt, r);
	/* Aliases are the application's memory now (it moved them): leave them mapped. */
	for (size_t i = 0; i < n && !r->parent; i++)
		munmap((void *)ext[i].start, ext[i].end - ext[i].start);
	free(ext);
	if (!r->parent) {
		/* Aliases were never counted: they are parts of their parent. */
		LM__STAT_SUB(rt, regions_live, 1);
		LM__STAT_SUB(rt, region_bytes, r->len);
	}
	region_free(r);
}

int lm_region_destroy(struct lm_region *r)
{
	LM__KEEP_ERRNO;
	if (!r || r->parent)
		return -EINVAL;
	struct lm_runtime *rt = r->rt;
	/* Nothing written to a shared region is lost: if it cannot reach the file, the region stays. */
	if (r->shared && getpid() == rt->pid) {
		int rc = lm__writeback(r, 0, r->npages);
		if (rc < 0)
			return rc;
	}
	/*
	 * An application's munmap returns once a handler has read its UNMAP
	 * event, a moment before the handler records the hole; a mapping the
	 * application then puts there must not be unmapped below.  So wait
	 * for the event batches in flight (without rt->lock, which applying
	 * a remap event takes).
	 */
	if (getpid() == rt->ufd_pid)
		lm__epoch_wait(&rt->evq);
	pthread_mutex_lock(&rt->lock);
	destroy_locked(rt, r);
	pthread_mutex_unlock(&rt->lock);
	return 0;
}

void lm__region_free_all(struct lm_runtime *rt)
{
	/* As in lm_region_destroy: holes recorded before anything is unmapped. */
	if (getpid() == rt->ufd_pid && rt->nthreads)
		lm__epoch_wait(&rt->evq);
	pthread_mutex_lock(&rt->lock);
	for (;;) {
		struct lm_region *victim = rt->regions;
		while (victim && victim->parent)
			victim = victim->next;
		if (!victim)
			break;
		destroy_locked(rt, victim);
	}
	pthread_mutex_unlock(&rt->lock);
}

void *lm_region_addr(const struct lm_region *r)
{
	return r ? (void *)r->start : NULL;
}

size_t lm_region_length(const struct lm_region *r)
{
	return r ? r->len : 0;
}

int lm__region_advice_at(struct lm_region *r, uint64_t pgno)
{
	/* Newest first: later advice on the same range overrides earlier. */
	unsigned next = atomic_load_explicit(&r->adv_next, memory_order_relaxed);
	for (unsigned k = 1; k <= LM__ADV_SLOTS; k++) {
		unsigned i = (next - k) % LM__ADV_SLOTS;
		uint64_t first = atomic_load_explicit(&r->adv[i].first, memory_order_relaxed);
		uint64_t last = atomic_load_explicit(&r->adv[i].last, memory_order_relaxed);
		if (first <= pgno && pgno <= last)
			return atomic_load_explicit(&r->adv[i].advice, memory_order_relaxed);
	}
	return atomic_load_explicit(&r->advice, memory_order_relaxed);
}

static void set_pattern(struct lm_region *r, uint64_t first, uint64_t last, int advice)
{
	if (first == 0 && last == r->npages - 1) {
		for (int i = 0; i < LM__ADV_SLOTS; i++) {
			atomic_store(&r->adv[i].first, 1);
			atomic_store(&r->adv[i].last, 0);
		}
		atomic_store(&r->advice, advice);
		return;
	}
	/* A few ranges are remembered; the oldest is forgotten first. */
	unsigned i = atomic_fetch_add(&r->adv_next, 1) % LM__ADV_SLOTS;
	atomic_store(&r->adv[i].last, 0);
	atomic_store(&r->adv[i].first, 1);
	atomic_store(&r->adv[i].advice, advice);
	atomic_store(&r->adv[i].first, first);
	atomic_store(&r->adv[i].last, last);
}

struct forget_ctx {
	struct lm_region *r;
	uint64_t dropped;
};

static int forget_one(lm__pte *e, uint64_t pgno, void *arg)
{
	struct forget_ctx *c = arg;
	c->dropped += (uint64_t)lm__pte_forget(c->r, e, pgno);
	return 0;
}

/*
 * The application dropped (madvise) or unmapped [start, end) of r: the
 * pages' contents are the source's again.  Idempotent.
 */
void lm__region_forget(struct lm_region *r, uintptr_t start, uintptr_t end, bool dropped)
{
	if (start < r->start)
		start = r->start;
	if (end > r->start + r->len)
		end = r->start + r->len;
	if (start >= end)
		return;
	uint64_t first = (start - r->start) >> r->rt->page_shift;
	uint64_t last = (end - 1 - r->start) >> r->rt->page_shift;
	int idx = lm__read_lock(r->rt);
	struct forget_ctx c = { r, 0 };
	lm__pt_walk(&r->pt, first, last, forget_one, &c);
	lm__read_unlock(r->rt, idx);
	if (dropped)
		LM__STAT_ADD(r->rt, dontneed_pages, c.dropped);
}

/*
 * The application unmapped [start, end): every region's pages there are
 * gone, and the range leaves the table, so nothing there is taken for a
 * region any more.  Called by the event handler, outside read sections.
 */
void lm__region_unmapped(struct lm_runtime *rt, uintptr_t start, uintptr_t end)
{
	pthread_mutex_lock(&rt->lock);
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_relaxed);
	bool any = false;
	for (size_t i = 0; t && i < t->n; i++) {
		const struct lm__extent *e = &t->e[i];
		if (e->start < end && start < e->end) {
			lm__region_forget(e->r, e->start > start ? e->start : start,
					  e->end < end ? e->end : end, false);
			any = true;
		}
	}
	if (any)
		table_rebuild_must(rt, NULL, start, end, NULL);
	pthread_mutex_unlock(&rt->lock);
}

struct move_ctx {
	struct lm_region *to, *from;
	uint64_t first;
};

/*
 * Hands one page's state, and its swap slot, to the alias region.  A page
 * held meanwhile is waited for: one the evictor claimed after
 * lm__wait_settled has not moved out yet (that needs ev_lock, which the
 * caller holds), and the kernel has just moved it to the alias, so the
 * evictor gives it back when it cannot take the lock; a fill that claimed
 * it after the wait fails its install at the old address and puts it
 * back (a swapped page keeps its slot), or installed before the move and
 * settles it resident.
 */
static int move_state(lm__pte *e, uint64_t pgno, void *arg)
{
	struct move_ctx *c = arg;
	for (;;) {
		unsigned s = LM_PTE_STATE(atomic_load(e));
		if (s == LM_PS_MISSING)
			return 0;
		if (s == LM_PS_FILLING || s == LM_PS_EVICTING) {
			sched_yield();
			continue;
		}
		/* No destination entry (out of memory): the page is lost to the runtime, as if unmapped. */
		lm__pte *d = lm__pt_get(&c->to->pt, pgno - c->first, true);
		if (lm__pte_move(c->from, e, c->to, d) != -EBUSY)
			return 0;
	}
}

/*
 * mremap moved [from, from + len) to `to`.  A whole region simply moves
 * (its page table is indexed by page number, not address).  A part moved
 * away becomes an internal alias region over the same source, so faults
 * at its new address still get the right contents; it is destroyed (and
 * unregistered) with the region it came from.
 */
int lm__region_remap(struct lm_runtime *rt, uintptr_t from, uintptr_t to, size_t len)
{
	pthread_mutex_lock(&rt->lock);
	int idx = lm__read_lock(rt);
	struct lm_region *r = lm__region_find(rt, from);
	lm__read_unlock(rt, idx);
	int rc = 0;
	if (!r)
		goto out;
	if (from == r->start && len >= r->len) {
		/*
		 * Readers may hold r while its start changes; a lookup racing
		 * the move can miss it, and that fault is simply replayed.
		 */
		struct lm__extent ext = { to, to + r->len, r };
		r->start = to;
		table_rebuild_must(rt, r, 0, 0, &ext);
		goto out;
	}
	size_t part = r->start + r->len - from < len ? r->start + r->len - from : len;
	/*
	 * Every alias hangs off the region the application created, even
	 * one split from an alias: the root's list is what destroy frees and
	 * what writeback walks (src_shift is absolute, relative to the root's
	 * source).  Nested lists went unflushed (found by review).
	 */
	struct lm_region *root = r;
	while (root->parent)
		root = root->parent;
	/* A snapshot covers the region's pages where they were: a part moved away breaks it. */
	lm__snap_break_all(root, -EBUSY);
	struct lm_region *a = region_alloc(rt, part);
	struct lm_region **al = realloc(root->aliases, (root->naliases + 1) * sizeof(*al));
	if (!a || !al) {
		free(a);
		if (al)
			root->aliases = al;
		rc = -ENOMEM;
		goto out;
	}
	root->aliases = al;
	a->parent = root;
	a->start = to;
	a->kind = r->kind;
	a->buf = r->buf;
	a->buflen = r->buflen;
	a->fd = r->fd;
	a->image = r->image;
	a->shared = r->shared;
	a->foff = r->foff;
	atomic_init(&a->fsize, atomic_load(&r->fsize));
	a->src_shift = r->src_shift + ((from - r->start) >> rt->page_shift);
	root->aliases[root->naliases++] = a;
	/*
	 * The moved pages keep their contents, so they keep their states.  A
	 * page whose fill woke the application (which then called mremap) may
	 * not be settled yet: its owner settles it right after the install.
	 */
	struct move_ctx mc = { a, r, (from - r->start) >> rt->page_shift };
	lm__wait_settled(r, mc.first, part >> rt->page_shift);
	lm__pt_walk(&r->pt, mc.first, mc.first + (part >> rt->page_shift) - 1, move_state, &mc);
	lm__region_forget(r, from, from + part, false);
	struct lm__extent ext = { to, to + part, a };
	table_rebuild_must(rt, NULL, from, from + part, &ext);
	list_add(rt, a);
	pthread_mutex_unlock(&rt->lock);
	return 0;
out:
	pthread_mutex_unlock(&rt->lock);
	return rc;
}

static int queue_prefetch(struct lm_runtime *rt, struct lm_region *r, uint64_t first,
			  uint64_t count)
{
	struct lm__prefetch *p = malloc(sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->r = r;
	p->id = r->id;
	p->first = first;
	p->count = count;
	p->next = NULL;
	pthread_mutex_lock(&rt->pf_lock);
	if (!rt->pf_started) {
		int rc = lm__filler_init(&rt->pf_filler, rt, rt->opt.io == LM_IO_URING);
		if (rc == 0)
			rc = -pthread_create(&rt->pf_thread, NULL, lm__prefetch_main, rt);
		if (rc < 0) {
			lm__filler_fini(&rt->pf_filler);
			pthread_mutex_unlock(&rt->pf_lock);
			free(p);
			return rc;
		}
		rt->pf_started = true;
	}
	*rt->pf_tail = p;
	rt->pf_tail = &p->next;
	pthread_cond_signal(&rt->pf_cond);
	pthread_mutex_unlock(&rt->pf_lock);
	return 0;
}

/*
 * Drops [start, end) of r, its live extents only: whatever the application
 * mapped where it unmapped part of the region is not ours to discard.  The
 * extents are copied out first: madvise waits for a handler to read its
 * event, and a handler may be waiting for this thread's read section.
 */
static int dontneed(struct lm_region *r, uintptr_t start, uintptr_t end)
{
	struct lm_runtime *rt = r->rt;
	size_t n;
	int idx = lm__read_lock(rt);
	struct lm__extent *ext = extents_of(rt, r, start, end, &n);
	lm__read_unlock(rt, idx);
	int rc = 0;
	for (size_t i = 0; i < n; i++)
		if (madvise((void *)ext[i].start, ext[i].end - ext[i].start, MADV_DONTNEED) < 0 && !rc)
			rc = -errno;
	free(ext);
	idx = lm__read_lock(rt);
	lm__region_forget(r, start, end, true);
	lm__read_unlock(rt, idx);
	return rc;
}

static int populate(struct lm_region *r, uint64_t first, uint64_t count)
{
	struct lm_runtime *rt = r->rt;
	struct lm__filler f;
	int rc = lm__filler_init(&f, rt, false);
	if (rc < 0)
		return rc;
	long n;
	for (;;) {
		int idx = lm__read_lock(rt);
		n = lm__fill_range(&f, r, first, count);
		/* "Resident when it returns" includes pages other threads were filling. */
		if (n != -EAGAIN)
			lm__wait_settled(r, first, count);
		lm__read_unlock(rt, idx);
		if (n != -EAGAIN)
			break;
		/* The address space is changing: retry once the event is applied, outside. */
		sched_yield();
	}
	lm__filler_fini(&f);
	return n < 0 ? (int)n : 0;
}

int lm_region_advise(struct lm_region *r, size_t offset, size_t length, int advice)
{
	LM__KEEP_ERRNO;
	if (!r || r->parent || !length)
		return -EINVAL;
	struct lm_runtime *rt = r->rt;
	size_t ps = (size_t)rt->page_size;
	if ((offset & (ps - 1)) || offset >= r->len || length > r->len - offset)
		return -EINVAL;
	uint64_t first = offset >> rt->page_shift;
	uint64_t count = (length + ps - 1) >> rt->page_shift;
	switch (advice) {
	case LM_ADV_NORMAL:
	case LM_ADV_SEQUENTIAL:
	case LM_ADV_RANDOM:
		set_pattern(r, first, first + count - 1, advice);
		return 0;
	case LM_ADV_WILLNEED:
		return queue_prefetch(rt, r, first, count);
	case LM_ADV_POPULATE:
		return populate(r, first, count);
	case LM_ADV_DONTNEED:
		/* A shared region's writes are the file's: written back before they are dropped. */
		if (r->shared && getpid() == rt->pid) {
			int rc = lm__writeback(r, first, count);
			if (rc < 0)
				return rc;
		}
		/* What snapshots still need of the pages is preserved before they go. */
		lm__snap_before_drop(r, first, count);
		return dontneed(r, r->start + offset, r->start + offset + (count << rt->page_shift));
	}
	return -EINVAL;
}
