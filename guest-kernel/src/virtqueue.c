/* virtqueue.c - split virtqueues, driver side (virtio 1.2 section 2.7). */
#include "virtqueue.h"

#include "layout.h"
#include "palloc.h"
#include "string.h"
#include "virtio.h"
#include "x86.h"

/* 2.7 "Queue Part / Alignment / Size" */
#define DESC_ALIGN 16
#define AVAIL_ALIGN 2
#define USED_ALIGN 4

static u64 avail_bytes(u16 num) { return 4 + 2ull * num + 2; }
static u64 used_bytes(u16 num) { return 4 + 8ull * num + 2; }

bool virtq_alloc(struct virtq *vq, struct virtio_dev *dev, u16 index, u16 num_max)
{
	memset(vq, 0, sizeof(*vq));
	vq->dev = dev;
	vq->index = index;
	vq->num_max = num_max;
	/* Each part on its own pages: the device's writes to the used ring do
	 * not share a page with the driver's avail ring. */
	vq->desc = palloc(16ull * num_max, PAGE_SIZE);
	vq->avail = palloc(avail_bytes(num_max), PAGE_SIZE);
	vq->used = palloc(used_bytes(num_max), PAGE_SIZE);
	vq->indirect = palloc(16ull * VIRTQ_INDIRECT_MAX * num_max, PAGE_SIZE);
	vq->next_free = palloc(2ull * num_max, 8);
	vq->chain_len = palloc(2ull * num_max, 8);
	vq->token = palloc(8ull * num_max, 8);
	return vq->desc && vq->avail && vq->used && vq->indirect && vq->next_free && vq->chain_len && vq->token;
}

void virtq_init(struct virtq *vq, u16 num, bool event_idx, bool indirect_ok)
{
	vq->num = num;
	memset((void *)vq->desc, 0, 16ull * vq->num_max);
	memset((void *)vq->avail, 0, avail_bytes(vq->num_max));
	memset((void *)vq->used, 0, used_bytes(vq->num_max));
	memset(vq->token, 0, 8ull * vq->num_max);
	for (u16 i = 0; i < num; i++) {
		vq->next_free[i] = (u16)(i + 1);
		vq->chain_len[i] = 0;
	}
	vq->free_head = 0;
	vq->num_free = num;
	vq->avail_idx = 0;
	vq->kicked_idx = 0;
	vq->last_used = 0;
	vq->used_event = &vq->avail->ring[num];
	vq->avail_event = (volatile u16 *)&vq->used->ring[num];
	vq->event_idx = event_idx;
	vq->indirect_ok = indirect_ok;
	vq->use_indirect = indirect_ok;
	vq->cb_enabled = true; /* used_event = 0, flags = 0: interrupts on */
}

u16 virtq_descs_for(const struct virtq *vq, u16 n)
{
	if (n > 1 && vq->use_indirect && n <= VIRTQ_INDIRECT_MAX)
		return 1;
	return n;
}

/* Take n linked descriptors off the free list; returns the first. */
static u16 take_free(struct virtq *vq, u16 n)
{
	u16 head = vq->free_head, last = head;

	for (u16 i = 1; i < n; i++)
		last = vq->next_free[last];
	vq->free_head = vq->next_free[last];
	vq->num_free = (u16)(vq->num_free - n);
	vq->chain_len[head] = n;
	return head;
}

static void put_free(struct virtq *vq, u16 head)
{
	u16 n = vq->chain_len[head], last = head;

	for (u16 i = 1; i < n; i++)
		last = vq->next_free[last];
	vq->next_free[last] = vq->free_head;
	vq->free_head = head;
	vq->num_free = (u16)(vq->num_free + n);
	vq->chain_len[head] = 0;
	vq->token[head] = NULL;
}

static void publish(struct virtq *vq, u16 ring_head)
{
	vq->avail->ring[vq->avail_idx & (vq->num - 1)] = ring_head;
	barrier(); /* the ring entry (and descriptors) before the index */
	vq->avail_idx++;
	vq->avail->idx = vq->avail_idx;
}

