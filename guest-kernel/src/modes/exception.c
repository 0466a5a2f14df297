/* exception - exercise the unexpected-exception path: kind=ud (default),
 * pf (read at an unmapped address), gp (non-canonical address) or de.
 * Expected output: an "EXCEPTION ..." line, then
 * RESULT exception FAIL exception=<vector>, exit status 3. */
#include "cmdline.h"
#include "console.h"
#include "kernel.h"
#include "modes.h"

#define UNMAPPED_ADDR 0x0000008000000000ull  /* PML4 slot 1: never mapped */
#define NONCANONICAL_ADDR 0x8000000000000000ull

noreturn void mode_exception(void)
{
	char kind[8] = "ud";

	cmdline_get_str("kind", kind, sizeof(kind));
	kprintf("kvmm-guest: raising %s\n", kind);
	if (kind[0] == 'p') {
		(void)*(volatile u64 *)(uintptr_t)UNMAPPED_ADDR;
	} else if (kind[0] == 'g') {
		(void)*(volatile u64 *)(uintptr_t)NONCANONICAL_ADDR;
	} else if (kind[0] == 'd') {
		u32 zero = 0;
		__asm__ __volatile__("divl %1" : : "a"(1), "r"(zero), "d"(0));
	} else {
		__asm__ __volatile__("ud2");
	}
	finish(false, "error=no-exception");
}
