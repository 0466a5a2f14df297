/* boot.c - zero page and PVH start-info parsing. */
#include "boot.h"

#include "cmdline.h"
#include "layout.h"
#include "string.h"
#include "x86.h"

/* struct boot_params offsets (Documentation/arch/x86/zero-page.rst). */
#define ZP_ACPI_RSDP_ADDR 0x070    /* u64 */
#define ZP_EXT_CMD_LINE_PTR 0x0c8  /* u32, high half of cmd_line_ptr */
#define ZP_E820_ENTRIES 0x1e8      /* u8 */
#define ZP_CMD_LINE_PTR 0x228      /* u32, hdr.cmd_line_ptr */
#define ZP_CMDLINE_SIZE 0x238      /* u32, hdr.cmdline_size */
#define ZP_E820_TABLE 0x2d0        /* struct boot_e820_entry[128], 20 bytes each */
#define ZP_E820_ENTRY_SIZE 20
#define ZP_E820_MAX 128

/* struct hvm_start_info (start_info.h). */
#define PVH_MAGIC 0x336ec578
#define PVH_MAGIC_OFF 0
#define PVH_VERSION_OFF 4
#define PVH_CMDLINE_OFF 24         /* u64 cmdline_paddr */
#define PVH_RSDP_OFF 32            /* u64 rsdp_paddr */
#define PVH_MEMMAP_OFF 40          /* u64 memmap_paddr (version >= 1) */
#define PVH_MEMMAP_ENTRIES_OFF 48  /* u32 */
#define PVH_MEMMAP_ENTRY_SIZE 24   /* u64 addr, u64 size, u32 type, u32 reserved */

struct boot_info boot_info;


static void add_region(u64 addr, u64 size, u32 type)
{
	if (boot_info.nr_e820 >= E820_MAX || size == 0)
		return;
	boot_info.e820[boot_info.nr_e820++] = (struct e820_entry){ addr, size, type };
}

static void parse_zero_page(u64 zp)
{
	u32 n = phys_read8(zp + ZP_E820_ENTRIES);

	if (n > ZP_E820_MAX)
		n = ZP_E820_MAX;
	for (u32 i = 0; i < n; i++) {
		u64 e = zp + ZP_E820_TABLE + (u64)i * ZP_E820_ENTRY_SIZE;
		add_region(phys_read64(e), phys_read64(e + 8), phys_read32(e + 16));
	}
	u64 cmd = phys_read32(zp + ZP_CMD_LINE_PTR) | ((u64)phys_read32(zp + ZP_EXT_CMD_LINE_PTR) << 32);
	u32 size = phys_read32(zp + ZP_CMDLINE_SIZE);
	if (size == 0 || size > CMDLINE_MAX - 1)
		size = CMDLINE_MAX - 1;
	cmdline_init(cmd ? (const char *)phys_ptr(cmd) : NULL, size);
	boot_info.rsdp = phys_read64(zp + ZP_ACPI_RSDP_ADDR);
}

static void parse_pvh(u64 si)
{
	if (phys_read32(si + PVH_MAGIC_OFF) != PVH_MAGIC) {
		cmdline_init(NULL, 0);
		return;
	}
	u64 cmd = phys_read64(si + PVH_CMDLINE_OFF);
	cmdline_init(cmd ? (const char *)phys_ptr(cmd) : NULL, CMDLINE_MAX - 1);
	boot_info.rsdp = phys_read64(si + PVH_RSDP_OFF);
	if (phys_read32(si + PVH_VERSION_OFF) >= 1) {
		u64 map = phys_read64(si + PVH_MEMMAP_OFF);
		u32 n = phys_read32(si + PVH_MEMMAP_ENTRIES_OFF);
		for (u32 i = 0; map && i < n; i++) {
			u64 e = map + (u64)i * PVH_MEMMAP_ENTRY_SIZE;
			add_region(phys_read64(e), phys_read64(e + 8), phys_read32(e + 16));
		}
	}
}

void boot_parse(int proto, u64 info)
{
	boot_info.proto = proto;
	if (!info) {
		cmdline_init(NULL, 0);
		return;
	}
	if (proto == BOOT_PROTO_PVH)
		parse_pvh(info);
	else
		parse_zero_page(info);
}

const char *boot_proto_name(void) { return boot_info.proto == BOOT_PROTO_PVH ? "pvh" : "zeropage"; }
