/* blktest - functional test of every virtio-blk device.
 *
 * Per disk (index i, in command-line order): read the configuration, get
 * the serial (VIRTIO_BLK_T_GET_ID), then on a writable disk write the
 * pattern of pattern.h with seed i over sectors [0, n) (n = blocks= or the
 * capacity), FLUSH (if offered), read everything back and compare each
 * sector's checksum with the expected one; exercise WRITE_ZEROES (must read
 * back as zeros, neighbours intact) and DISCARD (each sector must read as
 * zeros or as its old data) when offered; reads past the capacity must
 * fail with IOERR. A read-only disk (VIRTIO_BLK_F_RO) must refuse a write
 * with IOERR and keep its data.
 *
 * Parameters: blocks=N (sectors per disk), poll=1 (polled completion),
 * chunk=BYTES (request size, default 512K), depth=N (requests in flight,
 * default 4), io_timeout_ms= (per wait, default 10000), event_idx=0,
 * indirect=0 (do not negotiate those ring features).
 * Verdict: RESULT blktest PASS disks=N bytes=B serial0=S sectors0=N
 *          checks0=rw+flush+wz+discard-kept+oob ...
 *      or  RESULT blktest FAIL disk=I error=E [sector=S expected=0x.. got=0x..] */
#include "cmdline.h"
#include "console.h"
#include "fmt.h"
#include "kernel.h"
#include "layout.h"
#include "modes.h"
#include "palloc.h"
#include "pattern.h"
#include "string.h"
#include "virtio_blk.h"

#define MAX_DISKS 8
#define DETAILS_MAX 400
#define WZ_SECTORS 64
#define RO_PROBE_SECTORS 8

struct verify_ctx {
	u64 seed;
	u64 bad_sector;
	u64 expected;
	u64 got;
	u64 sum; /* running checksum for read-only disks */
	bool pattern; /* compare with the pattern; else only accumulate */
};

static bool fill_chunk(void *arg, u64 sector, void *buf, u32 n)
{
	struct verify_ctx *c = arg;

	pattern_fill(c->seed, sector, buf, n);
	return true;
}

static bool check_chunk(void *arg, u64 sector, void *buf, u32 n)
{
	struct verify_ctx *c = arg;
	const u8 *p = buf;

	for (u32 s = 0; s < n; s++, p += SECTOR_SIZE) {
		u64 got = sector_sum(p);
		if (!c->pattern) {
			c->sum = sum_step(c->sum, got);
			continue;
		}
		u64 want = pattern_sum(c->seed, sector + s);
		if (got != want) {
			c->bad_sector = sector + s;
			c->expected = want;
			c->got = got;
			return false;
		}
	}
	return true;
}

static struct vblk disks[MAX_DISKS];
static u8 *scratch; /* 64 sectors + serial */
static char details[DETAILS_MAX];
static size_t dlen;

static void add_detail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void add_detail(const char *fmt, ...)
{
	va_list ap;

	if (dlen >= sizeof(details) - 1)
		return;
	va_start(ap, fmt);
	int n = vsnprintf(details + dlen, sizeof(details) - dlen, fmt, ap);
	va_end(ap);
	if (n > 0)
		dlen += (size_t)n;
	if (dlen > sizeof(details) - 1)
		dlen = sizeof(details) - 1;
}

static noreturn void fail(u32 disk, const char *what, int r)
{
	finish(false, "disk=%u error=%s status=%s", disk, what, vblk_strerror(r));
}

/* The serial as a printable word ("none" if unsupported). */
static void get_serial(struct vblk *b, char *out, size_t size)
{
	u8 *id = scratch;
	memset(id, 0, VIRTIO_BLK_ID_BYTES);
	int r = vblk_sync(b, VIRTIO_BLK_T_GET_ID, 0, id, VIRTIO_BLK_ID_BYTES, VBLK_DEFAULT_TIMEOUT_US);
	if (r == VIRTIO_BLK_S_UNSUPP) {
		snprintf(out, size, "none");
		return;
	}
	if (r != VIRTIO_BLK_S_OK)
		fail(b->index, "get-id", r);
	size_t n = 0;
	while (n < VIRTIO_BLK_ID_BYTES && n + 1 < size && id[n]) {
		u8 c = id[n];
		out[n++] = (c > ' ' && c < 0x7f) ? (char)c : '_';
	}
	out[n] = '\0';
	if (n == 0)
		snprintf(out, size, "empty");
}

static u32 chunk_sectors(struct vblk *b)
{
	u64 bytes = cmdline_get_u64("chunk", 512 * KIB);
	u32 max = vblk_max_transfer(b);

	if (bytes > max)
		bytes = max;
	if (bytes < SECTOR_SIZE)
		bytes = SECTOR_SIZE;
	return (u32)(bytes / SECTOR_SIZE);
}

