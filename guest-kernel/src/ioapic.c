/* ioapic.c - I/O APIC access through IOREGSEL/IOWIN. */
#include "ioapic.h"

#include "spinlock.h"
#include "x86.h"

#define IOREGSEL 0x00
#define IOWIN 0x10
#define IOAPIC_REG_VERSION 0x01
#define IOAPIC_REG_REDTBL(pin) (0x10 + 2 * (pin)) /* low dword; high at +1 */

/* Redirection entry bits (82093AA datasheet 3.2.4). */
#define REDIR_MASKED (1u << 16)
#define REDIR_LEVEL (1u << 15)
#define REDIR_ACTIVE_LOW (1u << 13)
#define REDIR_DEST_SHIFT 24 /* in the high dword */

static u64 ioapic_base = IOAPIC_DEFAULT_BASE;
static u32 pin_count; /* 0 = not read yet */
static spinlock_t ioapic_lock;

static u32 ioapic_read(u32 reg)
{
	mmio_write32(ioapic_base + IOREGSEL, reg);
	return mmio_read32(ioapic_base + IOWIN);
}

static void ioapic_write(u32 reg, u32 val)
{
	mmio_write32(ioapic_base + IOREGSEL, reg);
	mmio_write32(ioapic_base + IOWIN, val);
}

void ioapic_set_base(u64 base) { ioapic_base = base; }

u32 ioapic_pin_count(void)
{
	if (!pin_count) {
		/* bits 23:16 = maximum redirection entry */
		u32 v = ioapic_read(IOAPIC_REG_VERSION);
		pin_count = v == 0xffffffffu ? 0 : ((v >> 16) & 0xff) + 1;
	}
	return pin_count;
}

void ioapic_route(u32 pin, u8 vector, u32 dest_apic_id)
{
	bool flags = spin_lock_irqsave(&ioapic_lock);
	ioapic_write(IOAPIC_REG_REDTBL(pin) + 1, dest_apic_id << REDIR_DEST_SHIFT);
	ioapic_write(IOAPIC_REG_REDTBL(pin), vector); /* edge, high, fixed, unmasked */
	spin_unlock_irqrestore(&ioapic_lock, flags);
}

void ioapic_mask(u32 pin)
{
	bool flags = spin_lock_irqsave(&ioapic_lock);
	ioapic_write(IOAPIC_REG_REDTBL(pin), REDIR_MASKED);
	spin_unlock_irqrestore(&ioapic_lock, flags);
}
