/* lapic.h - local APIC in xAPIC (MMIO) mode (Intel SDM Vol. 3A chapter 10). */
#ifndef KVMM_GUEST_LAPIC_H
#define KVMM_GUEST_LAPIC_H

#include "types.h"

#define LAPIC_BASE 0xfee00000ull

/* Register offsets (Intel SDM Vol. 3A table 10-1). */
#define LAPIC_ID 0x020
#define LAPIC_VERSION 0x030
#define LAPIC_TPR 0x080
#define LAPIC_EOI 0x0b0
#define LAPIC_SVR 0x0f0
#define LAPIC_ESR 0x280
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_CURRENT 0x390
#define LAPIC_TIMER_DIVIDE 0x3e0

#define LAPIC_SVR_ENABLE (1u << 8)
#define LAPIC_LVT_MASKED (1u << 16)
#define LAPIC_TIMER_ONESHOT (0u << 17)
#define LAPIC_TIMER_PERIODIC (1u << 17)

/* ICR (Intel SDM Vol. 3A 10.6.1). */
#define ICR_FIXED (0u << 8)
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)
#define ICR_DELIVERY_PENDING (1u << 12)
#define ICR_LEVEL_ASSERT (1u << 14)
#define ICR_DEST_SHIFT 24

u32 lapic_read(u32 reg);
void lapic_write(u32 reg, u32 val);

/* Enable this CPU's LAPIC; mask LINT0/LINT1 (the 8259 is not used), the
 * timer, and route errors to VECTOR_ERROR. */
void lapic_init(void);
u32 lapic_id(void);
void lapic_eoi(void);
void lapic_send_ipi(u32 apic_id, u8 vector);
void lapic_send_init(u32 apic_id);
void lapic_send_startup(u32 apic_id, u8 page);

/* Timer: divide-by-N (1..128, power of two), count, mode, vector. */
void lapic_timer_start(u32 divide, u32 count, u32 mode, u8 vector);
void lapic_timer_stop(void);

#endif
