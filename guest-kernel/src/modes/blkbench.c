/* blkbench - virtio-blk throughput and IOPS, measured in the guest with
 * the TSC, keeping qd requests in flight.
 *
 * Parameters: op=read|write (read), pattern=seq|rand (seq), bs=BYTES (4096,
 * a multiple of 512), qd=N (1), seconds=S (2) or ops=N (stops after N
 * completions; takes precedence), disk=I (0), blocks=N (use sectors
 * [0, N) only; default the whole disk), seed=N (random offsets), poll=1,
 * event_idx=0, indirect=0, io_timeout_ms= (10000).
 * Verdict: RESULT blkbench PASS op=read pattern=rand bs=4096 qd=16 ops=N
 *          bytes=B us=T mbps=M.MMM iops=N lat_us=L irqs=N kicks=N poll=0
 *      or  RESULT blkbench FAIL error=... */
#include "cmdline.h"
#include "console.h"
#include "kernel.h"
#include "layout.h"
#include "modes.h"
#include "palloc.h"
#include "pattern.h"
#include "string.h"
#include "timer.h"
#include "virtio_blk.h"
#include "x86.h"

static struct vblk disk;

static u64 rng_state;

static u64 rng_next(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

noreturn void mode_blkbench(void)
{
	char op[8] = "read", pat[8] = "seq";
	cmdline_get_str("op", op, sizeof(op));
	cmdline_get_str("pattern", pat, sizeof(pat));
	bool write = strcmp(op, "write") == 0, rand = strcmp(pat, "rand") == 0;
	if ((!write && strcmp(op, "read")) || (!rand && strcmp(pat, "seq")))
		finish(false, "error=bad-op-or-pattern op=%s pattern=%s", op, pat);
	u64 bs = cmdline_get_u64("bs", 4096);
	u64 qd = cmdline_get_u64("qd", 1);
	u64 ops = cmdline_get_u64("ops", 0);
	u64 seconds = cmdline_get_u64("seconds", 2);
	u32 index = (u32)cmdline_get_u64("disk", 0);
	bool poll = cmdline_get_u64("poll", 0) != 0;
	u64 timeout_us = cmdline_get_u64("io_timeout_ms", VBLK_DEFAULT_TIMEOUT_US / 1000) * 1000;
	rng_state = mix64(cmdline_get_u64("seed", 1)) | 1;

	int err = vblk_open(&disk, index, poll);
	if (err)
		finish(false, "disk=%u error=init-%s", index, virtio_strerror(err));
	if (bs == 0 || bs % SECTOR_SIZE)
		finish(false, "error=bs-not-sector-multiple bs=%llu", bs);
	if (bs > vblk_max_transfer(&disk))
		finish(false, "error=bs-too-large bs=%llu max=%u", bs, vblk_max_transfer(&disk));
	u64 region = cmdline_get_u64("blocks", disk.capacity);
	if (region > disk.capacity)
		region = disk.capacity;
	u64 bs_sectors = bs / SECTOR_SIZE, nblocks = region / bs_sectors;
	if (nblocks == 0)
		finish(false, "error=disk-smaller-than-bs capacity=%llu", disk.capacity);
	if (write && disk.ro)
		finish(false, "error=read-only-disk");
	/* each request: header + data segments + status */
	u64 per_req = virtq_descs_for(&disk.vq, (u16)(2 + (disk.size_max ? (bs + disk.size_max - 1) / disk.size_max : 1)));
	u64 qd_max = disk.vq.num / per_req;
	if (qd == 0 || qd > qd_max || qd > disk.nreqs)
		finish(false, "error=bad-qd qd=%llu max=%llu", qd, qd_max);
	u8 *bufs = palloc(qd * bs, PAGE_SIZE);
	if (!bufs)
		finish(false, "error=no-memory bytes=%llu", qd * bs);
	if (write)
		for (u64 i = 0; i < qd * bs_sectors; i++)
			pattern_fill(0xbe7c, i, bufs + i * SECTOR_SIZE, 1);

	kprintf("kvmm-guest: blkbench disk=%u capacity=%llu op=%s pattern=%s bs=%llu qd=%llu %s=%llu features=0x%llx "
		"poll=%d\n",
		index, disk.capacity, op, pat, bs, qd, ops ? "ops" : "seconds", ops ? ops : seconds, disk.dev.features,
		poll);

	u32 type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
	u32 *free_slots = palloc(4 * qd, 8);
	u32 nfree_slots = 0;
	if (!free_slots)
		finish(false, "error=no-memory");
	for (u64 i = 0; i < qd; i++)
		free_slots[nfree_slots++] = (u32)i;
	u64 seq_next = 0, issued = 0, done = 0, inflight = 0, lat_sum = 0;
	u64 t0 = rdtsc(), t_end = t0 + us_to_tsc(seconds * 1000000), t_last = t0;
	bool stop = false;

	for (;;) {
		/* keep qd requests in flight */
		while (!stop && inflight < qd) {
			if (ops ? issued >= ops : rdtsc() >= t_end) {
				stop = true;
				break;
			}
			struct vblk_req *r = vblk_req_alloc(&disk);
			if (!r || !nfree_slots)
				finish(false, "error=request-pool-empty");
			u32 slot = free_slots[--nfree_slots];
			r->user = slot;
			u64 blk = rand ? rng_next() % nblocks : seq_next++ % nblocks;
			int e = vblk_submit(&disk, r, type, blk * bs_sectors, bufs + slot * bs, (u32)bs);
			if (e)
				finish(false, "error=submit-%s", vblk_strerror(e));
			issued++;
			inflight++;
		}
		vblk_kick(&disk);
		if (!inflight)
			break;
		struct vblk_req *r;
		while (!(r = vblk_reap(&disk))) {
			int e = vblk_wait(&disk, timeout_us);
			if (e)
				finish(false, "error=%s done=%llu inflight=%llu", vblk_strerror(e), done, inflight);
		}
		do {
			u64 now = rdtsc();
			if (r->status != VIRTIO_BLK_S_OK)
				finish(false, "error=status-%s sector=%llu", vblk_strerror(r->status), r->hdr.sector);
			lat_sum += now - r->t_submit;
			t_last = now;
			done++;
			inflight--;
			free_slots[nfree_slots++] = (u32)r->user;
			vblk_req_free(&disk, r);
		} while ((r = vblk_reap(&disk)));
	}

	u64 us = tsc_to_ns(t_last - t0) / 1000;
	if (us == 0)
		us = 1;
	u64 bytes = done * bs;
	u64 milli_mbps = bytes * 1000 / us; /* bytes/us = MB/s */
	u64 iops = muldiv64(done, 1000000, us);
	u64 lat_us = done ? tsc_to_ns(lat_sum / done) / 1000 : 0;
	finish(true, "op=%s pattern=%s bs=%llu qd=%llu ops=%llu bytes=%llu us=%llu mbps=%llu.%03llu iops=%llu "
	       "lat_us=%llu irqs=%u kicks=%llu poll=%d",
	       op, pat, bs, qd, done, bytes, us, milli_mbps / 1000, milli_mbps % 1000, iops, lat_us, disk.dev.irqs,
	       disk.vq.kicks, poll);
}
