/* topology.h - how many CPUs, their local APIC ids, and the I/O APIC.
 * Sources in order: "cpus=N" on the command line, the Intel MP table,
 * the ACPI MADT, else one CPU. */
#ifndef KVMM_GUEST_TOPOLOGY_H
#define KVMM_GUEST_TOPOLOGY_H

#include "layout.h"
#include "types.h"

struct topology {
	u32 ncpus;
	u32 apic_ids[MAX_CPUS]; /* [0] is the bootstrap processor */
	u64 ioapic_base;        /* 0 if not found */
	const char *source;     /* "cmdline", "mptable", "madt", "default" */
};

extern struct topology topology;

/* Needs boot_info and the command line; bsp_apic_id from the LAPIC. */
void topology_discover(u32 bsp_apic_id);

/* Used by the table parsers: add a CPU unless present or full. */
void topology_add_cpu(struct topology *t, u32 apic_id, bool is_bsp);

/* Is [addr, addr+len) safe to read (inside RAM below the top, or in the
 * BIOS area below 1 MiB)? Avoids an MMIO exit per read of unbacked space. */
bool topology_readable(u64 addr, u64 len);

#endif
