/* isr.S - 256 interrupt/exception entry stubs and the common path.
 * Each stub pushes a dummy error code where the CPU pushes none (Intel SDM
 * Vol. 3A 6.15), then its vector, and jumps to isr_common, which saves the
 * general registers as struct trap_frame (idt.h) and calls trap_dispatch().
 * Stubs are 16 bytes apart: idt.c computes gate addresses from that. */

	.text
	.code64
	.balign 16
	.globl isr_stubs
isr_stubs:
	.set vec, 0
	.rept 256
	.balign 16
	.if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq $0
	.endif
	pushq $vec
	jmp isr_common
	.set vec, vec + 1
	.endr

isr_common:
	push %r15
	push %r14
	push %r13
	push %r12
	push %r11
	push %r10
	push %r9
	push %r8
	push %rbp
	push %rdi
	push %rsi
	push %rdx
	push %rcx
	push %rbx
	push %rax
	cld
	mov %rsp, %rdi
	mov %rsp, %rbx            /* callee-saved: restore after realigning */
	and $-16, %rsp
	call trap_dispatch
	mov %rbx, %rsp
	pop %rax
	pop %rbx
	pop %rcx
	pop %rdx
	pop %rsi
	pop %rdi
	pop %rbp
	pop %r8
	pop %r9
	pop %r10
	pop %r11
	pop %r12
	pop %r13
	pop %r14
	pop %r15
	add $16, %rsp             /* vector, error code */
	iretq

	.section .note.GNU-stack, "", @progbits
