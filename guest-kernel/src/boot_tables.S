/* boot_tables.S - data the CPU needs before any C runs: the GDT and an
 * identity map of the first 4 GiB, prebuilt in the image so that the
 * (emulated, ~1 us per instruction) 32-bit PVH stub and AP trampoline only
 * have to load CR3.
 *
 * Every present entry at every level has U/S=1: the software-virtualization
 * module runs the guest at hardware CPL 3 and refaults forever otherwise
 * (/work/shared/platform/README.md). That is also valid on hardware
 * (no SMEP/SMAP enabled). */
#include "layout.h"

#define PDE_2M  0x87   /* P | RW | U/S | PS (Intel SDM Vol. 3A table 4-18) */
#define PDE_TBL 0x7    /* P | RW | U/S */

	.section .data.pagetables, "aw"
	.balign 4096
	.globl boot_pml4
boot_pml4:
	.quad boot_pdpt + PDE_TBL
	.fill 511, 8, 0

	.globl boot_pdpt
boot_pdpt:
	.quad boot_pd + 0x0000 + PDE_TBL
	.quad boot_pd + 0x1000 + PDE_TBL
	.quad boot_pd + 0x2000 + PDE_TBL
	.quad boot_pd + 0x3000 + PDE_TBL
	.fill 508, 8, 0

	/* four page directories: 2048 x 2 MiB = 4 GiB */
boot_pd:
	.set addr, 0
	.rept 2048
	.quad addr + PDE_2M
	.set addr, addr + 0x200000
	.endr

	.section .data, "aw"
	/* Flat GDT, same selectors as the kvmm protocol's (docs/guest-protocol.md):
	 * 0x08 64-bit code, 0x10 data, 0x18 32-bit code (Intel SDM Vol. 3A 3.4.5). */
	.balign 16
	.globl boot_gdt
boot_gdt:
	.quad 0
	.quad 0x00af9b000000ffff   /* 0x08: code, DPL 0, L=1 */
	.quad 0x00cf93000000ffff   /* 0x10: data, DPL 0, 4 GiB */
	.quad 0x00cf9b000000ffff   /* 0x18: code, DPL 0, D=1 (32-bit) */
boot_gdt_end:

	.balign 8
	.word 0                    /* pad so that .long base below is aligned */
	.globl boot_gdtr
boot_gdtr:
	.word boot_gdt_end - boot_gdt - 1
	.quad boot_gdt

	.section .note.GNU-stack, "", @progbits
