/* irq.h - interrupt vectors, the handler table and IOAPIC-routed IRQs.
 *
 * Vector map (priority class = vector >> 4, Intel SDM Vol. 3A 10.8.3):
 *   0x00-0x1f  exceptions
 *   0x30-0xdf  allocated: device IRQs through the IOAPIC (irq_register_gsi)
 *   0xef       LAPIC timer
 *   0xf0       wake-up IPI
 *   0xfe       LAPIC error
 *   0xff       LAPIC spurious (no EOI) */
#ifndef KVMM_GUEST_IRQ_H
#define KVMM_GUEST_IRQ_H

#include "types.h"

#define IRQ_VECTOR_FIRST 0x30
#define IRQ_VECTOR_LAST 0xdf
#define VECTOR_TIMER 0xef
#define VECTOR_WAKE 0xf0
#define VECTOR_ERROR 0xfe
#define VECTOR_SPURIOUS 0xff

typedef void (*irq_handler_fn)(u8 vector, void *arg);

/* Install a handler for a fixed vector (LAPIC-internal sources, IPIs). */
void irq_set_handler(u8 vector, irq_handler_fn fn, void *arg);

/* Route a GSI (IOAPIC pin) edge-triggered, active high, to the bootstrap
 * CPU at a newly allocated vector with this handler. Edge, not level:
 * level-triggered pins fire twice per assertion under the PVM module.
 * Returns the vector, or -1 if none is free or the GSI does not exist. */
int irq_register_gsi(u32 gsi, irq_handler_fn fn, void *arg);
void irq_mask_gsi(u32 gsi);

/* Called by trap_dispatch() for vectors >= 32: runs the handler, then EOI. */
void irq_dispatch(u8 vector);

#endif
