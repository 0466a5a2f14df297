/* ioapic.h - I/O APIC redirection (Intel 82093AA I/O APIC datasheet). */
#ifndef KVMM_GUEST_IOAPIC_H
#define KVMM_GUEST_IOAPIC_H

#include "types.h"

#define IOAPIC_DEFAULT_BASE 0xfec00000ull

/* Base address from the MP table / MADT; default otherwise. */
void ioapic_set_base(u64 base);
u32 ioapic_pin_count(void);
/* Edge-triggered, active high, fixed delivery, physical destination. */
void ioapic_route(u32 pin, u8 vector, u32 dest_apic_id);
void ioapic_mask(u32 pin);

#endif
