/* SPDX-License-Identifier: MIT */
/*
 * lazymem: demand-paged memory regions for Linux, filled in user space.
 *
 * Every function returns 0 (or a non-negative value) on success and a
 * negative errno value on failure; none of them reads or writes errno.
 * Accessors that cannot fail (lm_region_addr, lm_region_length) are the
 * only exceptions and say so.
 */
#ifndef LAZYMEM_H
#define LAZYMEM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LM_API __attribute__((visibility("default")))
#else
#define LM_API
#endif

#define LM_VERSION_MAJOR 0
#define LM_VERSION_MINOR 3
#define LM_VERSION_PATCH 0

struct lm_runtime;
struct lm_region;
struct lm_snapshot;

/*
 * How a fault is resolved.
 *
 * LM_MODE_THREAD: handler threads read fault messages from the
 *   userfaultfd and fill pages.  Syscalls that write into a page that has
 *   not been filled yet (read(fd, region, n)) simply wait for the fill,
 *   and nothing owns a signal.  The default.  A fork() child resolves
 *   its own faults by signal: see lazymem(7).
 * LM_MODE_SIGNAL: the faulting thread gets SIGBUS and fills the page
 *   itself, in the runtime's signal handler: no thread hand-off, several
 *   times faster per fault.  Syscalls that write into an unfilled page
 *   fail with EFAULT instead of waiting (touch or lm_region_advise
 *   LM_ADV_POPULATE the range first), and the runtime owns SIGBUS,
 *   chaining to the application's handler for other addresses.
 */
enum lm_mode {
	LM_MODE_DEFAULT = 0,
	LM_MODE_THREAD = 1,
	LM_MODE_SIGNAL = 2,
};

/* Where file data is read from: io_uring with registered buffers, or pread. */
enum lm_io {
	LM_IO_DEFAULT = 0,
	LM_IO_URING = 1,
	LM_IO_PREAD = 2,
};

/*
 * Which resident pages the evictor takes first (see lazymem(7)).
 *
 * LM_EVICT_CLOCK: a clock hand sweeps the pages; a page written or
 *   touched again after an eviction (a refault) since the hand last passed
 *   gets a second chance, and clean pages go before dirty ones, which
 *   cost a write.  The default.
 * LM_EVICT_FIFO: the hand takes every page it meets, in address order:
 *   no access information at all (what UMap does), for comparison.
 */
enum lm_evict {
	LM_EVICT_DEFAULT = 0,
	LM_EVICT_CLOCK = 1,
	LM_EVICT_FIFO = 2,
};

/*
 * How writes to resident pages are noticed, once something needs to know
 * (a budget, a shared file region).
 *
 * LM_DIRTY_SYNC: pages are installed write-protected and the first write
 *   to each is a write-protect fault the runtime handles.  The default.
 * LM_DIRTY_ASYNC: the kernel lifts the protection itself on the first
 *   write (UFFD_FEATURE_WP_ASYNC) and the runtime finds written pages
 *   with PAGEMAP_SCAN before it evicts or flushes: no fault reaches user
 *   space, but a page the scan calls clean is checked against its source
 *   after it leaves (zero and memory sources) or written out anyway (file
 *   sources, swap cache).  See lazymem(7) for the trade-off.
 */
enum lm_dirty {
	LM_DIRTY_DEFAULT = 0,
	LM_DIRTY_SYNC = 1,
	LM_DIRTY_ASYNC = 2,
};

/*
 * Runtime options.  Call lm_options_init() first: it sets the size field
 * and every default; then change what you need.  Environment variables
 * (LAZYMEM_MODE, LAZYMEM_THREADS, LAZYMEM_READAHEAD, LAZYMEM_IO,
 * LAZYMEM_UFFD, LAZYMEM_BUDGET, LAZYMEM_SWAP_DIR, LAZYMEM_SWAP_MAX,
 * LAZYMEM_EVICT, LAZYMEM_DIRTY, LAZYMEM_DEBUG) override the defaults but not values the
 * caller set explicitly; see lazymem(7).
 */
