/* mm.h - physical memory: RAM from the memory map, and the kernel's own
 * identity-mapped page tables (2 MiB pages, U/S=1 at every level). */
#ifndef KVMM_GUEST_MM_H
#define KVMM_GUEST_MM_H

#include "types.h"

struct mm_info {
	u64 ram_bytes;  /* sum of RAM (type 1) regions */
	u64 ram_top;    /* highest RAM address + 1 */
	u64 mapped_top; /* identity map covers [0, mapped_top) */
};

extern struct mm_info mm;

/* Switch to the image's page tables (first 4 GiB). */
void mm_load_boot_tables(void);
/* Account RAM from boot_info and extend the map to cover it (and the page
 * above it). Returns false if RAM reaches past what the pool can map. */
bool mm_init(void);

/* The image, including bss and the noinit area: [start, end). */
u64 mm_image_start(void);
u64 mm_image_end(void);

#endif
