/* blkwrite - for durability tests: write the pattern of pattern.h with
 * seed=S to sectors [0, N) of one disk, FLUSH, print
 *
 *     FLUSHED seed=S sectors=N
 *
 * as soon as the flush completed, then idle forever (halted; the test
 * kills the monitor and checks the image). No verdict line on success.
 * Without VIRTIO_BLK_F_FLUSH the device is write-through (virtio 1.2
 * 5.2.6.2) and the line is printed after the last write completed.
 *
 * Parameters: seed=S (1), sectors=N (2048; at most the capacity), disk=I
 * (0), chunk=BYTES (512K), depth=N (4), poll=1, io_timeout_ms=.
 * Failure: RESULT blkwrite FAIL disk=I error=E [sector=S] */
#include "cmdline.h"
#include "console.h"
#include "kernel.h"
#include "modes.h"
#include "pattern.h"
#include "timer.h"
#include "virtio_blk.h"

static struct vblk disk;

static bool fill(void *arg, u64 sector, void *buf, u32 n)
{
	pattern_fill(*(u64 *)arg, sector, buf, n);
	return true;
}

static bool never(void *arg)
{
	(void)arg;
	return false;
}

noreturn void mode_blkwrite(void)
{
	u64 seed = cmdline_get_u64("seed", 1);
	u64 sectors = cmdline_get_u64("sectors", 2048);
	u32 index = (u32)cmdline_get_u64("disk", 0);
	u32 depth = (u32)cmdline_get_u64("depth", 4);
	u64 chunk = cmdline_get_u64("chunk", 512 * KIB);

	int err = vblk_open(&disk, index, cmdline_get_u64("poll", 0) != 0);
	if (err)
		finish(false, "disk=%u error=init-%s", index, virtio_strerror(err));
	if (disk.ro)
		finish(false, "disk=%u error=read-only", index);
	if (sectors > disk.capacity)
		finish(false, "disk=%u error=beyond-capacity sectors=%llu capacity=%llu", index, sectors, disk.capacity);
	if (chunk > vblk_max_transfer(&disk))
		chunk = vblk_max_transfer(&disk);
	if (chunk < SECTOR_SIZE)
		chunk = SECTOR_SIZE;
	u64 at = 0;
	int r = vblk_stream(&disk, VIRTIO_BLK_T_OUT, 0, sectors, (u32)(chunk / SECTOR_SIZE), depth, fill, &seed, &at);
	if (r)
		finish(false, "disk=%u error=write-%s sector=%llu", index, vblk_strerror(r), at);
	if (disk.flush) {
		r = vblk_sync(&disk, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, VBLK_DEFAULT_TIMEOUT_US);
		if (r != VIRTIO_BLK_S_OK)
			finish(false, "disk=%u error=flush-%s", index, vblk_strerror(r));
	}
	kprintf("FLUSHED seed=%llu sectors=%llu\n", seed, sectors);
	for (;;)
		wait_event(never, NULL, WAIT_FOREVER);
}
