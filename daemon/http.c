/* SPDX-License-Identifier: MIT */
/* lazymemd's own metrics after the runtimes', and the HTTP endpoint Prometheus scrapes them from. */
#include "config.h"
#include "lazymemd.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static const char *const refusal_names[REF_COUNT] = {
	"malformed", "permission", "no_process", "busy", "runtimes_full", "connections_full",
	"user_limit", "other",
};

static void self_metric(struct lmd_out *o, const char *name, const char *type, const char *help)
{
	lmd_put(o, "# HELP lazymemd_%s %s\n# TYPE lazymemd_%s %s\n", name, help, name, type);
}

/* lazymemd_*: the daemon itself and its pressure policy, after the runtimes' counters. */
static size_t format_self(char *buf, size_t len)
{
	struct lmd_out o = { buf, len, 0 };
	self_metric(&o, "build_info", "gauge", "The daemon's version and protocol, as labels");
	lmd_put(&o, "lazymemd_build_info{version=\"%s\",protocol=\"%d\"} 1\n", PACKAGE_VERSION,
	     LMD_PROTOCOL);
	self_metric(&o, "runtimes", "gauge", "Runtimes registered");
	lmd_put(&o, "lazymemd_runtimes %u\n", D.nruntimes);
	self_metric(&o, "connections", "gauge", "Open connections: runtimes, clients and HTTP");
	lmd_put(&o, "lazymemd_connections %u\n", D.nconns);
	static const char *const kinds[] = { "http", "list", "stats", "json", "metrics", "budget",
					     "version", "help", "hello", "min", "pressure" };
	_Static_assert(sizeof(kinds) / sizeof(kinds[0]) == LMD_REQ_PRESSURE + 1, "a name per kind");
	self_metric(&o, "requests_total", "counter", "Requests served, by kind");
	for (int i = 0; i <= LMD_REQ_PRESSURE; i++)
		lmd_put(&o, "lazymemd_requests_total{kind=\"%s\"} %llu\n", kinds[i],
		     (unsigned long long)D.requests[i]);
	self_metric(&o, "refusals_total", "counter", "Requests and connections refused, by reason");
	for (int i = 0; i < REF_COUNT; i++)
		lmd_put(&o, "lazymemd_refusals_total{reason=\"%s\"} %llu\n", refusal_names[i],
		     (unsigned long long)D.refusals[i]);
	self_metric(&o, "policy_info", "gauge", "The pressure policy's switches, as labels");
	lmd_put(&o, "lazymemd_policy_info{policy=\"%s\",proactive=\"%s\"} 1\n",
	     D.conf.enabled ? "on" : "off", D.conf.proactive ? "on" : "off");
	self_metric(&o, "policy_budgets_lowered_total", "counter",
		    "Budgets the pressure policy lowered, acknowledged");
	lmd_put(&o, "lazymemd_policy_budgets_lowered_total %llu\n", (unsigned long long)D.lowered);
	self_metric(&o, "policy_budgets_raised_total", "counter",
		    "Budgets the pressure policy raised or lifted, acknowledged");
	lmd_put(&o, "lazymemd_policy_budgets_raised_total %llu\n", (unsigned long long)D.raised);
	self_metric(&o, "policy_budgets_refused_total", "counter",
		    "Budgets of the pressure policy a runtime refused");
	lmd_put(&o, "lazymemd_policy_budgets_refused_total %llu\n",
	     (unsigned long long)D.policy_errors);
	self_metric(&o, "policy_reaction_seconds", "gauge",
		    "The last time from the onset of pressure to a budget lowered");
	lmd_put(&o, "lazymemd_policy_reaction_seconds %.3f\n", D.last_reaction_ms / 1000);
	/* One sample per scope with runtimes; the machine is scope="machine". */
	static const char *const fams[][3] = {
		{ "scope_limit_bytes", "gauge", "A scope's memory limit (the machine: MemTotal)" },
		{ "scope_available_bytes", "gauge", "A scope's memory left, inactive file pages included" },
		{ "scope_oom_kills_total", "counter", "OOM kills in a scope, as the kernel counts them" },
		{ "scope_state_info", "gauge", "A scope's state for the pressure policy, as a label" },
	};
	for (size_t f = 0; f < sizeof(fams) / sizeof(fams[0]); f++) {
		self_metric(&o, fams[f][0], fams[f][1], fams[f][2]);
		for (int i = 0; i < D.nscopes; i++) {
			const struct scope *sc = &D.scopes[i];
			if (!sc->members)
				continue;
			char esc[2 * LMD_SCOPE_PATH];
			lmd_escape_label(sc->s.kind == LMD_SCOPE_SYSTEM ? "machine" : sc->s.path, esc,
					 sizeof(esc));
			uint64_t v = f == 0 ? sc->s.limit : f == 1 ? sc->s.available : sc->s.oom_kills;
			if (f == 3)
				lmd_put(&o, "lazymemd_scope_state_info{scope=\"%s\",state=\"%s\"} 1\n", esc,
				     lmd_state_name(sc->state));
			else
				lmd_put(&o, "lazymemd_%s{scope=\"%s\"} %llu\n", fams[f][0], esc,
				     (unsigned long long)v);
		}
	}
	return o.need;
}

