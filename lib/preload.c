/* SPDX-License-Identifier: MIT */
/* The preload library: an unmodified program's heap and large anonymous mappings on lazy memory. */
#include "internal.h"

#include <jemalloc/jemalloc.h>

#include <fcntl.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * LD_PRELOAD=liblazymem-preload.so (what `lazymem run` sets up) puts a
 * program's memory in the regions of one runtime, opened before main:
 *
 * - malloc and friends are jemalloc's (this library needs libjemalloc, so
 *   the dynamic linker puts it ahead of libc), and every automatic arena
 *   takes its memory through extent hooks that hand out lazy regions.
 *   glibc's malloc is never called, so its internal mmaps of large chunks,
 *   which no interposition sees, do not happen.  A program linked against
 *   the same shared libjemalloc (Debian's redis-server) gets the same.
 * - mmap of private anonymous read-write memory of at least the threshold
 *   gets a lazy region; munmap, mremap, madvise on it are followed.
 *
 * The runtime's own structures and its threads' allocations come from an
 * arena of their own whose memory is never lazy (lib/alloc.c says why).
 *
 * Where a runtime cannot be had (no userfaultfd, a seccomp filter), one
 * line goes to stderr and the program runs on plain memory: never fails to
 * start because of us.
 */

/* jemalloc: no arena for huge allocations, whose hooks we could not set before it exists. */
__attribute__((visibility("default"))) const char *malloc_conf = "oversize_threshold:0";

static struct lm_runtime *rt;
static _Atomic bool ready;
static size_t page_size;
static size_t threshold = 256 << 10;
static extent_hooks_t *default_hooks;

/* ---- raw syscalls: what we forward must not come back to us ------------ */

static void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	return r == -1 ? MAP_FAILED : (void *)r;
}

static int sys_munmap(void *addr, size_t len)
{
	return (int)syscall(SYS_munmap, addr, len);
}

static int sys_madvise(void *addr, size_t len, int advice)
{
	return (int)syscall(SYS_madvise, addr, len, advice);
}

/* The runtime's own allocator (below): its threads' memory, never lazy. */
static inline bool own_has(const void *p);
static void *own_malloc(size_t n);
static void *own_calloc(size_t n);
static void *own_realloc(void *p, size_t n);
static void own_free_block(void *p);
static size_t own_size(const void *p);

/* ---- the application's malloc: jemalloc's ------------------------------ */

/*
 * A preloaded library's dependencies come after the program's in symbol
 * lookup, so libjemalloc's malloc would lose to libc's: the allocation
 * functions are defined here, ahead of both, on jemalloc's own API.
 * glibc calls these too, for what it allocates internally.
 */
#define EXPORT __attribute__((visibility("default")))
EXPORT void *pvalloc(size_t n);	/* glibc declares it only for some feature macros */

/*
 * Each thread's arena gets the lazy hooks at the thread's first
 * allocation (hook_arena, below), not every arena at start: setting an
 * arena's hooks creates it, and creating jemalloc's 4 x CPUs arenas up
 * front, each with its metadata faulted in, cost every program 20 ms.
 */
static __thread bool thread_hooked __attribute__((tls_model("initial-exec")));
static _Atomic bool hooks_ready;
static void hook_arena(void);
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static inline void hooked(void)
{
	if (__builtin_expect(!thread_hooked, 0))
		hook_arena();
}

/* A thread the runtime started allocates from its own allocator: see "the runtime's own memory". */
#define runtime_thread() __builtin_expect(lm__runtime_thread, 0)

static void *own_or_enomem(void *p)
{
	if (!p)
		errno = ENOMEM;
	return p;
}

EXPORT void *malloc(size_t n)
{
	if (runtime_thread())
		return own_or_enomem(own_malloc(n));
	hooked();
	void *p = mallocx(n ? n : 1, 0);
	if (!p)
		errno = ENOMEM;
	return p;
}

EXPORT void free(void *p)
{
	if (own_has(p))
		own_free_block(p);
	else if (p)
		dallocx(p, 0);
}

