/* virtio_blk.c - virtio-blk driver (virtio 1.2 section 5.2). */
#include "virtio_blk.h"

#include "cmdline.h"
#include "layout.h"
#include "palloc.h"
#include "string.h"
#include "timer.h"
#include "x86.h"

#define VBLK_QUEUE_MAX 256
#define VBLK_TRANSFER_CAP (4u << 20) /* largest request this driver builds */
#define VBLK_SEGS_CAP (VIRTQ_INDIRECT_MAX - 2)
#define VBLK_STREAM_BYTES (2u << 20) /* stream buffers per disk */

u64 vblk_wanted_features(void)
{
	u64 f = BIT64(VIRTIO_BLK_F_SIZE_MAX) | BIT64(VIRTIO_BLK_F_SEG_MAX) | BIT64(VIRTIO_BLK_F_BLK_SIZE) |
		BIT64(VIRTIO_BLK_F_RO) | BIT64(VIRTIO_BLK_F_FLUSH) | BIT64(VIRTIO_BLK_F_DISCARD) |
		BIT64(VIRTIO_BLK_F_WRITE_ZEROES) | BIT64(VIRTIO_F_VERSION_1);

	if (cmdline_get_u64("event_idx", 1))
		f |= BIT64(VIRTIO_RING_F_EVENT_IDX);
	if (cmdline_get_u64("indirect", 1))
		f |= BIT64(VIRTIO_RING_F_INDIRECT_DESC);
	return f;
}

const char *vblk_strerror(int r)
{
	switch (r) {
	case VIRTIO_BLK_S_OK: return "ok";
	case VIRTIO_BLK_S_IOERR: return "ioerr";
	case VIRTIO_BLK_S_UNSUPP: return "unsupp";
	case VBLK_TIMEOUT: return "timeout";
	case VBLK_NEEDS_RESET: return "needs-reset";
	case VBLK_NOSPACE: return "no-space";
	case VBLK_EVERIFY: return "verify";
	case VBLK_EINVAL: return "too-large";
	default: return "bad-status";
	}
}

static void read_config(struct vblk *b)
{
	struct virtio_dev *d = &b->dev;

	b->capacity = virtio_cfg64(d, VIRTIO_BLK_CFG_CAPACITY);
	b->size_max = virtio_has(d, VIRTIO_BLK_F_SIZE_MAX) ? virtio_cfg32(d, VIRTIO_BLK_CFG_SIZE_MAX) : 0;
	b->seg_max = virtio_has(d, VIRTIO_BLK_F_SEG_MAX) ? virtio_cfg32(d, VIRTIO_BLK_CFG_SEG_MAX) : 0;
	b->blk_size = virtio_has(d, VIRTIO_BLK_F_BLK_SIZE) ? virtio_cfg32(d, VIRTIO_BLK_CFG_BLK_SIZE) : VBLK_SECTOR;
	b->ro = virtio_has(d, VIRTIO_BLK_F_RO);
	b->flush = virtio_has(d, VIRTIO_BLK_F_FLUSH);
	b->discard = virtio_has(d, VIRTIO_BLK_F_DISCARD);
	b->write_zeroes = virtio_has(d, VIRTIO_BLK_F_WRITE_ZEROES);
	if (b->discard) {
		b->max_discard_sectors = virtio_cfg32(d, VIRTIO_BLK_CFG_MAX_DISCARD_SECTORS);
		b->max_discard_seg = virtio_cfg32(d, VIRTIO_BLK_CFG_MAX_DISCARD_SEG);
		b->discard_align = virtio_cfg32(d, VIRTIO_BLK_CFG_DISCARD_ALIGN);
	}
	if (b->write_zeroes) {
		b->max_wz_sectors = virtio_cfg32(d, VIRTIO_BLK_CFG_MAX_WZ_SECTORS);
		b->max_wz_seg = virtio_cfg32(d, VIRTIO_BLK_CFG_MAX_WZ_SEG);
		b->wz_may_unmap = virtio_cfg8(d, VIRTIO_BLK_CFG_WZ_MAY_UNMAP) != 0;
	}
}

static void reset_pool(struct vblk *b)
{
	b->nfree = 0;
	for (u16 i = 0; i < b->nreqs; i++) {
		b->reqs[i].id = i;
		b->reqs[i].in_flight = 0;
		b->free_reqs[b->nfree++] = (u16)(b->nreqs - 1 - i);
	}
}

