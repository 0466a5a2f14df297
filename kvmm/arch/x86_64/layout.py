"""Every guest-physical address kvmm uses on x86_64, in one place.

Low memory follows the PC layout Linux expects (Documentation/arch/x86/boot.rst,
"Memory layout of the real-mode code"); the boot structures sit where
Firecracker's `arch/x86_64/layout.rs` puts them. The guest kernel's side of
the contract is in docs/guest-protocol.md.

    0x0000_0000  real-mode IVT and BIOS data area (left zero)
    0x0000_0500  GDT                                   (BOOT_GDT)
    0x0000_0540  IDT, empty                            (BOOT_IDT)
    0x0000_7000  zero page, struct boot_params         (ZERO_PAGE)
    0x0000_8ff0  initial stack pointer                 (BOOT_STACK)
    0x0000_1000  free for the guest (its AP trampoline) up to 0x6fff
    0x0000_9000  PML4, then PDPT, then page directories (PML4, PDPT, PD_START)
    0x0004_b000  kernel command line, after the last page directory (CMDLINE)
    0x0009_fc00  EBDA: MP table                        (EBDA_START, MPTABLE)
    0x000a_0000  per-vCPU VIF pages, in the legacy hole (VIF_START)
    0x000e_0000  ACPI tables / RSDP area               (ACPI_START)
    0x0010_0000  kernel image (HIMEM_START) ... RAM ...
    0xc000_0000  start of the 32-bit MMIO hole         (MMIO_GAP_START)
    0xc000_0000  exit benchmark page                   (BENCH_MMIO)
    0xd000_0000  virtio-mmio devices, 4 KiB apart      (VIRTIO_MMIO_START)
    0xfec0_0000  IOAPIC                                (IOAPIC_BASE)
    0xfee0_0000  LAPIC                                 (LAPIC_BASE)
    0x1_0000_0000 RAM above the hole, for guests larger than MMIO_GAP_START
"""

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE_SIZE = 4 * KiB
LARGE_PAGE_SIZE = 2 * MiB

BOOT_GDT = 0x500
BOOT_IDT = 0x540          # after the GDT (6 entries); the IDT itself is empty
ZERO_PAGE = 0x7000
BOOT_STACK = 0x8FF0
PML4 = 0x9000
PDPT = 0xA000
PD_START = 0xB000
PD_MAX_PAGES = 64           # page directories for up to 64 GiB identity-mapped
PD_END = PD_START + PD_MAX_PAGES * PAGE_SIZE   # 0x4b000
CMDLINE = PD_END
CMDLINE_MAX_SIZE = 64 * KiB  # Linux accepts up to COMMAND_LINE_SIZE (2 KiB by default)

EBDA_START = 0x9FC00
MPTABLE = EBDA_START
LOW_RAM_END = 0xA0000        # end of conventional memory
VIF_START = 0xA0000         # one 4 KiB page per vCPU (software-virtualization KVM)
MAX_VCPUS = 64
VIF_END = VIF_START + MAX_VCPUS * PAGE_SIZE    # 0xe0000, where the ACPI area starts
ACPI_START = 0xE0000
ACPI_RSDP = ACPI_START       # the RSDP, where Linux's BIOS-area scan finds it (ACPI 6.5 5.2.5.1)
ACPI_TABLES = ACPI_START + 0x40   # XSDT, FADT, MADT, DSDT follow it (kvmm/arch/x86_64/acpi.py)
ACPI_END = 0x100000
BIOS_END = 0x100000
HIMEM_START = 0x100000       # kernels load here and above

MMIO_GAP_START = 0xC0000000
MMIO_GAP_END = 0x100000000
BENCH_MMIO = 0xC0000000
BENCH_MMIO_SIZE = PAGE_SIZE
VIRTIO_MMIO_START = 0xD0000000
VIRTIO_MMIO_SIZE = PAGE_SIZE   # one page per device (virtio 1.2 §4.2.2 registers fit)
VIRTIO_MMIO_MAX_DEVICES = 32
IOAPIC_BASE = 0xFEC00000
LAPIC_BASE = 0xFEE00000

IDENTITY_MAP_MIN = 4 * GiB     # the boot page tables cover at least the 32-bit space

# Legacy I/O ports (PC/AT). The ones marked kvmm are this project's own.
PORT_I8042_DATA = 0x60
PORT_I8042_CMD = 0x64
PORT_DEBUG_EXIT = 0xF4        # same port as QEMU's isa-debug-exit
PORT_COM1 = 0x3F8             # 8250 COM1, 8 registers
PORT_BOOT_TIMER = 0x440       # kvmm: guest signals "ready"
PORT_BENCH = 0x441            # kvmm: writes dropped, reads 0 (exit microbenchmark)
PORT_ACPI_SLEEP = 0x3C0       # kvmm: ACPI sleep control/status register (FADT); no VGA here

# Legacy interrupt lines (ISA IRQs on the IOAPIC)
IRQ_I8042_KBD = 1             # ISA IRQ 1: the PS/2 keyboard (Ctrl-Alt-Del)
IRQ_COM1 = 4
VIRTIO_IRQ_BASE = 5           # first IRQ given to virtio-mmio devices
VIRTIO_IRQ_MAX = 23           # last IOAPIC pin


def vif_page(vcpu_index: int) -> int:
    """The VIF page kvmm registers for a vCPU on the software-virtualization KVM."""
    if not 0 <= vcpu_index < MAX_VCPUS:
        raise ValueError(f"vCPU index {vcpu_index} outside 0..{MAX_VCPUS - 1}")
    return VIF_START + vcpu_index * PAGE_SIZE


def virtio_mmio_base(slot: int) -> int:
    if not 0 <= slot < VIRTIO_MMIO_MAX_DEVICES:
        raise ValueError(f"virtio-mmio slot {slot} outside 0..{VIRTIO_MMIO_MAX_DEVICES - 1}")
    return VIRTIO_MMIO_START + slot * VIRTIO_MMIO_SIZE


def ram_regions(mem_size: int) -> list[tuple[int, int]]:
    """Guest RAM as (guest address, size) pieces around the 32-bit MMIO hole."""
    if mem_size <= MMIO_GAP_START:
        return [(0, mem_size)]
    return [(0, MMIO_GAP_START), (MMIO_GAP_END, mem_size - MMIO_GAP_START)]
