/* world.h - which KVM we run on, and the interrupt flag in each world.
 *
 * Software-virtualization module ("pvm", /work/shared/platform/README.md):
 * the guest runs at hardware CPL 3, CLI/STI are ignored and the interrupt
 * flag is byte 0 of a per-CPU "VIF page" registered through MSR 0x4b564d10;
 * byte 1 is set by the hypervisor when an interrupt is pending while the
 * flag is 0. Hardware KVM ("kvm"): CLI/STI as usual. */
#ifndef KVMM_GUEST_WORLD_H
#define KVMM_GUEST_WORLD_H

#define MSR_PVM_VIF 0x4b564d10       /* VIF page gpa (per vCPU) */
#define MSR_PVM_SIGNATURE 0x4b564d11 /* reads PVM_SIGNATURE; #GP elsewhere */
#define MSR_PVM_FEATURES 0x4b564d12
#define MSR_PVM_TSC_KHZ 0x4b564d13
#define PVM_SIGNATURE 0x4d5650       /* "PVM" */

#define VIF_IF 0      /* byte offsets in the VIF page */
#define VIF_PENDING 1

#ifndef __ASSEMBLER__

#include "percpu.h"
#include "types.h"

enum world { WORLD_KVM = 0, WORLD_PVM = 1 };

extern enum world world;

/* Detect the world; needs the IDT (a #GP on the probe MSR is expected on
 * hardware KVM). */
void world_detect(void);
const char *world_name(void);
static inline bool world_is_pvm(void) { return world == WORLD_PVM; }

/* Register this CPU's VIF page (PVM only; no-op on hardware KVM). */
void vif_register(struct cpu *c);

void irq_enable(void);
void irq_disable(void);
/* Save the interrupt flag and disable; restore a saved flag. */
bool irq_save(void);
void irq_restore(bool enabled);
bool irq_enabled(void);

/* Atomically enable interrupts and halt; returns with interrupts disabled.
 * Call with interrupts disabled, after checking the wake-up condition. */
void cpu_idle_irqoff(void);

/* Interrupt entry hook: an interrupt that arrives inside the PVM idle
 * window (after the flag was set, before HLT) must not return into HLT. */
u64 idle_fixup_rip(u64 rip);

#endif /* __ASSEMBLER__ */
#endif
