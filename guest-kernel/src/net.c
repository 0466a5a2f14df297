/* net.c - Ethernet, ARP, IPv4, ICMP echo and UDP (RFC 826, 791, 792, 768). */
#include "net.h"

#include "cmdline.h"
#include "console.h"
#include "fmt.h"
#include "string.h"
#include "timer.h"
#include "x86.h"

#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ARP_HTYPE_ETHER 1
#define ARP_OP_REQUEST 1
#define ARP_OP_REPLY 2
#define IPPROTO_ICMP 1
#define IPPROTO_UDP 17
#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
#define IP_TTL 64
#define IP_DF 0x4000
#define IP_MF_OFFSET 0x3fff /* more-fragments flag + fragment offset */
#define ETH_MIN_FRAME 60
#define ARP_RETRY_US 200000
#define TX_SLOT_WAIT_US 100000
#define RX_BUDGET 64

struct netif nics[NET_MAX_NICS];
u32 nic_count;
static udp_rx_fn udp_handler;
static void *udp_ctx;

static const u8 bcast_mac[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static inline u16 be16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static inline u32 be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }
static inline void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static inline void put32(u8 *p, u32 v) { p[0] = (u8)(v >> 24); p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }

/* RFC 1071 one's-complement sum, folded later. */
static u32 csum_add(u32 sum, const u8 *p, u32 len)
{
	for (; len > 1; p += 2, len -= 2)
		sum += be16(p);
	if (len)
		sum += (u32)p[0] << 8;
	return sum;
}

