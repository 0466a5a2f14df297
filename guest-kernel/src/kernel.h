/* kernel.h - run control: the verdict line and the exit status
 * (docs/guest-protocol.md, "Guest kernel conventions"). */
#ifndef KVMM_GUEST_KERNEL_H
#define KVMM_GUEST_KERNEL_H

#include "types.h"

const char *kernel_mode_name(void);

/* Write the status to the debug-exit port; halt if nobody listens. */
noreturn void debug_exit(u8 status);

/* Print "RESULT <mode> PASS|FAIL <details>\n" (at most once per run). */
void verdict(bool pass, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* verdict(), then exit with status 0 (pass) or 1 (fail). */
noreturn void finish(bool pass, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* FAIL verdict from the exception path (no console lock waiting). */
void verdict_emergency(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
