/* blkmulti - drive every virtio-blk disk at once (for per-guest group limits):
 * each disk keeps qd requests in flight, completions are polled round-robin.
 *
 * Parameters: op=read|write (read), bs=BYTES (4096), qd=N per disk (2),
 * seconds=S (2), blocks=N (sectors used per disk; default the capacity).
 * Verdict: RESULT blkmulti PASS disks=N bs= qd= us= ops= bytes= mbps= iops=
 *          ops0= mbps0= ops1= mbps1= ...
 *      or  RESULT blkmulti FAIL error=... */
#include "cmdline.h"
#include "console.h"
#include "fmt.h"
#include "kernel.h"
#include "modes.h"
#include "layout.h"
#include "palloc.h"
#include "pattern.h"
#include "string.h"
#include "timer.h"
#include "virtio_blk.h"
#include "x86.h"

#define MULTI_MAX_DISKS 8

struct bench_disk {
	struct vblk blk;
	u8 *bufs;
	u64 next, nblocks, done, inflight;
};

static struct bench_disk disks[MULTI_MAX_DISKS];

noreturn void mode_blkmulti(void)
{
	char op[8] = "read";
	cmdline_get_str("op", op, sizeof(op));
	bool write = strcmp(op, "write") == 0;
	if (!write && strcmp(op, "read"))
		finish(false, "error=bad-op op=%s", op);
	u64 bs = cmdline_get_u64("bs", 4096);
	u64 qd = cmdline_get_u64("qd", 2);
	u64 seconds = cmdline_get_u64("seconds", 2);
	u32 n = virtio_count(VIRTIO_ID_BLOCK);
	if (n == 0)
		finish(false, "disks=0 error=no-virtio-blk-device");
	if (n > MULTI_MAX_DISKS)
		n = MULTI_MAX_DISKS;
	if (bs == 0 || bs % SECTOR_SIZE || qd == 0)
		finish(false, "error=bad-parameters bs=%llu qd=%llu", bs, qd);

	for (u32 i = 0; i < n; i++) {
		struct bench_disk *d = &disks[i];
		int err = vblk_open(&d->blk, i, true);
		if (err)
			finish(false, "disk=%u error=init-%s", i, virtio_strerror(err));
		if (bs > vblk_max_transfer(&d->blk) || qd > d->blk.nreqs)
			finish(false, "disk=%u error=bs-or-qd-too-large", i);
		if (write && d->blk.ro)
			finish(false, "disk=%u error=read-only-disk", i);
		u64 region = cmdline_get_u64("blocks", d->blk.capacity);
		d->nblocks = (region < d->blk.capacity ? region : d->blk.capacity) / (bs / SECTOR_SIZE);
		if (d->nblocks == 0)
			finish(false, "disk=%u error=disk-smaller-than-bs", i);
		d->bufs = palloc(qd * bs, PAGE_SIZE);
		if (!d->bufs)
			finish(false, "error=no-memory");
	}

	u32 type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
	u64 t0 = rdtsc(), t_end = t0 + us_to_tsc(seconds * 1000000);
	bool stop = false;
	u64 busy;
	do {
		busy = 0;
		if (!stop && rdtsc() >= t_end)
			stop = true;
		for (u32 i = 0; i < n; i++) {
			struct bench_disk *d = &disks[i];
			bool submitted = false;
			while (!stop && d->inflight < qd) {
				struct vblk_req *r = vblk_req_alloc(&d->blk);
				if (!r)
					break;
				u64 slot = d->next % qd;
				u64 blk = d->next++ % d->nblocks;
				int e = vblk_submit(&d->blk, r, type, blk * (bs / SECTOR_SIZE), d->bufs + slot * bs,
						    (u32)bs);
				if (e)
					finish(false, "disk=%u error=submit-%s", i, vblk_strerror(e));
				d->inflight++;
				submitted = true;
			}
			if (submitted)
				vblk_kick(&d->blk);
			struct vblk_req *r;
			while ((r = vblk_reap(&d->blk))) {
				if (r->status != VIRTIO_BLK_S_OK)
					finish(false, "disk=%u error=status-%s status=0x%x id=%u used_len=%u done=%llu", i,
					       vblk_strerror(r->status), r->status, r->id, r->used_len, d->done);
				d->done++;
				d->inflight--;
				vblk_req_free(&d->blk, r);
			}
			busy += d->inflight;
		}
		cpu_relax();
	} while (!stop || busy);

	u64 us = tsc_to_ns(rdtsc() - t0) / 1000;
	if (us == 0)
		us = 1;
	u64 ops = 0;
	char per[256] = "";
	size_t len = 0;
	for (u32 i = 0; i < n; i++) {
		u64 milli = disks[i].done * bs * 1000 / us;
		ops += disks[i].done;
		len += snprintf(per + len, sizeof(per) - len, " ops%u=%llu mbps%u=%llu.%03llu", i, disks[i].done,
				 i, milli / 1000, milli % 1000);
		if (len >= sizeof(per))
			len = sizeof(per) - 1;
	}
	u64 milli = ops * bs * 1000 / us;
	finish(true, "disks=%u bs=%llu qd=%llu us=%llu ops=%llu bytes=%llu mbps=%llu.%03llu iops=%llu%s", n, bs, qd,
	       us, ops, ops * bs, milli / 1000, milli % 1000, muldiv64(ops, 1000000, us), per);
}