static u16 csum_fold(u32 sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

static u32 udp_pseudo(u32 src, u32 dst, u32 udp_len)
{
	return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + IPPROTO_UDP + udp_len;
}

const char *net_ip_str(u32 ip, char *buf)
{
	snprintf(buf, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 0xff, (ip >> 8) & 0xff, ip & 0xff);
	return buf;
}

const char *net_mac_str(const u8 m[6], char *buf)
{
	snprintf(buf, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
	return buf;
}

bool net_parse_ip(const char *s, size_t len, u32 *ip, u32 *prefix)
{
	u32 v = 0;
	size_t i = 0;

	for (int part = 0; part < 4; part++) {
		u32 octet = 0, digits = 0;
		while (i < len && s[i] >= '0' && s[i] <= '9' && digits < 3) {
			octet = octet * 10 + (u32)(s[i++] - '0');
			digits++;
		}
		if (!digits || octet > 255)
			return false;
		v = v << 8 | octet;
		if (part < 3) {
			if (i >= len || s[i] != '.')
				return false;
			i++;
		}
	}
	u32 p = 24;
	if (i < len && s[i] == '/') {
		u64 n;
		size_t used;
		if (!parse_u64(s + i + 1, len - i - 1, &n, &used) || n > 32)
			return false;
		p = (u32)n;
		i += 1 + used;
	}
	if (i != len)
		return false;
	*ip = v;
	if (prefix)
		*prefix = p;
	return true;
}

static void nic_key(char *buf, size_t size, const char *base, u32 i)
{
	if (i == 0)
		snprintf(buf, size, "%s", base);
	else
		snprintf(buf, size, "%s%u", base, i);
}

static void read_addresses(struct netif *nif)
{
	char key[8], val[40];
	u32 prefix;

	nic_key(key, sizeof(key), "ip", nif->index);
	if (cmdline_get_str(key, val, sizeof(val)) && net_parse_ip(val, strlen(val), &nif->ip, &prefix))
	{
		nif->prefix = prefix;
		nif->mask = prefix ? ~0u << (32 - prefix) : 0;
	}
	nic_key(key, sizeof(key), "gw", nif->index);
	if (cmdline_get_str(key, val, sizeof(val)))
		net_parse_ip(val, strlen(val), &nif->gw, NULL);
}

int net_init(bool poll, u32 *failed_index)
{
	u32 n = virtio_count(VIRTIO_ID_NET);

	if (n > NET_MAX_NICS)
		n = NET_MAX_NICS;
	nic_count = 0;
	for (u32 i = 0; i < n; i++) {
		struct netif *nif = &nics[i];
		memset(nif, 0, sizeof(*nif));
		nif->index = i;
		int err = vnet_open(&nif->dev, i, poll);
		if (err) {
			*failed_index = i;
			return err;
		}
		read_addresses(nif);
		nif->ip_id = (u16)(rdtsc() & 0xffff);
		nic_count++;
	}
	return (int)nic_count;
}

void net_set_udp_handler(udp_rx_fn fn, void *ctx)
{
	udp_handler = fn;
	udp_ctx = ctx;
}

static void arp_learn(struct netif *nif, u32 ip, const u8 *mac)
{
	struct arp_entry *slot = NULL;

	for (int i = 0; i < ARP_ENTRIES; i++) {
		if (nif->arp[i].valid && nif->arp[i].ip == ip) {
			slot = &nif->arp[i];
			break;
		}
		if (!nif->arp[i].valid && !slot)
			slot = &nif->arp[i];
	}
	if (!slot)
		slot = &nif->arp[ip % ARP_ENTRIES];
	slot->ip = ip;
	memcpy(slot->mac, mac, 6);
	slot->valid = true;
}

static bool arp_lookup(struct netif *nif, u32 ip, u8 *mac)
{
	for (int i = 0; i < ARP_ENTRIES; i++)
		if (nif->arp[i].valid && nif->arp[i].ip == ip) {
			memcpy(mac, nif->arp[i].mac, 6);
			return true;
		}
	return false;
}

void net_arp_forget(struct netif *nif, u32 ip)
{
	for (int i = 0; i < ARP_ENTRIES; i++)
		if (nif->arp[i].valid && nif->arp[i].ip == ip)
			nif->arp[i].valid = false;
}

/* Reserve a TX slot, waiting a little for completions if none is free. */
static u8 *tx_slot(struct netif *nif)
{
	u8 *p = vnet_tx_buf(&nif->dev);
	u64 deadline = rdtsc() + us_to_tsc(TX_SLOT_WAIT_US);

	while (!p && rdtsc() < deadline) {
		nif->dev.tx_waits++;
		virtio_wait1(&nif->dev.tx, TX_SLOT_WAIT_US);
		p = vnet_tx_buf(&nif->dev);
	}
	if (!p)
		nif->dropped++;
	return p;
}

static u8 *eth_header(u8 *f, const u8 *dst, const u8 *src, u16 type)
{
	memcpy(f, dst, 6);
	memcpy(f + 6, src, 6);
	put16(f + 12, type);
	return f + ETH_HLEN;
}

static void tx_commit(struct netif *nif, u8 *f, u32 len)
{
	if (len < ETH_MIN_FRAME) {
		memset(f + len, 0, ETH_MIN_FRAME - len);
		len = ETH_MIN_FRAME;
	}
	vnet_tx_commit(&nif->dev, f, len);
}

static void arp_send(struct netif *nif, u16 op, const u8 *dst_mac, const u8 *target_mac, u32 target_ip)
{
	u8 *f = tx_slot(nif);
	if (!f)
		return;
	u8 *a = eth_header(f, dst_mac, nif->dev.mac, ETH_P_ARP);
	put16(a, ARP_HTYPE_ETHER);
	put16(a + 2, ETH_P_IP);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, op);
	memcpy(a + 8, nif->dev.mac, 6);
	put32(a + 14, nif->ip);
	memcpy(a + 18, target_mac, 6);
	put32(a + 24, target_ip);
	tx_commit(nif, f, ETH_HLEN + 28);
	vnet_tx_kick(&nif->dev);
}

static void arp_input(struct netif *nif, const u8 *a, u32 len)
{
	if (len < 28 || be16(a) != ARP_HTYPE_ETHER || be16(a + 2) != ETH_P_IP || a[4] != 6 || a[5] != 4)
		return;
	u16 op = be16(a + 6);
	u32 sender_ip = be32(a + 14), target_ip = be32(a + 24);
	const u8 *sender_mac = a + 8;

	if (!nif->ip || target_ip != nif->ip) {
		if (op == ARP_OP_REPLY && sender_ip)
			arp_learn(nif, sender_ip, sender_mac); /* e.g. gratuitous */
		return;
	}
	if (sender_ip)
		arp_learn(nif, sender_ip, sender_mac);
	if (op == ARP_OP_REQUEST) {
		nif->arp_requests_answered++;
		arp_send(nif, ARP_OP_REPLY, sender_mac, sender_mac, sender_ip);
	} else if (op == ARP_OP_REPLY) {
		nif->arp_replies++;
	}
}

/* IPv4 header at p for a payload of len bytes; returns the payload. */
static u8 *ip_header(struct netif *nif, u8 *p, u8 proto, u32 dst, u32 len)
{
	p[0] = 0x45;
	p[1] = 0;
	put16(p + 2, (u16)(IP_HLEN + len));
	put16(p + 4, nif->ip_id++);
	put16(p + 6, IP_DF);
	p[8] = IP_TTL;
	p[9] = proto;
	put16(p + 10, 0);
	put32(p + 12, nif->ip);
	put32(p + 16, dst);
	put16(p + 10, csum_fold(csum_add(0, p, IP_HLEN)));
	return p + IP_HLEN;
}

static void icmp_input(struct netif *nif, const u8 *eth, u32 src, const u8 *icmp, u32 len)
{
	if (len < 8 || csum_fold(csum_add(0, icmp, len)) != 0) {
		nif->dropped++;
		return;
	}
	if (icmp[0] == ICMP_ECHO_REPLY) {
		if (be16(icmp + 4) == nif->ping_id && be16(icmp + 6) == nif->ping_seq)
			nif->ping_ok = true;
		return;
	}
	if (icmp[0] != ICMP_ECHO_REQUEST || len > 1500 - IP_HLEN)
		return;
	u8 *f = tx_slot(nif);
	if (!f)
		return;
	u8 *r = ip_header(nif, eth_header(f, eth + 6, nif->dev.mac, ETH_P_IP), IPPROTO_ICMP, src, len);
	memcpy(r, icmp, len);
	r[0] = ICMP_ECHO_REPLY;
	r[1] = 0;
	put16(r + 2, 0);
	put16(r + 2, csum_fold(csum_add(0, r, len)));
	tx_commit(nif, f, ETH_HLEN + IP_HLEN + len);
	vnet_tx_kick(&nif->dev);
	nif->pings_answered++;
}

static void udp_input(struct netif *nif, const u8 *eth, u32 src, u32 dst, const u8 *u, u32 len)
{
	if (len < UDP_HLEN || be16(u + 4) < UDP_HLEN || be16(u + 4) > len) {
		nif->dropped++;
		return;
	}
	len = be16(u + 4);
	if (be16(u + 6) && csum_fold(csum_add(udp_pseudo(src, dst, len), u, len)) != 0) {
		nif->dropped++;
		return;
	}
	nif->udp_rx++;
	if (udp_handler)
		udp_handler(nif, eth + 6, src, be16(u), be16(u + 2), u + UDP_HLEN, len - UDP_HLEN, udp_ctx);
}

static void ip_input(struct netif *nif, const u8 *eth, const u8 *p, u32 len)
{
	if (len < IP_HLEN || (p[0] >> 4) != 4)
		return;
	u32 ihl = (u32)(p[0] & 0xf) * 4, total = be16(p + 2);
	if (ihl < IP_HLEN || total < ihl || total > len || csum_fold(csum_add(0, p, ihl)) != 0) {
		nif->dropped++;
		return;
	}
	if (be16(p + 6) & IP_MF_OFFSET) {
		nif->dropped++; /* no reassembly */
		return;
	}
	u32 src = be32(p + 12), dst = be32(p + 16);
	bool bcast = dst == 0xffffffffu || (nif->mask && dst == (nif->ip | ~nif->mask));
	if (!nif->ip || (dst != nif->ip && !bcast))
		return;
	if (p[9] == IPPROTO_ICMP && !bcast)
		icmp_input(nif, eth, src, p + ihl, total - ihl);
	else if (p[9] == IPPROTO_UDP)
		udp_input(nif, eth, src, dst, p + ihl, total - ihl);
}

static void eth_input(void *ctx, struct vnet *n, u8 *f, u32 len)
{
	struct netif *nif = ctx;

	(void)n;
	if (memcmp(f, nif->dev.mac, 6) && memcmp(f, bcast_mac, 6))
		return;
	u16 type = be16(f + 12);
	if (type == ETH_P_ARP)
		arp_input(nif, f + ETH_HLEN, len - ETH_HLEN);
	else if (type == ETH_P_IP)
		ip_input(nif, f, f + ETH_HLEN, len - ETH_HLEN);
}

u32 net_poll_nowait(void)
{
	u32 total = 0;

	for (u32 i = 0; i < nic_count; i++)
		total += vnet_rx(&nics[i].dev, eth_input, &nics[i], RX_BUDGET);
	return total;
}

u32 net_poll(u64 timeout_us)
{
	u32 got = net_poll_nowait();
	if (got || !nic_count)
		return got;
	struct virtq *vqs[NET_MAX_NICS];
	for (u32 i = 0; i < nic_count; i++)
		vqs[i] = &nics[i].dev.rx;
	if (virtio_wait(vqs, nic_count, timeout_us) == VIRTIO_WAIT_CONFIG) {
		/* link change, or the device gave up on us: start it again */
		for (u32 i = 0; i < nic_count; i++)
			if (virtio_needs_reset(&nics[i].dev.dev)) {
				nics[i].resets++;
				vnet_reinit(&nics[i].dev);
			}
	}
	return net_poll_nowait();
}

static u32 next_hop(struct netif *nif, u32 ip)
{
	if (nif->gw && nif->mask && (ip & nif->mask) != (nif->ip & nif->mask))
		return nif->gw;
	return ip;
}

bool net_resolve(struct netif *nif, u32 ip, u8 mac[6], u64 timeout_us)
{
	u32 hop = next_hop(nif, ip);
	u64 start = rdtsc(), deadline = start + us_to_tsc(timeout_us), next_try = start;
	static const u8 zero_mac[6];

	for (;;) {
		if (arp_lookup(nif, hop, mac))
			return true;
		u64 now = rdtsc();
		if (now >= deadline)
			return false;
		if (now >= next_try) {
			arp_send(nif, ARP_OP_REQUEST, bcast_mac, zero_mac, hop);
			next_try = now + us_to_tsc(ARP_RETRY_US);
		}
		u64 until = next_try < deadline ? next_try : deadline;
		net_poll(tsc_to_ns(until - now) / 1000 + 1);
	}
}

bool net_ping(struct netif *nif, u32 ip, u64 timeout_us)
{
	u8 mac[6];
	u64 deadline = rdtsc() + us_to_tsc(timeout_us);

	if (!net_resolve(nif, ip, mac, timeout_us))
		return false;
	u8 *f = tx_slot(nif);
	if (!f)
		return false;
	nif->ping_id = (u16)(0x6b00 | nif->index);
	nif->ping_seq++;
	nif->ping_ok = false;
	u32 len = 8 + 32;
	u8 *icmp = ip_header(nif, eth_header(f, mac, nif->dev.mac, ETH_P_IP), IPPROTO_ICMP, ip, len);
	icmp[0] = ICMP_ECHO_REQUEST;
	icmp[1] = 0;
	put16(icmp + 2, 0);
	put16(icmp + 4, nif->ping_id);
	put16(icmp + 6, nif->ping_seq);
	for (u32 i = 8; i < len; i++)
		icmp[i] = (u8)i;
	put16(icmp + 2, csum_fold(csum_add(0, icmp, len)));
	tx_commit(nif, f, ETH_HLEN + IP_HLEN + len);
	vnet_tx_kick(&nif->dev);
	while (!nif->ping_ok) {
		u64 now = rdtsc();
		if (now >= deadline)
			return false;
		net_poll(tsc_to_ns(deadline - now) / 1000 + 1);
	}
	return true;
}

bool net_udp_queue(struct netif *nif, const u8 dst_mac[6], u32 dst_ip, u16 sport, u16 dport, const void *data,
		   u32 len)
{
	if (len > UDP_MAX_PAYLOAD)
		return false;
	u8 *f = vnet_tx_buf(&nif->dev);
	if (!f)
		return false;
	u32 ulen = UDP_HLEN + len;
	u8 *u = ip_header(nif, eth_header(f, dst_mac, nif->dev.mac, ETH_P_IP), IPPROTO_UDP, dst_ip, ulen);
	put16(u, sport);
	put16(u + 2, dport);
	put16(u + 4, (u16)ulen);
	put16(u + 6, 0);
	memcpy(u + UDP_HLEN, data, len);
	u16 c = csum_fold(csum_add(udp_pseudo(nif->ip, dst_ip, ulen), u, ulen));
	put16(u + 6, c ? c : 0xffff); /* RFC 768: a computed 0 is sent as all ones */
	tx_commit(nif, f, ETH_HLEN + IP_HLEN + ulen);
	nif->udp_tx++;
	return true;
}

bool net_udp_send(struct netif *nif, u32 dst_ip, u16 sport, u16 dport, const void *data, u32 len, u64 timeout_us)
{
	u8 mac[6];
	u64 deadline = rdtsc() + us_to_tsc(timeout_us);

	if (!net_resolve(nif, dst_ip, mac, timeout_us))
		return false;
	while (!net_udp_queue(nif, mac, dst_ip, sport, dport, data, len)) {
		u64 now = rdtsc();
		if (len > UDP_MAX_PAYLOAD || now >= deadline)
			return false;
		virtio_wait1(&nif->dev.tx, tsc_to_ns(deadline - now) / 1000 + 1);
	}
	vnet_tx_kick(&nif->dev);
	return true;
}

void net_print_nics(void)
{
	for (u32 i = 0; i < nic_count; i++) {
		struct netif *nif = &nics[i];
		char mac[18], ip[16];
		kprintf("kvmm-guest: net%u base=0x%llx irq=%u mac=%s ip=%s/%u link=%s features=0x%llx mrg=%d mtu=%u "
			"queues=%u/%u\n",
			i, nif->dev.dev.base, nif->dev.dev.gsi, net_mac_str(nif->dev.mac, mac), net_ip_str(nif->ip, ip),
			nif->prefix, vnet_link_up(&nif->dev) ? "up" : "down",
			nif->dev.dev.features, nif->dev.mrg, nif->dev.mtu, nif->dev.rx.num, nif->dev.tx.num);
	}
}
