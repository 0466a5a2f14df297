/* layout.h - the guest kernel's own memory layout and segment selectors.
 * Included from C and from assembly (.S), so only #defines here.
 *
 * Guest-physical memory the kernel uses:
 *   0x1000-0x1fff    AP start-up trampoline (written only when APs are
 *                    started, after all boot data has been copied; kvmm's
 *                    layout.py leaves 0x1000-0x6fff free for it)
 *   0x100000-...     the image: text, rodata, data (GDT, prebuilt page
 *                    tables), bss, and the NOLOAD "noinit" area (stacks,
 *                    VIF pages, page-directory pool); see kernel.ld
 *   RAM above the image  virtio rings and buffers (palloc.c), only in the
 *                    modes that use virtio devices
 * Nothing else is written outside the image except by the "mem" mode. */
#ifndef KVMM_GUEST_LAYOUT_H
#define KVMM_GUEST_LAYOUT_H

#define KERNEL_BASE 0x100000 /* link and load address (1 MiB) */

/* SIPI vector V starts an AP in real mode at V * 4 KiB (Intel SDM Vol. 3A
 * 10.4.4.1); the page must lie below 1 MiB. */
#define TRAMPOLINE_BASE 0x1000
#define TRAMPOLINE_SIPI_VECTOR (TRAMPOLINE_BASE >> 12)

#define MAX_CPUS 32
#define STACK_SIZE 16384 /* per CPU; stacks are contiguous (see percpu.h) */
#define PAGE_SIZE 4096

/* Boot GDT (boot_tables.S); same selectors as the kvmm protocol's GDT. */
#define GDT_CODE64 0x08
#define GDT_DATA 0x10
#define GDT_CODE32 0x18

/* Page tables: the image carries an identity map of the first 4 GiB in
 * 2 MiB pages; RAM above that gets page directories from a static pool. */
#define BOOT_MAP_BYTES 0x100000000
#define PD_POOL_PAGES 60 /* 60 more GiB -> identity map up to 64 GiB */

/* Boot protocols handed to kmain(). */
#define BOOT_PROTO_ZEROPAGE 1 /* kvmm 64-bit entry, RSI = Linux zero page */
#define BOOT_PROTO_PVH 2      /* PVH 32-bit entry, EBX = hvm_start_info */

#endif
