/* idt.h - interrupt descriptor table, trap frames and exception reporting. */
#ifndef KVMM_GUEST_IDT_H
#define KVMM_GUEST_IDT_H

#include "types.h"

/* Layout pushed by isr.S (lowest address first). */
struct trap_frame {
	u64 rax, rbx, rcx, rdx, rsi, rdi, rbp;
	u64 r8, r9, r10, r11, r12, r13, r14, r15;
	u64 vector;
	u64 error_code; /* 0 for vectors without one */
	/* pushed by the CPU / hypervisor (Intel SDM Vol. 3A 6.14.2) */
	u64 rip, cs, rflags, rsp, ss;
};

/* Exception vectors (Intel SDM Vol. 3A table 6-1). */
#define EXC_DE 0
#define EXC_NMI 2
#define EXC_BP 3
#define EXC_UD 6
#define EXC_DF 8
#define EXC_GP 13
#define EXC_PF 14
#define NUM_EXCEPTIONS 32

/* Build the IDT (256 gates) and load it on this CPU. */
void idt_init(void);
/* Load the already-built IDT (APs). */
void idt_load(void);

/* Called from isr.S. */
void trap_dispatch(struct trap_frame *f);

/* Load an IDT with limit 0 and raise an exception: #GP -> #DF -> shutdown. */
noreturn void idt_triple_fault(void);

#endif
