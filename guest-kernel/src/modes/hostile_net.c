/* hostile-net - malformed chains on the virtio-net transmit queue, and
 * oversized frames, one case at a time.
 *
 * Each case builds a broken chain (or ring state) by hand, notifies, and
 * waits up to timeout_ms for the device to either return the chain
 * ("completed": transmit has no status byte, so returning it means the
 * device dropped or sent it without harm) or set DEVICE_NEEDS_RESET (then
 * the driver resets and re-initialises it, re-posting receive buffers).
 * Neither in time is a hang. Ring states that cannot be completed at all
 * (avail index ahead, bogus head) accept only DEVICE_NEEDS_RESET. Frames
 * in the cases go to 02:00:00:00:00:01 with EtherType 0x88b5 (local
 * experimental), so a device that sends them bothers nobody.
 *
 * After every case the NIC must still work: a valid frame is sent and must
 * complete, and with peer= the peer's address is resolved afresh (ARP) and
 * pinged (ICMP echo), which needs both queues. linger=S then answers ARP
 * and pings for S seconds before the verdict (so the host can ping too).
 *
 * Cases: next-out-of-range, next-loop, addr-outside-ram, addr-len-wraps,
 * huge-len, total-len-overflow, header-device-writable, short-header,
 * avail-idx-ahead, avail-head-out-of-range, oversized-chain (a 12-byte
 * header + 17 x 4 KiB = 69632-byte frame), oversized-single (header +
 * one 70000-byte buffer), and with VIRTIO_RING_F_INDIRECT_DESC:
 * indirect-in-indirect, indirect-bad-length, indirect-zero-length.
 *
 * Parameters: nic=I (0), ip=, peer=A.B.C.D (optional), timeout_ms=T
 * (1000), linger=S (0), case=NAME, poll=1, mrg_rxbuf=0, event_idx=0,
 * indirect=0.
 * Verdict: RESULT hostile-net PASS cases=N reset=K completed=M checks=C
 *          peer=ok|none skipped=S
 *      or  RESULT hostile-net FAIL ... failed=<case>:<why>[,...] */
#include "cmdline.h"
#include "console.h"
#include "fmt.h"
#include "kernel.h"
#include "layout.h"
#include "modes.h"
#include "net.h"
#include "palloc.h"
#include "string.h"
#include "timer.h"
#include "x86.h"

#define OUTSIDE_RAM (1ull << 46)
#define FRAME_LEN 60
#define OVERSIZE_DESCS 17
#define OVERSIZE_SINGLE 70000
#define BIG_BYTES (OVERSIZE_DESCS * 4096 + 4096)
#define ETH_P_LOCAL 0x88b5

struct nctx {
	struct netif *nif;
	struct vnet *n;
	u8 *hdr;   /* VNET_HDR_LEN zero bytes */
	u8 *frame; /* a valid FRAME_LEN frame */
	u8 *big;   /* BIG_BYTES, starting with a frame header */
	struct virtq_desc *t1, *t2;
};

enum expect { EXPECT_ANY, EXPECT_RESET };

struct ncase {
	const char *name;
	bool indirect;
	enum expect expect;
	u16 ndesc; /* descriptors the case takes from the free list */
	void (*build)(struct nctx *c, u16 *ids);
};

static u8 raw_token; /* marks the case's chain in the TX queue */

static u64 pa(const void *p) { return (u64)(uintptr_t)p; }

