/* virtio_net.c - virtio-net driver (virtio 1.2 section 5.1). */
#include "virtio_net.h"

#include "cmdline.h"
#include "layout.h"
#include "palloc.h"
#include "string.h"
#include "timer.h"
#include "x86.h"

#define VNET_QUEUE_MAX 256
#define MRG_WAIT_US 10000 /* for the rest of a merged frame */

static u64 wanted_features(void)
{
	u64 f = BIT64(VIRTIO_NET_F_MAC) | BIT64(VIRTIO_NET_F_STATUS) | BIT64(VIRTIO_NET_F_MTU) | BIT64(VIRTIO_F_VERSION_1);

	if (cmdline_get_u64("mrg_rxbuf", 1))
		f |= BIT64(VIRTIO_NET_F_MRG_RXBUF);
	if (cmdline_get_u64("event_idx", 1))
		f |= BIT64(VIRTIO_RING_F_EVENT_IDX);
	if (cmdline_get_u64("indirect", 1))
		f |= BIT64(VIRTIO_RING_F_INDIRECT_DESC);
	return f;
}

static void rx_post(struct vnet *n, u16 i)
{
	u8 *buf = n->rx_mem + (u64)i * n->rx_buf_size;
	struct vq_buf b = { virt_to_phys(buf), n->rx_buf_size, true };

	virtq_add(&n->rx, &b, 1, buf);
}

static void rx_fill(struct vnet *n)
{
	for (u16 i = 0; i < n->rx_nbufs; i++)
		rx_post(n, i);
	virtq_kick(&n->rx);
}

static void tx_pool_reset(struct vnet *n)
{
	n->tx_nfree = 0;
	for (u16 i = 0; i < n->tx_nslots; i++)
		n->tx_free[n->tx_nfree++] = (u16)(n->tx_nslots - 1 - i);
}

int vnet_open(struct vnet *n, u32 index, bool poll)
{
	const struct virtio_mmio_dev *m = virtio_find(VIRTIO_ID_NET, index);

	if (!m)
		return VIRTIO_E_NODEV;
	memset(n, 0, sizeof(*n));
	n->index = index;
	n->dev.poll = poll;
	int err = virtio_dev_init(&n->dev, m, wanted_features(), 0);
	if (err)
		return err;
	if (virtio_has(&n->dev, VIRTIO_NET_F_MAC)) {
		for (int i = 0; i < 6; i++)
			n->mac[i] = virtio_cfg8(&n->dev, VIRTIO_NET_CFG_MAC + (u32)i);
	} else {
		/* locally administered, unicast */
		u8 mac[6] = { 0x02, 0x6b, 0x76, 0x6d, 0x00, (u8)index };
		memcpy(n->mac, mac, 6);
	}
	n->mtu = virtio_has(&n->dev, VIRTIO_NET_F_MTU) ? virtio_cfg16(&n->dev, VIRTIO_NET_CFG_MTU) : 1500;
	n->mrg = virtio_has(&n->dev, VIRTIO_NET_F_MRG_RXBUF);
	n->rx_buf_size = n->mrg ? VNET_RX_BUF_MRG : VNET_RX_BUF_LARGE;
	if ((err = virtio_setup_queue(&n->dev, &n->rx, VNET_RX_QUEUE, VNET_QUEUE_MAX)) ||
	    (err = virtio_setup_queue(&n->dev, &n->tx, VNET_TX_QUEUE, VNET_QUEUE_MAX)))
		return err;
	n->rx.use_indirect = false;
	n->tx.use_indirect = false;
	n->rx_nbufs = n->rx.num;
	n->tx_nslots = n->tx.num;
	n->rx_mem = palloc((u64)n->rx_nbufs * n->rx_buf_size, PAGE_SIZE);
	n->tx_mem = palloc((u64)n->tx_nslots * VNET_TX_SLOT, PAGE_SIZE);
	n->tx_free = palloc(2ull * n->tx_nslots, 8);
	n->frame = palloc(VNET_FRAME_MAX, PAGE_SIZE);
	if (!n->rx_mem || !n->tx_mem || !n->tx_free || !n->frame)
		return VIRTIO_E_NOMEM;
	tx_pool_reset(n);
	virtq_disable_cb(&n->tx); /* TX completions are reclaimed lazily */
	virtio_driver_ok(&n->dev);
	rx_fill(n);
	return VIRTIO_OK;
}

int vnet_reinit(struct vnet *n)
{
	int err = virtio_reinit(&n->dev);

	n->rx.use_indirect = false;
	n->tx.use_indirect = false;
	tx_pool_reset(n);
	if (err)
		return err;
	virtq_disable_cb(&n->tx);
	rx_fill(n);
	return VIRTIO_OK;
}

bool vnet_link_up(struct vnet *n)
{
	if (!virtio_has(&n->dev, VIRTIO_NET_F_STATUS))
		return true; /* 5.1.4: assume the link is up */
	return (virtio_cfg16(&n->dev, VIRTIO_NET_CFG_STATUS) & VIRTIO_NET_S_LINK_UP) != 0;
}