EXPORT void *calloc(size_t n, size_t size)
{
	if (size && n > SIZE_MAX / size) {
		errno = ENOMEM;
		return NULL;
	}
	size_t total = n * size;
	if (runtime_thread())
		return own_or_enomem(own_calloc(total));
	hooked();
	void *p = mallocx(total ? total : 1, MALLOCX_ZERO);
	if (!p)
		errno = ENOMEM;
	return p;
}

EXPORT void *realloc(void *p, size_t n)
{
	if (!p)
		return malloc(n);
	if (own_has(p)) {
		if (!n) {
			own_free_block(p);
			return NULL;
		}
		return own_or_enomem(own_realloc(p, n));
	}
	/* As glibc's: realloc(p, 0) frees p. */
	if (!n) {
		dallocx(p, 0);
		return NULL;
	}
	hooked();
	void *q = rallocx(p, n, 0);
	if (!q)
		errno = ENOMEM;
	return q;
}

static void *aligned(size_t align, size_t n)
{
	/* Blocks are 16-byte aligned; a runtime thread's larger alignments come from jemalloc. */
	if (runtime_thread() && align <= 16)
		return own_or_enomem(own_malloc(n));
	hooked();
	void *p = mallocx(n ? n : 1, MALLOCX_ALIGN(align));
	if (!p)
		errno = ENOMEM;
	return p;
}

static bool pow2(size_t a)
{
	return a && !(a & (a - 1));
}

EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
	if (!pow2(align) || align % sizeof(void *))
		return EINVAL;
	int saved = errno;
	void *p = aligned(align, n);
	errno = saved;
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}

EXPORT void *aligned_alloc(size_t align, size_t n)
{
	if (!pow2(align)) {
		errno = EINVAL;
		return NULL;
	}
	return aligned(align, n);
}

/* memalign rounds a bad alignment up to a power of two, as glibc's does. */
EXPORT void *memalign(size_t align, size_t n)
{
	size_t a = sizeof(void *);
	while (a < align && a <= SIZE_MAX / 2)
		a <<= 1;
	return aligned(a, n);
}

EXPORT void *valloc(size_t n)
{
	return aligned((size_t)sysconf(_SC_PAGESIZE), n);
}

EXPORT void *pvalloc(size_t n)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	if (n > SIZE_MAX - ps) {
		errno = ENOMEM;
		return NULL;
	}
	return aligned(ps, n ? (n + ps - 1) & ~(ps - 1) : ps);
}

EXPORT size_t malloc_usable_size(void *p)
{
	if (own_has(p))
		return own_size(p);
	return p ? sallocx(p, 0) : 0;
}

/* ---- the runtime's own memory ------------------------------------------ */

/*
 * The runtime's structures live in a small allocator of their own over
 * plain memory, never in jemalloc.  Its arenas are lazy memory now, and
 * its thread caches and metadata come from them: a handler thread that
 * called malloc could fault on a page only it can fill, or wait for a
 * jemalloc lock held by the thread whose fault it is serving.  So the
 * threads the runtime starts are marked (lm__runtime_thread) and whatever
 * they allocate, through lm__malloc or through malloc itself (hiredis,
 * libc's own calls), comes from here; they never even get a thread cache.
 *
 * All of it is carved from one window of address space reserved up front
 * (never lazy: plain anonymous memory, without reservation), so that free
 * and realloc tell its blocks from jemalloc's by address alone.  Size
 * classes are powers of two: up to 64 KiB carved from 1 MiB chunks, above
 * that blocks of their own; both kept on free lists by class (a large
 * block gives its memory back when freed, its first page aside).
 */
#define SMALL_MIN_SHIFT 4
#define SMALL_MAX_SHIFT 16
#define BIG_MAX_SHIFT 32
#define CHUNK_BYTES (1u << 20)
#define HEADER 16	/* keeps blocks 16-byte aligned, like malloc's */

struct block {
	struct block *next;
};
static pthread_mutex_t own_lock = PTHREAD_MUTEX_INITIALIZER;
static struct block *own_free[BIG_MAX_SHIFT + 1];
static char *own_bump, *own_end;	/* the current chunk */
static _Atomic uintptr_t own_lo;	/* the window: [own_lo, own_lo + own_len) */
static size_t own_len;
static char *own_top;			/* the window's unused part starts here */

