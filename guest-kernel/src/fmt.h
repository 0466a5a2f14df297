/* fmt.h - printf-style formatting into a buffer.
 * Conversions: %d %i %u %x %X %o %c %s %p %%; flags '-' '0'; field width
 * (digits or '*'); precision for %s; length modifiers h hh l ll z. */
#ifndef KVMM_GUEST_FMT_H
#define KVMM_GUEST_FMT_H

#include <stdarg.h>

#include "types.h"

/* Like C99 vsnprintf: always NUL-terminates (if size > 0) and returns the
 * length the full output would have had. */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
