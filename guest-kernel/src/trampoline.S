/* trampoline.S - application-processor start-up code.
 *
 * smp.c copies [trampoline_start, trampoline_end) to TRAMPOLINE_BASE and
 * sends INIT-SIPI-SIPI with vector TRAMPOLINE_SIPI_VECTOR; the AP starts in
 * real mode at CS:IP = (vector << 8):0 (Intel SDM Vol. 3A 10.4.4, MP spec
 * 1.4 appendix B.4). It goes straight from real mode to long mode (PAE,
 * EFER.LME, then CR0.PE|PG together; the kernel's prebuilt page tables and
 * GDT), jumps into the image, registers its VIF page under PVM and calls
 * ap_main(). Until then every instruction is emulated, hence no detours.
 *
 * The parameter block at the end is filled in by the BSP for one AP at a
 * time; the AP has read it before it reports itself online. */
#include "layout.h"
#include "world.h"

#define CR0_BOOT 0x80010033   /* PG | WP | NE | ET | MP | PE */
#define CR4_PAE 0x20
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define T(sym) (sym - trampoline_start + TRAMPOLINE_BASE)

	.section .rodata.trampoline, "a"
	.code16
	.globl trampoline_start
trampoline_start:
	cli
	xor %ax, %ax
	mov %ax, %ds
	lgdtl T(tramp_gdtr)
	mov $CR4_PAE, %eax
	mov %eax, %cr4
	movl T(tramp_cr3), %eax
	mov %eax, %cr3
	mov $MSR_EFER, %ecx
	mov $EFER_LME, %eax
	xor %edx, %edx
	wrmsr
	mov $CR0_BOOT, %eax
	mov %eax, %cr0
	ljmpl $GDT_CODE64, $ap_entry64

	.balign 8
	.word 0, 0, 0
tramp_gdtr:                   /* limit, base: the kernel's GDT */
	.word 31
	.long boot_gdt
	.balign 8
	.globl tramp_params
tramp_params:                 /* struct tramp_params in smp.c */
tramp_cr3:	.quad boot_pml4
tramp_stack:	.quad 0
tramp_vif:	.quad 0       /* VIF page gpa, or 0 if not PVM */
tramp_cpu:	.quad 0       /* CPU index */
	.globl trampoline_end
trampoline_end:

	.text
	.code64
	.type ap_entry64, @function
ap_entry64:
	mov $GDT_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
	mov T(tramp_stack), %rsp
	mov T(tramp_cpu), %rdi
	mov T(tramp_vif), %rax
	test %rax, %rax
	jz 1f
	mov %rax, %rdx
	shr $32, %rdx
	mov $MSR_PVM_VIF, %ecx
	wrmsr                     /* native from here on */
1:	cld
	xor %ebp, %ebp
	call ap_main
2:	hlt
	jmp 2b
	.size ap_entry64, . - ap_entry64

	.section .note.GNU-stack, "", @progbits
