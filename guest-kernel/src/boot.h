/* boot.h - what the loader handed over, copied into the kernel at entry:
 * the command line, the memory map and an ACPI RSDP if given.
 *
 * Linux zero page (Documentation/arch/x86/zero-page.rst, boot.rst), as
 * kvmm fills it (docs/guest-protocol.md); or PVH hvm_start_info
 * (xen/include/public/arch-x86/hvm/start_info.h) from QEMU. */
#ifndef KVMM_GUEST_BOOT_H
#define KVMM_GUEST_BOOT_H

#include "types.h"

#define E820_MAX 128
#define E820_RAM 1

struct e820_entry {
	u64 addr;
	u64 size;
	u32 type;
};

struct boot_info {
	int proto; /* BOOT_PROTO_* (layout.h) */
	u32 nr_e820;
	struct e820_entry e820[E820_MAX];
	u64 rsdp; /* 0 if the loader gave none */
};

extern struct boot_info boot_info;

/* Parse the loader's data at info (guest-physical). Also initialises the
 * command line (cmdline.h). */
void boot_parse(int proto, u64 info);
const char *boot_proto_name(void);

#endif
