/* SPDX-License-Identifier: MIT */
/* Memory for the runtime's own structures. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/*
 * The runtime allocates through here, never through malloc directly.  A
 * program that links liblazymem gets malloc and free.  The preload
 * library, whose application's heap is itself lazy memory, installs an
 * allocator whose memory is never lazy: if the runtime's own structures
 * could be evicted, a handler thread could fault on memory only it can
 * fill, and wait for itself forever (docs/DESIGN.md, invariant 1).
 *
 * Set once, before the first runtime opens, and never changed after: the
 * functions below read it without a lock.
 */
static const struct lm__allocator *host;

__thread bool lm__runtime_thread __attribute__((tls_model("initial-exec")));

void lm__thread_mark(void)
{
	lm__runtime_thread = true;
}

void lm__alloc_set(const struct lm__allocator *a)
{
	LM__ASSERT(!host || !a);
	host = a;
}

void *lm__malloc(size_t n)
{
	return host ? host->malloc(n ? n : 1) : malloc(n);
}

void *lm__calloc(size_t n, size_t size)
{
	if (!host)
		return calloc(n, size);
	if (size && n > SIZE_MAX / size)
		return NULL;
	size_t total = n * size;
	return host->calloc(total ? total : 1);
}

void *lm__realloc(void *p, size_t n)
{
	return host ? host->realloc(p, n ? n : 1) : realloc(p, n);
}

void lm__free(void *p)
{
	if (!p)
		return;
	if (host)
		host->free(p);
	else
		free(p);
}

char *lm__strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = lm__malloc(n);
	return d ? memcpy(d, s, n) : NULL;
}
