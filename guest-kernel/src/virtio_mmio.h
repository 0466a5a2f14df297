/* virtio_mmio.h - virtio-mmio transports named on the command line as
 * "virtio_mmio.device=<size>@<base>:<irq>[:<id>]" (Linux
 * drivers/virtio/virtio_mmio.c syntax; size takes K/M/G). The virtio
 * drivers (virtio.h) find their devices among these. */
#ifndef KVMM_GUEST_VIRTIO_MMIO_H
#define KVMM_GUEST_VIRTIO_MMIO_H

#include "types.h"

#define VIRTIO_MMIO_MAX 32

/* Register layout (virtio 1.2 section 4.2.2). */
#define VIRTIO_MMIO_MAGIC 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_MAGIC_VALUE 0x74726976 /* "virt" */

struct virtio_mmio_dev {
	u64 base;
	u64 size;
	u32 irq; /* GSI = IOAPIC pin */
};

extern struct virtio_mmio_dev virtio_mmio_devs[VIRTIO_MMIO_MAX];
extern u32 virtio_mmio_count;

/* Parse the command line; returns the number of devices. */
u32 virtio_mmio_discover(void);
/* Read magic, version and device id (three MMIO exits). Returns false if
 * the magic is wrong. */
bool virtio_mmio_probe(const struct virtio_mmio_dev *d, u32 *version, u32 *device_id);

#endif
