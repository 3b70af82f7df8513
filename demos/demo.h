/* SPDX-License-Identifier: MIT */
/* What the demos share: a clock, dying with lazymem's error text, a hash, a checksum. */
#ifndef LM_DEMO_H
#define LM_DEMO_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "lazymem.h"

/* Each demo defines DEMO_NAME, for its error messages, before including this. */

static inline double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void die(const char *what, int rc)
{
	fprintf(stderr, DEMO_NAME ": %s: %s\n", what, lm_strerror(rc));
	exit(1);
}

/* A 64-bit finalizer (MurmurHash3's): keys to table slots, seeds to values. */
static inline uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

/* FNV-style: h folded with the 8-byte words of p (len a multiple of 8), for chaining. */
static inline uint64_t fold(uint64_t h, const void *p, size_t len)
{
	const uint64_t *q = p;
	for (size_t i = 0; i < len / 8; i++)
		h = (h ^ q[i]) * 0x100000001b3ull;
	return h;
}

static inline uint64_t checksum(const void *p, size_t len)
{
	return fold(0x9e3779b97f4a7c15ull, p, len);
}

#endif
