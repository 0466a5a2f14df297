/* idt.c - IDT set-up, trap dispatch, exception table and exception report. */
#include "idt.h"

#include "console.h"
#include "irq.h"
#include "kernel.h"
#include "layout.h"
#include "lapic.h"
#include "percpu.h"
#include "platform.h"
#include "world.h"
#include "x86.h"

#define IDT_ENTRIES 256
#define ISR_STUB_SIZE 16          /* isr.S aligns each stub to 16 bytes */
#define GATE_INTERRUPT_64 0x8e    /* P=1, DPL=0, type 0xE (Intel SDM Vol. 3A 6.14.1) */

struct __attribute__((packed)) idt_gate {
	u16 offset_lo;
	u16 selector;
	u8 ist;
	u8 type_attr;
	u16 offset_mid;
	u32 offset_hi;
	u32 reserved;
};

struct extable_entry {
	u64 fault_rip;
	u64 fixup_rip;
};

extern const char isr_stubs[];
extern const struct extable_entry __extable_start[], __extable_end[];

static struct idt_gate idt[IDT_ENTRIES] __attribute__((aligned(16)));

static const char *const exception_names[NUM_EXCEPTIONS] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS",
	"#NP", "#SS", "#GP", "#PF", "15",  "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

void idt_load(void)
{
	struct desc_ptr p = { sizeof(idt) - 1, (u64)(uintptr_t)idt };

	lidt(&p);
}

void idt_init(void)
{
	for (int v = 0; v < IDT_ENTRIES; v++) {
		u64 a = (u64)(uintptr_t)isr_stubs + (u64)v * ISR_STUB_SIZE;

		idt[v] = (struct idt_gate){
			.offset_lo = (u16)a,
			.selector = GDT_CODE64,
			.type_attr = GATE_INTERRUPT_64,
			.offset_mid = (u16)(a >> 16),
			.offset_hi = (u32)(a >> 32),
		};
	}
	idt_load();
}

static bool extable_fixup(struct trap_frame *f)
{
	for (const struct extable_entry *e = __extable_start; e < __extable_end; e++) {
		if (e->fault_rip == f->rip) {
			f->rip = e->fixup_rip;
			return true;
		}
	}
	return false;
}

static noreturn void exception_report(struct trap_frame *f)
{
	struct cpu *c = this_cpu();
	u64 cr2 = f->vector == EXC_PF ? read_cr2() : 0;

	if (c->in_exception++) /* faulted while reporting: just stop */
		debug_exit(EXIT_EXCEPTION);
	kprintf_emergency("EXCEPTION %s vector=%llu error=0x%llx rip=0x%llx cr2=0x%llx rsp=0x%llx cpu=%u\n",
			  f->vector < NUM_EXCEPTIONS && exception_names[f->vector] ? exception_names[f->vector]
										 : "?",
			  f->vector, f->error_code, f->rip, cr2, f->rsp, c->index);
	kprintf_emergency("  rax=0x%llx rbx=0x%llx rcx=0x%llx rdx=0x%llx rsi=0x%llx rdi=0x%llx\n", f->rax, f->rbx,
			  f->rcx, f->rdx, f->rsi, f->rdi);
	verdict_emergency("exception=%llu", f->vector);
	debug_exit(EXIT_EXCEPTION);
}

void trap_dispatch(struct trap_frame *f)
{
	if (f->vector < NUM_EXCEPTIONS) {
		if (extable_fixup(f))
			return;
		exception_report(f);
	}
	/* Interrupt: never return into the HLT of an idle window that was
	 * already interrupted (see idle.S). */
	f->rip = idle_fixup_rip(f->rip);
	irq_dispatch((u8)f->vector);
}

noreturn void idt_triple_fault(void)
{
	struct desc_ptr p = { 0, 0 };

	irq_disable();
	lidt(&p);
	/* No IDT: the breakpoint raises #GP, which raises #DF, which shuts the
	 * CPU down (Intel SDM Vol. 3A 6.15, "Interrupt 8"). */
	__asm__ __volatile__("int3");
	for (;;)
		__asm__ __volatile__("ud2");
}
