/* acpi.h - just enough ACPI to count CPUs: RSDP -> RSDT/XSDT -> MADT. */
#ifndef KVMM_GUEST_ACPI_H
#define KVMM_GUEST_ACPI_H

#include "topology.h"

/* Uses boot_info.rsdp if the loader gave one, else searches for the RSDP
 * (ACPI 6.5 section 5.2.5.1). */
bool acpi_madt_parse(struct topology *t);

#endif
