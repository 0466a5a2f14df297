/* irq.c - vector table, vector allocation and GSI registration. */
#include "irq.h"

#include "ioapic.h"
#include "lapic.h"
#include "percpu.h"
#include "smp.h"
#include "spinlock.h"

struct irq_slot {
	irq_handler_fn fn;
	void *arg;
};

static struct irq_slot irq_table[256];
static u64 unhandled_count;
static spinlock_t irq_lock;
static u8 next_vector = IRQ_VECTOR_FIRST;

void irq_set_handler(u8 vector, irq_handler_fn fn, void *arg)
{
	irq_table[vector].arg = arg;
	__atomic_store_n(&irq_table[vector].fn, fn, __ATOMIC_RELEASE);
}

int irq_register_gsi(u32 gsi, irq_handler_fn fn, void *arg)
{
	if (gsi >= ioapic_pin_count())
		return -1;
	bool flags = spin_lock_irqsave(&irq_lock);
	int vector = -1;
	if (next_vector <= IRQ_VECTOR_LAST)
		vector = next_vector++;
	spin_unlock_irqrestore(&irq_lock, flags);
	if (vector < 0)
		return -1;
	irq_set_handler((u8)vector, fn, arg);
	ioapic_route(gsi, (u8)vector, cpus[0].apic_id);
	return vector;
}

void irq_mask_gsi(u32 gsi) { ioapic_mask(gsi); }

void irq_dispatch(u8 vector)
{
	if (vector == VECTOR_SPURIOUS)
		return; /* spurious interrupts are not acknowledged (SDM 10.9) */
	irq_handler_fn fn = __atomic_load_n(&irq_table[vector].fn, __ATOMIC_ACQUIRE);
	this_cpu()->irq_count++;
	if (fn)
		fn(vector, irq_table[vector].arg);
	else
		unhandled_count++;
	lapic_eoi();
}
