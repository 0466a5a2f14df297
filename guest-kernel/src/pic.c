/* pic.c - mask both 8259A PICs. */
#include "pic.h"

#include "platform.h"
#include "x86.h"

#define PIC_MASK_ALL 0xff

void pic_mask_all(void)
{
	outb(PIC1_DATA, PIC_MASK_ALL);
	outb(PIC2_DATA, PIC_MASK_ALL);
}
