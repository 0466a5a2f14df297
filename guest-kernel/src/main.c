/* main.c - boot flow shared by both entry paths, and run control. */
#include <stdarg.h>

#include "boot.h"
#include "cmdline.h"
#include "console.h"
#include "fmt.h"
#include "idt.h"
#include "irq.h"
#include "kernel.h"
#include "lapic.h"
#include "layout.h"
#include "mm.h"
#include "modes/modes.h"
#include "percpu.h"
#include "pic.h"
#include "platform.h"
#include "smp.h"
#include "string.h"
#include "timer.h"
#include "topology.h"
#include "virtio_mmio.h"
#include "world.h"
#include "x86.h"

#define MODE_NAME_MAX 32

extern char __bss_start[], __bss_end[];
extern const struct desc_ptr boot_gdtr;

static char mode_name[MODE_NAME_MAX] = "hello";
static volatile u32 verdict_done;

const char *kernel_mode_name(void) { return mode_name; }

noreturn void debug_exit(u8 status)
{
	outb(DEBUG_EXIT_PORT, status);
	/* No debug-exit device: stop here with interrupts off. */
	irq_disable();
	for (;;)
		__asm__ __volatile__("hlt");
}

static void vverdict(bool emergency, bool pass, const char *fmt, va_list ap)
{
	char details[CONSOLE_LINE_MAX - 64];

	if (__atomic_exchange_n(&verdict_done, 1, __ATOMIC_ACQ_REL))
		return;
	vsnprintf(details, sizeof(details), fmt, ap);
	if (emergency)
		kprintf_emergency("RESULT %s %s%s%s\n", mode_name, pass ? "PASS" : "FAIL", details[0] ? " " : "",
				  details);
	else
		kprintf("RESULT %s %s%s%s\n", mode_name, pass ? "PASS" : "FAIL", details[0] ? " " : "", details);
}

void verdict(bool pass, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vverdict(false, pass, fmt, ap);
	va_end(ap);
}

void verdict_emergency(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vverdict(true, false, fmt, ap);
	va_end(ap);
}

noreturn void finish(bool pass, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vverdict(false, pass, fmt, ap);
	va_end(ap);
	debug_exit(pass ? EXIT_PASS : EXIT_FAIL);
}

/* Entered from entry64.S (proto = BOOT_PROTO_ZEROPAGE, info = zero page)
 * or pvh.S (BOOT_PROTO_PVH, info = hvm_start_info), on CPU 0's stack. */
noreturn void kmain(int proto, u64 info)
{
	memset(__bss_start, 0, (size_t)(__bss_end - __bss_start));
	lgdt(&boot_gdtr);      /* the loader's GDT may be in RAM we reuse */
	mm_load_boot_tables(); /* likewise its page tables */
	idt_init();
	world_detect();        /* RDMSR with the #GP handler in place */
	vif_register(&cpus[0]);

	console_init();
	outb(BOOT_TIMER_PORT, 0);

	boot_parse(proto, info);
	bool map_ok = mm_init();
	pic_mask_all();
	lapic_init();
	smp_init_bsp(lapic_id());
	topology_discover(cpus[0].apic_id);
	timer_init();
	tsc_init();
	virtio_mmio_discover();
	cmdline_get_str("mode", mode_name, sizeof(mode_name));

	kprintf("kvmm-guest: world=%s cpus=%u mem=%llu boot=%s tsc_khz=%llu\n", world_name(), topology.ncpus,
		mm.ram_bytes, boot_proto_name(), tsc_khz);
	if (!map_ok)
		kprintf("kvmm-guest: RAM above %llu bytes is not mapped\n", mm.mapped_top);

	const struct mode *m = mode_find(mode_name);
	if (!m)
		finish(false, "error=unknown-mode");
	m->run();
	finish(false, "error=mode-returned");
}
