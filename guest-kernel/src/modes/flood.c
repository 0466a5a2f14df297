/* flood - drive the first disk and the first NIC as hard as possible at
 * once (for isolation tests: a guest that floods every device it has).
 * Disk writes are kept qd deep while UDP datagrams are queued to peer:port
 * whenever the TX ring has room; when neither device takes more (both
 * throttled or busy), the CPU halts until a completion or 5 ms passes.
 *
 * Parameters: peer=A.B.C.D (required), port=P (9000), size=BYTES (1400),
 * bs=BYTES (65536), qd=N (4), seconds=S (3), ip= (net.h).
 * Verdict: RESULT flood PASS us= disk_ops= disk_bytes= packets= net_bytes=
 *      or  RESULT flood FAIL error=... */
#include "cmdline.h"
#include "console.h"
#include "kernel.h"
#include "layout.h"
#include "modes.h"
#include "net.h"
#include "palloc.h"
#include "pattern.h"
#include "string.h"
#include "timer.h"
#include "virtio_blk.h"
#include "x86.h"

static struct vblk disk;

noreturn void mode_flood(void)
{
	char peer_text[20] = "";
	u32 peer = 0;
	cmdline_get_str("peer", peer_text, sizeof(peer_text));
	if (!net_parse_ip(peer_text, strlen(peer_text), &peer, NULL) || !peer)
		finish(false, "error=need-peer");
	u16 port = (u16)cmdline_get_u64("port", 9000);
	u64 size = cmdline_get_u64("size", 1400);
	u64 bs = cmdline_get_u64("bs", 65536);
	u64 qd = cmdline_get_u64("qd", 4);
	u64 seconds = cmdline_get_u64("seconds", 3);
	if (size == 0 || size > UDP_MAX_PAYLOAD || bs == 0 || bs % SECTOR_SIZE || qd == 0)
		finish(false, "error=bad-parameters");

	u32 failed = 0;
	if (net_init(false, &failed) <= 0)
		finish(false, "error=no-nic");
	int err = vblk_open(&disk, 0, false);
	if (err)
		finish(false, "error=disk-init-%s", virtio_strerror(err));
	if (disk.ro || bs > vblk_max_transfer(&disk) || qd > disk.nreqs)
		finish(false, "error=disk-unusable");
	u64 nblocks = disk.capacity / (bs / SECTOR_SIZE);
	u8 *buf = palloc(bs, PAGE_SIZE);
	if (!buf || !nblocks)
		finish(false, "error=no-memory-or-small-disk");
	struct netif *nif = &nics[0];
	u8 mac[6], payload[UDP_MAX_PAYLOAD];
	if (!net_resolve(nif, peer, mac, 5000000))
		finish(false, "error=arp-timeout");
	memset(payload, 0x5a, sizeof(payload));
	kprintf("kvmm-guest: flood ready\n");

	u64 t0 = rdtsc(), t_end = t0 + us_to_tsc(seconds * 1000000);
	u64 next = 0, inflight = 0, disk_ops = 0, packets = 0;
	bool stop = false;
	while (!stop || inflight) {
		if (!stop && rdtsc() >= t_end)
			stop = true;
		bool submitted = false, progress = false;
		while (!stop && inflight < qd) {
			struct vblk_req *r = vblk_req_alloc(&disk);
			if (!r)
				break;
			if (vblk_submit(&disk, r, VIRTIO_BLK_T_OUT, (next++ % nblocks) * (bs / SECTOR_SIZE), buf,
					(u32)bs))
				finish(false, "error=disk-submit");
			inflight++;
			submitted = true;
		}
		if (submitted)
			vblk_kick(&disk);
		struct vblk_req *r;
		while ((r = vblk_reap(&disk))) {
			if (r->status != VIRTIO_BLK_S_OK)
				finish(false, "error=disk-status-%s", vblk_strerror(r->status));
			disk_ops++;
			inflight--;
			progress = true;
			vblk_req_free(&disk, r);
		}
		if (!stop) {
			u32 queued = 0;
			while (queued < 32 && net_udp_queue(nif, mac, peer, port, port, payload, (u32)size))
				queued++;
			packets += queued;
			if (queued)
				vnet_tx_kick(&nif->dev);
			progress = progress || submitted || queued;
		}
		if (net_poll_nowait())
			progress = true;
		if (!progress && inflight)
			vblk_wait(&disk, 5000);     /* halt: a completion, or 5 ms */
	}
	u64 us = tsc_to_ns(rdtsc() - t0) / 1000;
	finish(true, "us=%llu disk_ops=%llu disk_bytes=%llu packets=%llu net_bytes=%llu", us, disk_ops, disk_ops * bs,
	       packets, packets * size);
}
