/* reset - CPU reset through the i8042 (command 0xfe to port 0x64). If the
 * machine has no i8042 (QEMU microvm), fall back to a triple fault after
 * RESET_FALLBACK_US. Verdict (printed first): RESULT reset PASS action=i8042-reset */
#include "idt.h"
#include "kernel.h"
#include "modes.h"
#include "platform.h"
#include "timer.h"
#include "x86.h"

#define RESET_FALLBACK_US 100000

noreturn void mode_reset(void)
{
	verdict(true, "action=i8042-reset");
	outb(I8042_COMMAND_PORT, I8042_CMD_RESET);
	sleep_us(RESET_FALLBACK_US);
	idt_triple_fault();
}
