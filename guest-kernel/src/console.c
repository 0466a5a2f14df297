/* console.c - COM1 output, one string-I/O exit per kprintf(). */
#include "console.h"

#include <stdarg.h>

#include "fmt.h"
#include "platform.h"
#include "spinlock.h"
#include "x86.h"

static spinlock_t console_lock;

void console_init(void)
{
	/* 8N1 with DLAB clear so that offset 0 is THR (8250 data sheet);
	 * no interrupts. The baud divisor is irrelevant to a virtual UART. */
	outb(COM1_BASE + UART_LCR, UART_LCR_8N1);
}

void console_write(const char *s, size_t n)
{
	if (n)
		outsb(COM1_BASE + UART_THR, s, n);
}

static void vprint(bool emergency, const char *fmt, va_list ap)
{
	char line[CONSOLE_LINE_MAX];
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	size_t len = n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1;

	if (emergency) {
		/* Another CPU may hold the lock forever (it faulted too). */
		bool got = spin_trylock_bounded(&console_lock, 1000000);
		console_write(line, len);
		if (got)
			spin_unlock(&console_lock);
		return;
	}
	bool flags = spin_lock_irqsave(&console_lock);
	console_write(line, len);
	spin_unlock_irqrestore(&console_lock, flags);
}

void kprintf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprint(false, fmt, ap);
	va_end(ap);
}

void kprintf_emergency(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprint(true, fmt, ap);
	va_end(ap);
}
