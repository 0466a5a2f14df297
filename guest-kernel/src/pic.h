/* pic.h - legacy 8259A PICs: masked, interrupts come through the APICs. */
#ifndef KVMM_GUEST_PIC_H
#define KVMM_GUEST_PIC_H

/* OCW1 = 0xff on both PICs (8259A datasheet): KVM_IRQ_LINE also drives the
 * in-kernel 8259, whose output would otherwise reach LINT0. */
void pic_mask_all(void);

#endif
