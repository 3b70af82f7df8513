/* SPDX-License-Identifier: MIT */
/* Snapshot images: the file format, its crash-safe writer, and the index a lazy restore reads. */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/*
 * The format (lazymem-image(5)), little-endian, every part page aligned:
 *
 *   page 0        the header (struct lm__image_header, the rest zero)
 *   data          the stored pages, in the order they were written
 *   index         one entry per stored page, sorted by page number,
 *                 padded to a page
 *   directory     one entry per page of the index: the first page number
 *                 it holds and its checksum, padded to a page
 *
 * A page of the region that is not in the index is zero: zero pages cost
 * neither space nor I/O.  Each entry carries its page's checksum, each
 * index page its own in the directory, the header the directory's and
 * its own.  Opening reads the header and the directory only (64 KiB for
 * a 4 GiB image): a restore answers its first fault in milliseconds
 * however large the image, and reads an index page, checked, the first
 * time a fault needs it.  So a truncated, foreign or corrupted file is
 * refused when opened, a damaged index page raises SIGBUS for the pages
 * it describes and a damaged data page for itself, and nothing ever
 * returns wrong data.  The index goes last because the writer learns its
 * size only at the end, and pages arrive in any order (a snapshot saver
 * preserves pages as the application first writes them).
 *
 * Crash safety (docs/DESIGN.md, invariant 7): the writer writes a temporary file
 * in the target's directory, fsyncs it, renames it over the target and
 * fsyncs the directory; a crash leaves the old image or none, and a
 * temporary file nobody will take for an image (its header is written
 * last, after the data and the index).
 */

#define IMAGE_MAGIC "LAZYMEM\x1a"
#define IMAGE_VERSION 3

struct lm__image_header {
	char magic[8];
	uint32_t version;
	uint32_t page_size;
	uint64_t length;	/* bytes of the region */
	uint64_t flags;		/* none defined: must be 0 */
	uint64_t stored;	/* pages in the data area and entries in the index */
	uint64_t data_off;	/* bytes */
	uint64_t index_off;	/* bytes */
	uint64_t dir_sum;	/* lm__hash64 of the directory entries */
	uint64_t created_ns;	/* CLOCK_REALTIME when written */
	uint64_t dir_off;	/* bytes: index_off + the index padded to a page */
	uint64_t reserved[5];	/* zero */
	uint64_t header_sum;	/* lm__hash64 of everything above */
};

/* A directory entry: index page i starts at page number first; sum: lm__hash64 of the page. */
struct lm__image_dir {
	uint64_t first;
	uint64_t sum;
};

_Static_assert(sizeof(struct lm__image_header) == 128, "image header layout");
_Static_assert(sizeof(struct lm__image_ent) == 16, "image index entry layout");
_Static_assert(sizeof(struct lm__image_dir) == 16, "image directory entry layout");

#define SEED_HEADER 1
#define SEED_DIR 2
#define SEED_INDEX 3

/* A data page's sum in version v of the format: version 2 summed with lm__hash64. */
static uint32_t data_sum(uint32_t v, const void *p, size_t len)
{
	return v == 2 ? lm__sum_fold(lm__hash64(p, len, 0)) : lm__page_sum(p, len);
}

uint32_t lm__image_page_sum(const struct lm__image *im, const void *p)
{
	return data_sum(im->version, p, im->page_size);
}

static uint64_t header_sum(const struct lm__image_header *h)
{
	return lm__hash64(h, offsetof(struct lm__image_header, header_sum), SEED_HEADER);
}

/* ---- writing -------------------------------------------------------------- */

/*
 * The writer takes pages from several threads at once, a signal handler
 * among them (a snapshot's copy-on-write streams preserved pages into the
 * image being saved): data pages are handed out by an atomic counter, and
 * the entries live in a radix tree indexed by page number (lock free,
 * async-signal-safe, as sparse as the pages added), which the commit
 * walks in page order to write the index.  Entry values: 0 not added;
 * ENT_ADDED alone, a zero page; else the data page and the checksum.
 */