static void verify_failed(struct vblk *b, struct verify_ctx *c, int r, u64 at, const char *phase)
{
	if (r == VBLK_EVERIFY)
		finish(false, "disk=%u error=mismatch phase=%s sector=%llu expected=0x%llx got=0x%llx", b->index,
		       phase, c->bad_sector, c->expected, c->got);
	finish(false, "disk=%u error=%s phase=%s sector=%llu", b->index, vblk_strerror(r), phase, at);
}

/* Read [s, s+n) (n <= 64) into scratch. */
static void read_small(struct vblk *b, u64 s, u32 n, const char *what)
{
	int r = vblk_sync(b, VIRTIO_BLK_T_IN, s, scratch, n * SECTOR_SIZE, VBLK_DEFAULT_TIMEOUT_US);
	if (r != VIRTIO_BLK_S_OK)
		fail(b->index, what, r);
}

static void test_write_zeroes(struct vblk *b, u64 n, u64 seed, u64 start, u32 len, u32 flags)
{
	int r = vblk_sync_dwz(b, VIRTIO_BLK_T_WRITE_ZEROES, start, len, flags, VBLK_DEFAULT_TIMEOUT_US);
	if (r != VIRTIO_BLK_S_OK)
		fail(b->index, flags ? "write-zeroes-unmap" : "write-zeroes", r);
	read_small(b, start, len, "read-after-write-zeroes");
	for (u32 s = 0; s < len; s++)
		if (!sector_is_zero(scratch + s * SECTOR_SIZE))
			finish(false, "disk=%u error=write-zeroes-not-zero sector=%llu", b->index, start + s);
	/* neighbours keep the pattern */
	u64 around[2] = { start - 1, start + len };
	for (int i = 0; i < 2; i++) {
		if (around[i] >= n || (i == 0 && start == 0))
			continue;
		read_small(b, around[i], 1, "read-next-to-write-zeroes");
		if (sector_sum(scratch) != pattern_sum(seed, around[i]))
			finish(false, "disk=%u error=write-zeroes-spilled sector=%llu", b->index, around[i]);
	}
}

/* DISCARD: each sector then reads as zeros or as its old pattern. */
static const char *test_discard(struct vblk *b, u64 seed, u64 start, u32 len)
{
	int r = vblk_sync_dwz(b, VIRTIO_BLK_T_DISCARD, start, len, 0, VBLK_DEFAULT_TIMEOUT_US);
	if (r != VIRTIO_BLK_S_OK)
		fail(b->index, "discard", r);
	read_small(b, start, len, "read-after-discard");
	u32 zero = 0, kept = 0;
	for (u32 s = 0; s < len; s++) {
		const u8 *p = scratch + s * SECTOR_SIZE;
		if (sector_is_zero(p))
			zero++;
		else if (sector_sum(p) == pattern_sum(seed, start + s))
			kept++;
		else
			finish(false, "disk=%u error=discard-garbage sector=%llu", b->index, start + s);
	}
	return zero == len ? "zeroed" : kept == len ? "kept" : "mixed";
}

static void test_rw_disk(struct vblk *b, u64 n, u32 chunk, u32 depth, const char *serial)
{
	struct verify_ctx c = { .seed = b->index, .pattern = true };
	u64 at = 0;
	int r;

	r = vblk_stream(b, VIRTIO_BLK_T_OUT, 0, n, chunk, depth, fill_chunk, &c, &at);
	if (r)
		verify_failed(b, &c, r, at, "write");
	if (b->flush) {
		r = vblk_sync(b, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, VBLK_DEFAULT_TIMEOUT_US);
		if (r != VIRTIO_BLK_S_OK)
			fail(b->index, "flush", r);
	}
	r = vblk_stream(b, VIRTIO_BLK_T_IN, 0, n, chunk, depth, check_chunk, &c, &at);
	if (r)
		verify_failed(b, &c, r, at, "read");

	add_detail(" serial%u=%s sectors%u=%llu checks%u=rw%s", b->index, serial, b->index, b->capacity, b->index,
		   b->flush ? "+flush" : "");
	/* WRITE_ZEROES then DISCARD on ranges inside [0, n) */
	u64 wz_start = n >= 4 * WZ_SECTORS ? WZ_SECTORS / 8 : 1;
	u32 wz_len = n >= 4 * WZ_SECTORS ? WZ_SECTORS : (u32)(n / 4);
	if (b->write_zeroes && wz_len) {
		test_write_zeroes(b, n, c.seed, wz_start, wz_len, 0);
		add_detail("+wz");
		if (b->wz_may_unmap && n >= 4 * WZ_SECTORS) {
			test_write_zeroes(b, n, c.seed, wz_start + wz_len + 8, WZ_SECTORS / 2,
					  VIRTIO_BLK_WZ_FLAG_UNMAP);
			add_detail("+wz-unmap");
		}
	}
	if (b->discard && wz_len) {
		u64 d_start = wz_start + wz_len + (n >= 4 * WZ_SECTORS ? WZ_SECTORS : 0);
		if (d_start + wz_len <= n)
			add_detail("+discard-%s", test_discard(b, c.seed, d_start, wz_len));
	}
}

