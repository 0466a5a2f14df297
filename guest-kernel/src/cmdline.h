/* cmdline.h - kernel command line: space-separated words, "key=value" or
 * "key"; a value may be double-quoted. When a key repeats, the getters
 * return the last value; cmdline_for_each() visits every occurrence. */
#ifndef KVMM_GUEST_CMDLINE_H
#define KVMM_GUEST_CMDLINE_H

#include "types.h"

#define CMDLINE_MAX 4096

/* Copy the command line out of boot memory (NUL or max terminated). */
void cmdline_init(const char *src, size_t max);
const char *cmdline_raw(void);

/* Copies the value into buf (NUL-terminated, truncated to size-1).
 * Returns false if the key is absent. */
bool cmdline_get_str(const char *key, char *buf, size_t size);
/* Decimal or 0x-hex, with an optional K/M/G suffix (powers of 1024). */
u64 cmdline_get_u64(const char *key, u64 dflt);
bool cmdline_has(const char *key);

typedef void (*cmdline_visit_fn)(const char *value, size_t len, void *arg);
void cmdline_for_each(const char *key, cmdline_visit_fn fn, void *arg);

/* Parse a number like cmdline_get_u64 does; *end = first unused char. */
bool parse_u64(const char *s, size_t len, u64 *out, size_t *used);

#endif
