/* x86.h - architectural constants and thin inline-assembly wrappers. */
#ifndef KVMM_GUEST_X86_H
#define KVMM_GUEST_X86_H

#include "types.h"

/* Control registers (Intel SDM Vol. 3A 2.5). */
#define CR0_PE (1u << 0)
#define CR0_MP (1u << 1)
#define CR0_ET (1u << 4)
#define CR0_NE (1u << 5)
#define CR0_WP (1u << 16)
#define CR0_PG (1u << 31)
#define CR4_PAE (1u << 5)

/* MSRs (Intel SDM Vol. 4). */
#define MSR_EFER 0xc0000080
#define EFER_LME (1u << 8)

/* Page-table entry bits (Intel SDM Vol. 3A 4.5). */
#define PTE_P (1ull << 0)
#define PTE_W (1ull << 1)
#define PTE_US (1ull << 2) /* required on every present entry under PVM */
#define PTE_PS (1ull << 7)
#define PTE_TABLE (PTE_P | PTE_W | PTE_US)
#define PTE_LARGE (PTE_P | PTE_W | PTE_US | PTE_PS)
#define PTE_ADDR_MASK 0x000ffffffffff000ull

#define RFLAGS_IF (1ull << 9)

static inline void outb(u16 port, u8 v) { __asm__ __volatile__("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ __volatile__("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ __volatile__("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* One user-space exit for the whole buffer (string I/O). */
static inline void outsb(u16 port, const void *buf, size_t n)
{
	__asm__ __volatile__("rep outsb" : "+S"(buf), "+c"(n) : "d"(port) : "memory");
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ __volatile__("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}

static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ __volatile__("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}

/* RDMSR that survives #GP: the fault handler resumes at the fixup label
 * through the exception table (section .extable, see idt.c).
 * Returns true and sets *val if the MSR exists. */
static inline bool rdmsr_safe(u32 msr, u64 *val)
{
	u32 lo = 0, hi = 0, ok = 1;
	__asm__ __volatile__("1: rdmsr\n"
			     "2:\n"
			     ".pushsection .extable, \"a\"\n"
			     ".balign 8\n"
			     ".quad 1b, 3f\n"
			     ".popsection\n"
			     ".pushsection .text.fixup, \"ax\"\n"
			     "3: xorl %2, %2\n"
			     "jmp 2b\n"
			     ".popsection\n"
			     : "+a"(lo), "+d"(hi), "+r"(ok)
			     : "c"(msr));
	*val = ((u64)hi << 32) | lo;
	return ok != 0;
}

static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ __volatile__("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

static inline u64 read_cr2(void)
{
	u64 v;
	__asm__ __volatile__("mov %%cr2, %0" : "=r"(v));
	return v;
}

static inline void write_cr3(u64 v) { __asm__ __volatile__("mov %0, %%cr3" : : "r"(v) : "memory"); }

struct __attribute__((packed)) desc_ptr {
	u16 limit;
	u64 base;
};

static inline void lidt(const struct desc_ptr *p) { __asm__ __volatile__("lidt %0" : : "m"(*p)); }
static inline void lgdt(const struct desc_ptr *p) { __asm__ __volatile__("lgdt %0" : : "m"(*p)); }

/* a * b / c with a 128-bit intermediate (MUL, DIV); saturates instead of
 * raising #DE when the quotient does not fit in 64 bits. */
static inline u64 muldiv64(u64 a, u64 b, u64 c)
{
	u64 hi, lo, q, r;

	__asm__("mulq %3" : "=a"(lo), "=d"(hi) : "a"(a), "rm"(b));
	if (c == 0 || hi >= c)
		return ~0ull;
	__asm__("divq %4" : "=a"(q), "=d"(r) : "a"(lo), "d"(hi), "rm"(c));
	(void)r;
	return q;
}

static inline void cpu_relax(void) { __asm__ __volatile__("pause" ::: "memory"); }
static inline void cli(void) { __asm__ __volatile__("cli" ::: "memory"); }

static inline u64 read_rflags(void)
{
	u64 f;
	__asm__ __volatile__("pushfq; popq %0" : "=r"(f));
	return f;
}

static inline u64 read_rsp(void)
{
	u64 v;
	__asm__ __volatile__("mov %%rsp, %0" : "=r"(v));
	return v;
}

/* A pointer to guest-physical (= identity-mapped virtual) memory. Laundered
 * through an empty asm so that GCC does not reason about constant low
 * addresses (e.g. the BIOS data area) as out-of-bounds objects. */
static inline void *phys_ptr(u64 addr)
{
	void *p;
	__asm__("" : "=r"(p) : "0"(addr));
	return p;
}
static inline u8 phys_read8(u64 a) { return *(const volatile u8 *)phys_ptr(a); }
static inline u16 phys_read16(u64 a) { return *(const volatile u16 *)phys_ptr(a); }
static inline u32 phys_read32(u64 a) { return *(const volatile u32 *)phys_ptr(a); }
static inline u64 phys_read64(u64 a) { return *(const volatile u64 *)phys_ptr(a); }
static inline void phys_write64(u64 a, u64 v) { *(volatile u64 *)phys_ptr(a) = v; }

static inline u8 mmio_read8(u64 addr) { return *(volatile u8 *)phys_ptr(addr); }
static inline u16 mmio_read16(u64 addr) { return *(volatile u16 *)phys_ptr(addr); }
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)phys_ptr(addr); }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)phys_ptr(addr) = v; }

/* Full barrier (MFENCE): orders a store before a later load, which x86's
 * TSO model does not; needed where the driver publishes an index and then
 * reads the device's suppression field (virtio 1.2 2.7.13.3). Stores are
 * not reordered with stores, nor loads with loads, so barrier() suffices
 * elsewhere for memory the device shares. */
static inline void mb(void) { __asm__ __volatile__("mfence" ::: "memory"); }

#endif
