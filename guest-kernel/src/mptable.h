/* mptable.h - Intel MultiProcessor Specification 1.4 tables. */
#ifndef KVMM_GUEST_MPTABLE_H
#define KVMM_GUEST_MPTABLE_H

#include "topology.h"

/* Find the "_MP_" floating pointer and read processor and I/O APIC entries.
 * Returns false if there is no valid table. */
bool mptable_parse(struct topology *t);

#endif
