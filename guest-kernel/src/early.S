/* early.S - get CPU 0 to native speed as early as possible.
 *
 * Under the software-virtualization module a 64-bit vCPU runs emulated
 * (~1 us per instruction) until its VIF page is registered. The PVH path
 * always arrives here emulated; kvmm's 64-bit entry normally arrives native
 * (kvmm registered a VIF page) and then this costs three trapped
 * instructions. Probing MSR 0x4b564d11 raises #GP outside PVM, so a
 * one-gate IDT catches it first; idt_init() replaces this IDT later. */
#include "layout.h"
#include "world.h"

#define GP_VECTOR 13

	.text
	.code64
/* void early_pvm_native(void): clobbers rax, rcx, rdx */
	.globl early_pvm_native
	.type early_pvm_native, @function
early_pvm_native:
	/* #GP gate: only the low 32 bits of the handler address vary */
	lea early_gp(%rip), %eax
	mov %ax, early_idt + GP_VECTOR * 16 + 0
	shr $16, %eax
	mov %ax, early_idt + GP_VECTOR * 16 + 6
	lidt early_idtr
	xor %eax, %eax
	mov $MSR_PVM_SIGNATURE, %ecx
	rdmsr                         /* #GP unless PVM: early_gp skips it */
	cmp $PVM_SIGNATURE, %eax
	jne 1f
	movq $0, vif_pages            /* IF = 0, nothing pending */
	lea vif_pages(%rip), %rax     /* CPU 0's VIF page (below 4 GiB) */
	xor %edx, %edx
	mov $MSR_PVM_VIF, %ecx
	wrmsr                         /* native from the next instruction */
1:	ret
	.size early_pvm_native, . - early_pvm_native

	/* #GP from the probe RDMSR: skip the 2-byte instruction. */
early_gp:
	addq $2, 8(%rsp)              /* frame: error code, RIP, CS, ... */
	add $8, %rsp
	iretq

	.data
	.balign 16
early_idt:
	.fill GP_VECTOR * 16, 1, 0
	.word 0                       /* offset 15:0, patched */
	.word GDT_CODE64
	.word 0x8e00                  /* present, DPL 0, 64-bit interrupt gate */
	.word 0                       /* offset 31:16, patched */
	.long 0                       /* offset 63:32: the image is below 4 GiB */
	.long 0
early_idt_end:
	.balign 8
	.word 0
early_idtr:
	.word early_idt_end - early_idt - 1
	.quad early_idt

	.section .note.GNU-stack, "", @progbits
