/* pvh.S - PVH entry (QEMU -kernel, Xen's HVM direct boot ABI,
 * xen/include/public/arch-x86/hvm/start_info.h):
 * 32-bit protected mode, paging off, flat CS/DS, EBX = hvm_start_info.
 *
 * Under the software-virtualization module every instruction here is
 * emulated (~1 us each) until the CPU is in long mode with its VIF page
 * registered, so this is kept to a few dozen instructions: prebuilt page
 * tables (boot_tables.S), then early_pvm_native (early.S) registers CPU 0's
 * VIF page; everything else runs natively in C. */
#include "layout.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18   /* xen/include/public/elfnote.h */
#define CR0_BOOT 0x80010033           /* PG | WP | NE | ET | MP | PE */
#define CR4_PAE 0x20
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100

	/* ELF note read by QEMU's loader (PT_NOTE, see kernel.ld). */
	.section .note.Xen, "a"
	.balign 4
	.long 4                       /* namesz: "Xen\0" */
	.long 4                       /* descsz */
	.long XEN_ELFNOTE_PHYS32_ENTRY
	.asciz "Xen"
	.long pvh_start32

	.text
	.code32
	.globl pvh_start32
	.type pvh_start32, @function
pvh_start32:
	lgdt boot_gdtr
	mov $CR4_PAE, %eax
	mov %eax, %cr4
	mov $boot_pml4, %eax
	mov %eax, %cr3
	mov $MSR_EFER, %ecx
	mov $EFER_LME, %eax
	xor %edx, %edx
	wrmsr
	mov $CR0_BOOT, %eax
	mov %eax, %cr0                /* paging on: long mode active */
	ljmp $GDT_CODE64, $pvh_start64
	.size pvh_start32, . - pvh_start32

	.code64
pvh_start64:
	mov $GDT_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
	lea cpu_stacks + STACK_SIZE(%rip), %rsp
	mov %ebx, %r12d               /* hvm_start_info (zero-extended) */

	call early_pvm_native
	cld
	xor %ebp, %ebp
	mov $BOOT_PROTO_PVH, %edi
	mov %r12, %rsi
	call kmain
2:	hlt
	jmp 2b

	.section .note.GNU-stack, "", @progbits