/* Whether p is one of ours: one compare, for every free of the program's. */
static inline bool own_has(const void *p)
{
	uintptr_t lo = atomic_load_explicit(&own_lo, memory_order_relaxed);
	return lo && (uintptr_t)p - lo < own_len;
}

/* bytes (a multiple of 64 KiB) from the window, reserved at the first call; own_lock held. */
static void *own_take(size_t bytes)
{
	if (!own_lo) {
		/* As much as the address-space limit allows: 64 GiB down to 1 GiB. */
		for (size_t len = (size_t)64 << 30; len >= ((size_t)1 << 30) && !own_lo; len /= 4) {
			void *w = sys_mmap(NULL, len, PROT_READ | PROT_WRITE,
					   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
			if (w == MAP_FAILED)
				continue;
			own_len = len;
			own_top = w;
			atomic_store_explicit(&own_lo, (uintptr_t)w, memory_order_release);
		}
		if (!own_lo)
			return NULL;
	}
	if ((size_t)((char *)own_lo + own_len - own_top) < bytes)
		return NULL;
	void *p = own_top;
	own_top += bytes;
	return p;
}

static void *own_carve(size_t bytes)
{
	if ((size_t)(own_end - own_bump) < bytes) {
		char *c = own_take(CHUNK_BYTES);
		if (!c)
			return NULL;
		/* The rest of the old chunk is lost: at most one block's worth. */
		own_bump = c;
		own_end = own_bump + CHUNK_BYTES;
	}
	void *p = own_bump;
	own_bump += bytes;
	return p;
}

static void *own_malloc(size_t n)
{
	if (n > ((size_t)1 << BIG_MAX_SHIFT) - HEADER)
		return NULL;
	size_t need = n + HEADER;
	unsigned shift = SMALL_MIN_SHIFT;
	while (((size_t)1 << shift) < need)
		shift++;
	pthread_mutex_lock(&own_lock);
	struct block *b = own_free[shift];
	if (b)
		own_free[shift] = b->next;
	else if (shift <= SMALL_MAX_SHIFT)
		b = own_carve((size_t)1 << shift);
	else
		b = own_take((size_t)1 << shift);
	pthread_mutex_unlock(&own_lock);
	if (!b)
		return NULL;
	uint64_t *h = (uint64_t *)b;
	h[0] = shift;
	return (char *)h + HEADER;
}

/* Bytes the block holds. */
static size_t own_size(const void *p)
{
	return ((size_t)1 << *(const uint64_t *)((const char *)p - HEADER)) - HEADER;
}

static void own_free_block(void *p)
{
	uint64_t *h = (uint64_t *)((char *)p - HEADER);
	unsigned shift = (unsigned)h[0];
	if (shift > SMALL_MAX_SHIFT)
		sys_madvise((char *)h + page_size, ((size_t)1 << shift) - page_size, MADV_DONTNEED);
	struct block *b = (struct block *)h;
	pthread_mutex_lock(&own_lock);
	b->next = own_free[shift];
	own_free[shift] = b;
	pthread_mutex_unlock(&own_lock);
}

static void *own_calloc(size_t n)
{
	void *p = own_malloc(n);
	return p ? memset(p, 0, n) : NULL;
}

static void *own_realloc(void *p, size_t n)
{
	if (!p)
		return own_malloc(n);
	size_t have = own_size(p);
	if (n <= have)
		return p;
	void *q = own_malloc(n);
	if (q) {
		memcpy(q, p, have);
		own_free_block(p);
	}
	return q;
}

static const struct lm__allocator own_allocator = {
	.malloc = own_malloc,
	.calloc = own_calloc,
	.realloc = own_realloc,
	.free = own_free_block,
};

/* A fork() child may allocate: the lock must not be held by a thread it does not have. */
static void own_prepare(void)
{
	pthread_mutex_lock(&own_lock);
}

static void own_after(void)
{
	pthread_mutex_unlock(&own_lock);
}

static void own_child(void)
{
	pthread_mutex_init(&own_lock, NULL);
}

/* ---- who is calling ------------------------------------------------------ */

/*
 * mmap calls from this library (the runtime maps its regions) and from
 * jemalloc (the internal arena's memory; the lazy arenas go through the
 * hooks) pass through: the first would recurse, the second must stay
 * plain memory.  Both are known by their return address.
 */
struct text {
	uintptr_t lo, hi;
};
static struct text ours[2];

static int find_object(struct dl_phdr_info *info, size_t size, void *arg)
{
	(void)size;
	struct text *t = arg;
	uintptr_t lo = UINTPTR_MAX, hi = 0;
	bool hit = false;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_LOAD)
			continue;
		uintptr_t s = info->dlpi_addr + ph->p_vaddr, e = s + ph->p_memsz;
		lo = s < lo ? s : lo;
		hi = e > hi ? e : hi;
		hit |= t->lo >= s && t->lo < e;
	}
	if (!hit)
		return 0;
	t->lo = lo;
	t->hi = hi;
	return 1;
}

