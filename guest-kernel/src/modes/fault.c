/* fault - deliberate triple fault (no IDT, then int3 -> #GP -> #DF ->
 * shutdown). The verdict is printed first, since nothing runs after.
 * Verdict: RESULT fault PASS action=triple-fault */
#include "console.h"
#include "idt.h"
#include "kernel.h"
#include "modes.h"

noreturn void mode_fault(void)
{
	kprintf("kvmm-guest: triple fault now (IDT limit 0, int3)\n");
	verdict(true, "action=triple-fault");
	idt_triple_fault();
}
