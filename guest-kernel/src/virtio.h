/* virtio.h - virtio devices over the virtio-mmio transport, version 2
 * (virtio 1.2 section 4.2), driver side.
 *
 * virtio_dev_init() runs the initialization sequence of 3.1.1: reset,
 * ACKNOWLEDGE, DRIVER, feature negotiation (VIRTIO_F_VERSION_1 required),
 * FEATURES_OK and its check; the driver then sets up its queues with
 * virtio_setup_queue() (QueueNum, QueueDesc/Driver/Device, QueueReady) and
 * calls virtio_driver_ok(). virtio_reinit() does it all again after a
 * reset (e.g. when the device set DEVICE_NEEDS_RESET), with the same
 * features and queue sizes.
 *
 * Completion: by interrupt (the device's GSI routed edge-triggered through
 * irq_register_gsi(); the handler reads InterruptStatus and acknowledges
 * it) with virtio_wait(), which halts until a queue has used entries, a
 * configuration change arrives or the timeout passes; or polled
 * (dev->poll), where virtio_wait() watches the used index with PAUSE and no
 * interrupt is requested. */
#ifndef KVMM_GUEST_VIRTIO_H
#define KVMM_GUEST_VIRTIO_H

#include "types.h"
#include "virtio_mmio.h"
#include "virtqueue.h"

/* 4.2.2 register offsets (after MAGIC/VERSION/DEVICE_ID in virtio_mmio.h) */
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

/* 4.2.2 InterruptStatus bits */
#define VIRTIO_MMIO_INT_VRING 1
#define VIRTIO_MMIO_INT_CONFIG 2

/* 2.1 device status bits */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* 6 reserved feature bits */
#define VIRTIO_RING_F_INDIRECT_DESC 28
#define VIRTIO_RING_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32

/* 5 device ids */
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2

#define VIRTIO_MAX_QUEUES 4
#define BIT64(n) (1ull << (n))

struct virtio_dev {
	const struct virtio_mmio_dev *mmio;
	u64 base;
	u32 gsi;
	int vector; /* -1 until the interrupt is routed */
	u32 device_id;
	u32 version;
	u64 device_features;
	u64 features; /* negotiated */
	u64 wanted;   /* what the driver asked for (kept for virtio_reinit) */
	bool poll;    /* polled completion: no interrupts requested */
	struct virtq *vqs[VIRTIO_MAX_QUEUES];
	u32 nvqs;
	/* interrupt handler state */
	volatile u32 irqs;
	volatile u32 config_irqs;
	u32 config_seen; /* config_irqs value last handled by the driver */
	u64 resets;
};

/* Error codes of virtio_dev_init / virtio_setup_queue. */
enum virtio_err {
	VIRTIO_OK = 0,
	VIRTIO_E_MAGIC = -1,    /* no virtio-mmio registers there */
	VIRTIO_E_VERSION = -2,  /* not version 2 */
	VIRTIO_E_NODEV = -3,    /* device id 0: an empty slot */
	VIRTIO_E_FEATURES = -4, /* VERSION_1 or a required feature missing, or FEATURES_OK refused */
	VIRTIO_E_QUEUE = -5,    /* queue missing, already live, or too small */
	VIRTIO_E_NOMEM = -6,
	VIRTIO_E_RESET = -7,    /* the device did not finish its reset */
};
const char *virtio_strerror(int err);

/* Find the index-th (0-based) transport in virtio_mmio_devs[] whose
 * device id is id; NULL if there is none. Costs MMIO reads. */
const struct virtio_mmio_dev *virtio_find(u32 id, u32 index);
u32 virtio_count(u32 id);

/* Steps 1-6 of 3.1.1. Negotiates wanted & offered, plus VERSION_1; fails
 * unless every bit of required was offered. */
int virtio_dev_init(struct virtio_dev *d, const struct virtio_mmio_dev *m, u64 wanted, u64 required);
static inline bool virtio_has(const struct virtio_dev *d, u32 bit) { return (d->features >> bit) & 1; }
/* Allocate (first time) and program queue idx with at most max_num
 * entries. */
int virtio_setup_queue(struct virtio_dev *d, struct virtq *vq, u16 idx, u16 max_num);
/* Route the interrupt (first call) and set DRIVER_OK. */
void virtio_driver_ok(struct virtio_dev *d);
/* Write 0 to Status and wait until it reads 0 (4.2.3.1.1). */
bool virtio_reset(struct virtio_dev *d);
/* Reset, then initialise again with the same features and queues (queues
 * start empty: the caller re-posts buffers). */
int virtio_reinit(struct virtio_dev *d);

u32 virtio_status(struct virtio_dev *d);
static inline bool virtio_needs_reset(struct virtio_dev *d)
{
	return (virtio_status(d) & VIRTIO_STATUS_NEEDS_RESET) != 0;
}
void virtio_notify(struct virtio_dev *d, u16 queue);

/* Device configuration space (4.2.2.2: 8/16/32-bit accesses of the
 * field's width; 64-bit fields as two 32-bit reads, retried on a
 * ConfigGeneration change). */
u8 virtio_cfg8(struct virtio_dev *d, u32 off);
u16 virtio_cfg16(struct virtio_dev *d, u32 off);
u32 virtio_cfg32(struct virtio_dev *d, u32 off);
u64 virtio_cfg64(struct virtio_dev *d, u32 off);

/* Why virtio_wait() returned. */
enum virtio_wait_result {
	VIRTIO_WAIT_USED = 0,    /* a queue of the set has used entries */
	VIRTIO_WAIT_CONFIG = 1,  /* configuration change (or NEEDS_RESET) */
	VIRTIO_WAIT_TIMEOUT = 2,
};

/* Wait until one of vqs[0..n) has used entries. Interrupt mode: enables
 * used-buffer interrupts on those queues and halts (never spins); polled
 * mode: watches the used indexes, checking Status for NEEDS_RESET every
 * few milliseconds. timeout_us may be WAIT_FOREVER. Queues may belong to
 * different devices. */
enum virtio_wait_result virtio_wait(struct virtq *const *vqs, u32 n, u64 timeout_us);
static inline enum virtio_wait_result virtio_wait1(struct virtq *vq, u64 timeout_us)
{
	return virtio_wait(&vq, 1, timeout_us);
}

#endif
