/* SPDX-License-Identifier: MIT */
/* Redis Cluster routing: key slots (CRC16, hash tags), page keys, redirections, the slot map. */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/*
 * The remote page store (issue 16) keeps pages in a Redis Cluster, and
 * hiredis speaks no cluster protocol: which node holds a key, and what a
 * node's "moved" or "ask" answer means, is decided here, apart from any
 * socket, so that it can be tested alone.  Nothing here blocks.  The
 * rules are the Redis Cluster specification's: a key's slot is CRC16
 * (XMODEM: polynomial 0x1021, initial value 0) of the key modulo 16384,
 * or of its hash tag, the part between the first '{' and the first '}'
 * after it, when that part is not empty.
 */

uint16_t lm__cluster_crc16(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	uint16_t crc = 0;
	for (size_t i = 0; i < len; i++) {
		crc ^= (uint16_t)(p[i] << 8);
		for (int b = 0; b < 8; b++)
			crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
	}
	return crc;
}

unsigned lm__cluster_slot(const void *key, size_t len)
{
	const char *k = key;
	const char *open = memchr(k, '{', len);
	if (open) {
		size_t from = (size_t)(open - k) + 1;
		const char *close = memchr(k + from, '}', len - from);
		if (close && close > k + from)
			return lm__cluster_crc16(k + from, (size_t)(close - (k + from))) %
			       LM__CLUSTER_SLOTS;
	}
	return lm__cluster_crc16(k, len) % LM__CLUSTER_SLOTS;
}

/*
 * A page's key: "<ns>{<ns>:<group>}<pgno>" in lower-case hex, where the
 * group is the page number divided by LM__CLUSTER_GROUP.  The hash tag
 * puts a group's pages in one slot, so that a readahead window or an
 * eviction batch of neighbouring pages is one pipelined round trip to
 * one node; the namespace in the tag spreads groups of different stores
 * over the cluster.  Returns the key's length, or -ENAMETOOLONG when it
 * does not fit cap bytes (with its terminating zero).
 */
int lm__cluster_page_key(char *buf, size_t cap, const char *ns, uint64_t pgno)
{
	int n = snprintf(buf, cap, "%s{%s:%" PRIx64 "}%" PRIx64, ns, ns, pgno / LM__CLUSTER_GROUP,
			 pgno);
	return n < 0 ? -EINVAL : (size_t)n >= cap ? -ENAMETOOLONG : n;
}

/* Digits at s[0..len) as a number up to max: how many were read (0: none, or too large). */
size_t lm__cluster_uint(const char *s, size_t len, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;
	size_t i = 0;
	for (; i < len && s[i] >= '0' && s[i] <= '9'; i++)
		if ((v = v * 10 + (unsigned long)(s[i] - '0')) > max)
			return 0;
	*out = v;
	return i;
}

/* Parses "host:port" (the host may be an IPv6 address: the port follows the last colon). */
int lm__cluster_endpoint(const char *s, size_t len, char *host, size_t hostcap, int *port)
{
	const char *colon = NULL;
	for (size_t i = 0; i < len; i++)
		if (s[i] == ':')
			colon = s + i;
	if (!colon || colon == s || (size_t)(colon - s) >= hostcap)
		return -EINVAL;
	size_t rest = len - (size_t)(colon + 1 - s);
	unsigned long v;
	if (!rest || lm__cluster_uint(colon + 1, rest, 65535, &v) != rest || !v)
		return -EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	*port = (int)v;
	return 0;
}

int lm__cluster_redirect(const char *err, size_t len, struct lm__redirect *out)
{
	int kind;
	size_t at;
	if (len > 6 && !memcmp(err, "MOVED ", 6))
		kind = LM__REDIRECT_MOVED, at = 6;
	else if (len > 4 && !memcmp(err, "ASK ", 4))
		kind = LM__REDIRECT_ASK, at = 4;
	else
		return -EINVAL;
	unsigned long slot;
	size_t d = at + lm__cluster_uint(err + at, len - at, LM__CLUSTER_SLOTS - 1, &slot);
	if (d == at || d >= len || err[d] != ' ')
		return -EINVAL;
	int rc = lm__cluster_endpoint(err + d + 1, len - d - 1, out->host, sizeof(out->host), &out->port);
	if (rc < 0)
		return rc;
	out->kind = kind;
	out->slot = (unsigned)slot;
	return 0;
}

void lm__slotmap_init(struct lm__slotmap *m)
{
	m->nnodes = 0;
	for (unsigned i = 0; i < LM__CLUSTER_SLOTS; i++)
		m->node[i] = LM__SLOT_NONE;
}

int lm__slotmap_node_add(struct lm__slotmap *m, const char *host, int port)
{
	if (!host || !*host || strlen(host) >= sizeof(m->nodes[0].host) || port <= 0 || port > 65535)
		return -EINVAL;
	for (unsigned i = 0; i < m->nnodes; i++)
		if (m->nodes[i].port == port && !strcmp(m->nodes[i].host, host))
			return (int)i;
	if (m->nnodes == LM__CLUSTER_NODES)
		return -ENOSPC;
	strcpy(m->nodes[m->nnodes].host, host);
	m->nodes[m->nnodes].port = port;
	return (int)m->nnodes++;
}

int lm__slotmap_assign(struct lm__slotmap *m, unsigned first, unsigned last, const char *host,
		       int port)
{
	if (first > last || last >= LM__CLUSTER_SLOTS)
		return -EINVAL;
	int n = lm__slotmap_node_add(m, host, port);
	if (n < 0)
		return n;
	for (unsigned s = first; s <= last; s++)
		m->node[s] = (uint16_t)n;
	return n;
}

int lm__slotmap_node(const struct lm__slotmap *m, unsigned slot)
{
	if (slot >= LM__CLUSTER_SLOTS)
		return -EINVAL;
	return m->node[slot] == LM__SLOT_NONE ? -ENOENT : m->node[slot];
}

unsigned lm__slotmap_uncovered(const struct lm__slotmap *m)
{
	unsigned n = 0;
	for (unsigned s = 0; s < LM__CLUSTER_SLOTS; s++)
		n += m->node[s] == LM__SLOT_NONE;
	return n;
}