static void set(volatile struct virtq_desc *d, u64 addr, u32 len, u16 flags, u16 next)
{
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

static volatile struct virtq_desc *D(struct nctx *c, u16 id) { return &c->n->tx.desc[id]; }

static void publish(struct nctx *c, u16 head) { virtq_raw_publish(&c->n->tx, head, head, &raw_token); }

/* header, frame */
static void chain2(struct nctx *c, u16 *ids)
{
	set(D(c, ids[0]), pa(c->hdr), VNET_HDR_LEN, VIRTQ_DESC_F_NEXT, ids[1]);
	set(D(c, ids[1]), pa(c->frame), FRAME_LEN, 0, 0);
}

static void n_next_out_of_range(struct nctx *c, u16 *ids)
{
	chain2(c, ids);
	D(c, ids[1])->flags = VIRTQ_DESC_F_NEXT;
	D(c, ids[1])->next = 0x7fff;
	publish(c, ids[0]);
}

static void n_next_loop(struct nctx *c, u16 *ids)
{
	chain2(c, ids);
	D(c, ids[1])->flags = VIRTQ_DESC_F_NEXT;
	D(c, ids[1])->next = ids[2];
	set(D(c, ids[2]), pa(c->frame), FRAME_LEN, VIRTQ_DESC_F_NEXT, ids[1]);
	publish(c, ids[0]);
}

static void n_addr_outside_ram(struct nctx *c, u16 *ids)
{
	chain2(c, ids);
	D(c, ids[1])->addr = OUTSIDE_RAM;
	publish(c, ids[0]);
}

static void n_addr_len_wraps(struct nctx *c, u16 *ids)
{
	chain2(c, ids);
	D(c, ids[1])->addr = 0xfffffffffffffe00ull;
	D(c, ids[1])->len = 0x400;
	publish(c, ids[0]);
}

static void n_huge_len(struct nctx *c, u16 *ids)
{
	chain2(c, ids);
	D(c, ids[1])->len = 0xfffffe00u;
	publish(c, ids[0]);
}

static void n_total_len_overflow(struct nctx *c, u16 *ids)
{
	set(D(c, ids[0]), pa(c->hdr), VNET_HDR_LEN, VIRTQ_DESC_F_NEXT, ids[1]);
	set(D(c, ids[1]), pa(c->frame), 0x80000000u, VIRTQ_DESC_F_NEXT, ids[2]);
	set(D(c, ids[2]), pa(c->frame), 0x80000000u, 0, 0);
	publish(c, ids[0]);
}

static void n_header_writable(struct nctx *c, u16 *ids)
{
	chain2(c, ids);
	D(c, ids[0])->flags = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT;
	D(c, ids[1])->flags = VIRTQ_DESC_F_WRITE;
	publish(c, ids[0]);
}

static void n_short_header(struct nctx *c, u16 *ids)
{
	set(D(c, ids[0]), pa(c->hdr), 4, 0, 0);
	publish(c, ids[0]);
}

static void n_avail_idx_ahead(struct nctx *c, u16 *ids)
{
	(void)ids;
	barrier();
	c->n->tx.avail->idx = (u16)(c->n->tx.avail_idx + 1000);
}

static void n_avail_head_out_of_range(struct nctx *c, u16 *ids)
{
	chain2(c, ids);
	virtq_raw_publish(&c->n->tx, (u16)(c->n->tx.num + 3), ids[0], &raw_token);
}

static void n_oversized_chain(struct nctx *c, u16 *ids)
{
	set(D(c, ids[0]), pa(c->hdr), VNET_HDR_LEN, VIRTQ_DESC_F_NEXT, ids[1]);
	for (u16 i = 1; i <= OVERSIZE_DESCS; i++)
		set(D(c, ids[i]), pa(c->big) + (u64)(i - 1) * 4096, 4096, i < OVERSIZE_DESCS ? VIRTQ_DESC_F_NEXT : 0,
		    i < OVERSIZE_DESCS ? ids[i + 1] : 0);
	publish(c, ids[0]);
}

static void n_oversized_single(struct nctx *c, u16 *ids)
{
	set(D(c, ids[0]), pa(c->hdr), VNET_HDR_LEN, VIRTQ_DESC_F_NEXT, ids[1]);
	set(D(c, ids[1]), pa(c->big), OVERSIZE_SINGLE, 0, 0);
	publish(c, ids[0]);
}

static void table2(struct nctx *c, struct virtq_desc *t)
{
	set(&t[0], pa(c->hdr), VNET_HDR_LEN, VIRTQ_DESC_F_NEXT, 1);
	set(&t[1], pa(c->frame), FRAME_LEN, 0, 0);
}

static void n_indirect_in_indirect(struct nctx *c, u16 *ids)
{
	table2(c, c->t2);
	set(&c->t1[0], pa(c->t2), 2 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	barrier();
	set(D(c, ids[0]), pa(c->t1), 16, VIRTQ_DESC_F_INDIRECT, 0);
	publish(c, ids[0]);
}

static void n_indirect_bad_length(struct nctx *c, u16 *ids)
{
	table2(c, c->t1);
	barrier();
	set(D(c, ids[0]), pa(c->t1), 24, VIRTQ_DESC_F_INDIRECT, 0); /* 1.5 entries */
	publish(c, ids[0]);
}

static void n_indirect_zero_length(struct nctx *c, u16 *ids)
{
	table2(c, c->t1);
	barrier();
	set(D(c, ids[0]), pa(c->t1), 0, VIRTQ_DESC_F_INDIRECT, 0);
	publish(c, ids[0]);
}

static const struct ncase cases[] = {
	{ "next-out-of-range", false, EXPECT_ANY, 2, n_next_out_of_range },
	{ "next-loop", false, EXPECT_ANY, 3, n_next_loop },
	{ "addr-outside-ram", false, EXPECT_ANY, 2, n_addr_outside_ram },
	{ "addr-len-wraps", false, EXPECT_ANY, 2, n_addr_len_wraps },
	{ "huge-len", false, EXPECT_ANY, 2, n_huge_len },
	{ "total-len-overflow", false, EXPECT_ANY, 3, n_total_len_overflow },
	{ "header-device-writable", false, EXPECT_ANY, 2, n_header_writable },
	{ "short-header", false, EXPECT_ANY, 1, n_short_header },
	{ "avail-idx-ahead", false, EXPECT_RESET, 0, n_avail_idx_ahead },
	{ "avail-head-out-of-range", false, EXPECT_RESET, 2, n_avail_head_out_of_range },
	{ "oversized-chain", false, EXPECT_ANY, 1 + OVERSIZE_DESCS, n_oversized_chain },
	{ "oversized-single", false, EXPECT_ANY, 2, n_oversized_single },
	{ "indirect-in-indirect", true, EXPECT_ANY, 1, n_indirect_in_indirect },
	{ "indirect-bad-length", true, EXPECT_ANY, 1, n_indirect_bad_length },
	{ "indirect-zero-length", true, EXPECT_ANY, 1, n_indirect_zero_length },
};

static char failed[300];
static size_t failed_len;

static void add_failure(const char *name, const char *why)
{
	int n = snprintf(failed + failed_len, sizeof(failed) - failed_len, "%s%s:%s", failed_len ? "," : "", name, why);
	if (n > 0 && failed_len + (size_t)n < sizeof(failed))
		failed_len += (size_t)n;
}

static void on_raw(void *token, void *ctx)
{
	if (token == &raw_token)
		*(bool *)ctx = true;
}

enum outcome { OUT_COMPLETED, OUT_RESET, OUT_HANG };

static enum outcome wait_case(struct vnet *n, u64 timeout_us)
{
	u64 deadline = rdtsc() + us_to_tsc(timeout_us);
	bool done = false;

	for (;;) {
		vnet_tx_reclaim(n, on_raw, &done);
		if (done)
			return OUT_COMPLETED;
		u64 now = rdtsc();
		if (now >= deadline)
			return virtio_needs_reset(&n->dev) ? OUT_RESET : OUT_HANG;
		enum virtio_wait_result w = virtio_wait1(&n->tx, tsc_to_ns(deadline - now) / 1000 + 1);
		if (w != VIRTIO_WAIT_USED && virtio_needs_reset(&n->dev))
			return OUT_RESET;
	}
}

/* A valid frame must be sent and completed. */
static bool tx_check(struct nctx *c, u64 timeout_us)
{
	struct vnet *n = c->n;
	u64 deadline = rdtsc() + us_to_tsc(timeout_us);

	if (!vnet_send(n, c->frame, FRAME_LEN, timeout_us))
		return false;
	for (;;) {
		vnet_tx_reclaim(n, NULL, NULL);
		if (n->tx_nfree == n->tx_nslots)
			return true;
		u64 now = rdtsc();
		if (now >= deadline)
			return false;
		virtio_wait1(&n->tx, tsc_to_ns(deadline - now) / 1000 + 1);
	}
}


noreturn void mode_hostile_net(void)
{
	u32 nic = (u32)cmdline_get_u64("nic", 0), bad = 0, peer = 0;
	u64 timeout_us = cmdline_get_u64("timeout_ms", 1000) * 1000;
	u64 linger = cmdline_get_u64("linger", 0);
	char only[40] = "", peer_s[20] = "";
	cmdline_get_str("case", only, sizeof(only));
	if (cmdline_get_str("peer", peer_s, sizeof(peer_s)) && !net_parse_ip(peer_s, strlen(peer_s), &peer, NULL))
		finish(false, "error=bad-peer peer=%s", peer_s);

	int nn = net_init(cmdline_get_u64("poll", 0) != 0, &bad);
	if (nn < 0)
		finish(false, "nic=%u error=init-%s", bad, virtio_strerror(nn));
	if ((u32)nn <= nic)
		finish(false, "error=no-such-nic nic=%u nics=%d", nic, nn);
	net_print_nics();
	struct nctx c = { .nif = &nics[nic], .n = &nics[nic].dev };
	c.hdr = palloc(PAGE_SIZE, PAGE_SIZE);
	c.frame = palloc(PAGE_SIZE, PAGE_SIZE);
	c.big = palloc(BIG_BYTES, PAGE_SIZE);
	c.t1 = palloc(PAGE_SIZE, PAGE_SIZE);
	c.t2 = palloc(PAGE_SIZE, PAGE_SIZE);
	if (!c.hdr || !c.frame || !c.big || !c.t1 || !c.t2)
		finish(false, "error=no-memory");
	static const u8 junk_dst[6] = { 0x02, 0, 0, 0, 0, 0x01 };
	u8 *bufs[2] = { c.frame, c.big };
	for (int i = 0; i < 2; i++) {
		memcpy(bufs[i], junk_dst, 6);
		memcpy(bufs[i] + 6, c.n->mac, 6);
		bufs[i][12] = ETH_P_LOCAL >> 8;
		bufs[i][13] = ETH_P_LOCAL & 0xff;
	}
	if (peer && !net_ping(c.nif, peer, 5000000))
		finish(false, "error=peer-unreachable-before-tests peer=%s", peer_s);
	bool indirect = virtio_has(&c.n->dev, VIRTIO_RING_F_INDIRECT_DESC);
	kprintf("kvmm-guest: hostile-net nic=%u queue=%u indirect=%d peer=%s timeout_ms=%llu\n", nic, c.n->tx.num,
		indirect, peer ? peer_s : "none", timeout_us / 1000);

	u32 ncases = 0, resets = 0, completed = 0, checks = 0, skipped = 0;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct ncase *nc = &cases[i];
		if (only[0] && strcmp(only, nc->name))
			continue;
		if (nc->indirect && !indirect) {
			skipped++;
			continue;
		}
		ncases++;
		vnet_tx_reclaim(c.n, NULL, NULL);
		u16 ids[1 + OVERSIZE_DESCS];
		if (nc->ndesc && !virtq_raw_alloc(&c.n->tx, nc->ndesc, ids))
			finish(false, "case=%s error=no-free-descriptors", nc->name);
		memset(c.t1, 0, PAGE_SIZE);
		memset(c.t2, 0, PAGE_SIZE);
		u64 bogus0 = c.n->tx.bad_used;
		nc->build(&c, ids);
		virtio_notify(&c.n->dev, c.n->tx.index);

		enum outcome o = wait_case(c.n, timeout_us);
		u64 bogus = c.n->tx.bad_used - bogus0;
		const char *fail = NULL;
		if (bogus) {
			fail = "used-entries-never-made-available";
		} else if (o == OUT_COMPLETED) {
			completed++;
			if (nc->expect == EXPECT_RESET)
				fail = "completed";
		} else if (o == OUT_RESET) {
			resets++;
		} else if (!fail) {
			fail = "hang";
		}
		bool reinit = o != OUT_COMPLETED || fail;
		if (reinit) {
			int err = vnet_reinit(c.n);
			if (err)
				finish(false, "case=%s error=reinit-%s", nc->name, virtio_strerror(err));
		}
		const char *health = "ok";
		if (!tx_check(&c, timeout_us)) {
			health = "tx-stuck";
		} else if (peer) {
			net_arp_forget(c.nif, peer);
			if (!net_ping(c.nif, peer, 2 * timeout_us))
				health = "peer-ping-failed";
		}
		if (!strcmp(health, "ok"))
			checks++;
		else
			add_failure(nc->name, health);
		if (fail)
			add_failure(nc->name, fail);
		kprintf("kvmm-guest: hostile-net case=%s outcome=%s%s bogus_used=%llu check=%s%s%s\n", nc->name,
			o == OUT_COMPLETED ? "completed" : o == OUT_RESET ? "needs-reset" : "hang", reinit ? " reinit" : "",
			bogus, health, fail ? " FAIL=" : "", fail ? fail : "");
		if (strcmp(health, "ok") && virtio_needs_reset(&c.n->dev))
			vnet_reinit(c.n);
	}
	if (ncases == 0)
		finish(false, "error=no-such-case case=%s", only);
	if (linger) {
		kprintf("kvmm-guest: hostile-net lingering %llu s (answering ARP and pings)\n", linger);
		u64 end = rdtsc() + us_to_tsc(linger * 1000000);
		for (u64 now; (now = rdtsc()) < end;)
			net_poll(tsc_to_ns(end - now) / 1000 + 1);
	}
	const char *peer_state = peer ? "ok" : "none";
	if (failed_len)
		finish(false, "cases=%u reset=%u completed=%u checks=%u peer=%s skipped=%u failed=%s", ncases, resets,
		       completed, checks, peer_state, skipped, failed);
	finish(true, "cases=%u reset=%u completed=%u checks=%u peer=%s skipped=%u", ncases, resets, completed, checks,
	       peer_state, skipped);
}