static void find_text(struct text *t, const void *fn)
{
	t->lo = (uintptr_t)fn;
	if (dl_iterate_phdr(find_object, t) != 1)
		t->lo = t->hi = 0;
}

static bool from_us(const void *ra)
{
	uintptr_t a = (uintptr_t)ra;
	for (size_t i = 0; i < LM__ARRAY_SIZE(ours); i++)
		if (a >= ours[i].lo && a < ours[i].hi)
			return true;
	return false;
}

/* ---- the application's mappings ---------------------------------------- */

/*
 * Lazy regions made for the application's mmap calls, sorted by address.
 * moved: mremap moved it whole, so the runtime knows it as an alias and
 * lm_region_destroy leaves the memory mapped.
 */
struct mapping {
	uintptr_t start, end;
	struct lm_region *r;
	bool moved;
};
static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mapping *maps;
static size_t nmaps, capmaps;

/* Index of the first mapping that ends after addr. */
static size_t map_search(uintptr_t addr)
{
	size_t lo = 0, hi = nmaps;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (maps[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int map_add(uintptr_t start, uintptr_t end, struct lm_region *r)
{
	if (nmaps == capmaps) {
		size_t cap = capmaps ? capmaps * 2 : 64;
		struct mapping *m = lm__realloc(maps, cap * sizeof(*m));
		if (!m)
			return -ENOMEM;
		maps = m;
		capmaps = cap;
	}
	size_t i = map_search(start);
	memmove(&maps[i + 1], &maps[i], (nmaps - i) * sizeof(*maps));
	maps[i] = (struct mapping){ start, end, r, false };
	nmaps++;
	return 0;
}

static void map_del(size_t i)
{
	memmove(&maps[i], &maps[i + 1], (nmaps - i - 1) * sizeof(*maps));
	nmaps--;
}

static bool map_overlaps(uintptr_t start, uintptr_t end)
{
	size_t i = map_search(start);
	return i < nmaps && maps[i].start < end;
}

/*
 * The range [start, end) is no longer the application's lazy memory (it
 * was unmapped or mapped over): regions wholly inside it are destroyed.
 * Called after the kernel removed the range, so that no other thread can
 * map something there that a destroy would then unmap; regions the range
 * only cut keep their other parts, which the runtime follows through its
 * unmap events.  Called with map_lock held.
 */
static void regions_gone(uintptr_t start, uintptr_t end)
{
	size_t i = map_search(start);
	while (i < nmaps && maps[i].start < end) {
		if (maps[i].start >= start && maps[i].end <= end) {
			lm_region_destroy(maps[i].r);
			map_del(i);
		} else {
			i++;
		}
	}
}

static bool wants_lazy(void *addr, size_t len, int prot, int flags, int fd)
{
	const int plain = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
	(void)addr;
	return fd == -1 &&
	       len >= threshold && prot == (PROT_READ | PROT_WRITE) &&
	       (flags & MAP_TYPE) == MAP_PRIVATE && (flags & MAP_ANONYMOUS) &&
	       !(flags & ~plain);
}

__attribute__((visibility("default"))) void *mmap(void *addr, size_t len, int prot, int flags,
						  int fd, off_t off)
{
	const void *ra = __builtin_return_address(0);
	if (!atomic_load_explicit(&ready, memory_order_acquire) || from_us(ra))
		return sys_mmap(addr, len, prot, flags, fd, off);
	if (wants_lazy(addr, len, prot, flags, fd)) {
		struct lm_region *r;
		pthread_mutex_lock(&map_lock);
		if (lm_region_create_zero(rt, len, 0, &r) == 0) {
			uintptr_t s = (uintptr_t)lm_region_addr(r);
			if (map_add(s, s + lm_region_length(r), r) == 0) {
				pthread_mutex_unlock(&map_lock);
				return (void *)s;
			}
			lm_region_destroy(r);
		}
		pthread_mutex_unlock(&map_lock);
		/* No lazy region to be had: plain memory, as the program asked. */
		return sys_mmap(addr, len, prot, flags, fd, off);
	}
	void *p = sys_mmap(addr, len, prot, flags, fd, off);
	if (p != MAP_FAILED && (flags & MAP_FIXED)) {
		pthread_mutex_lock(&map_lock);
		regions_gone((uintptr_t)p, (uintptr_t)p + len);
		pthread_mutex_unlock(&map_lock);
	}
	return p;
}

__attribute__((visibility("default"), alias("mmap"))) void *mmap64(void *addr, size_t len,
								   int prot, int flags,
								   int fd, off_t off);

__attribute__((visibility("default"))) int munmap(void *addr, size_t len)
{
	if (!atomic_load_explicit(&ready, memory_order_acquire) ||
	    from_us(__builtin_return_address(0)))
		return sys_munmap(addr, len);
	uintptr_t s = (uintptr_t)addr, e = s + ((len + page_size - 1) & ~(page_size - 1));
	pthread_mutex_lock(&map_lock);
	size_t i = map_search(s);
	/* The common case: a whole region the runtime can unmap itself. */
	if (i < nmaps && maps[i].start == s && maps[i].end == e && !maps[i].moved &&
	    lm_region_destroy(maps[i].r) == 0) {
		map_del(i);
		pthread_mutex_unlock(&map_lock);
		return 0;
	}
	int rc = sys_munmap(addr, len);
	if (rc == 0 && map_overlaps(s, e))
		regions_gone(s, e);
	pthread_mutex_unlock(&map_lock);
	return rc;
}

__attribute__((visibility("default"))) void *mremap(void *old, size_t old_len, size_t new_len,
						    int flags, ...)
{
	void *new_addr = NULL;
	if (flags & MREMAP_FIXED) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	if (!atomic_load_explicit(&ready, memory_order_acquire) ||
	    from_us(__builtin_return_address(0))) {
		long r = syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
		return r == -1 ? MAP_FAILED : (void *)r;
	}
	/*
	 * The runtime follows the move through its remap event (the region
	 * keeps the pages, and a part grown in place is plain anonymous
	 * memory); here only the bookkeeping of whole regions moves along.
	 */
	uintptr_t s = (uintptr_t)old;
	uintptr_t e = s + ((old_len + page_size - 1) & ~(page_size - 1));
	pthread_mutex_lock(&map_lock);
	long r = syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
	if (r != -1 && map_overlaps(s, e)) {
		size_t i = map_search(s);
		if (maps[i].start == s && maps[i].end == e) {
			struct mapping m = maps[i];
			map_del(i);
			uintptr_t ns = (uintptr_t)r;
			if (ns != s)
				m.moved = true;
			/* A region grown in place still destroys (and unmaps) only its own pages. */
			m.start = ns;
			m.end = ns + ((new_len + page_size - 1) & ~(page_size - 1));
			regions_gone(m.start, m.end);
			if (map_add(m.start, m.end, m.r) < 0)
				lm_region_destroy(m.r);
		} else if (new_len < old_len || (uintptr_t)r != s) {
			regions_gone(s, e);
		}
	}
	pthread_mutex_unlock(&map_lock);
	return r == -1 ? MAP_FAILED : (void *)r;
}

__attribute__((visibility("default"))) int madvise(void *addr, size_t len, int advice)
{
	/*
	 * MADV_FREE lets the kernel drop a page whenever it likes, behind the
	 * runtime's back; on lazy memory it drops it now instead, which the
	 * advice allows, and the runtime hears of it.
	 */
	if (advice == MADV_FREE && atomic_load_explicit(&ready, memory_order_acquire) &&
	    !from_us(__builtin_return_address(0))) {
		uintptr_t s = (uintptr_t)addr;
		pthread_mutex_lock(&map_lock);
		bool lazy = map_overlaps(s, s + len);
		pthread_mutex_unlock(&map_lock);
		if (lazy)
			advice = MADV_DONTNEED;
	}
	return sys_madvise(addr, len, advice);
}

/* ---- jemalloc's extents ------------------------------------------------- */

/*
 * jemalloc calls its hooks with its own locks held, and a region's
 * creation takes the runtime's.  fork() takes them the other way round:
 * the runtime's prepare handler (registered after jemalloc's, so it runs
 * first) takes the runtime's locks, then jemalloc's takes every arena's,
 * and would wait forever for a thread that holds an arena lock and waits
 * in a hook for the runtime's.  So fork() first closes this gate (its
 * prepare handler, registered last, runs before all the others), which
 * waits for the hooks under way to finish; a hook that finds it closed
 * does without the runtime, with plain memory, for as long as the fork
 * takes.
 */
static pthread_rwlock_t hook_gate = PTHREAD_RWLOCK_INITIALIZER;

static void *hook_alloc(extent_hooks_t *h, void *new_addr, size_t size, size_t alignment,
			bool *zero, bool *commit, unsigned arena)
{
	/* Growing an extent in place: the address after it is not ours to give. */
	if (new_addr)
		return NULL;
	if (alignment < page_size)
		alignment = page_size;
	struct lm_region *r;
	if (size <= SIZE_MAX - alignment && pthread_rwlock_tryrdlock(&hook_gate) == 0) {
		int rc = lm_region_create_zero(rt, size + alignment - page_size, 0, &r);
		pthread_rwlock_unlock(&hook_gate);
		if (rc == 0) {
			uintptr_t a = ((uintptr_t)lm_region_addr(r) + alignment - 1) &
				      ~(alignment - 1);
			*zero = true;
			*commit = true;
			return (void *)a;
		}
	}
	/* No lazy region (metadata, address space): plain memory rather than a failed malloc. */
	return default_hooks->alloc(h, new_addr, size, alignment, zero, commit, arena);
}

/* Extents are retained, never unmapped: their pages go back with purges. */
static bool hook_dalloc(extent_hooks_t *h, void *addr, size_t size, bool committed,
			unsigned arena)
{
	(void)h, (void)addr, (void)size, (void)committed, (void)arena;
	return true;
}

static void hook_destroy(extent_hooks_t *h, void *addr, size_t size, bool committed,
			 unsigned arena)
{
	(void)h, (void)addr, (void)size, (void)committed, (void)arena;
}

/* The runtime hears of the dropped pages through its remove event. */
static bool hook_purge(extent_hooks_t *h, void *addr, size_t size, size_t offset,
		       size_t length, unsigned arena)
{
	(void)h, (void)size, (void)arena;
	return sys_madvise((char *)addr + offset, length, MADV_DONTNEED) != 0;
}

static bool hook_split(extent_hooks_t *h, void *addr, size_t size, size_t a, size_t b,
		       bool committed, unsigned arena)
{
	(void)h, (void)addr, (void)size, (void)a, (void)b, (void)committed, (void)arena;
	return false;
}

static bool hook_merge(extent_hooks_t *h, void *a, size_t sa, void *b, size_t sb,
		       bool committed, unsigned arena)
{
	(void)h, (void)a, (void)sa, (void)b, (void)sb, (void)committed, (void)arena;
	return false;
}

static extent_hooks_t lazy_hooks = {
	.alloc = hook_alloc,
	.dalloc = hook_dalloc,
	.destroy = hook_destroy,
	.purge_forced = hook_purge,
	.split = hook_split,
	.merge = hook_merge,
};

/* Arenas whose hooks are set (jemalloc numbers them from 0; past 256, not lazy). */
#define MAX_ARENAS 256
static _Atomic uint64_t arena_hooked[MAX_ARENAS / 64];

/* Gives the calling thread's arena the lazy hooks, once per arena. */
static void hook_arena(void)
{
	if (!atomic_load_explicit(&hooks_ready, memory_order_acquire))
		return;	/* not yet (or never): asked again at the next allocation */
	thread_hooked = true;
	unsigned ind;
	size_t sz = sizeof(ind);
	if (mallctl("thread.arena", &ind, &sz, NULL, 0) || ind >= MAX_ARENAS)
		return;
	uint64_t bit = 1ull << (ind % 64);
	if (atomic_fetch_or(&arena_hooked[ind / 64], bit) & bit)
		return;
	char name[64];
	extent_hooks_t *old = NULL, *mine = &lazy_hooks;
	sz = sizeof(old);
	snprintf(name, sizeof(name), "arena.%u.extent_hooks", ind);
	int rc = mallctl(name, &old, &sz, &mine, sizeof(mine));
	if (rc)
		say("lazymem: cannot set jemalloc's extent hooks of arena %u (%s); its memory is "
		    "not lazy\n", ind, strerror(rc));
}

/*
 * The fork gate, and the mappings' lock, which a child could otherwise
 * inherit held by a thread it does not have.  Lock order: the gate, the
 * mappings, the runtime's locks (taken by its own handler next).
 */
static void gate_prepare(void)
{
	pthread_rwlock_wrlock(&hook_gate);
	pthread_mutex_lock(&map_lock);
}

static void gate_after(void)
{
	pthread_mutex_unlock(&map_lock);
	pthread_rwlock_unlock(&hook_gate);
}

/*
 * In the child the locks are made anew, not unlocked: glibc's rwlock
 * knows its writer by thread id, the child's thread has another one, and
 * an unlock there is taken for a reader's, leaving the gate write-locked
 * for the child's own next fork() (a subshell's subshell hung for ever).
 */
static void gate_child(void)
{
	pthread_mutex_init(&map_lock, NULL);
	pthread_rwlock_init(&hook_gate, NULL);
}

/* ---- start-up ------------------------------------------------------------ */

static bool quiet;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	if (quiet)
		return;
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0)
		(void)!write(2, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* Set once the runtime is open: a failed open says so in one line of our own. */
static bool opened;

static void log_line(int level, const char *msg, void *arg)
{
	(void)arg;
	if (level <= 1 && opened)
		say("lazymem[%d]: %s\n", (int)getpid(), msg);
}

/*
 * LAZYMEM_STATS=FILE (lazymem run --stats): the runtime's counters, as
 * JSON, written to FILE when the program exits normally.
 */
static char *stats_path;

static void write_stats(void)
{
	struct lm_stats st = { .size = sizeof(st) };
	if (!rt || lm_stats_get(rt, &st) < 0)
		return;
	int n = lm_stats_format(&st, LM_FORMAT_JSON, NULL, 0);
	char *buf = n > 0 ? lm__malloc((size_t)n + 2) : NULL;
	if (!buf)
		return;
	lm_stats_format(&st, LM_FORMAT_JSON, buf, (size_t)n + 1);
	buf[n] = '\n';
	int fd = open(stats_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd >= 0) {
		(void)!write(fd, buf, (size_t)n + 1);
		close(fd);
	}
	lm__free(buf);
}

static int env_size(const char *name, size_t *out)
{
	const char *s = getenv(name);
	if (!s || !*s)
		return 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	unsigned shift = 0;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	}
	if (*end || end == s || *s == '-' || (shift && v > (SIZE_MAX >> shift)))
		return -EINVAL;
	*out = (size_t)v << shift;
	return 0;
}

/*
 * --no-inherit: what exec'ed children would inherit from us goes (our
 * entry in LD_PRELOAD and every LAZYMEM_ variable), after the runtime
 * has read what it needs.
 */
static void disinherit(void)
{
	const char *pre = getenv("LD_PRELOAD");
	if (pre) {
		char *keep = lm__malloc(strlen(pre) + 1);
		if (keep) {
			char *copy = lm__strdup(pre), *save = NULL;
			keep[0] = 0;
			for (char *w = copy ? strtok_r(copy, ": ", &save) : NULL; w;
			     w = strtok_r(NULL, ": ", &save)) {
				const char *base = strrchr(w, '/');
				if (!strcmp(base ? base + 1 : w, "liblazymem-preload.so"))
					continue;
				if (keep[0])
					strcat(keep, ":");
				strcat(keep, w);
			}
			if (keep[0])
				setenv("LD_PRELOAD", keep, 1);
			else
				unsetenv("LD_PRELOAD");
			lm__free(copy);
			lm__free(keep);
		}
	}
	for (;;) {
		char name[128];
		bool found = false;
		for (char **e = environ; *e; e++) {
			size_t n = strcspn(*e, "=");
			if (!strncmp(*e, "LAZYMEM_", 8) && n < sizeof(name)) {
				memcpy(name, *e, n);
				name[n] = 0;
				found = true;
				break;
			}
		}
		if (!found)
			break;
		unsetenv(name);
	}
}

__attribute__((constructor)) static void preload_init(void)
{
	const char *q = getenv("LAZYMEM_QUIET");
	quiet = q && *q && strcmp(q, "0");
	page_size = (size_t)sysconf(_SC_PAGESIZE);
	int rc = env_size("LAZYMEM_THRESHOLD", &threshold);
	if (rc < 0) {
		say("lazymem: LAZYMEM_THRESHOLD is not a size; running without lazy memory\n");
		return;
	}
	if (threshold < page_size)
		threshold = page_size;
	/* The runtime must be allocated where it will live: set the allocator first. */
	unsigned n;
	size_t sz = sizeof(n);
	if ((rc = mallctl("arenas.narenas", &n, &sz, NULL, 0))) {
		say("lazymem: jemalloc has no arena count (%s); running without lazy memory\n",
		    strerror(rc));
		return;
	}
	pthread_atfork(own_prepare, own_after, own_child);
	lm__alloc_set(&own_allocator);
	struct lm_options o;
	lm_options_init(&o);
	o.log = log_line;
	/*
	 * Writes tracked asynchronously unless LAZYMEM_DIRTY says otherwise:
	 * a program's heap is written all the time, and a write-protect
	 * fault per first write cost python under a budget 40% of its time.
	 * Every region here is zero-filled and private, where the check
	 * async tracking needs before dropping a page is exact (zeros, or
	 * the swap slot it came from).  A kernel without WP_ASYNC gets sync.
	 */
	const char *dt = getenv("LAZYMEM_DIRTY");
	if (!dt || !*dt)
		o.dirty_tracking = LM_DIRTY_ASYNC;
	/*
	 * No streams (LAZYMEM_STREAM=1 turns them on): a program's heap is
	 * handed out by its allocator and written where it is needed, and
	 * megabytes filled ahead of a scan would be resident memory the
	 * program never asked for, counted against its cgroup before a
	 * budget can hold it.
	 */
	o.flags |= LM_OPT_NO_STREAM;
	rc = lm_runtime_open(&o, &rt);
	if (rc == -EOPNOTSUPP && o.dirty_tracking == LM_DIRTY_ASYNC) {
		o.dirty_tracking = LM_DIRTY_SYNC;
		rc = lm_runtime_open(&o, &rt);
	}
	opened = rc == 0;
	if (rc < 0) {
		lm__alloc_set(NULL);
		say("lazymem: no lazy memory for this process (%s); it runs as usual\n",
		    lm_strerror(rc));
		return;
	}
	/* After the runtime's own: so that its prepare handler runs before the runtime's. */
	pthread_atfork(gate_prepare, gate_after, gate_child);
	find_text(&ours[0], (const void *)preload_init);
	find_text(&ours[1], (const void *)mallocx);
	/* The arenas' memory is lazy from now on: this thread's now, the others' as they are used. */
	sz = sizeof(default_hooks);
	if ((rc = -mallctl("arena.0.extent_hooks", &default_hooks, &sz, NULL, 0)) < 0) {
		say("lazymem: cannot read jemalloc's extent hooks (%s); the heap is not lazy\n",
		    lm_strerror(rc));
	} else {
		atomic_store_explicit(&hooks_ready, true, memory_order_release);
		hook_arena();
	}
	const char *sp = getenv("LAZYMEM_STATS");
	if (sp && *sp && (stats_path = lm__strdup(sp)))
		atexit(write_stats);
	if (getenv("LAZYMEM_NO_INHERIT"))
		disinherit();
	atomic_store_explicit(&ready, true, memory_order_release);
}
