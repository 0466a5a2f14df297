/* netbench - UDP throughput against a host peer, measured in the guest
 * with the TSC.
 *
 * dir=tx: resolve peer= (ARP, 5 s), print "kvmm-guest: netbench ready
 * dir=tx ...", then send datagrams of size= payload bytes to peer:port as
 * fast as the TX queue takes them for seconds= (one notification per
 * batch; completions reclaimed as the queue fills), then three datagrams
 * "STOP". The payload starts with a little-endian u64 sequence number.
 * dir=rx: print "kvmm-guest: netbench ready dir=rx ...", wait up to wait=
 * seconds for the first datagram to port=, then count datagrams for
 * seconds= from the first one, or until one whose payload is "STOP". ARP
 * and pings are answered meanwhile.
 *
 * Parameters: peer=A.B.C.D (needed for tx), port=P (9000), dir=tx|rx (tx),
 * size=BYTES (1400; at most 1472), seconds=S (2), wait=S (10), nic=I (0),
 * ip=, gw= (net.h), poll=1, mrg_rxbuf=0, event_idx=0, indirect=0.
 * Verdict: RESULT netbench PASS dir=tx peer=10.0.0.1 port=9000 size=1400
 *          packets=N bytes=B us=T pps=N mbps=M.MMM [tx_waits=N kicks=N]
 *          [stop=datagram|time] [dropped=N]
 *      or  RESULT netbench FAIL error=... */
#include "cmdline.h"
#include "console.h"
#include "fmt.h"
#include "kernel.h"
#include "modes.h"
#include "net.h"
#include "string.h"
#include "timer.h"
#include "x86.h"

#define RESOLVE_US 5000000
#define STOP_COPIES 3

struct rx_state {
	u16 port;
	u64 packets, bytes, first, last;
	bool stop;
};

static void on_udp(struct netif *nif, const u8 *src_mac, u32 src_ip, u16 sport, u16 dport, const u8 *data, u32 len,
		   void *ctx)
{
	struct rx_state *s = ctx;

	(void)nif;
	(void)src_mac;
	(void)src_ip;
	(void)sport;
	if (dport != s->port)
		return;
	if (len == 4 && memcmp(data, "STOP", 4) == 0) {
		s->stop = true;
		return;
	}
	u64 now = rdtsc();
	if (!s->packets)
		s->first = now;
	s->last = now;
	s->packets++;
	s->bytes += len;
}

static noreturn void report(const char *dir, u32 peer, u16 port, u64 size, u64 packets, u64 bytes, u64 cycles, const char *extra)
{
	char ip[16];
	u64 us = tsc_to_ns(cycles) / 1000;

	if (!us)
		us = 1;
	u64 milli = bytes * 1000 / us;
	finish(true, "dir=%s peer=%s port=%u size=%llu packets=%llu bytes=%llu us=%llu pps=%llu mbps=%llu.%03llu%s", dir,
	       peer ? net_ip_str(peer, ip) : "any", port, size, packets, bytes, us, muldiv64(packets, 1000000, us), milli / 1000,
	       milli % 1000, extra);
}

static noreturn void bench_tx(struct netif *nif, u32 peer, u16 port, u64 size, u64 seconds)
{
	u8 mac[6], payload[UDP_MAX_PAYLOAD];
	char ip[16];

	if (!net_resolve(nif, peer, mac, RESOLVE_US))
		finish(false, "dir=tx error=arp-timeout peer=%s", net_ip_str(peer, ip));
	for (u32 i = 0; i < sizeof(payload); i++)
		payload[i] = (u8)(i * 7);
	kprintf("kvmm-guest: netbench ready dir=tx peer=%s port=%u size=%llu\n", net_ip_str(peer, ip), port, size);

	struct vnet *n = &nif->dev;
	u64 seq = 0, t0 = rdtsc(), t_end = t0 + us_to_tsc(seconds * 1000000), waits = 0;
	u64 kicks0 = n->tx.kicks;
	for (;;) {
		u64 now = rdtsc();
		if (now >= t_end)
			break;
		u32 queued = 0;
		for (;;) {
			memcpy(payload, &seq, sizeof(seq));
			if (!net_udp_queue(nif, mac, peer, port, port, payload, (u32)size))
				break;
			seq++;
			if (++queued == 64) /* a batch: notify, keep the device busy */
				break;
		}
		vnet_tx_kick(n);
		net_poll_nowait(); /* answer ARP / pings from the peer */
		if (!queued) {
			/* ring full: wait for the device to complete some */
			waits++;
			virtio_wait1(&n->tx, 1000000);
		}
	}
	u64 t1 = rdtsc();
	for (int i = 0; i < STOP_COPIES; i++)
		net_udp_send(nif, peer, port, port, "STOP", 4, 100000);
	char extra[64];
	snprintf(extra, sizeof(extra), " tx_waits=%llu kicks=%llu", waits, n->tx.kicks - kicks0);
	report("tx", peer, port, size, seq, seq * size, t1 - t0, extra);
}

