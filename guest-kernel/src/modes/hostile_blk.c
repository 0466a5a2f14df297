/* hostile-blk - malformed virtio-blk chains, one case at a time.
 *
 * Each case builds a broken chain (or ring state) by hand, notifies, and
 * waits up to timeout_ms for the device to either complete the chain with
 * an error status (IOERR/UNSUPP; or, where the chain has no usable status
 * byte, to return it without writing one: "dropped") or set
 * DEVICE_NEEDS_RESET (then the driver resets and re-initialises it). A
 * chain completed with status OK, a status byte written where none may be,
 * or neither outcome in time ("hang") fails the case. After every case a
 * normal read of sectors 0-7 must succeed and return the data read at the
 * start. Cases whose ring state cannot be completed at all (avail index
 * ahead, bogus head) accept only DEVICE_NEEDS_RESET.
 *
 * Cases: next-out-of-range, next-loop, addr-outside-ram, addr-len-wraps,
 * huge-len, total-len-overflow, status-zero-length, status-device-readable,
 * header-device-writable, avail-idx-ahead, avail-head-out-of-range, and
 * with VIRTIO_RING_F_INDIRECT_DESC: indirect-in-indirect,
 * indirect-bad-length, indirect-zero-length.
 *
 * Parameters: disk=I (0), timeout_ms=T (1000), poll=1, case=NAME (run one).
 * Verdict: RESULT hostile-blk PASS cases=N reset=K errors=M [dropped=D] [skipped=S]
 *      or  RESULT hostile-blk FAIL cases=N ... failed=<case>:<why>[,...] */
#include "cmdline.h"
#include "console.h"
#include "fmt.h"
#include "kernel.h"
#include "layout.h"
#include "modes.h"
#include "palloc.h"
#include "pattern.h"
#include "string.h"
#include "timer.h"
#include "virtio_blk.h"
#include "x86.h"

#define REF_SECTORS 8
#define OUTSIDE_RAM (1ull << 46) /* 64 TiB: no guest has RAM there */
#define STATUS_UNTOUCHED 0xff

struct hctx {
	struct vblk *b;
	struct vblk_req *r;
	u8 *data;  /* one page, device-writable data */
	struct virtq_desc *t1, *t2; /* indirect tables */
};

/* How a case's chain can legitimately end. */
enum expect {
	EXPECT_STATUS,   /* completion must carry IOERR/UNSUPP (or NEEDS_RESET) */
	EXPECT_NOSTATUS, /* no valid status byte: completion must leave it alone */
	EXPECT_RESET,    /* only DEVICE_NEEDS_RESET is acceptable */
};

struct hcase {
	const char *name;
	bool indirect;
	enum expect expect;
	void (*build)(struct hctx *c);
};

