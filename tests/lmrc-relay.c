/* SPDX-License-Identifier: MIT */
/* lmrc-relay: forwards Ethernet frames between two interfaces after a fixed delay (a simulated longer link). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/*
 * This kernel has no netem qdisc, so the test harness makes a longer
 * round trip itself: machine A's veth end is not on the bridge; this
 * relay reads every frame arriving on it and, DELAY microseconds later,
 * sends it out of a second veth pair whose other end is on the bridge,
 * and the same the other way.  A round trip crosses it twice: add 2 x
 * DELAY.  Frames keep their offload state (PACKET_VNET_HDR: a TCP segment
 * of 64 KiB whose checksum is not computed yet goes out as it came), so
 * nothing is segmented or checksummed here.  The wait before a frame is
 * due sleeps with a timer slack of 1 ns and spins for its last 50 us, so
 * the added delay is what was asked within a few microseconds (the
 * harness measures and reports what it adds, delay 0 included).
 *
 *   lmrc-relay IFACE_A IFACE_B DELAY_US
 */

#define SLOTS 1024
#define FRAME (sizeof(struct virtio_net_hdr) + 65536 + 64)
#define SPIN_NS 50000

struct slot {
	uint64_t due;
	int to;		/* socket to send it on */
	size_t len;
	unsigned char *data;
};

static struct slot ring[SLOTS];
static unsigned head, tail;	/* head: next to send; tail: next free */
static volatile sig_atomic_t done;

static uint64_t now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int open_if(const char *name)
{
	int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
	if (fd < 0) {
		perror("lmrc-relay: socket");
		exit(1);
	}
	int one = 1;
	if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0) {
		perror("lmrc-relay: PACKET_VNET_HDR");
		exit(1);
	}
	unsigned idx = if_nametoindex(name);
	if (!idx) {
		fprintf(stderr, "lmrc-relay: no interface %s\n", name);
		exit(1);
	}
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
				   .sll_ifindex = (int)idx };
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
		perror("lmrc-relay: bind");
		exit(1);
	}
	struct packet_mreq mr = { .mr_ifindex = (int)idx, .mr_type = PACKET_MR_PROMISC };
	setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr));
	int buf = 8 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	return fd;
}

/* Takes every frame waiting on from (not the ones sent from it) into the ring, due at t + delay. */
static void drain(int from, int to, uint64_t delay)
{
	for (;;) {
		if (tail - head == SLOTS) {
			/* Full: frames arriving now are dropped; TCP sends what is lost again. */
			unsigned char scrap[64];
			if (recv(from, scrap, sizeof(scrap), MSG_TRUNC) < 0)
				return;
			continue;
		}
		struct slot *s = &ring[tail % SLOTS];
		struct sockaddr_ll sll;
		socklen_t sl = sizeof(sll);
		ssize_t n = recvfrom(from, s->data, FRAME, 0, (struct sockaddr *)&sll, &sl);
		if (n < 0)
			return;
		if (sll.sll_pkttype == PACKET_OUTGOING)
			continue;
		s->len = (size_t)n;
		s->to = to;
		s->due = now() + delay;
		tail++;
	}
}

static void stop(int sig)
{
	(void)sig;
	done = 1;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: lmrc-relay IFACE_A IFACE_B DELAY_US\n");
		return 2;
	}
	uint64_t delay = strtoull(argv[3], NULL, 10) * 1000;
	int a = open_if(argv[1]), b = open_if(argv[2]);
	unsigned char *mem = mmap(NULL, (size_t)SLOTS * FRAME, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (mem == MAP_FAILED) {
		perror("lmrc-relay: mmap");
		return 1;
	}
	for (unsigned i = 0; i < SLOTS; i++)
		ring[i].data = mem + (size_t)i * FRAME;
	prctl(PR_SET_TIMERSLACK, 1UL);
	signal(SIGTERM, stop);
	signal(SIGINT, stop);
	struct pollfd p[2] = { { .fd = a, .events = POLLIN }, { .fd = b, .events = POLLIN } };
	while (!done) {
		drain(a, b, delay);
		drain(b, a, delay);
		uint64_t t = now();
		while (head != tail && ring[head % SLOTS].due <= t) {
			struct slot *s = &ring[head % SLOTS];
			if (send(s->to, s->data, s->len, 0) < 0 && errno == EAGAIN) {
				struct pollfd w = { .fd = s->to, .events = POLLOUT };
				poll(&w, 1, 1);
				continue;
			}
			head++;
		}
		if (head != tail) {
			uint64_t wait = ring[head % SLOTS].due - now();
			if ((int64_t)wait <= SPIN_NS)
				continue;	/* spin: the frame is nearly due */
			uint64_t sleep = wait - SPIN_NS;
			struct timespec ts = { (time_t)(sleep / 1000000000), (long)(sleep % 1000000000) };
			ppoll(p, 2, &ts, NULL);
		} else {
			ppoll(p, 2, NULL, NULL);
		}
	}
	return 0;
}
