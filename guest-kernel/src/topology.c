/* topology.c - CPU discovery. */
#include "topology.h"

#include "acpi.h"
#include "cmdline.h"
#include "ioapic.h"
#include "mm.h"
#include "mptable.h"
#include "string.h"

#define BIOS_AREA_END 0x100000ull /* low 1 MiB: BIOS data, EBDA, ROM */

struct topology topology;

void topology_add_cpu(struct topology *t, u32 apic_id, bool is_bsp)
{
	for (u32 i = 0; i < t->ncpus; i++)
		if (t->apic_ids[i] == apic_id)
			return;
	if (t->ncpus >= MAX_CPUS)
		return;
	if (is_bsp && t->ncpus > 0) {
		/* keep the BSP in slot 0 */
		t->apic_ids[t->ncpus++] = t->apic_ids[0];
		t->apic_ids[0] = apic_id;
		return;
	}
	t->apic_ids[t->ncpus++] = apic_id;
}

bool topology_readable(u64 addr, u64 len)
{
	/* kvmm backs guest memory from 0 up to the top of RAM; QEMU backs the
	 * whole first MiB. */
	return addr + len <= BIOS_AREA_END || addr + len <= mm.ram_top;
}

static void fix_bsp(struct topology *t, u32 bsp_apic_id)
{
	/* Whatever the tables say, slot 0 is the CPU running this code. */
	for (u32 i = 0; i < t->ncpus; i++) {
		if (t->apic_ids[i] == bsp_apic_id) {
			t->apic_ids[i] = t->apic_ids[0];
			t->apic_ids[0] = bsp_apic_id;
			return;
		}
	}
	if (t->ncpus < MAX_CPUS) {
		t->apic_ids[t->ncpus++] = t->apic_ids[0];
	}
	t->apic_ids[0] = bsp_apic_id;
	if (t->ncpus == 0)
		t->ncpus = 1;
}

void topology_discover(u32 bsp_apic_id)
{
	struct topology t;

	memset(&t, 0, sizeof(t));
	if (mptable_parse(&t) && t.ncpus > 0)
		t.source = "mptable";
	else {
		memset(&t, 0, sizeof(t));
		if (acpi_madt_parse(&t) && t.ncpus > 0)
			t.source = "madt";
		else {
			memset(&t, 0, sizeof(t));
			t.source = "default";
		}
	}
	fix_bsp(&t, bsp_apic_id);

	u64 n = cmdline_get_u64("cpus", 0);
	if (n > 0) {
		if (n > MAX_CPUS)
			n = MAX_CPUS;
		if (n > t.ncpus) {
			/* the tables do not know them: assume APIC ids 0..n-1 */
			for (u32 id = 0; t.ncpus < n && id < 256; id++)
				topology_add_cpu(&t, id, false);
		}
		t.ncpus = (u32)n;
		t.source = "cmdline";
	}
	if (t.ioapic_base)
		ioapic_set_base(t.ioapic_base);
	topology = t;
}
