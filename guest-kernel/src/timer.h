/* timer.h - TSC frequency, LAPIC timer (periodic / one-shot) and waiting
 * for events with a timeout without spinning (HLT until an interrupt).
 *
 * TSC frequency: PVM -> MSR 0x4b564d13 (kHz); hardware KVM -> CPUID leaf
 * 0x40000010 EAX (kHz) when the hypervisor provides it, else measured
 * against PIT channel 2. The LAPIC timer rate is measured against the TSC
 * on first use (about 2 ms). Timers are per CPU; the periodic timer and
 * wait_event() both use the LAPIC timer, so do not mix them on one CPU.
 * KVM clamps periodic LAPIC timers to at least ~200 us. */
#ifndef KVMM_GUEST_TIMER_H
#define KVMM_GUEST_TIMER_H

#include "types.h"
#include "x86.h"

#define WAIT_FOREVER ((u64)-1)

extern u64 tsc_khz;
extern u64 lapic_timer_khz;
extern const char *tsc_source; /* "pvm-msr", "cpuid", "pit" */

void tsc_init(void);
/* Install the timer interrupt handler (no calibration yet). */
void timer_init(void);
/* Measure the LAPIC timer rate (~2 ms, once); done on first use anyway. */
void timer_calibrate(void);

static inline u64 tsc_to_ns(u64 cycles) { return muldiv64(cycles, 1000000, tsc_khz); }
static inline u64 us_to_tsc(u64 us) { return muldiv64(us, tsc_khz, 1000); }

typedef void (*timer_fn)(void *arg);

/* Call fn (in interrupt context) every period_us, or once after us. */
void timer_periodic(u64 period_us, timer_fn fn, void *arg);
void timer_oneshot(u64 us, timer_fn fn, void *arg);
void timer_stop(void);

/* Halt until cond(arg) is true or timeout_us passed; true if cond held.
 * Interrupt handlers (devices, IPIs, the timeout) make the progress. */
bool wait_event(bool (*cond)(void *), void *arg, u64 timeout_us);
void sleep_us(u64 us);

#endif