int vblk_open(struct vblk *b, u32 index, bool poll)
{
	const struct virtio_mmio_dev *m = virtio_find(VIRTIO_ID_BLOCK, index);

	if (!m)
		return VIRTIO_E_NODEV;
	memset(b, 0, sizeof(*b));
	b->index = index;
	b->dev.poll = poll;
	int err = virtio_dev_init(&b->dev, m, vblk_wanted_features(), 0);
	if (err)
		return err;
	read_config(b);
	err = virtio_setup_queue(&b->dev, &b->vq, 0, VBLK_QUEUE_MAX);
	if (err)
		return err;
	b->nreqs = b->vq.num;
	b->reqs = palloc(sizeof(struct vblk_req) * b->nreqs, 64);
	b->free_reqs = palloc(2ull * b->nreqs, 8);
	if (!b->reqs || !b->free_reqs)
		return VIRTIO_E_NOMEM;
	reset_pool(b);
	virtio_driver_ok(&b->dev);
	return VIRTIO_OK;
}

int vblk_reinit(struct vblk *b)
{
	int err = virtio_reinit(&b->dev);

	reset_pool(b);
	return err;
}

static u32 segs_limit(const struct vblk *b)
{
	u32 segs = b->seg_max ? b->seg_max : VBLK_SEGS_CAP;

	return segs < VBLK_SEGS_CAP ? segs : VBLK_SEGS_CAP;
}

u32 vblk_max_transfer(const struct vblk *b)
{
	u64 bytes = b->size_max ? (u64)b->size_max * segs_limit(b) : VBLK_TRANSFER_CAP;

	if (bytes > VBLK_TRANSFER_CAP)
		bytes = VBLK_TRANSFER_CAP;
	return (u32)ALIGN_DOWN(bytes, VBLK_SECTOR);
}

struct vblk_req *vblk_req_alloc(struct vblk *b)
{
	if (!b->nfree)
		return NULL;
	return &b->reqs[b->free_reqs[--b->nfree]];
}

void vblk_req_free(struct vblk *b, struct vblk_req *r)
{
	if (b->nfree < b->nreqs)
		b->free_reqs[b->nfree++] = r->id;
}

int vblk_submit(struct vblk *b, struct vblk_req *r, u32 type, u64 sector, void *buf, u32 len)
{
	struct vq_buf bufs[VIRTQ_INDIRECT_MAX + 2];
	u16 n = 0;

	r->hdr.type = type;
	r->hdr.reserved = 0;
	r->hdr.sector = sector;
	r->status = 0xff;
	r->buf = buf;
	r->len = len;
	r->used_len = 0;
	bufs[n++] = (struct vq_buf){ virt_to_phys(&r->hdr), sizeof(r->hdr), false };
	if (type == VIRTIO_BLK_T_DISCARD || type == VIRTIO_BLK_T_WRITE_ZEROES) {
		bufs[n++] = (struct vq_buf){ virt_to_phys(&r->seg), sizeof(r->seg), false };
	} else if (len) {
		bool write = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
		u32 seg = b->size_max ? b->size_max : len;
		u64 at = virt_to_phys(buf);
		for (u32 done = 0; done < len;) {
			u32 part = len - done < seg ? len - done : seg;
			if ((u32)(n - 1) >= segs_limit(b))
				return VBLK_EINVAL;
			bufs[n++] = (struct vq_buf){ at + done, part, write };
			done += part;
		}
	}
	bufs[n++] = (struct vq_buf){ virt_to_phys((const void *)&r->status), 1, true };
	if (virtq_descs_for(&b->vq, n) > b->vq.num)
		return VBLK_EINVAL;
	if (virtq_add(&b->vq, bufs, n, r) < 0)
		return VBLK_NOSPACE;
	r->in_flight = 1;
	r->t_submit = rdtsc();
	return 0;
}

struct vblk_req *vblk_reap(struct vblk *b)
{
	u32 len;
	struct vblk_req *r = virtq_get(&b->vq, &len);

	if (!r)
		return NULL;
	r->used_len = len;
	r->in_flight = 0;
	b->completed++;
	return r;
}

/* Wait for any completion; 0, VBLK_TIMEOUT or VBLK_NEEDS_RESET. */
static int wait_any(struct vblk *b, u64 deadline)
{
	for (;;) {
		if (virtq_has_used(&b->vq))
			return 0;
		u64 now = rdtsc();
		if (now >= deadline)
			return virtio_needs_reset(&b->dev) ? VBLK_NEEDS_RESET : VBLK_TIMEOUT;
		enum virtio_wait_result w = virtio_wait1(&b->vq, tsc_to_ns(deadline - now) / 1000 + 1);
		if (w == VIRTIO_WAIT_CONFIG && virtio_needs_reset(&b->dev))
			return VBLK_NEEDS_RESET;
	}
}

int vblk_wait(struct vblk *b, u64 timeout_us) { return wait_any(b, rdtsc() + us_to_tsc(timeout_us)); }