static u16 rx_index(struct vnet *n, const u8 *buf) { return (u16)((u64)(buf - n->rx_mem) / n->rx_buf_size); }

/* The next used RX buffer, waiting briefly (the rest of a merged frame
 * should already be there). */
static u8 *rx_next(struct vnet *n, u32 *len)
{
	u64 deadline = rdtsc() + us_to_tsc(MRG_WAIT_US);

	for (;;) {
		u8 *buf = virtq_get(&n->rx, len);
		if (buf || rdtsc() >= deadline)
			return buf;
		cpu_relax();
	}
}

u32 vnet_rx(struct vnet *n, vnet_rx_fn fn, void *ctx, u32 budget)
{
	u32 handled = 0, len;
	u8 *buf;

	while (handled < budget && (buf = virtq_get(&n->rx, &len))) {
		const struct virtio_net_hdr *h = (const struct virtio_net_hdr *)buf;
		u16 nbufs = n->mrg ? h->num_buffers : 1;
		u8 *frame = buf + VNET_HDR_LEN;
		u32 flen = len > VNET_HDR_LEN ? len - VNET_HDR_LEN : 0;
		bool ok = len >= VNET_HDR_LEN && len <= n->rx_buf_size && nbufs >= 1;

		if (ok && nbufs > 1) {
			/* gather into the reassembly buffer */
			u32 at = flen;
			memcpy(n->frame, frame, flen);
			for (u16 i = 1; i < nbufs; i++) {
				u32 l;
				u8 *more = rx_next(n, &l);
				if (!more) {
					ok = false;
					break;
				}
				if (l > n->rx_buf_size || at + l > VNET_FRAME_MAX)
					ok = false;
				else
					memcpy(n->frame + at, more, l);
				at += l;
				rx_post(n, rx_index(n, more));
			}
			frame = n->frame;
			flen = at;
			n->rx_merged++;
		}
		if (ok && flen >= 14) {
			n->rx_frames++;
			n->rx_bytes += flen;
			fn(ctx, n, frame, flen);
		} else {
			n->rx_bad++;
		}
		rx_post(n, rx_index(n, buf));
		handled++;
	}
	if (handled)
		virtq_kick(&n->rx);
	return handled;
}

static bool is_tx_slot(struct vnet *n, const u8 *p)
{
	return p >= n->tx_mem && p < n->tx_mem + (u64)n->tx_nslots * VNET_TX_SLOT &&
	       (u64)(p - n->tx_mem) % VNET_TX_SLOT == 0;
}

static void tx_put(struct vnet *n, u8 *slot)
{
	if (n->tx_nfree < n->tx_nslots)
		n->tx_free[n->tx_nfree++] = (u16)((u64)(slot - n->tx_mem) / VNET_TX_SLOT);
}

u32 vnet_tx_reclaim(struct vnet *n, void (*other)(void *token, void *ctx), void *ctx)
{
	u32 count = 0;
	void *t;

	while ((t = virtq_get(&n->tx, NULL))) {
		if (is_tx_slot(n, t))
			tx_put(n, t);
		else if (other)
			other(t, ctx);
		count++;
	}
	return count;
}

u8 *vnet_tx_buf(struct vnet *n)
{
	if (!n->tx_nfree)
		vnet_tx_reclaim(n, NULL, NULL);
	if (!n->tx_nfree || !virtq_free(&n->tx))
		return NULL;
	u8 *slot = n->tx_mem + (u64)n->tx_free[--n->tx_nfree] * VNET_TX_SLOT;
	memset(slot, 0, VNET_HDR_LEN); /* no offloads: an all-zero header */
	return slot + VNET_HDR_LEN;
}

void vnet_tx_cancel(struct vnet *n, u8 *frame) { tx_put(n, frame - VNET_HDR_LEN); }

void vnet_tx_commit(struct vnet *n, u8 *frame, u32 len)
{
	u8 *slot = frame - VNET_HDR_LEN;
	struct vq_buf b = { virt_to_phys(slot), VNET_HDR_LEN + len, false };

	if (virtq_add(&n->tx, &b, 1, slot) < 0) {
		tx_put(n, slot);
		return;
	}
	n->tx_frames++;
	n->tx_bytes += len;
}

bool vnet_send(struct vnet *n, const void *frame, u32 len, u64 timeout_us)
{
	u8 *p = vnet_tx_buf(n);
	u64 deadline = rdtsc() + us_to_tsc(timeout_us);

	if (len > VNET_TX_SLOT - VNET_HDR_LEN)
		return false;
	while (!p) {
		u64 now = rdtsc();
		if (now >= deadline)
			return false;
		n->tx_waits++;
		virtio_wait1(&n->tx, tsc_to_ns(deadline - now) / 1000 + 1);
		p = vnet_tx_buf(n);
	}
	memcpy(p, frame, len);
	vnet_tx_commit(n, p, len);
	vnet_tx_kick(n);
	return true;
}
