/* irq - an IOAPIC-routed device interrupt end to end: route gsi=G (4, the
 * COM1 line) with irq_register_gsi(), enable the UART's "transmitter empty"
 * interrupt (THR is always empty, so the UART raises its line at once),
 * and halt until the handler ran (timeout 1 s).
 * Verdict: RESULT irq PASS|FAIL gsi=G vector=V count=N */
#include "cmdline.h"
#include "irq.h"
#include "kernel.h"
#include "modes.h"
#include "platform.h"
#include "timer.h"
#include "x86.h"

#define IRQ_TIMEOUT_US 1000000
#define UART_IIR 2              /* interrupt identification (read) */
#define UART_IER_THRI 0x02      /* transmitter holding register empty */

static volatile u32 hits;

static void uart_interrupt(u8 vector, void *arg)
{
	(void)vector;
	(void)arg;
	hits++;
	outb(COM1_BASE + UART_IER, 0);   /* one is enough */
	(void)inb(COM1_BASE + UART_IIR); /* acknowledge */
}

static bool got_one(void *arg)
{
	(void)arg;
	return hits != 0;
}

noreturn void mode_irq(void)
{
	u64 gsi = cmdline_get_u64("gsi", 4);
	int vector = irq_register_gsi((u32)gsi, uart_interrupt, NULL);

	if (vector < 0)
		finish(false, "gsi=%llu error=no-such-gsi", gsi);
	outb(COM1_BASE + UART_IER, UART_IER_THRI);
	bool ok = wait_event(got_one, NULL, IRQ_TIMEOUT_US);
	irq_mask_gsi((u32)gsi);
	finish(ok, "gsi=%llu vector=0x%x count=%u", gsi, vector, hits);
}
