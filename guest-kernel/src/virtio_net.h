/* virtio_net.h - virtio-net driver (virtio 1.2 section 5.1).
 *
 * Queue 0 receives, queue 1 transmits (no control queue, one pair). Every
 * buffer carries the 12-byte struct virtio_net_hdr (VERSION_1 always has
 * num_buffers). No offloads are negotiated, so frames are at most
 * MTU + 14 bytes and the header is all zeros on transmit. Receive buffers:
 * 2 KiB each with VIRTIO_NET_F_MRG_RXBUF (a frame may span num_buffers of
 * them), else 4 KiB ("large enough" without GSO). Transmit: one
 * device-readable descriptor per frame, header and frame contiguous, from
 * a pool of 2 KiB slots; completions are reclaimed lazily. */
#ifndef KVMM_GUEST_VIRTIO_NET_H
#define KVMM_GUEST_VIRTIO_NET_H

#include "types.h"
#include "virtio.h"

/* 5.1.3 feature bits */
#define VIRTIO_NET_F_MTU 3
#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_MRG_RXBUF 15
#define VIRTIO_NET_F_STATUS 16

/* 5.1.4 struct virtio_net_config offsets */
#define VIRTIO_NET_CFG_MAC 0
#define VIRTIO_NET_CFG_STATUS 6
#define VIRTIO_NET_CFG_MTU 10
#define VIRTIO_NET_S_LINK_UP 1

#define VNET_RX_QUEUE 0
#define VNET_TX_QUEUE 1
#define VNET_HDR_LEN 12
#define VNET_TX_SLOT 2048
#define VNET_RX_BUF_MRG 2048
#define VNET_RX_BUF_LARGE 4096
#define VNET_FRAME_MAX (64 * 1024 + 64) /* reassembly buffer for merged frames */

struct virtio_net_hdr {
	u8 flags;
	u8 gso_type;
	u16 hdr_len;
	u16 gso_size;
	u16 csum_start;
	u16 csum_offset;
	u16 num_buffers;
};

struct vnet {
	struct virtio_dev dev;
	struct virtq rx, tx;
	u32 index;
	u8 mac[6];
	bool mrg;
	u16 mtu;
	u8 *rx_mem;
	u32 rx_buf_size;
	u16 rx_nbufs;
	u8 *tx_mem;
	u16 tx_nslots;
	u16 *tx_free;
	u16 tx_nfree;
	u8 *frame; /* reassembly of merged buffers */
	/* counters */
	u64 rx_frames, rx_bytes, rx_bad, rx_merged;
	u64 tx_frames, tx_bytes, tx_waits;
};

/* A frame handler: frame points at the Ethernet header. */
typedef void (*vnet_rx_fn)(void *ctx, struct vnet *n, u8 *frame, u32 len);

int vnet_open(struct vnet *n, u32 index, bool poll);
/* After DEVICE_NEEDS_RESET: reset, re-initialise, re-post RX buffers. */
int vnet_reinit(struct vnet *n);
bool vnet_link_up(struct vnet *n);

/* Hand up to budget received frames to fn; re-post the buffers. Returns
 * how many frames were handled. */
u32 vnet_rx(struct vnet *n, vnet_rx_fn fn, void *ctx, u32 budget);

/* The frame area of a free TX slot (VNET_TX_SLOT - VNET_HDR_LEN bytes),
 * reclaiming completed ones first; NULL if all are in flight. */
u8 *vnet_tx_buf(struct vnet *n);
/* Queue the frame written into a vnet_tx_buf() area (no notification). */
void vnet_tx_commit(struct vnet *n, u8 *frame, u32 len);
/* Give back a vnet_tx_buf() area without sending it. */
void vnet_tx_cancel(struct vnet *n, u8 *frame);
static inline void vnet_tx_kick(struct vnet *n) { virtq_kick(&n->tx); }
/* Reclaim completed TX chains; returns how many. Tokens that are not TX
 * slots (raw chains of hostile tests) are passed to other (may be NULL). */
u32 vnet_tx_reclaim(struct vnet *n, void (*other)(void *token, void *ctx), void *ctx);
/* Copy, queue and notify. False if no slot freed up within timeout_us. */
bool vnet_send(struct vnet *n, const void *frame, u32 len, u64 timeout_us);

#endif
