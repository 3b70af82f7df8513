/* SPDX-License-Identifier: MIT */
/* libFuzzer harness for lazymemd's parsers and escapers: requests, "stats" replies, stats pages, labels, JSON strings (tests/fuzz-proto.sh runs it). */
#include "proto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What RFC 8259 allows between two quotes, in UTF-8 (RFC 3629), written here apart from proto.c. */
static bool valid_json_string(const char *j, size_t n)
{
	const unsigned char *s = (const unsigned char *)j;
	if (n < 2 || s[0] != '"' || s[n - 1] != '"')
		return false;
	for (size_t i = 1; i < n - 1;) {
		unsigned char c = s[i];
		if (c == '"' || c < 0x20)
			return false;
		if (c == '\\') {
			if (i + 1 >= n - 1)
				return false;
			char e = (char)s[i + 1];
			if (e == 'u') {
				if (i + 5 >= n - 1)
					return false;
				for (int k = 2; k < 6; k++)
					if (!strchr("0123456789abcdefABCDEF", s[i + k]) || !s[i + k])
						return false;
				i += 6;
			} else if (e && strchr("\"\\/bfnrt", e)) {
				i += 2;
			} else {
				return false;
			}
			continue;
		}
		size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 :
			   (c & 0xf8) == 0xf0 ? 4 : 0;
		if (!k || i + k > n - 1)
			return false;
		uint32_t cp = k == 1 ? c : c & (0x7fu >> k);
		for (size_t m = 1; m < k; m++) {
			if ((s[i + m] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + m] & 0x3f);
		}
		static const uint32_t least[] = { 0, 0, 0x80, 0x800, 0x10000 };
		if (cp < least[k] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
			return false;
		i += k;
	}
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lmd_request r;
	const char *why;
	const char *s = (const char *)data;
	if (lmd_parse(s, size, &r, &why) == 0) {
		/* What parses is one of the requests, with its arguments in range. */
		if (r.kind < LMD_REQ_LIST || r.kind > LMD_REQ_PRESSURE)
			abort();
		if (((r.kind == LMD_REQ_BUDGET || r.kind == LMD_REQ_MIN) && r.pid <= 0) || r.pid < 0)
			abort();
		if (r.kind == LMD_REQ_HELLO &&
		    (r.version < s || r.name < s || r.version + r.version_len > s + size ||
		     r.name + r.name_len > s + size || r.name_len > LMD_NAME_MAX ||
		     r.version_len > LMD_VERSION_MAX || !r.name_len || !r.version_len))
			abort();
	} else if (!why) {
		abort();
	}
	/* The command's parser of "stats" replies: counts, never writes past max. */
	struct lmd_entry e[2];
	int n = lmd_parse_stats(s, size, e, 2);
	if (n > 0 && (e[0].pid <= 0 || e[0].name[LMD_NAME_MAX] != '\0'))
		abort();
	/* Any bytes as a stats page, of any length: a clamped copy. */
	struct lm_stats st;
	lmd_stats_load(data, size, &st);
	if (st.resident_dirty > st.resident_pages ||
	    st.resident_clean != st.resident_pages - st.resident_dirty)
		abort();
	/* Any bytes as a process name: the escaped label stays within its buffer, terminated. */
	char name[300], label[64];
	size_t k = size < sizeof(name) - 1 ? size : sizeof(name) - 1;
	memcpy(name, data, k);
	name[k] = '\0';
	size_t used = lmd_escape_label(name, label, sizeof(label));
	if (used >= sizeof(label) || label[used] != '\0')
		abort();
	/* And as a JSON string: valid JSON, whatever the bytes. */
	char json[6 * sizeof(name) + 3];
	size_t jl = lmd_json_string(name, json, sizeof(json));
	if (jl >= sizeof(json) || strlen(json) != jl || !valid_json_string(json, jl))
		abort();
	/* Cut short: still terminated, the same length reported. */
	char cut[7];
	if (lmd_json_string(name, cut, sizeof(cut)) != jl || strlen(cut) != (jl < 6 ? jl : 6))
		abort();
	return 0;
}
