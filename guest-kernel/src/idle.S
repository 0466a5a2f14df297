/* idle.S - "enable interrupts and halt" without a lost wake-up.
 *
 * Hardware: STI's interrupt shadow makes "sti; hlt" atomic.
 * PVM: the flag is a byte in memory, so an interrupt can be delivered
 * between setting it and HLT; HLT would then sleep past the event that the
 * caller was waiting for. Interrupt entry (idt.c -> idle_fixup_rip) moves a
 * return address inside [idle_window_start, idle_window_end) to
 * idle_window_end, so the HLT is skipped in that case. */
#include "platform.h"
#include "world.h"

	.text
	.code64

/* void cpu_idle_pvm(volatile u8 *vif)  -- %rdi = this CPU's VIF page */
	.globl cpu_idle_pvm
	.type cpu_idle_pvm, @function
cpu_idle_pvm:
	movb $1, VIF_IF(%rdi)            /* virtual STI */
	.globl idle_window_start
idle_window_start:
	cmpb $0, VIF_PENDING(%rdi)       /* raised while the flag was 0? */
	jne 1f
	hlt                              /* blocks in the host until an interrupt */
	.globl idle_window_end
idle_window_end:
	movb $0, VIF_IF(%rdi)            /* virtual CLI */
	ret
1:	outb %al, $POST_PORT             /* any trap delivers the pending interrupt */
	movb $0, VIF_IF(%rdi)
	ret
	.size cpu_idle_pvm, . - cpu_idle_pvm

/* void cpu_idle_hw(void) */
	.globl cpu_idle_hw
	.type cpu_idle_hw, @function
cpu_idle_hw:
	sti
	hlt
	cli
	ret
	.size cpu_idle_hw, . - cpu_idle_hw

	.section .note.GNU-stack, "", @progbits