struct lm_options {
	uint32_t size;		/* sizeof(struct lm_options), set by lm_options_init */
	uint32_t flags;		/* LM_OPT_* */
	int mode;		/* enum lm_mode */
	int io;			/* enum lm_io */
	int handler_threads;	/* 0: one per online CPU, at most 4 */
	int readahead_max;	/* pages per fill at most; 0: default (64) */
	int uffd_source;	/* enum lm_uffd_origin to force one; 0: try all in order */
	int evict_policy;	/* enum lm_evict */
	void (*log)(int level, const char *msg, void *arg);	/* NULL: silent */
	void *log_arg;
	/*
	 * Memory budget in bytes: resident pages of the runtime's regions
	 * past it are evicted (clean ones dropped, dirty ones written to the
	 * swap file or, for shared file regions, to their file).  0: none.
	 * lm_runtime_set_budget changes it at any time.
	 */
	uint64_t budget;
	uint64_t swap_max;	/* bytes of swap file at most; 0: default (64 GiB) */
	const char *swap_dir;	/* directory of the swap file; NULL: $TMPDIR, else /tmp */
	int dirty_tracking;	/* enum lm_dirty */
	uint32_t reserved32;
	/*
	 * lazymemd's socket, which the runtime reports to (see lazymemd(8));
	 * NULL: $LAZYMEM_SOCKET, else /run/lazymem/lazymemd.sock for root and
	 * $XDG_RUNTIME_DIR/lazymem/lazymemd.sock for other users.
	 */
	const char *daemon_socket;
	/*
	 * Size of the runtime's pages; 0: the system's base page size.  A
	 * huge page size the kernel offers (2 MiB on x86-64, see
	 * /sys/kernel/mm/hugepages) backs every region of the runtime with
	 * hugetlb pages, reserved when the region is created (-ENOMEM when
	 * the pool is short: see /proc/sys/vm/nr_hugepages): one fault fills
	 * a whole huge page and a snapshot protects one entry per huge page.
	 * Its pages are the unit of everything: lengths round up to them,
	 * file offsets are multiples of them, advice covers whole pages.
	 * Such a runtime takes no memory budget and no LM_DIRTY_ASYNC
	 * (-EOPNOTSUPP), no LM_REGION_SHARED regions, and only images made
	 * with its own page size.  Sizes above 32 MiB (1 GiB pages) are
	 * refused.  A fork() child may get SIGBUS on an inherited page, as
	 * with any private hugetlb memory (see lazymem(7)).  Also
	 * $LAZYMEM_PAGE_SIZE.
	 */
	uint64_t page_size;
	/*
	 * The least budget lazymemd's pressure policy may give this runtime
	 * (see lazymemd(8)); 0: the daemon's default floor.  Budgets the
	 * application or an operator set are not bounded by it.  Also
	 * $LAZYMEM_BUDGET_MIN, and `lazymem budget PID --min SIZE` at run time.
	 */
	uint64_t budget_min;
	/*
	 * Where evicted pages go; NULL: the swap file in swap_dir.  A Redis
	 * Cluster (far memory): "redis://HOST:PORT[,HOST:PORT...][/NAME]"
	 * with options "?wait=N" (a page leaves memory only once N replicas
	 * have it too), "timeout=MS" (per request, default 1000) and
	 * "retry=MS" (how long a request keeps trying through a failover,
	 * default 10000).  Every master must have maxmemory-policy
	 * noeviction (-EINVAL otherwise).  Thread mode only (-EOPNOTSUPP in
	 * signal mode).  The budget's setup fails with -EHOSTUNREACH when no
	 * node answers.  Also $LAZYMEM_SWAP; see lazymem(7).
	 */
	const char *swap_url;
};

/* lm_options.flags: ignore LAZYMEM_* environment variables. */
#define LM_OPT_NO_ENV (1u << 0)
/* lm_options.flags: do not report to lazymemd (LAZYMEM_SOCKET=off does the same). */
#define LM_OPT_NO_REPORT (1u << 1)
/*
 * lm_options.flags: do not pin the handler threads, one to each CPU
 * (thread mode pins them when there is one per CPU the process may run
 * on; LAZYMEM_PIN=0 does the same).
 */
