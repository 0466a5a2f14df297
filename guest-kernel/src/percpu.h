/* percpu.h - per-CPU state.
 * Each CPU runs on its own STACK_SIZE slice of cpu_stacks[] (no interrupt
 * stacks are used), so the current CPU is found from RSP: no segment base,
 * no LAPIC read. */
#ifndef KVMM_GUEST_PERCPU_H
#define KVMM_GUEST_PERCPU_H

#include "layout.h"
#include "types.h"
#include "x86.h"

typedef void (*cpu_work_fn)(void *arg);

struct cpu {
	u32 index;           /* 0 = bootstrap processor */
	u32 apic_id;
	volatile u8 *vif;    /* PVM VIF page: byte 0 = IF, byte 1 = pending */
	volatile u32 online;
	volatile u32 in_exception;
	/* smp_call(): one work item at a time */
	cpu_work_fn work_fn;
	void *work_arg;
	volatile u32 work_seq;
	volatile u32 done_seq;
	u64 irq_count;
};

extern struct cpu cpus[MAX_CPUS];
extern u8 cpu_stacks[MAX_CPUS][STACK_SIZE];
extern u8 vif_pages[MAX_CPUS][PAGE_SIZE];

static inline struct cpu *this_cpu(void)
{
	u64 off = read_rsp() - (u64)(uintptr_t)cpu_stacks;
	u64 i = off / STACK_SIZE;
	return &cpus[i < MAX_CPUS ? i : 0];
}

static inline u8 *cpu_stack_top(u32 index) { return cpu_stacks[index] + STACK_SIZE; }

#endif
