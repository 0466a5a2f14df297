/* smp.h - application processors: INIT-SIPI-SIPI start-up and running
 * work on them. APs idle in HLT between work items; VECTOR_WAKE IPIs wake
 * them (and the BSP when an AP comes online or finishes work). */
#ifndef KVMM_GUEST_SMP_H
#define KVMM_GUEST_SMP_H

#include "percpu.h"
#include "types.h"

#define SMP_AP_TIMEOUT_US 500000 /* per AP, from INIT to online */

extern u32 cpus_online;

/* Per-CPU set-up of the bootstrap processor (index 0). */
void smp_init_bsp(u32 apic_id);
/* Start every AP in the topology; returns the number of CPUs online. */
u32 smp_boot(void);
/* Run fn(arg) on an online AP; returns at once. */
void smp_call(u32 cpu, cpu_work_fn fn, void *arg);
/* Wait (halting) until every AP finished its last work item. */
bool smp_wait_all(u64 timeout_us);

/* trampoline.S -> here, on the AP's own stack. */
noreturn void ap_main(u64 index);

#endif
