/* netecho - answer ARP and pings, and echo UDP datagrams sent to port=P
 * back to their sender (source and destination ports swapped), on every
 * virtio-net NIC with an address, until a datagram whose payload is
 * "STOP" (optionally followed by a newline) arrives (it is echoed too) or
 * seconds= pass.
 *
 * Prints per NIC "kvmm-guest: net<i> mac=... ip=... link=up|down
 * features=0x... mrg=0|1 mtu=N", then "kvmm-guest: netecho ready port=P".
 * Parameters: ip=, ip1=, gw=, ... (see net.h), port=P (7), seconds=S (30;
 * 0 = no limit), poll=1, mrg_rxbuf=0, event_idx=0, indirect=0.
 * Verdict: RESULT netecho PASS rx=<frames> tx=<frames> echoed=N pings=N
 *          arp=N dropped=N merged=N stop=datagram|timeout
 * (merged = frames that arrived in more than one receive buffer)
 *      or  RESULT netecho FAIL error=... */
#include "cmdline.h"
#include "console.h"
#include "kernel.h"
#include "modes.h"
#include "net.h"
#include "string.h"
#include "timer.h"
#include "x86.h"

struct echo_state {
	u16 port;
	u64 echoed;
	bool stop;
};

static bool is_stop(const u8 *d, u32 len)
{
	return (len == 4 || (len == 5 && d[4] == '\n')) && memcmp(d, "STOP", 4) == 0;
}

static void on_udp(struct netif *nif, const u8 *src_mac, u32 src_ip, u16 sport, u16 dport, const u8 *data, u32 len,
		   void *ctx)
{
	struct echo_state *s = ctx;

	if (dport != s->port)
		return;
	if (net_udp_queue(nif, src_mac, src_ip, dport, sport, data, len)) {
		vnet_tx_kick(&nif->dev);
		s->echoed++;
	}
	if (is_stop(data, len))
		s->stop = true;
}

noreturn void mode_netecho(void)
{
	struct echo_state s = { .port = (u16)cmdline_get_u64("port", 7) };
	u64 seconds = cmdline_get_u64("seconds", 30);
	u32 bad = 0;
	int n = net_init(cmdline_get_u64("poll", 0) != 0, &bad);

	if (n < 0)
		finish(false, "nic=%u error=init-%s", bad, virtio_strerror(n));
	if (n == 0)
		finish(false, "error=no-virtio-net-device");
	net_print_nics();
	net_set_udp_handler(on_udp, &s);
	kprintf("kvmm-guest: netecho ready port=%u\n", s.port);

	u64 deadline = seconds ? rdtsc() + us_to_tsc(seconds * 1000000) : 0;
	while (!s.stop) {
		u64 wait = WAIT_FOREVER, now = rdtsc();
		if (deadline) {
			if (now >= deadline)
				break;
			wait = tsc_to_ns(deadline - now) / 1000 + 1;
		}
		net_poll(wait);
	}
	u64 rx = 0, tx = 0, pings = 0, arp = 0, dropped = 0, merged = 0;
	for (u32 i = 0; i < nic_count; i++) {
		/* let the last replies go out */
		vnet_tx_reclaim(&nics[i].dev, NULL, NULL);
		rx += nics[i].dev.rx_frames;
		tx += nics[i].dev.tx_frames;
		pings += nics[i].pings_answered;
		arp += nics[i].arp_requests_answered;
		dropped += nics[i].dropped + nics[i].dev.rx_bad;
		merged += nics[i].dev.rx_merged;
	}
	finish(true, "rx=%llu tx=%llu echoed=%llu pings=%llu arp=%llu dropped=%llu merged=%llu stop=%s", rx, tx,
	       s.echoed, pings, arp, dropped, merged, s.stop ? "datagram" : "timeout");
}
