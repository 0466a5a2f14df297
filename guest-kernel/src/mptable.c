/* mptable.c - MP floating pointer search and configuration table parsing
 * (MP spec 1.4, chapter 4). */
#include "mptable.h"

#include "string.h"
#include "x86.h"

#define BDA_EBDA_SEGMENT 0x40e     /* u16: EBDA segment (BIOS data area) */
#define BDA_BASE_MEM_KIB 0x413     /* u16: base memory size in KiB */
#define BIOS_ROM_START 0xf0000
#define BIOS_ROM_END 0x100000

/* Floating pointer structure (MP spec 4.1). */
#define MPF_SIGNATURE "_MP_"
#define MPF_LENGTH 16
#define MPF_CONFIG_PTR 4           /* u32 physical address of the table */
#define MPF_LENGTH_PARAS 8         /* u8, length in 16-byte units (1) */

/* Configuration table header (MP spec 4.2). */
#define MPC_SIGNATURE "PCMP"
#define MPC_BASE_LENGTH 4          /* u16 */
#define MPC_ENTRY_COUNT 34         /* u16 (not trusted, see below) */
#define MPC_HEADER_SIZE 44

/* Entry types and sizes (MP spec 4.3). */
#define MPC_PROCESSOR 0            /* 20 bytes */
#define MPC_BUS 1
#define MPC_IOAPIC 2
#define MPC_IOINTR 3
#define MPC_LINTR 4
#define MPC_PROCESSOR_SIZE 20
#define MPC_OTHER_SIZE 8
#define CPU_FLAG_ENABLED 0x01
#define CPU_FLAG_BSP 0x02
#define IOAPIC_FLAG_ENABLED 0x01

static u8 checksum(const u8 *p, size_t n)
{
	u8 s = 0;

	while (n--)
		s = (u8)(s + *p++);
	return s;
}

static const u8 *search(u64 start, u64 len)
{
	if (start == 0 || !topology_readable(start, len))
		return NULL;
	for (u64 a = start; a + MPF_LENGTH <= start + len; a += 16) {
		const u8 *p = (const u8 *)phys_ptr(a);
		if (memcmp(p, MPF_SIGNATURE, 4) == 0 && p[MPF_LENGTH_PARAS] == 1 && checksum(p, MPF_LENGTH) == 0)
			return p;
	}
	return NULL;
}

static const u8 *find_floating_pointer(void)
{
	u64 ebda = (u64)phys_read16(BDA_EBDA_SEGMENT) << 4;
	u64 base_kib = phys_read16(BDA_BASE_MEM_KIB);
	const u8 *p;

	/* a. first KiB of the EBDA; b. last KiB of base memory; c. BIOS ROM */
	if (ebda && (p = search(ebda, 1024)))
		return p;
	if (base_kib < 512 || base_kib > 640)
		base_kib = 640;
	if ((p = search(base_kib * 1024 - 1024, 1024)))
		return p;
	if (base_kib != 640 && (p = search(639 * 1024, 1024)))
		return p;
	return search(BIOS_ROM_START, BIOS_ROM_END - BIOS_ROM_START);
}

bool mptable_parse(struct topology *t)
{
	const u8 *mpf = find_floating_pointer();

	if (!mpf)
		return false;
	u32 cfg = *(const u32 *)(mpf + MPF_CONFIG_PTR);
	if (cfg == 0 || !topology_readable(cfg, MPC_HEADER_SIZE))
		return false; /* default configurations (feature byte 1) are not supported */
	const u8 *mpc = (const u8 *)phys_ptr(cfg);
	u16 len = *(const u16 *)(mpc + MPC_BASE_LENGTH);
	if (memcmp(mpc, MPC_SIGNATURE, 4) != 0 || len < MPC_HEADER_SIZE || !topology_readable(cfg, len) ||
	    checksum(mpc, len) != 0)
		return false;

	/* Walk by the table length, not the entry count: QEMU's qboot firmware
	 * writes an entry count of 0 (Linux also walks by length). */
	const u8 *p = mpc + MPC_HEADER_SIZE, *end = mpc + len;
	while (p < end) {
		switch (p[0]) {
		case MPC_PROCESSOR:
			if (p + MPC_PROCESSOR_SIZE > end)
				return t->ncpus > 0;
			if (p[3] & CPU_FLAG_ENABLED)
				topology_add_cpu(t, p[1], (p[3] & CPU_FLAG_BSP) != 0);
			p += MPC_PROCESSOR_SIZE;
			break;
		case MPC_IOAPIC:
			if ((p[3] & IOAPIC_FLAG_ENABLED) && !t->ioapic_base)
				t->ioapic_base = *(const u32 *)(p + 4);
			p += MPC_OTHER_SIZE;
			break;
		case MPC_BUS:
		case MPC_IOINTR:
		case MPC_LINTR:
			p += MPC_OTHER_SIZE;
			break;
		default:
			return t->ncpus > 0; /* unknown entry: its size is unknown */
		}
	}
	return true;
}
