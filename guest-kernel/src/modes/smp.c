/* smp - start every CPU; each does iters=N (1000000) LOCK INCs on one
 * shared counter. Parameters: iters=N.
 * Verdict: RESULT smp PASS|FAIL cpus=C expected_cpus=E iters=N sum=S
 *          boot_us=B (start-up of all APs) ms=T (the increments)
 * FAIL if an AP did not start or sum != cpus * N. */
#include "cmdline.h"
#include "kernel.h"
#include "modes.h"
#include "smp.h"
#include "timer.h"
#include "topology.h"
#include "x86.h"

#define SMP_WORK_TIMEOUT_US 60000000

static u64 shared_counter;
static u64 iterations;

static void increment(void *arg)
{
	(void)arg;
	for (u64 i = 0; i < iterations; i++)
		__asm__ __volatile__("lock incq %0" : "+m"(shared_counter));
}

noreturn void mode_smp(void)
{
	iterations = cmdline_get_u64("iters", 1000000);
	timer_calibrate(); /* wait_event() needs it; keep it out of boot_us */
	u64 tb = rdtsc();
	u32 online = smp_boot();
	u64 boot_us = tsc_to_ns(rdtsc() - tb) / 1000;

	u64 t0 = rdtsc();
	for (u32 i = 1; i < online; i++)
		smp_call(i, increment, NULL);
	increment(NULL);
	bool done = smp_wait_all(SMP_WORK_TIMEOUT_US);
	u64 ms = tsc_to_ns(rdtsc() - t0) / 1000000;

	u64 sum = __atomic_load_n(&shared_counter, __ATOMIC_ACQUIRE);
	bool pass = done && online == topology.ncpus && sum == (u64)online * iterations;
	finish(pass, "cpus=%u expected_cpus=%u iters=%llu sum=%llu boot_us=%llu ms=%llu", online, topology.ncpus,
	       iterations, sum, boot_us, ms);
}
