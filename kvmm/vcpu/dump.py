"""A register dump for error reports."""


def format_registers(vcpu) -> str:
    try:
        r = vcpu.get_regs()
        s = vcpu.get_sregs()
    except OSError as e:
        return f"vcpu{vcpu.index}: registers unavailable ({e})"
    g = " ".join(f"{n}={getattr(r, n):#018x}" for n in (
        "rip", "rsp", "rflags", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"))
    c = (f"cr0={s.cr0:#x} cr2={s.cr2:#x} cr3={s.cr3:#x} cr4={s.cr4:#x} efer={s.efer:#x} "
         f"cs={s.cs.selector:#x}(l={s.cs.l} dpl={s.cs.dpl}) ss={s.ss.selector:#x} "
         f"gdt={s.gdt.base:#x}/{s.gdt.limit:#x} idt={s.idt.base:#x}/{s.idt.limit:#x}")
    words = g.split()
    lines = [" ".join(words[i:i + 4]) for i in range(0, len(words), 4)]
    return f"vcpu{vcpu.index}:\n  " + "\n  ".join(lines + [c])