static void set(volatile struct virtq_desc *d, u64 addr, u32 len, u16 flags, u16 next)
{
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

static u64 pa(const volatile void *p) { return (u64)(uintptr_t)p; }

/* hdr, data, status with one field broken by the caller afterwards. */
static void chain3(struct hctx *c, u16 *ids)
{
	struct virtq *vq = &c->b->vq;

	virtq_raw_alloc(vq, 3, ids);
	set(&vq->desc[ids[0]], pa(&c->r->hdr), 16, VIRTQ_DESC_F_NEXT, ids[1]);
	set(&vq->desc[ids[1]], pa(c->data), SECTOR_SIZE, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, ids[2]);
	set(&vq->desc[ids[2]], pa(&c->r->status), 1, VIRTQ_DESC_F_WRITE, 0);
}

static void publish(struct hctx *c, u16 head) { virtq_raw_publish(&c->b->vq, head, head, c->r); }

static void b_next_out_of_range(struct hctx *c)
{
	u16 ids[3];
	chain3(c, ids);
	c->b->vq.desc[ids[1]].next = 0x7fff; /* >= any queue size */
	publish(c, ids[0]);
}

static void b_next_loop(struct hctx *c)
{
	u16 ids[3];
	chain3(c, ids);
	volatile struct virtq_desc *d = c->b->vq.desc;
	d[ids[2]].flags = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT;
	d[ids[2]].next = ids[1]; /* 1 -> 2 -> 1 -> ... */
	publish(c, ids[0]);
}

static void b_addr_outside_ram(struct hctx *c)
{
	u16 ids[3];
	chain3(c, ids);
	c->b->vq.desc[ids[1]].addr = OUTSIDE_RAM;
	publish(c, ids[0]);
}

static void b_addr_len_wraps(struct hctx *c)
{
	u16 ids[3];
	chain3(c, ids);
	c->b->vq.desc[ids[1]].addr = 0xfffffffffffffe00ull; /* + 0x400 wraps to 0x200 */
	c->b->vq.desc[ids[1]].len = 0x400;
	publish(c, ids[0]);
}

static void b_huge_len(struct hctx *c)
{
	u16 ids[3];
	chain3(c, ids);
	c->b->vq.desc[ids[1]].len = 0xfffffe00u; /* runs far past the end of RAM */
	publish(c, ids[0]);
}

static void b_total_len_overflow(struct hctx *c)
{
	struct virtq *vq = &c->b->vq;
	u16 ids[4];

	virtq_raw_alloc(vq, 4, ids);
	set(&vq->desc[ids[0]], pa(&c->r->hdr), 16, VIRTQ_DESC_F_NEXT, ids[1]);
	set(&vq->desc[ids[1]], pa(c->data), 0x80000000u, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, ids[2]);
	set(&vq->desc[ids[2]], pa(c->data), 0x80000000u, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, ids[3]);
	set(&vq->desc[ids[3]], pa(&c->r->status), 1, VIRTQ_DESC_F_WRITE, 0);
	publish(c, ids[0]);
}

static void b_status_zero_length(struct hctx *c)
{
	u16 ids[3];
	chain3(c, ids);
	c->b->vq.desc[ids[2]].len = 0;
	publish(c, ids[0]);
}

static void b_status_readable(struct hctx *c)
{
	u16 ids[3];
	chain3(c, ids);
	c->b->vq.desc[ids[2]].flags = 0;
	publish(c, ids[0]);
}

static void b_header_writable(struct hctx *c)
{
	u16 ids[3];
	chain3(c, ids);
	c->b->vq.desc[ids[0]].flags = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT;
	publish(c, ids[0]);
}

static void b_avail_idx_ahead(struct hctx *c)
{
	struct virtq *vq = &c->b->vq;

	barrier();
	vq->avail->idx = (u16)(vq->avail_idx + 1000);
}

static void b_avail_head_out_of_range(struct hctx *c)
{
	struct virtq *vq = &c->b->vq;
	u16 ids[3];

	chain3(c, ids);
	virtq_raw_publish(vq, (u16)(vq->num + 3), ids[0], c->r);
}

/* A valid 3-entry table at t. */
static void table3(struct hctx *c, struct virtq_desc *t)
{
	set(&t[0], pa(&c->r->hdr), 16, VIRTQ_DESC_F_NEXT, 1);
	set(&t[1], pa(c->data), SECTOR_SIZE, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
	set(&t[2], pa(&c->r->status), 1, VIRTQ_DESC_F_WRITE, 0);
}

static void indirect_head(struct hctx *c, u64 table, u32 len)
{
	u16 id;

	virtq_raw_alloc(&c->b->vq, 1, &id);
	set(&c->b->vq.desc[id], table, len, VIRTQ_DESC_F_INDIRECT, 0);
	publish(c, id);
}

static void b_indirect_in_indirect(struct hctx *c)
{
	table3(c, c->t2);
	set(&c->t1[0], pa(c->t2), 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	barrier();
	indirect_head(c, pa(c->t1), 16);
}

static void b_indirect_bad_length(struct hctx *c)
{
	table3(c, c->t1);
	barrier();
	indirect_head(c, pa(c->t1), 40); /* 2.5 entries */
}

static void b_indirect_zero_length(struct hctx *c)
{
	table3(c, c->t1);
	barrier();
	indirect_head(c, pa(c->t1), 0);
}

static const struct hcase cases[] = {
	{ "next-out-of-range", false, EXPECT_NOSTATUS, b_next_out_of_range },
	{ "next-loop", false, EXPECT_NOSTATUS, b_next_loop },
	{ "addr-outside-ram", false, EXPECT_STATUS, b_addr_outside_ram },
	{ "addr-len-wraps", false, EXPECT_STATUS, b_addr_len_wraps },
	{ "huge-len", false, EXPECT_STATUS, b_huge_len },
	{ "total-len-overflow", false, EXPECT_STATUS, b_total_len_overflow },
	{ "status-zero-length", false, EXPECT_NOSTATUS, b_status_zero_length },
	{ "status-device-readable", false, EXPECT_NOSTATUS, b_status_readable },
	{ "header-device-writable", false, EXPECT_STATUS, b_header_writable },
	{ "avail-idx-ahead", false, EXPECT_RESET, b_avail_idx_ahead },
	{ "avail-head-out-of-range", false, EXPECT_RESET, b_avail_head_out_of_range },
	{ "indirect-in-indirect", true, EXPECT_STATUS, b_indirect_in_indirect },
	{ "indirect-bad-length", true, EXPECT_STATUS, b_indirect_bad_length },
	{ "indirect-zero-length", true, EXPECT_STATUS, b_indirect_zero_length },
};

static struct vblk disk;
static char failed[300];
static size_t failed_len;

static void add_failure(const char *name, const char *why)
{
	int n = snprintf(failed + failed_len, sizeof(failed) - failed_len, "%s%s:%s", failed_len ? "," : "", name, why);
	if (n > 0 && failed_len + (size_t)n < sizeof(failed))
		failed_len += (size_t)n;
}

enum outcome { OUT_COMPLETED, OUT_RESET, OUT_HANG };

/* Wait for the case's request to come back or the device to give up. */
static enum outcome wait_case(struct vblk *b, struct vblk_req *r, u64 timeout_us)
{
	u64 deadline = rdtsc() + us_to_tsc(timeout_us);

	for (;;) {
		struct vblk_req *got;
		while ((got = vblk_reap(b)))
			if (got == r)
				return OUT_COMPLETED;
		u64 now = rdtsc();
		if (now >= deadline)
			return virtio_needs_reset(&b->dev) ? OUT_RESET : OUT_HANG;
		enum virtio_wait_result w = virtio_wait1(&b->vq, tsc_to_ns(deadline - now) / 1000 + 1);
		if (w != VIRTIO_WAIT_USED && virtio_needs_reset(&b->dev))
			return OUT_RESET;
	}
}

noreturn void mode_hostile_blk(void)
{
	u32 index = (u32)cmdline_get_u64("disk", 0);
	u64 timeout_us = cmdline_get_u64("timeout_ms", 1000) * 1000;
	char only[40] = "";
	cmdline_get_str("case", only, sizeof(only));

	int err = vblk_open(&disk, index, cmdline_get_u64("poll", 0) != 0);
	if (err)
		finish(false, "disk=%u error=init-%s", index, virtio_strerror(err));
	struct hctx c = { .b = &disk };
	u8 *ref = palloc(REF_SECTORS * SECTOR_SIZE, PAGE_SIZE);
	u8 *check = palloc(REF_SECTORS * SECTOR_SIZE, PAGE_SIZE);
	c.data = palloc(PAGE_SIZE, PAGE_SIZE);
	c.t1 = palloc(PAGE_SIZE, PAGE_SIZE);
	c.t2 = palloc(PAGE_SIZE, PAGE_SIZE);
	if (!ref || !check || !c.data || !c.t1 || !c.t2)
		finish(false, "error=no-memory");
	u32 nref = disk.capacity < REF_SECTORS ? (u32)disk.capacity : REF_SECTORS;
	int r = vblk_sync(&disk, VIRTIO_BLK_T_IN, 0, ref, nref * SECTOR_SIZE, VBLK_DEFAULT_TIMEOUT_US);
	if (r != VIRTIO_BLK_S_OK)
		finish(false, "error=initial-read-%s", vblk_strerror(r));
	bool indirect = virtio_has(&disk.dev, VIRTIO_RING_F_INDIRECT_DESC);
	kprintf("kvmm-guest: hostile-blk disk=%u features=0x%llx queue=%u indirect=%d timeout_ms=%llu\n", index,
		disk.dev.features, disk.vq.num, indirect, timeout_us / 1000);

	u32 ncases = 0, resets = 0, errors = 0, dropped = 0, skipped = 0;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct hcase *hc = &cases[i];
		if (only[0] && strcmp(only, hc->name))
			continue;
		if (hc->indirect && !indirect) {
			skipped++;
			continue;
		}
		ncases++;
		c.r = vblk_req_alloc(&disk);
		if (!c.r)
			finish(false, "error=request-pool-empty case=%s", hc->name);
		c.r->hdr.type = VIRTIO_BLK_T_IN;
		c.r->hdr.reserved = 0;
		c.r->hdr.sector = 0;
		c.r->status = STATUS_UNTOUCHED;
		c.r->in_flight = 1;
		memset(c.t1, 0, PAGE_SIZE);
		memset(c.t2, 0, PAGE_SIZE);
		u64 bogus0 = disk.vq.bad_used;
		hc->build(&c);
		virtio_notify(&disk.dev, disk.vq.index); /* always, whatever the suppression says */

		enum outcome o = wait_case(&disk, c.r, timeout_us);
		u64 bogus = disk.vq.bad_used - bogus0;
		u8 st = c.r->status;
		char what[32];
		const char *bad = NULL;
		if (bogus)
			bad = "used-entries-never-made-available";
		if (o == OUT_COMPLETED) {
			if (bad) {
				/* already judged */
			} else if (hc->expect == EXPECT_RESET) {
				bad = "completed";
			} else if (hc->expect == EXPECT_NOSTATUS) {
				if (st != STATUS_UNTOUCHED)
					bad = "status-written";
				else
					dropped++;
			} else if (st == VIRTIO_BLK_S_IOERR || st == VIRTIO_BLK_S_UNSUPP) {
				errors++;
			} else if (st == STATUS_UNTOUCHED) {
				dropped++;
			} else {
				bad = st == VIRTIO_BLK_S_OK ? "accepted" : "bad-status";
			}
			snprintf(what, sizeof(what), "completed status=0x%x", st);
			vblk_req_free(&disk, c.r);
		} else {
			snprintf(what, sizeof(what), "%s", o == OUT_RESET ? "needs-reset" : "hang");
			if (o == OUT_RESET)
				resets++;
			else if (!bad)
				bad = "hang";
		}
		/* after a reset (or a hang, or a bad completion), start again */
		bool reinit = o != OUT_COMPLETED || bad;
		if (reinit) {
			err = vblk_reinit(&disk);
			if (err)
				finish(false, "case=%s error=reinit-%s", hc->name, virtio_strerror(err));
		}
		/* a normal read must work and return what it did at the start */
		memset(check, 0, nref * SECTOR_SIZE);
		r = vblk_sync(&disk, VIRTIO_BLK_T_IN, 0, check, nref * SECTOR_SIZE, VBLK_DEFAULT_TIMEOUT_US);
		const char *read_ok = "ok";
		if (r != VIRTIO_BLK_S_OK)
			read_ok = vblk_strerror(r);
		else if (memcmp(check, ref, nref * SECTOR_SIZE))
			read_ok = "data-changed";
		kprintf("kvmm-guest: hostile-blk case=%s outcome=%s%s bogus_used=%llu read=%s%s%s\n", hc->name, what,
			reinit ? " reinit" : "", bogus, read_ok, bad ? " FAIL=" : "", bad ? bad : "");
		if (bad)
			add_failure(hc->name, bad);
		if (strcmp(read_ok, "ok")) {
			add_failure(hc->name, "read-after");
			if (r == VBLK_NEEDS_RESET || r == VBLK_TIMEOUT)
				vblk_reinit(&disk);
		}
	}
	if (ncases == 0)
		finish(false, "error=no-such-case case=%s", only);
	if (failed_len)
		finish(false, "cases=%u reset=%u errors=%u dropped=%u skipped=%u failed=%s", ncases, resets, errors,
		       dropped, skipped, failed);
	finish(true, "cases=%u reset=%u errors=%u dropped=%u skipped=%u", ncases, resets, errors, dropped, skipped);
}
