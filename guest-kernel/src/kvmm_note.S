/* kvmm_note.S - the ELF note that tells kvmm this kernel runs natively under
 * the software-virtualization ("PVM") KVM module (docs/guest-protocol.md,
 * "Image"; read by kvmm/boot/native.py).
 *
 * A kernel may carry it only if it follows the module's rules from its first
 * instruction at the 64-bit entry: long mode, every present page-table entry
 * with U/S=1 at every level, a VIF page registered through MSR 0x4b564d10 for
 * each vCPU before interrupts are used, RIP/RSP/FS/GS bases canonical and
 * outside PML4 slot 256. Without the note kvmm warns that the kernel will run
 * in the module's instruction emulator. */

#define KVMM_ELFNOTE_PVM_NATIVE 1     /* note type, in the "kvmm" namespace */
#define KVMM_PVM_NATIVE_RULES 1       /* descriptor: bit 0 = follows the rules above */

	.section .note.kvmm, "a"
	.balign 4
	.long 5                       /* namesz: "kvmm\0" */
	.long 4                       /* descsz */
	.long KVMM_ELFNOTE_PVM_NATIVE
	.asciz "kvmm"
	.balign 4
	.long KVMM_PVM_NATIVE_RULES

	.section .note.GNU-stack, "", @progbits