int virtq_add(struct virtq *vq, const struct vq_buf *bufs, u16 n, void *token)
{
	if (n == 0 || !token)
		return -1;
	u16 need = virtq_descs_for(vq, n);
	if (vq->num_free < need)
		return -1;
	u16 head = take_free(vq, need);

	if (need == 1 && n > 1) {
		struct virtq_desc *t = &vq->indirect[(u64)head * VIRTQ_INDIRECT_MAX];
		for (u16 i = 0; i < n; i++) {
			t[i].addr = bufs[i].addr;
			t[i].len = bufs[i].len;
			t[i].flags = (u16)((bufs[i].write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
			t[i].next = (u16)(i + 1 < n ? i + 1 : 0);
		}
		vq->desc[head].addr = virt_to_phys(t);
		vq->desc[head].len = 16u * n;
		vq->desc[head].flags = VIRTQ_DESC_F_INDIRECT;
		vq->desc[head].next = 0;
	} else {
		u16 d = head;
		for (u16 i = 0; i < n; i++) {
			vq->desc[d].addr = bufs[i].addr;
			vq->desc[d].len = bufs[i].len;
			vq->desc[d].flags = (u16)((bufs[i].write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
			vq->desc[d].next = i + 1 < n ? vq->next_free[d] : 0;
			d = vq->next_free[d];
		}
	}
	vq->token[head] = token;
	publish(vq, head);
	return head;
}

/* 2.7.10: the device wants a notification if avail_event lies in
 * [old, new) (vring_need_event of the Linux driver). */
static bool need_event(u16 event, u16 new_idx, u16 old)
{
	return (u16)(new_idx - event - 1) < (u16)(new_idx - old);
}

bool virtq_kick(struct virtq *vq)
{
	u16 old = vq->kicked_idx, new_idx = vq->avail_idx;
	bool need;

	if (old == new_idx)
		return false;
	mb(); /* avail->idx visible before reading the device's suppression */
	if (vq->event_idx)
		need = need_event(*vq->avail_event, new_idx, old);
	else
		need = !(vq->used->flags & VIRTQ_USED_F_NO_NOTIFY);
	vq->kicked_idx = new_idx;
	if (!need) {
		vq->kicks_suppressed++;
		return false;
	}
	vq->kicks++;
	virtio_notify(vq->dev, vq->index);
	return true;
}

void *virtq_get(struct virtq *vq, u32 *len)
{
	for (;;) {
		u16 used_idx = vq->used->idx;
		if (used_idx == vq->last_used)
			return NULL;
		barrier(); /* the index before the element it publishes */
		volatile struct virtq_used_elem *e = &vq->used->ring[vq->last_used & (vq->num - 1)];
		u32 id = e->id, n = e->len; /* copy once */
		vq->last_used++;
		if (vq->event_idx && vq->cb_enabled)
			*vq->used_event = vq->last_used;
		if (id >= vq->num || !vq->token[id]) {
			vq->bad_used++;
			continue;
		}
		void *token = vq->token[id];
		put_free(vq, (u16)id);
		if (len)
			*len = n;
		return token;
	}
}

bool virtq_enable_cb(struct virtq *vq)
{
	vq->cb_enabled = true;
	if (vq->event_idx)
		*vq->used_event = vq->last_used;
	else
		vq->avail->flags = 0;
	mb(); /* the request before re-reading the used index */
	return virtq_has_used(vq);
}

void virtq_disable_cb(struct virtq *vq)
{
	vq->cb_enabled = false;
	if (vq->event_idx)
		*vq->used_event = (u16)(vq->last_used + 0x8000); /* far away */
	else
		vq->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
}

bool virtq_raw_alloc(struct virtq *vq, u16 n, u16 *ids)
{
	if (n == 0 || vq->num_free < n)
		return false;
	u16 d = take_free(vq, n);
	for (u16 i = 0; i < n; i++) {
		ids[i] = d;
		d = vq->next_free[d];
	}
	return true;
}

void virtq_raw_publish(struct virtq *vq, u16 ring_head, u16 first_id, void *token)
{
	vq->token[first_id] = token;
	publish(vq, ring_head);
}

void virtq_raw_free(struct virtq *vq, u16 first_id) { put_free(vq, first_id); }
