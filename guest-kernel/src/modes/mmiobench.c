/* mmiobench - cost of an MMIO exit: n=N (100000) 32-bit writes, then n
 * reads, at 0xc0000000 (unbacked in kvmm and in QEMU microvm).
 * Verdict: RESULT mmiobench PASS n=N write_ns_per_exit=W read_ns_per_exit=R read_value=V */
#include "cmdline.h"
#include "kernel.h"
#include "modes.h"
#include "platform.h"
#include "timer.h"
#include "x86.h"

noreturn void mode_mmiobench(void)
{
	u64 n = cmdline_get_u64("n", 100000);
	u32 v = 0;

	if (n == 0)
		finish(false, "error=bad-parameters");
	u64 t0 = rdtsc();
	for (u64 i = 0; i < n; i++)
		mmio_write32(BENCH_MMIO_BASE, (u32)i);
	u64 t1 = rdtsc();
	for (u64 i = 0; i < n; i++)
		v = mmio_read32(BENCH_MMIO_BASE);
	u64 t2 = rdtsc();
	finish(true, "n=%llu write_ns_per_exit=%llu read_ns_per_exit=%llu read_value=0x%x", n,
	       tsc_to_ns(t1 - t0) / n, tsc_to_ns(t2 - t1) / n, v);
}
