/* virtqueue.h - split virtqueues, driver side (virtio 1.2 section 2.7).
 *
 * The descriptor table, available ring and used ring live in memory the
 * kernel owns (palloc). Free descriptors are linked through a private
 * array, never through the shared table, so whatever the device (or a
 * hostile test) writes to the table cannot corrupt the free list. Each
 * chain carries a caller token that virtq_get() hands back.
 *
 * Notification suppression (2.7.7, 2.7.10): with VIRTIO_RING_F_EVENT_IDX
 * the driver writes used_event and reads avail_event; otherwise it uses the
 * VIRTQ_AVAIL_F_NO_INTERRUPT / VIRTQ_USED_F_NO_NOTIFY flags. Chains of more
 * than one buffer use an indirect table (2.7.5.3) when
 * VIRTIO_RING_F_INDIRECT_DESC was negotiated and vq->use_indirect is set. */
#ifndef KVMM_GUEST_VIRTQUEUE_H
#define KVMM_GUEST_VIRTQUEUE_H

#include "types.h"

/* 2.7.5 descriptor flags */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
/* 2.7.6 / 2.7.8 ring flags */
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY 1

#define VIRTQ_MAX_SIZE 1024   /* what this driver allocates at most */
#define VIRTQ_INDIRECT_MAX 32 /* entries per indirect table */

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_avail {
	u16 flags;
	u16 idx;
	u16 ring[]; /* [num], then le16 used_event */
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

struct virtq_used {
	u16 flags;
	u16 idx;
	struct virtq_used_elem ring[]; /* [num], then le16 avail_event */
};

/* One buffer of a scatter-gather list. */
struct vq_buf {
	u64 addr;
	u32 len;
	bool write; /* device-writable */
};

struct virtio_dev;

struct virtq {
	struct virtio_dev *dev;
	u16 index; /* queue number on the device */
	u16 num;   /* queue size (power of two) */
	u16 num_max;
	/* shared with the device */
	volatile struct virtq_desc *desc;
	volatile struct virtq_avail *avail;
	volatile struct virtq_used *used;
	volatile u16 *used_event;  /* &avail->ring[num] */
	volatile u16 *avail_event; /* &used->ring[num] */
	struct virtq_desc *indirect; /* num tables of VIRTQ_INDIRECT_MAX */
	/* driver-private */
	u16 *next_free; /* free-list / chain links */
	u16 *chain_len; /* per head: descriptors in its chain */
	void **token;   /* per head; NULL = not in flight */
	u16 free_head;
	u16 num_free;
	u16 avail_idx;  /* next avail index to publish (shadow of avail->idx) */
	u16 kicked_idx; /* avail_idx at the last notification decision */
	u16 last_used;  /* next used entry to consume */
	bool event_idx;
	bool indirect_ok;  /* INDIRECT_DESC negotiated */
	bool use_indirect; /* and wanted */
	bool cb_enabled;   /* the driver wants used-buffer interrupts */
	/* statistics */
	u64 kicks;
	u64 kicks_suppressed;
	u64 bad_used; /* used entries naming no chain in flight */
};

/* Allocate rings for up to num_max entries (power of two). */
bool virtq_alloc(struct virtq *vq, struct virtio_dev *dev, u16 index, u16 num_max);
/* Reset all state for size num (<= num_max, power of two); rings zeroed. */
void virtq_init(struct virtq *vq, u16 num, bool event_idx, bool indirect_ok);

static inline u16 virtq_free(const struct virtq *vq) { return vq->num_free; }
/* Descriptors one chain of n buffers needs. */
u16 virtq_descs_for(const struct virtq *vq, u16 n);

/* Add a chain (readable buffers should come before writable ones) and
 * publish it in the available ring. Returns the head, or -1 if there is
 * no room (or n is 0). token must not be NULL. */
int virtq_add(struct virtq *vq, const struct vq_buf *bufs, u16 n, void *token);
/* Notify the device (QueueNotify) unless it asked not to be. Returns true
 * if a notification was written. */
bool virtq_kick(struct virtq *vq);

/* Is there a used entry to consume? */
static inline bool virtq_has_used(const struct virtq *vq)
{
	return vq->used->idx != vq->last_used;
}
/* Consume one used entry: its token (and *len = bytes written), or NULL if
 * none. Entries that name no chain in flight are counted in bad_used and
 * skipped. */
void *virtq_get(struct virtq *vq, u32 *len);

/* Ask for / stop used-buffer interrupts. enable returns true if used
 * entries are already there (then no interrupt may come for them). */
bool virtq_enable_cb(struct virtq *vq);
void virtq_disable_cb(struct virtq *vq);

/* Raw access for malformed-chain tests: take n free descriptors (ids[]),
 * which the caller fills in vq->desc[] as it likes; then publish ids[0]
 * (or any index) as a head with virtq_raw_publish(); virtq_get() returns
 * the token and frees exactly these n descriptors. Returns false if fewer
 * than n are free. */
bool virtq_raw_alloc(struct virtq *vq, u16 n, u16 *ids);
void virtq_raw_publish(struct virtq *vq, u16 ring_head, u16 first_id, void *token);
/* Give raw descriptors back without the device having used them. */
void virtq_raw_free(struct virtq *vq, u16 first_id);

#endif