static noreturn void bench_rx(struct netif *nif, u32 peer, u16 port, u64 seconds, u64 wait_s)
{
	struct rx_state s = { .port = port };
	char ip[16];

	net_set_udp_handler(on_udp, &s);
	kprintf("kvmm-guest: netbench ready dir=rx ip=%s port=%u\n", net_ip_str(nif->ip, ip), port);
	u64 t_wait = rdtsc() + us_to_tsc(wait_s * 1000000);
	while (!s.packets && !s.stop) {
		u64 now = rdtsc();
		if (now >= t_wait)
			finish(false, "dir=rx error=no-datagram port=%u wait=%llu", port, wait_s);
		net_poll(tsc_to_ns(t_wait - now) / 1000 + 1);
	}
	u64 t_end = s.first + us_to_tsc(seconds * 1000000);
	while (!s.stop) {
		u64 now = rdtsc();
		if (now >= t_end)
			break;
		net_poll(tsc_to_ns(t_end - now) / 1000 + 1);
	}
	char extra[80];
	snprintf(extra, sizeof(extra), " stop=%s dropped=%llu rx_frames=%llu", s.stop ? "datagram" : "time",
		 nif->dropped + nif->dev.rx_bad, nif->dev.rx_frames);
	report("rx", peer, port, s.packets ? s.bytes / s.packets : 0, s.packets, s.bytes, s.last - s.first, extra);
}

noreturn void mode_netbench(void)
{
	char dir[4] = "tx", peer_s[20] = "";
	u32 peer = 0, bad = 0;
	u16 port = (u16)cmdline_get_u64("port", 9000);
	u64 size = cmdline_get_u64("size", 1400), seconds = cmdline_get_u64("seconds", 2);
	u32 nic = (u32)cmdline_get_u64("nic", 0);

	cmdline_get_str("dir", dir, sizeof(dir));
	if (cmdline_get_str("peer", peer_s, sizeof(peer_s)) && !net_parse_ip(peer_s, strlen(peer_s), &peer, NULL))
		finish(false, "error=bad-peer peer=%s", peer_s);
	bool tx = strcmp(dir, "tx") == 0;
	if (!tx && strcmp(dir, "rx"))
		finish(false, "error=bad-dir dir=%s", dir);
	if (tx && !peer)
		finish(false, "dir=tx error=no-peer");
	if (size == 0 || size > UDP_MAX_PAYLOAD || size < 8)
		finish(false, "error=bad-size size=%llu max=%u", size, UDP_MAX_PAYLOAD);
	int n = net_init(cmdline_get_u64("poll", 0) != 0, &bad);
	if (n < 0)
		finish(false, "nic=%u error=init-%s", bad, virtio_strerror(n));
	if ((u32)n <= nic)
		finish(false, "error=no-such-nic nic=%u nics=%d", nic, n);
	net_print_nics();
	struct netif *nif = &nics[nic];
	if (!nif->ip)
		finish(false, "nic=%u error=no-address", nic);
	if (tx)
		bench_tx(nif, peer, port, size, seconds);
	bench_rx(nif, peer, port, seconds, cmdline_get_u64("wait", 10));
}
