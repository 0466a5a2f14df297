/* mm.c - RAM accounting and page-table extension above 4 GiB. */
#include "mm.h"

#include "boot.h"
#include "layout.h"
#include "string.h"
#include "x86.h"

#define PD_SPAN (1ull << 30)   /* one page directory maps 1 GiB */
#define PDPT_ENTRIES 512       /* one PDPT maps 512 GiB; enough here */
#define LARGE_PAGE (2ull << 20)

extern u64 boot_pml4[512], boot_pdpt[512];
extern const char __image_start[], __image_end[];

/* Page directories for RAM above the prebuilt 4 GiB. */
static u64 pd_pool[PD_POOL_PAGES][512] __attribute__((aligned(PAGE_SIZE), section(".noinit.pdpool")));

struct mm_info mm;

u64 mm_image_start(void) { return (u64)(uintptr_t)__image_start; }
u64 mm_image_end(void) { return (u64)(uintptr_t)__image_end; }

void mm_load_boot_tables(void) { write_cr3((u64)(uintptr_t)boot_pml4); }

bool mm_init(void)
{
	mm.ram_bytes = 0;
	mm.ram_top = 0;
	for (u32 i = 0; i < boot_info.nr_e820; i++) {
		const struct e820_entry *e = &boot_info.e820[i];
		if (e->type != E820_RAM)
			continue;
		mm.ram_bytes += e->size;
		if (e->addr + e->size > mm.ram_top)
			mm.ram_top = e->addr + e->size;
	}

	/* Map RAM plus the page right above it (the "mem" mode probes it). */
	u64 want = ALIGN_UP(mm.ram_top + PAGE_SIZE, PD_SPAN);
	u64 limit = BOOT_MAP_BYTES + (u64)PD_POOL_PAGES * PD_SPAN;
	bool ok = want <= limit;
	if (want > limit)
		want = limit;
	mm.mapped_top = BOOT_MAP_BYTES;
	if (want <= BOOT_MAP_BYTES)
		return ok;

	for (u64 gib = BOOT_MAP_BYTES / PD_SPAN; gib < want / PD_SPAN && gib < PDPT_ENTRIES; gib++) {
		u64 *pd = pd_pool[gib - BOOT_MAP_BYTES / PD_SPAN];
		for (int i = 0; i < 512; i++)
			pd[i] = (gib * PD_SPAN + (u64)i * LARGE_PAGE) | PTE_LARGE;
		boot_pdpt[gib] = (u64)(uintptr_t)pd | PTE_TABLE;
	}
	mm.mapped_top = want;
	mm_load_boot_tables(); /* flush */
	return ok;
}
