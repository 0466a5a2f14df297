"""memory: the monitor's own memory, i.e. its peak RSS minus the guest RAM the
guest actually touched (each touched guest page is one resident host page).

  mode=hello: the guest touches little: its image (loaded, BSS zeroed, by
              both monitors) and a few boot structures; estimated from the ELF.
  mode=mem:   the guest writes every RAM page outside its image and reports
              the count (`pages=`); touched = those pages + the image.

Figures (MiB, median over the runs): memory.<mode>.<mem>.peak_rss,
.guest_touched, .overhead. Peak RSS: see common.Process.peak_rss_kib.
"""
from __future__ import annotations

from bench.common import KiB, MiB, PAGE_SIZE, Guest, Setup, alternate, figure, median, note
from kvmm.boot import elf

CASES = (("hello", "64M"), ("mem", "64M"))
DEFAULT_RUNS = 3
# Low-memory pages written at boot besides the image: kvmm's GDT, zero page,
# command line, MP table, VIF page and identity-map tables (PML4, PDPT, 4 PDs);
# QEMU's hvm_start_info, memory map and command line. An upper bound.
BOOT_STRUCTURE_PAGES = 16


def image_pages(kernel) -> int:
    """4 KiB pages spanned by the kernel's PT_LOAD segments, BSS included."""
    image = kernel.read_bytes()
    pages = set()
    for seg in elf.parse_elf(image, name=str(kernel)).segments:
        first = seg.paddr // PAGE_SIZE
        last = (seg.paddr + max(seg.mem_size, 1) - 1) // PAGE_SIZE
        pages.update(range(first, last + 1))
    return len(pages)


def guest_touched(run, image: int) -> int:
    """Bytes of guest RAM that are resident in the monitor at the end of `run`."""
    if run.guest.mode == "mem":
        return (int(run.verdict.number("pages")) + image) * PAGE_SIZE
    return (image + BOOT_STRUCTURE_PAGES) * PAGE_SIZE


def run(setup: Setup):
    runs = setup.runs_or(DEFAULT_RUNS)
    image = image_pages(setup.kernel)
    for mode, mem in CASES:
        results = alternate(setup, Guest(mode, mem=mem), runs, sample_rss=True)
        peak, touched = {}, {}
        for name, rs in results.items():
            sampled = [r.process for r in rs if not r.process.maxrss_is_exact]
            if sampled:
                note(f"{name} {mode}: in {len(sampled)} of {len(rs)} runs ru_maxrss was the "
                     f"harness's own RSS (~{sampled[0].rss_floor_kib} KiB, see "
                     "docs/benchmarks.md); used /proc VmHWM samples instead "
                     f"({', '.join(str(p.hwm_sampled_kib) for p in sampled)} KiB)")
            peak[name] = median(r.process.peak_rss_kib * KiB for r in rs) / MiB
            touched[name] = median(guest_touched(r, image) for r in rs) / MiB
        prefix = f"memory.{mode}.{mem}"
        yield figure(f"{prefix}.peak_rss", peak["kvmm"], peak["qemu"], "MiB", digits=2)
        yield figure(f"{prefix}.guest_touched", touched["kvmm"], touched["qemu"], "MiB",
                     digits=2)
        yield figure(f"{prefix}.overhead", peak["kvmm"] - touched["kvmm"],
                     peak["qemu"] - touched["qemu"], "MiB", digits=2)
