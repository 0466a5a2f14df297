/* net.h - a minimal IPv4 stack over virtio-net: Ethernet II, ARP (replies
 * to requests for our address, resolves peers), IPv4 (header checksum
 * checked and generated; no fragments, no options sent), ICMP echo
 * (answers requests, can ping), UDP (checksummed both ways; a zero RX
 * checksum is accepted as "none").
 *
 * Addresses come from the command line per NIC, in virtio-mmio order:
 * ip=A.B.C.D[/LEN] for NIC 0, ip1= for NIC 1, ...; gw= / gw1= ... give an
 * optional gateway (used for destinations outside the subnet). A NIC
 * without an address is brought up but does not answer. Addresses are
 * kept in host byte order. */
#ifndef KVMM_GUEST_NET_H
#define KVMM_GUEST_NET_H

#include "types.h"
#include "virtio_net.h"

#define NET_MAX_NICS 4
#define ARP_ENTRIES 16
#define ETH_HLEN 14
#define IP_HLEN 20
#define UDP_HLEN 8
#define UDP_MAX_PAYLOAD (1500 - IP_HLEN - UDP_HLEN) /* 1472 at MTU 1500 */

struct arp_entry {
	u32 ip;
	u8 mac[6];
	bool valid;
};

struct netif {
	struct vnet dev;
	u32 index;
	u32 ip, mask, gw;
	u32 prefix;
	struct arp_entry arp[ARP_ENTRIES];
	u16 ip_id;
	u16 ping_id, ping_seq; /* outstanding net_ping() */
	bool ping_ok;
	/* counters */
	u64 arp_replies, arp_requests_answered, pings_answered, udp_rx, udp_tx, dropped;
	u64 resets; /* DEVICE_NEEDS_RESET recoveries in net_poll() */
};

typedef void (*udp_rx_fn)(struct netif *nif, const u8 *src_mac, u32 src_ip, u16 sport, u16 dport, const u8 *data,
			  u32 len, void *ctx);

extern struct netif nics[NET_MAX_NICS];
extern u32 nic_count;

/* Open every virtio-net device (at most NET_MAX_NICS) and read their
 * addresses from the command line. Returns the number opened, or a
 * negative VIRTIO_E_* code (*failed_index = the NIC). */
int net_init(bool poll, u32 *failed_index);
void net_set_udp_handler(udp_rx_fn fn, void *ctx);

/* Handle received frames on every NIC; if none were waiting, wait up to
 * timeout_us for one (halting, or polling in poll mode). A NIC that set
 * DEVICE_NEEDS_RESET meanwhile is reset and re-initialised. Returns the
 * number of frames handled. */
u32 net_poll(u64 timeout_us);
/* Handle what is already there, without waiting. */
u32 net_poll_nowait(void);

/* Resolve an address (the gateway's for destinations off the subnet)
 * with ARP; true and *mac on success. */
bool net_resolve(struct netif *nif, u32 ip, u8 mac[6], u64 timeout_us);
/* Forget a cache entry (to force a fresh ARP exchange). */
void net_arp_forget(struct netif *nif, u32 ip);
/* ICMP echo request / reply. */
bool net_ping(struct netif *nif, u32 ip, u64 timeout_us);

/* Build a UDP datagram into a TX slot and queue it (no notification):
 * returns false if no slot is free. */
bool net_udp_queue(struct netif *nif, const u8 dst_mac[6], u32 dst_ip, u16 sport, u16 dport, const void *data,
		   u32 len);
/* Queue + notify, resolving the destination first. */
bool net_udp_send(struct netif *nif, u32 dst_ip, u16 sport, u16 dport, const void *data, u32 len, u64 timeout_us);

/* One "kvmm-guest: net<i> ..." line per NIC. */
void net_print_nics(void);

/* "A.B.C.D" -> host order; false if malformed. */
bool net_parse_ip(const char *s, size_t len, u32 *ip, u32 *prefix);
/* Format into buf (at least 16 bytes). */
const char *net_ip_str(u32 ip, char *buf);
const char *net_mac_str(const u8 mac[6], char *buf); /* at least 18 bytes */

#endif