#define LM_OPT_NO_PIN (1u << 2)
/*
 * lm_options.flags: pinned handler threads never hold their CPU while
 * faults keep coming elsewhere (LAZYMEM_SPIN=0 does the same); see
 * lm_runtime_open(3).
 */
#define LM_OPT_NO_SPIN (1u << 3)
/*
 * lm_options.flags: a sequential scan gets one readahead window filled
 * ahead of it, never a stream of them (thread mode fills up to two 2 MiB
 * units ahead of a scan by default; LAZYMEM_STREAM=0 does the same, =1
 * turns streams back on).  The preload library sets it: see lazymem(7).
 */
#define LM_OPT_NO_STREAM (1u << 4)

/* Sources a region's pages are filled from. */
enum lm_source_kind {
	LM_SOURCE_ZERO = 0,
	LM_SOURCE_MEMORY = 1,
	LM_SOURCE_FILE = 2,
	LM_SOURCE_IMAGE = 3,
};

/*
 * lm_region_create_file flags.  LM_REGION_SHARED: like MAP_SHARED, writes
 * reach the file: dirty pages are written back when evicted, by
 * lm_region_flush and by lm_region_destroy.  fd must be open for reading
 * and writing.
 */
#define LM_REGION_SHARED (1u << 0)

/* Advice on a range of a region, like madvise(2). */
enum lm_advice {
	LM_ADV_NORMAL = 0,	/* readahead heuristic decides */
	LM_ADV_SEQUENTIAL = 1,	/* full readahead window from the first fault */
	LM_ADV_RANDOM = 2,	/* one page per fault */
	LM_ADV_WILLNEED = 3,	/* prefetch the range in the background */
	LM_ADV_DONTNEED = 4,	/* drop the pages; the next touch refills from the source */
	LM_ADV_POPULATE = 5,	/* fill the range now; returns when it is resident */
};

/* How the runtime obtained its userfaultfd (lm_stats.uffd_origin). */
enum lm_uffd_origin {
	LM_UFFD_NONE = 0,
	LM_UFFD_DEV = 1,		/* /dev/userfaultfd: kernel faults handled */
	LM_UFFD_SYSCALL = 2,		/* userfaultfd(2): kernel faults handled */
	LM_UFFD_SYSCALL_USER = 3,	/* userfaultfd(UFFD_USER_MODE_ONLY) */
};

/* Why kernel-mode faults are unavailable (lm_stats.uffd_limits bits). */
#define LM_LIMIT_DEV_DENIED	(1u << 0)	/* /dev/userfaultfd not accessible */
#define LM_LIMIT_NO_PTRACE	(1u << 1)	/* no CAP_SYS_PTRACE in the effective set */
#define LM_LIMIT_SYSCTL		(1u << 2)	/* vm.unprivileged_userfaultfd = 0 */
#define LM_LIMIT_FORCED		(1u << 3)	/* user-mode-only was asked for (LAZYMEM_UFFD=user) */

/*
 * Statistics, defined once.  X(name, kind, unit, help): kind is COUNTER
 * (only grows) or GAUGE (goes up and down).  struct lm_stats, the text and
 * JSON renderings (lm_stats_format) and every other output are generated
 * from this list, so they cannot disagree.  Append only: the order is ABI.
 */
