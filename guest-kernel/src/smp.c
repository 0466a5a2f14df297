/* smp.c - AP start-up (Intel SDM Vol. 3A 8.4.4, MP spec 1.4 appendix B.4)
 * and cross-CPU work. */
#include "smp.h"

#include "console.h"
#include "idt.h"
#include "irq.h"
#include "lapic.h"
#include "layout.h"
#include "string.h"
#include "timer.h"
#include "topology.h"
#include "world.h"

/* Parameter block at the end of the trampoline (trampoline.S). */
struct tramp_params {
	u64 cr3;
	u64 stack;
	u64 vif;
	u64 cpu;
};

extern const char trampoline_start[], trampoline_end[], tramp_params[];

u32 cpus_online = 1;

static void wake_interrupt(u8 vector, void *arg)
{
	(void)vector;
	(void)arg; /* the interrupt itself ends the waiter's HLT */
}

void smp_init_bsp(u32 apic_id)
{
	cpus[0].index = 0;
	cpus[0].apic_id = apic_id;
	cpus[0].online = 1;
	irq_set_handler(VECTOR_WAKE, wake_interrupt, NULL);
}

static bool cpu_is_online(void *arg) { return READ_ONCE(((struct cpu *)arg)->online) != 0; }

static bool start_ap(u32 index, u32 apic_id)
{
	struct cpu *c = &cpus[index];
	struct tramp_params *tp =
		(struct tramp_params *)(uintptr_t)(TRAMPOLINE_BASE + (u64)(tramp_params - trampoline_start));

	c->index = index;
	c->apic_id = apic_id;
	c->vif = vif_pages[index];
	memset(vif_pages[index], 0, PAGE_SIZE); /* IF = 0, nothing pending */
	tp->stack = (u64)(uintptr_t)cpu_stack_top(index);
	tp->vif = world_is_pvm() ? (u64)(uintptr_t)vif_pages[index] : 0;
	tp->cpu = index;
	barrier();

	/* INIT, then two STARTUPs. KVM needs no delays between them; an AP that
	 * already runs ignores the second STARTUP. */
	lapic_send_init(apic_id);
	lapic_send_startup(apic_id, TRAMPOLINE_SIPI_VECTOR);
	lapic_send_startup(apic_id, TRAMPOLINE_SIPI_VECTOR);
	return wait_event(cpu_is_online, c, SMP_AP_TIMEOUT_US);
}

u32 smp_boot(void)
{
	if (topology.ncpus <= 1 || cpus_online > 1)
		return cpus_online;
	memcpy(phys_ptr(TRAMPOLINE_BASE), trampoline_start, (size_t)(trampoline_end - trampoline_start));
	for (u32 i = 1; i < topology.ncpus; i++) {
		if (start_ap(i, topology.apic_ids[i]))
			cpus_online++;
		else
			kprintf("kvmm-guest: cpu %u (apic id %u) did not start\n", i, topology.apic_ids[i]);
	}
	return cpus_online;
}

void smp_call(u32 cpu, cpu_work_fn fn, void *arg)
{
	struct cpu *c = &cpus[cpu];

	c->work_fn = fn;
	c->work_arg = arg;
	__atomic_store_n(&c->work_seq, c->work_seq + 1, __ATOMIC_RELEASE);
	lapic_send_ipi(c->apic_id, VECTOR_WAKE);
}

static bool all_done(void *arg)
{
	(void)arg;
	for (u32 i = 1; i < MAX_CPUS; i++)
		if (cpus[i].online && READ_ONCE(cpus[i].done_seq) != READ_ONCE(cpus[i].work_seq))
			return false;
	return true;
}

bool smp_wait_all(u64 timeout_us) { return wait_event(all_done, NULL, timeout_us); }

static bool has_work(void *arg)
{
	struct cpu *c = arg;

	return READ_ONCE(c->work_seq) != c->done_seq;
}

noreturn void ap_main(u64 index)
{
	struct cpu *c = &cpus[index];

	idt_load();
	lapic_init();
	irq_disable();
	__atomic_store_n(&c->online, 1, __ATOMIC_RELEASE);
	lapic_send_ipi(cpus[0].apic_id, VECTOR_WAKE);

	for (;;) {
		wait_event(has_work, c, WAIT_FOREVER);
		u32 seq = __atomic_load_n(&c->work_seq, __ATOMIC_ACQUIRE);
		c->work_fn(c->work_arg);
		__atomic_store_n(&c->done_seq, seq, __ATOMIC_RELEASE);
		lapic_send_ipi(cpus[0].apic_id, VECTOR_WAKE);
	}
}
