/* acpi.c - MADT parsing (ACPI 6.5 section 5.2.12). */
#include "acpi.h"

#include "boot.h"
#include "string.h"
#include "x86.h"

#define BDA_EBDA_SEGMENT 0x40e
#define RSDP_SEARCH_START 0xe0000
#define RSDP_SEARCH_END 0x100000

/* RSDP (5.2.5.3) */
#define RSDP_SIGNATURE "RSD PTR "
#define RSDP_V1_LENGTH 20
#define RSDP_REVISION 15     /* u8 */
#define RSDP_RSDT 16         /* u32 */
#define RSDP_LENGTH 20       /* u32, revision >= 2 */
#define RSDP_XSDT 24         /* u64 */

/* System description table header (5.2.6) */
#define SDT_LENGTH 4         /* u32 */
#define SDT_HEADER_SIZE 36

/* MADT (5.2.12) */
#define MADT_SIGNATURE "APIC"
#define MADT_ENTRIES 44
#define MADT_LOCAL_APIC 0    /* uid u8, apic id u8, flags u32 */
#define MADT_IOAPIC 1        /* id u8, reserved u8, address u32, gsi base u32 */
#define MADT_LAPIC_ENABLED 0x1

static u8 checksum(const u8 *p, size_t n)
{
	u8 s = 0;

	while (n--)
		s = (u8)(s + *p++);
	return s;
}

static const u8 *rsdp_search(u64 start, u64 len)
{
	if (start == 0 || !topology_readable(start, len))
		return NULL;
	for (u64 a = start; a + RSDP_V1_LENGTH <= start + len; a += 16) {
		const u8 *p = (const u8 *)phys_ptr(a);
		if (memcmp(p, RSDP_SIGNATURE, 8) == 0 && checksum(p, RSDP_V1_LENGTH) == 0)
			return p;
	}
	return NULL;
}

static const u8 *find_rsdp(void)
{
	if (boot_info.rsdp && topology_readable(boot_info.rsdp, RSDP_V1_LENGTH)) {
		const u8 *p = (const u8 *)phys_ptr(boot_info.rsdp);
		if (memcmp(p, RSDP_SIGNATURE, 8) == 0)
			return p;
	}
	const u8 *p = rsdp_search((u64)phys_read16(BDA_EBDA_SEGMENT) << 4, 1024);
	return p ? p : rsdp_search(RSDP_SEARCH_START, RSDP_SEARCH_END - RSDP_SEARCH_START);
}

static const u8 *table(u64 addr, const char *sig)
{
	if (!addr || !topology_readable(addr, SDT_HEADER_SIZE))
		return NULL;
	const u8 *h = (const u8 *)phys_ptr(addr);
	u32 len = *(const u32 *)(h + SDT_LENGTH);
	if (len < SDT_HEADER_SIZE || !topology_readable(addr, len) || (sig && memcmp(h, sig, 4) != 0) ||
	    checksum(h, len) != 0)
		return NULL;
	return h;
}

static const u8 *find_madt(void)
{
	const u8 *rsdp = find_rsdp();

	if (!rsdp)
		return NULL;
	u64 xsdt = rsdp[RSDP_REVISION] >= 2 ? *(const u64 *)(rsdp + RSDP_XSDT) : 0;
	const u8 *root = table(xsdt, "XSDT");
	unsigned esize = 8;
	if (!root) {
		root = table(*(const u32 *)(rsdp + RSDP_RSDT), "RSDT");
		esize = 4;
	}
	if (!root)
		return NULL;
	u32 len = *(const u32 *)(root + SDT_LENGTH);
	for (u32 off = SDT_HEADER_SIZE; off + esize <= len; off += esize) {
		u64 a = esize == 8 ? *(const u64 *)(root + off) : *(const u32 *)(root + off);
		const u8 *t = table(a, MADT_SIGNATURE);
		if (t)
			return t;
	}
	return NULL;
}

bool acpi_madt_parse(struct topology *t)
{
	const u8 *madt = find_madt();

	if (!madt)
		return false;
	u32 len = *(const u32 *)(madt + SDT_LENGTH);
	for (u32 off = MADT_ENTRIES; off + 2 <= len;) {
		const u8 *e = madt + off;
		if (e[1] < 2 || off + e[1] > len)
			break;
		if (e[0] == MADT_LOCAL_APIC && e[1] >= 8 && (*(const u32 *)(e + 4) & MADT_LAPIC_ENABLED))
			topology_add_cpu(t, e[3], false);
		else if (e[0] == MADT_IOAPIC && e[1] >= 12 && !t->ioapic_base)
			t->ioapic_base = *(const u32 *)(e + 4);
		off += e[1];
	}
	return true;
}