#define LM_STATS_LIST(X) \
	X(faults_missing,	COUNTER, "faults",  "Missing-page faults received") \
	X(faults_wp,		COUNTER, "faults",  "Write-protect faults received") \
	X(faults_signal,	COUNTER, "faults",  "Faults resolved in the faulting thread (signal mode)") \
	X(faults_thread,	COUNTER, "faults",  "Faults resolved by a handler thread") \
	X(faults_dup,		COUNTER, "faults",  "Faults on a page another fill had already populated") \
	X(faults_parked,	COUNTER, "faults",  "Faults on a page in a transitional state, replayed later") \
	X(fills_zero,		COUNTER, "pages",   "Pages filled from zero") \
	X(fills_memory,		COUNTER, "pages",   "Pages filled from a memory buffer") \
	X(fills_file,		COUNTER, "pages",   "Pages filled from a file") \
	X(readahead_pages,	COUNTER, "pages",   "Pages filled ahead of the faulting page") \
	X(prefetch_pages,	COUNTER, "pages",   "Pages filled by will-need or populate advice") \
	X(dontneed_pages,	COUNTER, "pages",   "Pages dropped by dont-need advice or the application") \
	X(copy_eexist,		COUNTER, "events",  "UFFDIO_COPY/ZEROPAGE found the page already present") \
	X(copy_eagain,		COUNTER, "events",  "UFFDIO_COPY/ZEROPAGE retried after EAGAIN") \
	X(copy_partial,		COUNTER, "events",  "UFFDIO_COPY that copied less than asked") \
	X(events_remove,	COUNTER, "events",  "madvise(MADV_DONTNEED/REMOVE) events on regions") \
	X(events_unmap,		COUNTER, "events",  "munmap events on regions") \
	X(events_remap,		COUNTER, "events",  "mremap events on regions") \
	X(forks_followed,	COUNTER, "events",  "fork() calls the runtime followed into the child") \
	X(sigbus_raised,	COUNTER, "pages",   "Pages that could not be filled: the toucher got SIGBUS") \
	X(io_errors,		COUNTER, "errors",  "Read errors from file sources") \
	X(io_uring_reads,	COUNTER, "requests", "Reads submitted through io_uring") \
	X(pread_reads,		COUNTER, "requests", "Reads done with pread") \
	X(regions_live,		GAUGE,   "regions", "Live regions") \
	X(regions_created,	COUNTER, "regions", "Regions created") \
	X(region_bytes,		GAUGE,   "bytes",   "Bytes of virtual memory in live regions") \
	X(resident_pages,	GAUGE,   "pages",   "Pages of live regions filled and mapped") \
	X(metadata_bytes,	GAUGE,   "bytes",   "Page-table and region metadata held by the runtime") \
	X(handler_threads,	GAUGE,   "threads", "Fault handler threads") \
	X(uffd_origin,		GAUGE,   "enum",    "How the userfaultfd was obtained (enum lm_uffd_origin)") \
	X(uffd_limits,		GAUGE,   "bits",    "Why kernel-mode faults are unavailable (LM_LIMIT_* bits)") \
	X(uffd_features,	GAUGE,   "bits",    "userfaultfd features the runtime enabled") \
	X(mode,			GAUGE,   "enum",    "Fault resolution mode in use (enum lm_mode)") \
	X(fill_ns_total,	COUNTER, "ns",      "Time spent filling pages, from fault to install") \
	X(budget_bytes,		GAUGE,   "bytes",   "Memory budget for resident pages (0: none)") \
	X(resident_clean,	GAUGE,   "pages",   "Resident pages equal to their source or swap slot: dropped without I/O") \
	X(resident_dirty,	GAUGE,   "pages",   "Resident pages written since they were filled") \
	X(swapped_pages,	GAUGE,   "pages",   "Pages whose only copy is in the swap file") \
	X(swap_slots_used,	GAUGE,   "slots",   "Swap file slots in use (swapped pages and the swap cache)") \
	X(swap_slots_total,	GAUGE,   "slots",   "Swap file slots at most") \
	X(evicted_pages,	COUNTER, "pages",   "Pages evicted to stay within the budget") \
	X(evicted_dirty,	COUNTER, "pages",   "Evicted pages that had to be written first") \
	X(swap_writes,		COUNTER, "pages",   "Pages written to the swap file") \
	X(swap_reads,		COUNTER, "pages",   "Pages read back from the swap file") \
	X(swap_cache_hits,	COUNTER, "pages",   "Clean pages evicted again without a write: their slot still held them") \
	X(written_back,		COUNTER, "pages",   "Dirty pages of shared file regions written to their file") \
	X(refaults,		COUNTER, "pages",   "Evicted pages touched again") \
	X(over_budget,		COUNTER, "events",  "Times eviction could not bring the resident pages under the budget") \
	X(swap_write_errors,	COUNTER, "pages",   "Swap or writeback writes that failed: the pages stayed resident") \
	X(swap_read_errors,	COUNTER, "pages",   "Swap reads that failed or did not match their checksum: SIGBUS") \
	X(evict_busy,		COUNTER, "pages",   "Pages eviction passed over: shared with a fork() child, or the address space was changing") \
	X(throttle_ns,		COUNTER, "ns",      "Time faults waited for the evictor") \
	X(page_size,		GAUGE,   "bytes",   "Bytes per page in these statistics") \
	X(fills_image,		COUNTER, "pages",   "Pages filled from snapshot images (zero pages included)") \
	X(image_errors,		COUNTER, "pages",   "Image pages that failed their checksum or could not be read: SIGBUS") \
	X(snapshots_taken,	COUNTER, "snapshots", "Snapshots taken") \
	X(snapshots_live,	GAUGE,   "snapshots", "Snapshots not released yet") \
	X(snapshot_preserved,	COUNTER, "pages",   "Pages preserved for snapshots before their first change (copy-on-write)") \
	X(snapshot_spilled,	COUNTER, "pages",   "Preserved pages that needed a copy in the spill file (the rest were their source's)") \
	X(snapshot_saved,	COUNTER, "pages",   "Pages the background saver put in images (zero pages counted, though not stored)") \
	X(snapshot_bytes_written, COUNTER, "bytes", "Bytes written to snapshot images") \
	X(snapshot_pause_ns,	GAUGE,   "ns",      "Time the last lm_snapshot_take took") \
	X(snapshot_rollback_pages, COUNTER, "pages", "Pages put back by rollbacks") \
	X(snapshot_errors,	COUNTER, "events",  "Snapshots broken because a page could not be preserved (spill file full, read error)") \
	X(restore_faults,	COUNTER, "faults",  "Faults on regions restored from images") \
	X(budget_min_bytes,	GAUGE,   "bytes",   "The least budget lazymemd's pressure policy may set (0: the daemon's default)") \
	X(budget_changes,	COUNTER, "events",  "Times the budget was changed (by the application, lazymem budget or lazymemd's policy)") \
	X(swap_file_bytes,	GAUGE,   "bytes",   "Bytes of swap file allocated on disk (it grows as eviction needs it)") \
	X(handler_lingers,	COUNTER, "events",  "Times a pinned handler woken for another CPU's fault lingered instead of sleeping") \
	X(handler_linger_ns,	COUNTER, "ns",      "Time pinned handler threads held their CPU while faults went to other CPUs' handlers") \
	X(handler_dormant,	COUNTER, "events",  "Times a pinned handler stopped waiting for faults for a while: another task needed its CPU") \
	X(stream_pages,		COUNTER, "pages",   "Pages sequential streams filled ahead of their scans (part of readahead_pages)") \
	X(remote_requests,	COUNTER, "requests", "Round trips to the remote page store (a pipelined batch to one master)") \
	X(remote_bytes_out,	COUNTER, "bytes",   "Page bytes the remote page store acknowledged") \
	X(remote_bytes_in,	COUNTER, "bytes",   "Page bytes read from the remote page store") \
	X(remote_errors,	COUNTER, "errors",  "Remote connections that failed or were lost (refused, timed out, reset)") \
	X(remote_retries,	COUNTER, "events",  "Remote batches sent again: redirected, a connection lost, the cluster failing over") \
	X(remote_failovers,	COUNTER, "events",  "Remote topology changes: slots that moved to another master") \
	X(remote_rtt_ns_total,	COUNTER, "ns",      "Time remote round trips took, in all") \
	X(remote_rtt_lt_100us,	COUNTER, "requests", "Remote round trips under 100 us") \
	X(remote_rtt_lt_1ms,	COUNTER, "requests", "Remote round trips from 100 us to 1 ms") \
	X(remote_rtt_lt_10ms,	COUNTER, "requests", "Remote round trips from 1 ms to 10 ms") \
	X(remote_rtt_lt_100ms,	COUNTER, "requests", "Remote round trips from 10 ms to 100 ms") \
	X(remote_rtt_ge_100ms,	COUNTER, "requests", "Remote round trips of 100 ms or more")