#define ENT_ADDED (1ull << 63)
#define ENT_VALUE(data, sum) (ENT_ADDED | ((uint64_t)(data) << 32) | (sum))
#define ENT_DATA(v) ((uint32_t)(((v) & ~ENT_ADDED) >> 32))
#define ENT_SUM(v) ((uint32_t)(v))

struct lm__image_writer {
	int fd;
	char *path, *tmp;
	size_t ps;
	uint64_t length, npages;
	struct lm__ptable ents;
	_Atomic uint64_t next;		/* data pages handed out */
	_Atomic uint64_t bytes;		/* data bytes written */
	_Atomic int err;		/* an add that failed half-way: the commit fails */
	uint32_t version;		/* IMAGE_VERSION; 2 for tests of old images */
	/* An image for a cluster: written here first, put there by the commit. */
	struct lm_runtime *rt;
	char *url;
};

static int write_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const unsigned char *p = buf;
	while (len) {
		/* In pieces, as lm__pwritev_all writes (see fileio.c). */
		ssize_t n = pwrite(fd, p, len < (1u << 20) ? len : 1u << 20, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int lm__image_create(const char *path, uint64_t length, size_t page_size,
		     struct lm__image_writer **out)
{
	if (!path || !*path || !length || !page_size || !out)
		return -EINVAL;
	struct lm__image_writer *w = lm__calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->fd = -1;
	w->ps = page_size;
	w->version = IMAGE_VERSION;
	w->length = length;
	w->npages = (length + page_size - 1) / page_size;
	w->path = lm__strdup(path);
	w->tmp = lm__malloc(strlen(path) + 16);
	lm__pt_init(&w->ents, w->npages);
	if (!w->path || !w->tmp) {
		lm__image_abort(w);
		return -ENOMEM;
	}
	/* The temporary file sits beside the target: rename(2) must not cross filesystems. */
	sprintf(w->tmp, "%s.tmp.XXXXXX", path);
	w->fd = mkostemp(w->tmp, O_CLOEXEC);
	if (w->fd < 0) {
		int err = -errno;
		lm__free(w->tmp);
		w->tmp = NULL;
		lm__image_abort(w);
		return err;
	}
	fchmod(w->fd, 0600);
	*out = w;
	return 0;
}

/*
 * An image at where: a path, or a cluster's redis:// URL.  An image for
 * a cluster is written as any other (streaming, checksummed) to a file in
 * tmpdir, and lm__image_commit puts it there (lm__image_upload) in place
 * of the rename, then removes the file: a snapshot that records pages in
 * it keeps its own descriptor.  A cluster's client allocates and blocks:
 * only a thread-mode runtime saves there (-EOPNOTSUPP).
 */
int lm__image_create_at(struct lm_runtime *rt, const char *where, const char *tmpdir,
			uint64_t length, size_t page_size, struct lm__image_writer **out)
{
	if (!where || strncmp(where, "redis://", 8))
		return lm__image_create(where, length, page_size, out);
	if (rt->mode != LM_MODE_THREAD)
		return -EOPNOTSUPP;
	static _Atomic unsigned seq;
	char local[4096];
	int n = snprintf(local, sizeof(local), "%s/lazymem-upload-%d-%u", tmpdir, (int)getpid(),
			 atomic_fetch_add(&seq, 1));
	if (n < 0 || (size_t)n >= sizeof(local))
		return -ENAMETOOLONG;
	char *url = lm__strdup(where);
	if (!url)
		return -ENOMEM;
	int rc = lm__image_create(local, length, page_size, out);
	if (rc < 0) {
		lm__free(url);
		return rc;
	}
	(*out)->rt = rt;
	(*out)->url = url;
	return 0;
}

static bool is_zero(const void *page, size_t len)
{
	const uint64_t *q = page;
	for (size_t i = 0; i < len / 8; i++)
		if (q[i])
			return false;
	return true;
}

void lm__image_set_version(struct lm__image_writer *w, uint32_t version)
{
	w->version = version == 2 ? 2 : IMAGE_VERSION;
}

int lm__image_add(struct lm__image_writer *w, uint64_t pgno, const void *page)
{
	int64_t idx;
	const unsigned char *p = page;
	return lm__image_add_run(w, &pgno, &p, 1, &idx);
}

/*
 * The stored pages of a run take consecutive data pages, so one pwritev
 * writes them all: a snapshot saver adds 64 pages at a time, and a write
 * per page cost more than the copy.
 */
int lm__image_add_run(struct lm__image_writer *w, const uint64_t *pgno,
		      const unsigned char *const *pages, unsigned n, int64_t *idx)
{
	if (!w || n > LM__IMAGE_RUN || (n && (!pgno || !pages || !idx)))
		return -EINVAL;
	struct iovec iov[LM__IMAGE_RUN];
	lm__pte *ent[LM__IMAGE_RUN];
	unsigned k = 0;
	for (unsigned i = 0; i < n; i++) {
		if (pgno[i] >= w->npages)
			return -EINVAL;
		ent[i] = lm__pt_get(&w->ents, pgno[i], true);
		if (!ent[i])
			return -ENOMEM;
		if (atomic_load_explicit(ent[i], memory_order_acquire))
			return -EINVAL;	/* added before */
		for (unsigned j = 0; j < i; j++)
			if (pgno[j] == pgno[i])
				return -EINVAL;
		/* Zero pages are not stored: a page missing from the index reads as zeros. */
		idx[i] = -1;
		if (!is_zero(pages[i], w->ps)) {
			idx[i] = k;
			iov[k++] = (struct iovec){ (void *)pages[i], w->ps };
		}
	}
	uint64_t first = atomic_fetch_add(&w->next, k);
	if (first + k > UINT32_MAX) {
		atomic_store(&w->err, -EFBIG);
		return -EFBIG;
	}
	int rc = k ? lm__pwritev_all(w->fd, iov, k, (1 + first) * w->ps) : 0;
	for (unsigned i = 0; i < n && !rc; i++) {
		uint64_t want = 0, v = ENT_ADDED;
		if (idx[i] >= 0) {
			idx[i] += (int64_t)first;
			v = ENT_VALUE(idx[i], data_sum(w->version, pages[i], w->ps));
		}
		/* Two threads adding one page: the caller broke its promise. */
		if (!atomic_compare_exchange_strong(ent[i], &want, v))
			rc = -EINVAL;
	}
	if (rc < 0) {
		/* Data pages handed out and not indexed: the image cannot be committed. */
		int zero = 0;
		atomic_compare_exchange_strong(&w->err, &zero, rc);
		return rc;
	}
	atomic_fetch_add(&w->bytes, (uint64_t)k * w->ps);
	return 0;
}

int lm__image_fd(const struct lm__image_writer *w)
{
	return w ? w->fd : -1;
}

uint64_t lm__image_bytes(const struct lm__image_writer *w)
{
	return w ? atomic_load(&w->bytes) : 0;
}

struct index_fill {
	struct lm__image_ent *e;
	uint64_t n, cap;
};

static int index_one(lm__pte *e, uint64_t pgno, void *arg)
{
	struct index_fill *x = arg;
	uint64_t v = atomic_load(e);
	if (!(v & ENT_ADDED) || !ENT_SUM(v))
		return 0;
	if (x->n == x->cap)
		return -EBADMSG;	/* more entries than data pages: cannot be */
	x->e[x->n++] = (struct lm__image_ent){ .pgno = pgno, .data = ENT_DATA(v), .sum = ENT_SUM(v) };
	return 0;
}

/* Syncs the directory holding path, so that the rename itself is durable. */
static int sync_dir(const char *path)
{
	char *copy = lm__strdup(path);
	if (!copy)
		return -ENOMEM;
	int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	lm__free(copy);
	if (dfd < 0)
		return -errno;
	int rc = fsync(dfd) < 0 ? -errno : 0;
	close(dfd);
	return rc;
}

int lm__image_commit(struct lm__image_writer *w)
{
	if (!w)
		return -EINVAL;
	/* The walk goes in page order: the index comes out sorted, padded to pages with zeros. */
	uint64_t stored = atomic_load(&w->next);
	size_t ps = w->ps, per = ps / sizeof(struct lm__image_ent);
	uint64_t ipages = (stored + per - 1) / per;
	size_t index_bytes = (size_t)(ipages * ps);
	struct index_fill x = { lm__calloc(1, index_bytes ? index_bytes : 1), 0, stored };
	int rc = atomic_load(&w->err);
	if (!rc && !x.e)
		rc = -ENOMEM;
	if (!rc && stored && lm__pt_walk(&w->ents, 0, w->npages - 1, index_one, &x))
		rc = -EIO;
	if (!rc && x.n != stored)
		rc = -EIO;
	if (rc) {
		lm__free(x.e);
		lm__image_abort(w);
		return rc;
	}
	/* Each index page's first page number and checksum in the directory. */
	unsigned char *index = (unsigned char *)x.e;
	size_t dir_bytes = (size_t)ipages * sizeof(struct lm__image_dir);
	size_t dir_padded = (dir_bytes + ps - 1) / ps * ps;
	struct lm__image_dir *dir = lm__calloc(1, dir_padded ? dir_padded : 1);
	unsigned char *page = lm__calloc(1, ps);
	rc = dir && page ? 0 : -ENOMEM;
	for (uint64_t i = 0; !rc && i < ipages; i++) {
		dir[i].first = x.e[i * per].pgno;
		dir[i].sum = lm__hash64(index + i * ps, ps, SEED_INDEX);
	}
	struct lm__image_header h;
	memset(&h, 0, sizeof(h));
	memcpy(h.magic, IMAGE_MAGIC, sizeof(h.magic));
	h.version = w->version;
	h.page_size = (uint32_t)ps;
	h.length = w->length;
	h.stored = stored;
	h.data_off = ps;
	h.index_off = (1 + stored) * ps;
	h.dir_off = h.index_off + index_bytes;
	h.dir_sum = dir ? lm__hash64(dir, dir_bytes, SEED_DIR) : 0;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	h.created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	h.header_sum = header_sum(&h);
	/* Index and directory; then the header; then durable; then visible. */
	if (!rc && index_bytes)
		rc = write_all(w->fd, index, index_bytes, h.index_off);
	if (!rc && dir_padded)
		rc = write_all(w->fd, dir, dir_padded, h.dir_off);
	if (!rc) {
		memcpy(page, &h, sizeof(h));
		rc = write_all(w->fd, page, ps, 0);
	}
	lm__free(index);
	lm__free(dir);
	lm__free(page);
	/* For a cluster: put there whole; the file (still the temporary one) goes with the abort. */
	if (w->url) {
		if (!rc)
			rc = lm__image_upload(w->rt, w->fd, w->url);
		lm__image_abort(w);
		return rc;
	}
	if (!rc && fsync(w->fd) < 0)
		rc = -errno;
	if (!rc && rename(w->tmp, w->path) < 0)
		rc = -errno;
	if (!rc) {
		lm__free(w->tmp);
		w->tmp = NULL;	/* renamed: nothing to remove */
		rc = sync_dir(w->path);
	}
	lm__image_abort(w);
	return rc;
}

void lm__image_abort(struct lm__image_writer *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	if (w->tmp)
		unlink(w->tmp);
	lm__free(w->tmp);
	lm__free(w->path);
	lm__free(w->url);
	lm__pt_destroy(&w->ents);
	lm__free(w);
}

/* ---- reading ----------------------------------------------------------------- */

/*
 * Reads and checks an image's header and index.  -ENOEXEC: not an image
 * of this version and page size; -EBADMSG: an image, but damaged
 * (checksums, truncation, an index that does not describe the file).
 */
int lm__image_open(int fd, size_t page_size, struct lm__image **out)
{
	struct lm__image_header h;
	ssize_t n = pread(fd, &h, sizeof(h), 0);
	if (n < 0)
		return -errno;
	if ((size_t)n < sizeof(h) || memcmp(h.magic, IMAGE_MAGIC, sizeof(h.magic)))
		return -ENOEXEC;
	if (h.header_sum != header_sum(&h))
		return -EBADMSG;
	/* Version 2 differs only in its data pages' checksum: still read. */
	if ((h.version != IMAGE_VERSION && h.version != 2) || h.page_size != page_size || h.flags)
		return -ENOEXEC;
	uint64_t npages = (h.length + page_size - 1) / page_size;
	size_t per = page_size / sizeof(struct lm__image_ent);
	uint64_t ipages = (h.stored + per - 1) / per;
	if (!h.length || h.stored > npages || h.stored > UINT32_MAX ||
	    h.data_off != page_size || h.index_off != h.data_off + h.stored * page_size ||
	    h.dir_off != h.index_off + ipages * page_size)
		return -EBADMSG;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	size_t dir_bytes = (size_t)ipages * sizeof(struct lm__image_dir);
	/* The writer pads the directory to a page: a file any shorter was cut. */
	uint64_t padded = (dir_bytes + page_size - 1) / page_size * page_size;
	if ((uint64_t)st.st_size < h.dir_off + padded)
		return -EBADMSG;	/* truncated */
	struct lm__image *im = lm__calloc(1, sizeof(*im));
	if (!im)
		return -ENOMEM;
	im->dir = lm__malloc(dir_bytes ? dir_bytes : 1);
	im->loaded = lm__calloc(ipages ? ipages : 1, 1);
	/* The index is read a page at a time into its place here, when first needed. */
	im->ents_len = ipages * page_size;
	im->ents = im->ents_len ? mmap(NULL, im->ents_len, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
				: NULL;
	int rc = im->dir && im->loaded && im->ents != MAP_FAILED ? 0 : -ENOMEM;
	if (im->ents == MAP_FAILED)
		im->ents = NULL;
	size_t got = 0;
	while (!rc && got < dir_bytes) {
		n = pread(fd, (char *)im->dir + got, dir_bytes - got, (off_t)(h.dir_off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			rc = -EBADMSG;
		else
			got += (size_t)n;
	}
	if (!rc && lm__hash64(im->dir, dir_bytes, SEED_DIR) != h.dir_sum)
		rc = -EBADMSG;
	for (uint64_t i = 0; !rc && i < ipages; i++)
		if (im->dir[i].first >= npages || (i && im->dir[i].first <= im->dir[i - 1].first))
			rc = -EBADMSG;
	if (rc) {
		lm__image_free(im);
		return rc;
	}
	im->length = h.length;
	im->stored = h.stored;
	im->data_off = h.data_off;
	im->index_off = h.index_off;
	im->npages = npages;
	im->per = (unsigned)per;
	im->ipages = ipages;
	im->page_size = page_size;
	im->version = h.version;
	*out = im;
	return 0;
}

void lm__image_free(struct lm__image *im)
{
	if (!im)
		return;
	lm__remote_close(im->remote);
	if (im->ents)
		munmap(im->ents, im->ents_len);
	lm__free(im->dir);
	lm__free(im->loaded);
	lm__free(im);
}

/*
 * Index page i, read and checked on first use: its checksum, its entries
 * sorted, within the region and the data, between its directory entry
 * and the next.  Two threads may load one page at once; they read the
 * same bytes into the same place, and either marks it.  Async-signal-safe.
 */
static bool index_page(struct lm__image *im, int fd, uint64_t i)
{
	unsigned char st = atomic_load_explicit(&im->loaded[i], memory_order_acquire);
	if (st)
		return st == 1;
	size_t ps = im->page_size;
	unsigned char *p = (unsigned char *)im->ents + i * ps;
	size_t got = 0;
	/*
	 * An image in a cluster: the index page is a key of its own (thread
	 * mode only).  A cluster that does not answer leaves the page unread,
	 * to be tried by the next fault; a key gone or garbled is damage.
	 */
	if (im->remote) {
		uint64_t key = im->index_off / ps + i;
		int res = -EIO;
		lm__remote_read(im->remote, &key, &p, 1, &res);
		if (res && res != -ENODATA && res != -EBADMSG)
			return false;
		got = res ? 0 : ps;
	}
	while (!im->remote && got < ps) {
		ssize_t n = pread(fd, p + got, ps - got, (off_t)(im->index_off + i * ps + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	bool ok = got == ps && lm__hash64(p, ps, SEED_INDEX) == im->dir[i].sum;
	uint64_t first = i * im->per, end = first + im->per < im->stored ? first + im->per : im->stored;
	for (uint64_t k = first; ok && k < end; k++) {
		const struct lm__image_ent *e = &im->ents[k];
		ok = e->pgno < im->npages && e->data < im->stored &&
		     (k == first ? e->pgno == im->dir[i].first : e->pgno > e[-1].pgno) &&
		     (i + 1 == im->ipages || e->pgno < im->dir[i + 1].first);
	}
	/* The first verdict stands: a loader that lost a race does not overrule it. */
	unsigned char zero = 0;
	atomic_compare_exchange_strong_explicit(&im->loaded[i], &zero, ok ? 1 : 2,
						memory_order_acq_rel, memory_order_acquire);
	return atomic_load_explicit(&im->loaded[i], memory_order_acquire) == 1;
}

const struct lm__image_ent *lm__image_ent(struct lm__image *im, int fd, uint64_t k)
{
	if (k >= im->stored || !index_page(im, fd, k / im->per))
		return NULL;
	return &im->ents[k];
}

int64_t lm__image_find(struct lm__image *im, int fd, uint64_t pgno)
{
	/* The index page whose range holds pgno: the last that starts at or before it. */
	uint64_t lo = 0, hi = im->ipages;
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (im->dir[mid].first <= pgno)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return 0;	/* before the first stored page */
	uint64_t i = lo - 1;
	if (!index_page(im, fd, i))
		return -EBADMSG;
	lo = i * im->per;
	hi = lo + im->per < im->stored ? lo + im->per : im->stored;
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (im->ents[mid].pgno < pgno)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (int64_t)lo;
}

/* ---- images in a Redis Cluster ------------------------------------------------ */

/*
 * The name's key holds "lmimg1 GEN PAGES PREVGEN PREVPAGES": the
 * generation a restore opens, its file's length in pages, and the one
 * before it (0 0: none).  A generation is written whole under a fresh
 * random number before the name points to it, so a reader sees the old
 * image or the new, never a mix; and pages carry their checksums in the
 * index, so not even a damaged key is read as data.
 */
#define REMOTE_TAG "lmimg1"
#define LM__IMAGE_REMOTE_BATCH 64	/* pages per upload or download batch */

struct remote_ptr {
	uint64_t gen, pages, prev, prev_pages;
};

static int ptr_get(struct lm__remote *c, const char *name, struct remote_ptr *p)
{
	char buf[128];
	int n = lm__remote_get(c, name, buf, sizeof(buf));
	if (n < 0)
		return n;
	char tag[8];
	if (sscanf(buf, "%7s %" SCNx64 " %" SCNu64 " %" SCNx64 " %" SCNu64, tag, &p->gen, &p->pages,
		   &p->prev, &p->prev_pages) != 5 || strcmp(tag, REMOTE_TAG) || !p->gen || !p->pages)
		return -EBADMSG;
	return 0;
}

static void gen_ns(char *buf, size_t cap, const char *name, uint64_t gen)
{
	snprintf(buf, cap, "%s:%" PRIx64, name, gen);
}

int lm__image_upload(struct lm_runtime *rt, int fd, const char *url)
{
	struct lm__remote *c;
	size_t ps = (size_t)rt->page_size;
	int rc = lm__remote_open(rt, url, ps, LM__REMOTE_NAMED, &c);
	if (rc < 0)
		return rc;
	char name[64], ns[96];
	snprintf(name, sizeof(name), "%s", lm__remote_ns(c));
	struct remote_ptr old = { 0 };
	rc = ptr_get(c, name, &old);
	if (rc == -ENOENT || rc == -EBADMSG)
		rc = 0, old = (struct remote_ptr){ 0 };
	struct stat st;
	if (!rc && fstat(fd, &st) < 0)
		rc = -errno;
	uint64_t pages = rc ? 0 : ((uint64_t)st.st_size + ps - 1) / ps;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t gen = lm__hash64(&ts, sizeof(ts), (uint64_t)getpid() ^ old.gen) | 1;
	gen_ns(ns, sizeof(ns), name, gen);
	lm__remote_set_ns(c, ns);
	unsigned char *buf = rc ? NULL : mmap(NULL, LM__IMAGE_REMOTE_BATCH * ps,
					     PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		rc = -ENOMEM;
	/* The file, a batch of pages at a time: one round trip per master each. */
	for (uint64_t at = 0; !rc && at < pages; at += LM__IMAGE_REMOTE_BATCH) {
		unsigned n = pages - at < LM__IMAGE_REMOTE_BATCH ? (unsigned)(pages - at) :
								   LM__IMAGE_REMOTE_BATCH;
		memset(buf, 0, (size_t)n * ps);
		for (size_t got = 0; !rc && got < (size_t)n * ps;) {
			ssize_t k = pread(fd, buf + got, (size_t)n * ps - got, (off_t)(at * ps + got));
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0)
				rc = -errno;
			if (k <= 0)
				break;
			got += (size_t)k;
		}
		uint64_t keys[LM__IMAGE_REMOTE_BATCH];
		unsigned char *pp[LM__IMAGE_REMOTE_BATCH];
		int res[LM__IMAGE_REMOTE_BATCH];
		for (unsigned i = 0; i < n; i++) {
			keys[i] = at + i;
			pp[i] = buf + (size_t)i * ps;
		}
		if (!rc)
			rc = lm__remote_write(c, keys, pp, n, res);
	}
	if (buf && buf != MAP_FAILED)
		munmap(buf, LM__IMAGE_REMOTE_BATCH * ps);
	/* Published: the name points to the new generation, and keeps the old one's. */
	if (!rc) {
		char val[128];
		snprintf(val, sizeof(val), REMOTE_TAG " %" PRIx64 " %" PRIu64 " %" PRIx64 " %" PRIu64,
			 gen, pages, old.gen, old.pages);
		rc = lm__remote_set(c, name, val);
	}
	/*
	 * The name's SET may have landed though its answer (or its WAIT's) did
	 * not come: the name is read again, and what it points to stays.
	 */
	struct remote_ptr now;
	bool published = !rc || (rc != -ENOMEM && ptr_get(c, name, &now) == 0 && now.gen == gen);
	if (rc && !published) {
		/* Nothing points to what was written: it goes. */
		gen_ns(ns, sizeof(ns), name, gen);
		lm__remote_delete(c, ns, pages);
	}
	if (rc)
		lm__log(rt, 1, "cannot save the image to %s%s: %s", url,
			published ? " durably (it is in place, on fewer replicas than asked)" : "",
			lm_strerror(rc));
	if (published && old.prev) {
		gen_ns(ns, sizeof(ns), name, old.prev);
		lm__remote_delete(c, ns, old.prev_pages);
	}
	lm__remote_close(c);
	return rc;
}

int lm__image_fetch(struct lm_runtime *rt, const char *url, size_t page_size, int *fdp,
		    struct lm__remote **out)
{
	struct lm__remote *c;
	int rc = lm__remote_open(rt, url, page_size, LM__REMOTE_NAMED | LM__REMOTE_READER, &c);
	if (rc < 0)
		return rc;
	char name[64], ns[96];
	snprintf(name, sizeof(name), "%s", lm__remote_ns(c));
	struct remote_ptr p;
	int fd = -1;
	unsigned char *buf = MAP_FAILED;
	if ((rc = ptr_get(c, name, &p)) < 0)
		goto out;
	gen_ns(ns, sizeof(ns), name, p.gen);
	lm__remote_set_ns(c, ns);
	fd = memfd_create("lazymem-image", MFD_CLOEXEC);
	buf = mmap(NULL, LM__IMAGE_REMOTE_BATCH * page_size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fd < 0 || buf == MAP_FAILED) {
		rc = fd < 0 ? -errno : -ENOMEM;
		goto out;
	}
	if (ftruncate(fd, (off_t)(p.pages * page_size)) < 0) {
		rc = -errno;
		goto out;
	}
	/* The header first: it says where the index starts; the data stays where it is. */
	uint64_t key = 0;
	int res[LM__IMAGE_REMOTE_BATCH];
	unsigned char *pp[LM__IMAGE_REMOTE_BATCH];
	/* A generation gone (a later save deleted it, or a crash left none): no image. */
	if ((rc = lm__remote_read(c, &key, &buf, 1, res)) < 0) {
		if (rc == -ENODATA)
			rc = -ENOENT;
		goto out;
	}
	struct lm__image_header h;
	memcpy(&h, buf, sizeof(h));
	if (memcmp(h.magic, IMAGE_MAGIC, sizeof(h.magic)) || h.header_sum != header_sum(&h) ||
	    h.page_size != page_size || h.dir_off % page_size || h.dir_off / page_size > p.pages) {
		rc = memcmp(h.magic, IMAGE_MAGIC, sizeof(h.magic)) || h.page_size != page_size ?
			     -ENOEXEC : -EBADMSG;
		goto out;
	}
	if (pwrite(fd, buf, page_size, 0) != (ssize_t)page_size) {
		rc = -EIO;
		goto out;
	}
	/* The directory now; the index a page at a time when a fault needs it (index_page). */
	for (uint64_t at = h.dir_off / page_size; at < p.pages; at += LM__IMAGE_REMOTE_BATCH) {
		unsigned n = p.pages - at < LM__IMAGE_REMOTE_BATCH ? (unsigned)(p.pages - at) :
								    LM__IMAGE_REMOTE_BATCH;
		uint64_t keys[LM__IMAGE_REMOTE_BATCH];
		for (unsigned i = 0; i < n; i++) {
			keys[i] = at + i;
			pp[i] = buf + (size_t)i * page_size;
		}
		/*
		 * A page missing or garbled here makes lm__image_open refuse the
		 * image (-EBADMSG); a cluster that does not answer is its error.
		 */
		int r = lm__remote_read(c, keys, pp, n, res);
		if (r < 0 && r != -ENODATA && r != -EBADMSG) {
			rc = r;
			goto out;
		}
		for (unsigned i = 0; i < n; i++)
			if (res[i])
				memset(pp[i], 0, page_size);
		if (pwrite(fd, buf, (size_t)n * page_size, (off_t)(at * page_size)) !=
		    (ssize_t)(n * page_size)) {
			rc = -EIO;
			goto out;
		}
	}
out:
	if (buf != MAP_FAILED)
		munmap(buf, LM__IMAGE_REMOTE_BATCH * page_size);
	if (rc < 0) {
		if (fd >= 0)
			close(fd);
		lm__remote_close(c);
		return rc;
	}
	*fdp = fd;
	*out = c;
	return 0;
}