static void test_oob(struct vblk *b)
{
	int r = vblk_sync(b, VIRTIO_BLK_T_IN, b->capacity, scratch, SECTOR_SIZE, VBLK_DEFAULT_TIMEOUT_US);
	if (r != VIRTIO_BLK_S_IOERR)
		fail(b->index, "read-past-end-not-ioerr", r);
	if (b->capacity >= 1) {
		r = vblk_sync(b, VIRTIO_BLK_T_IN, b->capacity - 1, scratch, 2 * SECTOR_SIZE, VBLK_DEFAULT_TIMEOUT_US);
		if (r != VIRTIO_BLK_S_IOERR)
			fail(b->index, "read-across-end-not-ioerr", r);
	}
	add_detail("+oob");
}

static void test_ro_disk(struct vblk *b, u64 n, u32 chunk, u32 depth, const char *serial)
{
	u32 probe = n < RO_PROBE_SECTORS ? (u32)n : RO_PROBE_SECTORS;
	u64 before[RO_PROBE_SECTORS];

	read_small(b, 0, probe, "ro-read");
	for (u32 s = 0; s < probe; s++)
		before[s] = sector_sum(scratch + s * SECTOR_SIZE);
	pattern_fill(0x524f, 0, scratch, probe); /* something different */
	int r = vblk_sync(b, VIRTIO_BLK_T_OUT, 0, scratch, probe * SECTOR_SIZE, VBLK_DEFAULT_TIMEOUT_US);
	if (r != VIRTIO_BLK_S_IOERR)
		fail(b->index, "ro-write-not-ioerr", r);
	read_small(b, 0, probe, "ro-read-after-write");
	for (u32 s = 0; s < probe; s++)
		if (sector_sum(scratch + s * SECTOR_SIZE) != before[s])
			finish(false, "disk=%u error=ro-data-changed sector=%u", b->index, s);

	struct verify_ctx c = { .sum = 0, .pattern = false };
	u64 at = 0;
	r = vblk_stream(b, VIRTIO_BLK_T_IN, 0, n, chunk, depth, check_chunk, &c, &at);
	if (r)
		verify_failed(b, &c, r, at, "ro-read-all");
	add_detail(" serial%u=%s sectors%u=%llu sum%u=0x%llx checks%u=ro-refused+read", b->index, serial, b->index,
		   b->capacity, b->index, c.sum, b->index);
}

noreturn void mode_blktest(void)
{
	bool poll = cmdline_get_u64("poll", 0) != 0;
	u64 blocks = cmdline_get_u64("blocks", 0);
	u32 depth = (u32)cmdline_get_u64("depth", 4);
	u32 ndisks = virtio_count(VIRTIO_ID_BLOCK);
	u64 bytes = 0;

	if (ndisks == 0)
		finish(false, "disks=0 error=no-virtio-blk-device");
	if (ndisks > MAX_DISKS)
		ndisks = MAX_DISKS;
	scratch = palloc(64 * SECTOR_SIZE, PAGE_SIZE);
	if (!scratch)
		finish(false, "error=no-memory");

	for (u32 i = 0; i < ndisks; i++) {
		struct vblk *b = &disks[i];
		int err = vblk_open(b, i, poll);
		if (err)
			finish(false, "disk=%u error=init-%s", i, virtio_strerror(err));
		char serial[VIRTIO_BLK_ID_BYTES + 1];
		get_serial(b, serial, sizeof(serial));
		u64 n = blocks && blocks < b->capacity ? blocks : b->capacity;
		u32 chunk = chunk_sectors(b);
		kprintf("kvmm-guest: blk%u base=0x%llx irq=%u capacity=%llu blk_size=%u features=0x%llx queue=%u "
			"size_max=%u seg_max=%u ro=%d flush=%d discard=%d write_zeroes=%d serial=%s testing=%llu\n",
			i, b->dev.base, b->dev.gsi, b->capacity, b->blk_size, b->dev.features, b->vq.num, b->size_max,
			b->seg_max, b->ro, b->flush, b->discard, b->write_zeroes, serial, n);
		if (n == 0)
			finish(false, "disk=%u error=empty-disk", i);
		if (b->ro)
			test_ro_disk(b, n, chunk, depth, serial);
		else
			test_rw_disk(b, n, chunk, depth, serial);
		test_oob(b);
		bytes += n * SECTOR_SIZE;
		kprintf("kvmm-guest: blk%u ok bytes=%llu irqs=%u kicks=%llu suppressed=%llu\n", i, n * SECTOR_SIZE,
			b->dev.irqs, b->vq.kicks, b->vq.kicks_suppressed);
	}
	finish(true, "disks=%u bytes=%llu%s", ndisks, bytes, details);
}