/* The metrics request's formatter: every runtime's counters, then the daemon's own. */
int lmd_metrics_all(const struct lmd_proc *procs, size_t n, char *buf, size_t len)
{
	int k = lmd_format_metrics(procs, n, buf, len);
	if (k < 0)
		return k;
	size_t at = (size_t)k < len ? (size_t)k : len;
	size_t self = format_self(len > at ? buf + at : NULL, len > at ? len - at : 0);
	if ((size_t)k + self > 0x7fffffff)
		return -EOVERFLOW;
	return k + (int)self;
}

/* A whole small HTTP reply; the connection closes once it is out. */
static void http_reply(struct conn *c, int code, const char *reason, const char *extra,
		       const char *body)
{
	char buf[512];
	int k = snprintf(buf, sizeof(buf),
			 "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
			 "Content-Length: %zu\r\n%sConnection: close\r\n\r\n%s",
			 code, reason, strlen(body), extra, c->http_head ? "" : body);
	if (k < 0 || (size_t)k >= sizeof(buf) || !lmd_queue(c, buf, (size_t)k))
		c->closing = true;
	c->closing = true;
}

/*
 * One request: GET or HEAD of /metrics (what Prometheus scrapes) or of
 * / (a line saying where the metrics are); HTTP/1.0 and 1.1.  The
 * headers are read and ignored; every reply closes the connection.
 */
static void http_request(struct conn *c, const char *line, size_t len)
{
	D.requests[0]++;
	char method[8], target[LMD_LINE_MAX + 1], version[16];
	char copy[LMD_LINE_MAX + 1];
	snprintf(copy, sizeof(copy), "%.*s", (int)len, line);
	if (sscanf(copy, "%7s %256s %15s", method, target, version) != 3 ||
	    strncmp(version, "HTTP/1.", 7) || target[0] != '/') {
		D.refusals[REF_MALFORMED]++;
		http_reply(c, 400, "Bad Request", "", "malformed request line\n");
		return;
	}
	c->http_head = !strcmp(method, "HEAD");
	if (strcmp(method, "GET") && !c->http_head) {
		D.refusals[REF_MALFORMED]++;
		http_reply(c, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", "GET or HEAD\n");
		return;
	}
	target[strcspn(target, "?#")] = '\0';
	if (!strcmp(target, "/metrics")) {
		lmd_reply_formatted(c, lmd_metrics_all, 0, &D.hint[3]);
		c->closing = true;
	} else if (!strcmp(target, "/")) {
		http_reply(c, 200, "OK", "", "lazymemd: the metrics are at /metrics\n");
	} else {
		http_reply(c, 404, "Not Found", "", "not found: the metrics are at /metrics\n");
	}
}

/*
 * Reads an HTTP request: the request line into c->in (at most a
 * request line's worth), then the headers, skipped byte by byte up to
 * the empty line without keeping them, at most 16 KiB.
 */
void lmd_http_input(struct conn *c)
{
	char skip[1024];
	while (!c->closing && c->outoff == c->outlen) {
		char *dst = c->http_line ? skip : c->in + c->nin;
		size_t room = c->http_line ? sizeof(skip) : sizeof(c->in) - c->nin;
		ssize_t n = recv(c->fd, dst, room, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			lmd_conn_close(c, n < 0 ? strerror(errno) : "end of file");
			return;
		}
		c->last_ns = lmd_now_ns();
		const char *p = dst, *end = dst + n;
		if (!c->http_line) {
			c->nin += (size_t)n;
			char *nl = memchr(c->in, '\n', c->nin);
			if (!nl) {
				if (c->nin == sizeof(c->in)) {
					D.refusals[REF_MALFORMED]++;
					http_reply(c, 414, "URI Too Long", "", "request line too long\n");
				}
				continue;
			}
			c->http_line = true;
			c->http_eol = true;
			p = nl + 1;
			end = c->in + c->nin;
			c->nin = (size_t)(nl - c->in);
			if (c->nin && c->in[c->nin - 1] == '\r')
				c->nin--;
		}
		for (; p < end; p++) {
			c->http_bytes++;
			if (*p == '\n' && c->http_eol) {
				http_request(c, c->in, c->nin);
				break;
			}
			if (*p != '\r')
				c->http_eol = *p == '\n';
		}
		if (!c->closing && c->http_bytes > 16384) {
			D.refusals[REF_MALFORMED]++;
			http_reply(c, 431, "Request Header Fields Too Large", "", "headers too large\n");
		}
	}
	lmd_flush_out(c);
}
