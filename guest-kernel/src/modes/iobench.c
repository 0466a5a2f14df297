/* iobench - cost of a port-I/O exit: n=N (100000) OUTs to port 0x441.
 * Verdict: RESULT iobench PASS n=N ns_per_exit=X */
#include "cmdline.h"
#include "kernel.h"
#include "modes.h"
#include "platform.h"
#include "timer.h"
#include "x86.h"

noreturn void mode_iobench(void)
{
	u64 n = cmdline_get_u64("n", 100000);

	if (n == 0)
		finish(false, "error=bad-parameters");
	u64 t0 = rdtsc();
	for (u64 i = 0; i < n; i++)
		outb(BENCH_PORT, (u8)i);
	u64 t1 = rdtsc();
	finish(true, "n=%llu ns_per_exit=%llu", n, tsc_to_ns(t1 - t0) / n);
}
