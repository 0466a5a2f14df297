/* percpu.c - per-CPU storage. Stacks and VIF pages live in the image's
 * NOLOAD "noinit" area (kernel.ld): not cleared at boot, so their pages are
 * only touched when used (first touch costs ~4 us per page under PVM). */
#include "percpu.h"

struct cpu cpus[MAX_CPUS];
u8 cpu_stacks[MAX_CPUS][STACK_SIZE] __attribute__((aligned(PAGE_SIZE), section(".noinit.stacks")));
u8 vif_pages[MAX_CPUS][PAGE_SIZE] __attribute__((aligned(PAGE_SIZE), section(".noinit.vif")));
