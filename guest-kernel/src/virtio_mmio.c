/* virtio_mmio.c - command-line discovery of virtio-mmio transports. */
#include "virtio_mmio.h"

#include "cmdline.h"
#include "x86.h"

struct virtio_mmio_dev virtio_mmio_devs[VIRTIO_MMIO_MAX];
u32 virtio_mmio_count;

/* "<size>@<base>:<irq>[:<id>]" */
static void add_device(const char *v, size_t len, void *arg)
{
	(void)arg;
	struct virtio_mmio_dev d;
	size_t used, pos = 0;

	if (virtio_mmio_count >= VIRTIO_MMIO_MAX)
		return;
	if (!parse_u64(v, len, &d.size, &used) || used >= len || v[used] != '@')
		return;
	pos = used + 1;
	if (!parse_u64(v + pos, len - pos, &d.base, &used) || pos + used >= len || v[pos + used] != ':')
		return;
	pos += used + 1;
	u64 irq;
	if (!parse_u64(v + pos, len - pos, &irq, &used) || irq > 0xff)
		return;
	d.irq = (u32)irq;
	virtio_mmio_devs[virtio_mmio_count++] = d;
}

u32 virtio_mmio_discover(void)
{
	virtio_mmio_count = 0;
	cmdline_for_each("virtio_mmio.device", add_device, NULL);
	return virtio_mmio_count;
}

bool virtio_mmio_probe(const struct virtio_mmio_dev *d, u32 *version, u32 *device_id)
{
	if (mmio_read32(d->base + VIRTIO_MMIO_MAGIC) != VIRTIO_MMIO_MAGIC_VALUE)
		return false;
	*version = mmio_read32(d->base + VIRTIO_MMIO_VERSION);
	*device_id = mmio_read32(d->base + VIRTIO_MMIO_DEVICE_ID);
	return true;
}
