/* mem - write a pattern to every 4 KiB page of RAM in the memory map
 * (first and last 8 bytes; the image is skipped), then read all back; then
 * check that the page right above the top of RAM is not RAM (unbacked
 * space reads all-ones under kvmm and ignores writes).
 * Verdict: RESULT mem PASS|FAIL ram=<bytes> top=<hex> pages=<n> bad=<n>
 *          above=<hex> above_read=<hex> */
#include "boot.h"
#include "kernel.h"
#include "layout.h"
#include "mm.h"
#include "modes.h"
#include "x86.h"

#define PATTERN_SALT 0x5a17c0de00000000ull

static inline u64 pattern(u64 addr, u64 which) { return (addr ^ PATTERN_SALT) + which; }

typedef bool (*page_fn)(u64 page);

static u64 bad_pages, first_bad = ~0ull;

static bool write_page(u64 page)
{
	phys_write64(page, pattern(page, 0));
	phys_write64(page + PAGE_SIZE - 8, pattern(page, 1));
	return true;
}

static bool check_page(u64 page)
{
	bool ok = phys_read64(page) == pattern(page, 0) &&
		  phys_read64(page + PAGE_SIZE - 8) == pattern(page, 1);
	if (!ok) {
		if (first_bad == ~0ull)
			first_bad = page;
		bad_pages++;
	}
	return ok;
}

/* Apply fn to every testable RAM page; returns the page count. */
static u64 for_each_page(page_fn fn)
{
	u64 n = 0, img_lo = mm_image_start(), img_hi = mm_image_end();

	for (u32 i = 0; i < boot_info.nr_e820; i++) {
		const struct e820_entry *e = &boot_info.e820[i];
		if (e->type != E820_RAM)
			continue;
		u64 lo = ALIGN_UP(e->addr, PAGE_SIZE), hi = ALIGN_DOWN(e->addr + e->size, PAGE_SIZE);
		if (hi > mm.mapped_top)
			hi = mm.mapped_top;
		for (u64 p = lo; p < hi; p += PAGE_SIZE) {
			if (p >= img_lo && p < img_hi) {
				p = img_hi - PAGE_SIZE;
				continue;
			}
			fn(p);
			n++;
		}
	}
	return n;
}

noreturn void mode_mem(void)
{
	u64 pages = for_each_page(write_page);
	for_each_page(check_page);

	u64 above = ALIGN_UP(mm.ram_top, PAGE_SIZE);
	u64 want = pattern(above, 0);
	phys_write64(above, want);
	u64 got = phys_read64(above);
	bool above_is_ram = got == want;

	bool pass = pages > 0 && bad_pages == 0 && !above_is_ram;
	if (bad_pages)
		finish(false, "ram=%llu top=0x%llx pages=%llu bad=%llu first_bad=0x%llx", mm.ram_bytes, mm.ram_top,
		       pages, bad_pages, first_bad);
	finish(pass, "ram=%llu top=0x%llx pages=%llu bad=0 above=0x%llx above_read=0x%llx", mm.ram_bytes, mm.ram_top,
	       pages, above, got);
}