/* Fill-latency histogram: bucket i counts fills that took < 2^(i+8) ns (last: all slower). */
#define LM_LAT_BUCKETS 20

#define LM__STAT_FIELD(name, kind, unit, help) uint64_t name;
struct lm_stats {
	uint32_t size;		/* set by the caller: sizeof(struct lm_stats) */
	uint32_t version;	/* set by lm_stats_get: LM_STATS_VERSION */
	/* Before the list, which only grows at its end: offsets never move. */
	uint64_t fill_latency[LM_LAT_BUCKETS];
	LM_STATS_LIST(LM__STAT_FIELD)
};
#undef LM__STAT_FIELD

#define LM_STATS_VERSION 7

/* Output formats of lm_stats_format. */
enum lm_format {
	LM_FORMAT_TEXT = 0,	/* "name value\n" lines */
	LM_FORMAT_JSON = 1,	/* one JSON object */
	LM_FORMAT_FREE = 2,	/* a table like free(1): see lm_stats_free */
};

/*
 * The picture free(1) gives, for lazy memory, in bytes.  total is the
 * budget (the resident bytes when there is none); used is dirty resident
 * memory (it must be written before it can go); buff_cache is clean
 * resident memory (dropped without I/O); free is what the budget has
 * left; available is free plus buff_cache.
 */
