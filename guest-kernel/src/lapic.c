/* lapic.c - local APIC access. Every access traps (PVM: emulated in the
 * host kernel, ~2 us), so hot paths do the minimum. */
#include "lapic.h"

#include "irq.h"
#include "x86.h"

/* Divide configuration values (Intel SDM Vol. 3A figure 10-10). */
static u32 divide_config(u32 divide)
{
	switch (divide) {
	case 2: return 0x0;
	case 4: return 0x1;
	case 8: return 0x2;
	case 16: return 0x3;
	case 32: return 0x8;
	case 64: return 0x9;
	case 128: return 0xa;
	default: return 0xb; /* divide by 1 */
	}
}

u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
void lapic_write(u32 reg, u32 val) { mmio_write32(LAPIC_BASE + reg, val); }

void lapic_init(void)
{
	lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | VECTOR_SPURIOUS);
	lapic_write(LAPIC_LVT_LINT0, LAPIC_LVT_MASKED);
	lapic_write(LAPIC_LVT_LINT1, LAPIC_LVT_MASKED);
	lapic_write(LAPIC_LVT_TIMER, LAPIC_LVT_MASKED | VECTOR_TIMER);
	lapic_write(LAPIC_LVT_ERROR, VECTOR_ERROR);
	lapic_write(LAPIC_TPR, 0);
}

u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }

void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

static void icr_send(u32 apic_id, u32 low)
{
	/* Bounded wait for the previous IPI (the in-kernel APIC clears the
	 * delivery status at once, so this normally reads once). */
	for (int i = 0; i < 1000 && (lapic_read(LAPIC_ICR_LO) & ICR_DELIVERY_PENDING); i++)
		cpu_relax();
	lapic_write(LAPIC_ICR_HI, apic_id << ICR_DEST_SHIFT);
	lapic_write(LAPIC_ICR_LO, low);
}

void lapic_send_ipi(u32 apic_id, u8 vector) { icr_send(apic_id, ICR_FIXED | ICR_LEVEL_ASSERT | vector); }

void lapic_send_init(u32 apic_id) { icr_send(apic_id, ICR_INIT | ICR_LEVEL_ASSERT); }

void lapic_send_startup(u32 apic_id, u8 page) { icr_send(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | page); }

void lapic_timer_start(u32 divide, u32 count, u32 mode, u8 vector)
{
	lapic_write(LAPIC_TIMER_DIVIDE, divide_config(divide));
	lapic_write(LAPIC_LVT_TIMER, mode | vector);
	lapic_write(LAPIC_TIMER_INITIAL, count); /* starts the count-down */
}

void lapic_timer_stop(void)
{
	lapic_write(LAPIC_LVT_TIMER, LAPIC_LVT_MASKED | VECTOR_TIMER);
	lapic_write(LAPIC_TIMER_INITIAL, 0);
}
