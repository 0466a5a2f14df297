/* console.h - COM1 serial console.
 * Each kprintf() call is written with a single "rep outsb": one exit per
 * call (the kvmm protocol keeps THR always empty, so LSR is never polled). */
#ifndef KVMM_GUEST_CONSOLE_H
#define KVMM_GUEST_CONSOLE_H

#include "types.h"

#define CONSOLE_LINE_MAX 512 /* longer kprintf output is truncated */

void console_init(void);
void console_write(const char *s, size_t n);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* For the exception path: does not wait forever for the console lock. */
void kprintf_emergency(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