struct lm_free {
	uint64_t total, used, free, buff_cache, available;
	uint64_t swap_total, swap_used, swap_free;
};

/* lm_free's total, free and available without a budget: nothing limits them. */
#define LM_UNLIMITED UINT64_MAX

/* Options. */
LM_API int lm_options_init(struct lm_options *opts);

/* Runtime: opts may be NULL for defaults.  *out is set on success only. */
LM_API int lm_runtime_open(const struct lm_options *opts, struct lm_runtime **out);
/* Destroys every region still alive, stops the threads, frees everything. */
LM_API int lm_runtime_close(struct lm_runtime *rt);

/*
 * Regions.  length is rounded up to the page size.  The region is mapped
 * private and read-write; writes never reach the source.  flags is 0
 * (reserved for future use; unknown bits give -EINVAL).
 *
 * memory: buf must stay valid and unchanged while the region lives; it is
 *   read when a page is first touched (and again after dont-need).
 * file: fd is duplicated, so the caller may close its own; offset must be
 *   page aligned.  As with mmap(2), the tail of the last page past the end
 *   of the file reads as zeros and a page wholly beyond it raises SIGBUS.
 */
LM_API int lm_region_create_zero(struct lm_runtime *rt, size_t length,
				 unsigned flags, struct lm_region **out);
LM_API int lm_region_create_memory(struct lm_runtime *rt, const void *buf,
				   size_t length, unsigned flags,
				   struct lm_region **out);
LM_API int lm_region_create_file(struct lm_runtime *rt, int fd, off_t offset,
				 size_t length, unsigned flags,
				 struct lm_region **out);
/*
 * image: a region restored lazily from a snapshot image (lazymem-image(5)):
 *   its length is the image's, each page is read (and its checksum
 *   checked) on first touch, and zero pages cost no I/O.  fd is
 *   duplicated.  -ENOEXEC: not an image of this version and page size;
 *   -EBADMSG: a damaged image (checksum, truncated).  A page whose data
 *   fails its checksum later raises SIGBUS when touched.  flags: 0.
 */
LM_API int lm_region_create_image(struct lm_runtime *rt, int fd, unsigned flags,
				  struct lm_region **out);
/*
 * The same, from an image by name: a path, or an image in a Redis
 * Cluster that lm_snapshot_save put there,
 * "redis://HOST:PORT[,HOST:PORT...]/NAME[?timeout=MS&retry=MS]" (thread
 * mode only: -EOPNOTSUPP in signal mode).  Its header and index are read
 * now, its pages from the cluster on first touch, each checked against
 * its checksum.  -ENOENT: no image of that name; -EHOSTUNREACH: no node
 * answered.  flags: 0.
 */
LM_API int lm_region_create_image_at(struct lm_runtime *rt, const char *where, unsigned flags,
				     struct lm_region **out);

/*
 * Unmaps the region; its memory must no longer be used.  A shared file
 * region is flushed first: if that fails the region stays alive and the
 * error is returned, so that no write is lost.
 */
LM_API int lm_region_destroy(struct lm_region *region);

