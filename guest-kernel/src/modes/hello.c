/* hello - boot, print the banner and the devices named on the command
 * line, pass. Verdict: RESULT hello PASS virtio_mmio=<count>
 * exit=N (1-255): exit with status N instead of 0, to test status passing. */
#include "cmdline.h"
#include "console.h"
#include "kernel.h"
#include "modes.h"
#include "virtio_mmio.h"

noreturn void mode_hello(void)
{
	for (u32 i = 0; i < virtio_mmio_count; i++) {
		const struct virtio_mmio_dev *d = &virtio_mmio_devs[i];
		u32 version = 0, id = 0;
		bool ok = virtio_mmio_probe(d, &version, &id);
		kprintf("kvmm-guest: virtio-mmio base=0x%llx size=0x%llx irq=%u %s version=%u device_id=%u\n", d->base,
			d->size, d->irq, ok ? "present" : "absent", version, id);
	}
	u64 status = cmdline_get_u64("exit", 0);
	if (status > 0 && status <= 255) {
		verdict(true, "virtio_mmio=%u exit=%llu", virtio_mmio_count, status);
		debug_exit((u8)status);
	}
	finish(true, "virtio_mmio=%u", virtio_mmio_count);
}
