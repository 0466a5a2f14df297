/* world.c - PVM / hardware-KVM detection and interrupt-flag helpers. */
#include "world.h"

#include "string.h"
#include "platform.h"
#include "x86.h"

enum world world = WORLD_KVM;

/* idle.S */
void cpu_idle_pvm(volatile u8 *vif);
void cpu_idle_hw(void);
extern const char idle_window_start[], idle_window_end[];

void world_detect(void)
{
	u64 sig;

	if (rdmsr_safe(MSR_PVM_SIGNATURE, &sig) && (u32)sig == PVM_SIGNATURE)
		world = WORLD_PVM;
	else
		world = WORLD_KVM;
}

const char *world_name(void) { return world == WORLD_PVM ? "pvm" : "kvm"; }

void vif_register(struct cpu *c)
{
	c->vif = vif_pages[c->index];
	if (world != WORLD_PVM)
		return;
	memset((void *)vif_pages[c->index], 0, PAGE_SIZE);
	wrmsr(MSR_PVM_VIF, (u64)(uintptr_t)vif_pages[c->index]);
}

void irq_enable(void)
{
	if (world == WORLD_PVM) {
		volatile u8 *vif = this_cpu()->vif;

		vif[VIF_IF] = 1;
		/* An interrupt that became pending while the flag was 0 is
		 * delivered at the next trap into the hypervisor. */
		if (vif[VIF_PENDING])
			outb(POST_PORT, 0);
	} else {
		__asm__ __volatile__("sti" ::: "memory");
	}
}

void irq_disable(void)
{
	if (world == WORLD_PVM) {
		this_cpu()->vif[VIF_IF] = 0;
		barrier();
	} else {
		cli();
	}
}

bool irq_enabled(void)
{
	if (world == WORLD_PVM)
		return this_cpu()->vif[VIF_IF] != 0;
	return (read_rflags() & RFLAGS_IF) != 0;
}

bool irq_save(void)
{
	bool was = irq_enabled();

	irq_disable();
	return was;
}

void irq_restore(bool enabled)
{
	if (enabled)
		irq_enable();
}

void cpu_idle_irqoff(void)
{
	if (world == WORLD_PVM)
		cpu_idle_pvm(this_cpu()->vif);
	else
		cpu_idle_hw();
}

u64 idle_fixup_rip(u64 rip)
{
	if (world == WORLD_PVM && rip >= (u64)(uintptr_t)idle_window_start &&
	    rip < (u64)(uintptr_t)idle_window_end)
		return (u64)(uintptr_t)idle_window_end;
	return rip;
}