/*
 * The msync(MS_SYNC) of lazymem: writes the dirty pages of [offset,
 * offset + length) of a shared file region to the file and returns once
 * they are durable (fsync).  length 0: to the end.  0 for other regions.
 */
LM_API int lm_region_flush(struct lm_region *region, size_t offset, size_t length);

/*
 * Sets the memory budget in bytes (0: none).  Lowering it evicts at once:
 * the call returns when the resident pages are within the new budget, or
 * -ENOSPC when eviction cannot get there (the swap file is full or cannot
 * be written: the pages stay resident, counted in over_budget).
 */
LM_API int lm_runtime_set_budget(struct lm_runtime *rt, uint64_t bytes);

/*
 * Copy-on-write snapshots (see lm_snapshot_take(3)).
 *
 * take: from the instant it returns, the snapshot holds the region's
 *   contents as they were then, however the application writes after:
 *   the region is write-protected, and the first write to each page
 *   preserves its old contents first.  flags: 0.  -EOPNOTSUPP under
 *   LM_DIRTY_ASYNC or without write-protect support; -EBUSY when part of
 *   the region was moved away with mremap.
 * read: copies the snapshot's [offset, offset + len) to buf.
 * save: writes the snapshot to an image file (lazymem-image(5)) in the
 *   background, while the application runs; with LM_SAVE_WAIT it returns
 *   when the image is durable.  -EBUSY while a save is in progress.  A
 *   path "redis://HOST:PORT[,...]/NAME[?wait=N...]" saves it to a Redis
 *   Cluster under NAME (written locally first, in the swap directory,
 *   then put there whole before NAME points to it; the previous image of
 *   that name is kept, the one before it deleted); thread mode only.
 * wait: waits for the save in progress and returns its result: 0 once
 *   the image is durable (written, fsync'ed, renamed into place).
 * rollback: puts the region back as it was at the snapshot; only pages
 *   changed since are replaced.  The snapshot stays usable.
 * release: frees the snapshot (a save in progress is cancelled and its
 *   temporary file removed).  Destroying a region releases nothing: its
 *   snapshots' saves are cancelled, every call on them but release then
 *   fails with -ENXIO, and release frees them.
 */
#define LM_SAVE_WAIT (1u << 0)

LM_API int lm_snapshot_take(struct lm_region *region, unsigned flags,
			    struct lm_snapshot **out);
LM_API int lm_snapshot_read(struct lm_snapshot *snap, size_t offset, void *buf,
			    size_t len);
LM_API int lm_snapshot_save(struct lm_snapshot *snap, const char *path, unsigned flags);
LM_API int lm_snapshot_wait(struct lm_snapshot *snap);
LM_API int lm_snapshot_rollback(struct lm_snapshot *snap);
LM_API int lm_snapshot_release(struct lm_snapshot *snap);
/* The snapshot's length in bytes (its region's); 0 for NULL. */
LM_API size_t lm_snapshot_length(const struct lm_snapshot *snap);

/* Accessors: cannot fail; NULL and 0 for a NULL region. */
LM_API void *lm_region_addr(const struct lm_region *region);
LM_API size_t lm_region_length(const struct lm_region *region);

/* Advice on [offset, offset + length) of a region (page aligned offset). */
LM_API int lm_region_advise(struct lm_region *region, size_t offset,
			    size_t length, int advice);

/* Statistics: st->size must be set to the caller's sizeof(struct lm_stats). */
LM_API int lm_stats_get(struct lm_runtime *rt, struct lm_stats *st);
/*
 * Renders stats into buf (always NUL-terminated when len > 0).  Returns
 * the length the full output needs, excluding the NUL, like snprintf.
 */
LM_API int lm_stats_format(const struct lm_stats *st, int format, char *buf,
			   size_t len);

/* Computes the free(1)-like summary of st. */
LM_API int lm_stats_free(const struct lm_stats *st, struct lm_free *out);

/* A static message for a negative errno value or a lazymem error. */
LM_API const char *lm_strerror(int err);
/* "0.1.0" */
LM_API const char *lm_version(void);

#ifdef __cplusplus
}
#endif
#endif /* LAZYMEM_H */