static int sync_req(struct vblk *b, struct vblk_req *r, u32 type, u64 sector, void *buf, u32 len, u64 timeout_us)
{
	int err = vblk_submit(b, r, type, sector, buf, len);

	if (err) {
		vblk_req_free(b, r);
		return err;
	}
	vblk_kick(b);
	u64 deadline = rdtsc() + us_to_tsc(timeout_us);
	while (r->in_flight) {
		err = wait_any(b, deadline);
		if (err)
			return err; /* r stays in flight: the caller resets the device */
		while (vblk_reap(b))
			;
	}
	int status = r->status;
	vblk_req_free(b, r);
	return status;
}

int vblk_sync(struct vblk *b, u32 type, u64 sector, void *buf, u32 len, u64 timeout_us)
{
	struct vblk_req *r = vblk_req_alloc(b);

	if (!r)
		return VBLK_NOSPACE;
	return sync_req(b, r, type, sector, buf, len, timeout_us);
}

int vblk_sync_dwz(struct vblk *b, u32 type, u64 sector, u32 nsectors, u32 flags, u64 timeout_us)
{
	struct vblk_req *r = vblk_req_alloc(b);

	if (!r)
		return VBLK_NOSPACE;
	r->seg.sector = sector;
	r->seg.num_sectors = nsectors;
	r->seg.flags = flags;
	return sync_req(b, r, type, 0, NULL, 0, timeout_us);
}

int vblk_stream(struct vblk *b, u32 type, u64 first, u64 count, u32 chunk_sectors, u32 depth, vblk_chunk_fn fn,
		void *ctx, u64 *fail_sector)
{
	u64 chunk_bytes = (u64)chunk_sectors * VBLK_SECTOR;
	u64 timeout = cmdline_get_u64("io_timeout_ms", VBLK_DEFAULT_TIMEOUT_US / 1000) * 1000;

	if (!chunk_sectors || chunk_bytes > vblk_max_transfer(b))
		return VBLK_EINVAL;
	if (depth > b->nreqs)
		depth = b->nreqs;
	if (!b->sbuf) {
		b->sbuf_bytes = VBLK_STREAM_BYTES;
		b->sbuf = palloc(b->sbuf_bytes, PAGE_SIZE);
		if (!b->sbuf)
			return VBLK_NOSPACE;
	}
	if (depth * chunk_bytes > b->sbuf_bytes)
		depth = (u32)(b->sbuf_bytes / chunk_bytes);
	if (!depth)
		return VBLK_EINVAL;

	u64 next = first, end = first + count;
	u32 inflight = 0;
	u8 slot_busy[64] = { 0 };
	int result = 0;
	if (depth > sizeof(slot_busy))
		depth = sizeof(slot_busy);

	while ((next < end && result == 0) || inflight) {
		/* fill the pipeline */
		while (result == 0 && next < end && inflight < depth) {
			u32 slot = 0;
			while (slot_busy[slot])
				slot++;
			u32 n = end - next < chunk_sectors ? (u32)(end - next) : chunk_sectors;
			u8 *buf = b->sbuf + slot * chunk_bytes;
			if (type == VIRTIO_BLK_T_OUT && fn)
				fn(ctx, next, buf, n);
			struct vblk_req *r = vblk_req_alloc(b);
			if (!r)
				break;
			r->user = slot;
			int err = vblk_submit(b, r, type, next, buf, n * VBLK_SECTOR);
			if (err) {
				vblk_req_free(b, r);
				if (inflight)
					break;
				*fail_sector = next;
				return err;
			}
			slot_busy[slot] = 1;
			inflight++;
			next += n;
		}
		vblk_kick(b);
		if (!inflight)
			break;
		int err = wait_any(b, rdtsc() + us_to_tsc(timeout));
		if (err) {
			*fail_sector = next;
			return err;
		}
		struct vblk_req *r;
		while ((r = vblk_reap(b))) {
			u32 slot = (u32)r->user;
			slot_busy[slot] = 0;
			inflight--;
			if (r->status != VIRTIO_BLK_S_OK && result == 0) {
				result = r->status;
				*fail_sector = r->hdr.sector;
			} else if (type == VIRTIO_BLK_T_IN && fn && result == 0 &&
				   !fn(ctx, r->hdr.sector, r->buf, r->len / VBLK_SECTOR)) {
				result = VBLK_EVERIFY;
				*fail_sector = r->hdr.sector;
			}
			vblk_req_free(b, r);
		}
	}
	if (result == 0 && next < end) {
		*fail_sector = next;
		return VBLK_NOSPACE;
	}
	return result;
}
