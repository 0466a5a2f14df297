/* entry64.S - the ELF entry point (e_entry): kvmm's direct 64-bit boot.
 * State (docs/guest-protocol.md): long mode, CPL 0, identity map with U/S=1,
 * kvmm's GDT, IDT limit 0, RSI = Linux zero page, interrupts disabled.
 * Under the software-virtualization module the VIF page is already
 * registered, so this code runs natively from the first instruction; if it
 * is not, early_pvm_native() registers one before any real work. */
#include "layout.h"

	.section .text.entry, "ax"
	.code64
	.globl entry64
	.type entry64, @function
entry64:
	cli
	cld
	lea cpu_stacks + STACK_SIZE(%rip), %rsp   /* CPU 0's stack */
	mov %rsi, %r12                /* zero page */
	call early_pvm_native         /* in case kvmm left no VIF page */
	xor %ebp, %ebp
	mov $BOOT_PROTO_ZEROPAGE, %edi
	mov %r12, %rsi
	call kmain
1:	hlt
	jmp 1b
	.size entry64, . - entry64

	.section .note.GNU-stack, "", @progbits
