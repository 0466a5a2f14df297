/* virtio_blk.h - virtio-blk driver (virtio 1.2 section 5.2).
 *
 * One request queue. A request is a chain: a 16-byte device-readable
 * header, the data buffers (split at size_max), a device-writable status
 * byte. Requests come from a pool of one per queue entry; completion is by
 * interrupt or polled (see virtio.h). Sectors are always 512 bytes. */
#ifndef KVMM_GUEST_VIRTIO_BLK_H
#define KVMM_GUEST_VIRTIO_BLK_H

#include "types.h"
#include "virtio.h"

/* 5.2.3 feature bits */
#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_GEOMETRY 4
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_F_TOPOLOGY 10
#define VIRTIO_BLK_F_CONFIG_WCE 11
#define VIRTIO_BLK_F_DISCARD 13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

/* 5.2.4 struct virtio_blk_config offsets */
#define VIRTIO_BLK_CFG_CAPACITY 0
#define VIRTIO_BLK_CFG_SIZE_MAX 8
#define VIRTIO_BLK_CFG_SEG_MAX 12
#define VIRTIO_BLK_CFG_BLK_SIZE 20
#define VIRTIO_BLK_CFG_MAX_DISCARD_SECTORS 36
#define VIRTIO_BLK_CFG_MAX_DISCARD_SEG 40
#define VIRTIO_BLK_CFG_DISCARD_ALIGN 44
#define VIRTIO_BLK_CFG_MAX_WZ_SECTORS 48
#define VIRTIO_BLK_CFG_MAX_WZ_SEG 52
#define VIRTIO_BLK_CFG_WZ_MAY_UNMAP 56

/* 5.2.6 request types and status */
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_WZ_FLAG_UNMAP 1
#define VIRTIO_BLK_ID_BYTES 20

/* Driver-side results besides the status values above. */
#define VBLK_TIMEOUT (-1)     /* no completion in time */
#define VBLK_NEEDS_RESET (-2) /* the device set DEVICE_NEEDS_RESET */
#define VBLK_NOSPACE (-3)     /* no request or ring space */
#define VBLK_EVERIFY (-4)     /* a stream callback rejected the data */
#define VBLK_EINVAL (-5)      /* request too large for the device's limits */

#define VBLK_SECTOR 512
#define VBLK_DEFAULT_TIMEOUT_US 10000000

struct virtio_blk_req_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

struct virtio_blk_dwz { /* discard / write zeroes segment */
	u64 sector;
	u32 num_sectors;
	u32 flags;
};

/* A request: the shared parts first (header, status, segment), then the
 * driver's bookkeeping. */
struct vblk_req {
	struct virtio_blk_req_hdr hdr;
	struct virtio_blk_dwz seg;
	volatile u8 status;
	u8 in_flight;
	u16 id;
	u32 len;       /* data bytes */
	u32 used_len;  /* what the device reported writing */
	void *buf;
	u64 user;      /* for the caller */
	u64 t_submit;  /* TSC */
};

struct vblk {
	struct virtio_dev dev;
	struct virtq vq;
	u32 index;
	u64 capacity; /* sectors */
	u32 blk_size;
	u32 seg_max;  /* data segments per request (0 = no limit given) */
	u32 size_max; /* bytes per segment (0 = no limit given) */
	bool ro, flush, discard, write_zeroes, wz_may_unmap;
	u32 max_discard_sectors, max_discard_seg, discard_align;
	u32 max_wz_sectors, max_wz_seg;
	struct vblk_req *reqs;
	u16 nreqs;
	u16 *free_reqs;
	u16 nfree;
	u64 completed;
	/* stream buffers (vblk_stream), allocated on first use */
	u8 *sbuf;
	u64 sbuf_bytes;
};

/* Features the driver asks for unless told otherwise (event_idx=0 and
 * indirect=0 on the command line clear the ring features). */
u64 vblk_wanted_features(void);

/* Initialise the index-th virtio-blk device. Returns a VIRTIO_E_* code. */
int vblk_open(struct vblk *b, u32 index, bool poll);
/* After DEVICE_NEEDS_RESET: reset, re-initialise, forget requests in
 * flight. */
int vblk_reinit(struct vblk *b);

/* Largest data transfer of one request, in bytes (a sector multiple). */
u32 vblk_max_transfer(const struct vblk *b);

struct vblk_req *vblk_req_alloc(struct vblk *b);
void vblk_req_free(struct vblk *b, struct vblk_req *r);
/* Queue a request (no notification yet). For DISCARD / WRITE_ZEROES, buf
 * and len are ignored and r->seg is sent. Returns 0, VBLK_NOSPACE or
 * VBLK_EINVAL. */
int vblk_submit(struct vblk *b, struct vblk_req *r, u32 type, u64 sector, void *buf, u32 len);
static inline void vblk_kick(struct vblk *b) { virtq_kick(&b->vq); }
/* A completed request (status in r->status), or NULL. */
struct vblk_req *vblk_reap(struct vblk *b);

/* Wait until a completion can be reaped: 0, VBLK_TIMEOUT or
 * VBLK_NEEDS_RESET. Halts (interrupt mode) or polls (dev.poll). */
int vblk_wait(struct vblk *b, u64 timeout_us);

/* One request, waited for. Returns the status byte (0..255), or
 * VBLK_TIMEOUT / VBLK_NEEDS_RESET / VBLK_NOSPACE / VBLK_EINVAL. */
int vblk_sync(struct vblk *b, u32 type, u64 sector, void *buf, u32 len, u64 timeout_us);
int vblk_sync_dwz(struct vblk *b, u32 type, u64 sector, u32 nsectors, u32 flags, u64 timeout_us);

/* Transfer sectors [first, first + count) with `depth` requests of up to
 * chunk_sectors in flight. For writes fn fills each chunk before it is
 * submitted; for reads fn checks each chunk after it completed (false
 * stops the stream with VBLK_EVERIFY). Returns 0, a non-zero status byte,
 * or a VBLK_* error; *fail_sector is the chunk's first sector then. */
typedef bool (*vblk_chunk_fn)(void *ctx, u64 sector, void *buf, u32 nsectors);
int vblk_stream(struct vblk *b, u32 type, u64 first, u64 count, u32 chunk_sectors, u32 depth, vblk_chunk_fn fn,
		void *ctx, u64 *fail_sector);

const char *vblk_strerror(int r);

#endif
