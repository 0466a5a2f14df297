/* palloc.h - physical memory for drivers: a bump allocator over the RAM
 * regions of the memory map above the kernel image. Memory is handed out
 * zeroed, identity-mapped (virtual = guest-physical, so a pointer is also
 * the address a device sees) and never freed: each mode allocates what it
 * needs once. */
#ifndef KVMM_GUEST_PALLOC_H
#define KVMM_GUEST_PALLOC_H

#include "types.h"

/* bytes rounded up to align (a power of two, at least 8); NULL if no RAM
 * region has room. */
void *palloc(u64 bytes, u64 align);
/* Bytes still available in the largest remaining run (for sizing). */
u64 palloc_free_bytes(void);

static inline u64 virt_to_phys(const void *p) { return (u64)(uintptr_t)p; }

#endif
