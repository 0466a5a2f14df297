/* palloc.c - bump allocation over the memory map's RAM above the image. */
#include "palloc.h"

#include "boot.h"
#include "mm.h"
#include "string.h"

static u64 floor_addr; /* nothing below this is handed out (again) */

/* The first RAM span of `bytes` at or above floor_addr; 0 if none. */
static u64 find_span(u64 bytes, u64 align)
{
	u64 best = 0;

	for (u32 i = 0; i < boot_info.nr_e820; i++) {
		const struct e820_entry *e = &boot_info.e820[i];
		if (e->type != E820_RAM)
			continue;
		u64 end = e->addr + e->size;
		if (end > mm.mapped_top)
			end = mm.mapped_top;
		u64 start = e->addr > floor_addr ? e->addr : floor_addr;
		start = ALIGN_UP(start, align);
		if (start >= end || end - start < bytes)
			continue;
		if (!best || start < best)
			best = start;
	}
	return best;
}

void *palloc(u64 bytes, u64 align)
{
	if (!floor_addr)
		floor_addr = mm_image_end();
	if (align < 8)
		align = 8;
	bytes = ALIGN_UP(bytes, 8);
	u64 at = find_span(bytes, align);
	if (!at || !bytes)
		return NULL;
	floor_addr = at + bytes;
	void *p = (void *)(uintptr_t)at;
	memset(p, 0, bytes);
	return p;
}

u64 palloc_free_bytes(void)
{
	u64 best = 0;

	if (!floor_addr)
		floor_addr = mm_image_end();
	for (u32 i = 0; i < boot_info.nr_e820; i++) {
		const struct e820_entry *e = &boot_info.e820[i];
		if (e->type != E820_RAM)
			continue;
		u64 end = e->addr + e->size;
		if (end > mm.mapped_top)
			end = mm.mapped_top;
		u64 start = e->addr > floor_addr ? e->addr : floor_addr;
		if (start < end && end - start > best)
			best = end - start;
	}
	return best;
}
