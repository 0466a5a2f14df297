/* timer.c - TSC and LAPIC timer. */
#include "timer.h"

#include "irq.h"
#include "lapic.h"
#include "percpu.h"
#include "world.h"
#include "x86.h"

/* Hypervisor CPUID leaves (Linux Documentation/virt/kvm/x86/cpuid.rst;
 * 0x40000010 is the "VMware timing" leaf, EAX = TSC kHz). */
#define CPUID_HV_BASE 0x40000000
#define CPUID_HV_TIMING 0x40000010
#define CPUID1_ECX_HYPERVISOR (1u << 31)

/* PIT (Intel 8254 datasheet): 1.193182 MHz. Channel 0 is read with the
 * counter-latch command, so no speaker port (0x61) is needed; its IRQ 0 is
 * masked at both PICs and the IOAPIC. */
#define PIT_HZ 1193182
#define PIT_CH0_DATA 0x40
#define PIT_COMMAND 0x43
#define PIT_CMD_CH0_MODE2 0x34  /* channel 0, lobyte/hibyte, mode 2, binary */
#define PIT_CMD_CH0_LATCH 0x00
#define PIT_CALIBRATE_TICKS (PIT_HZ / 100) /* 10 ms */
#define PIT_MAX_POLLS 10000000

#define LAPIC_CALIBRATE_US 2000
#define LAPIC_CALIBRATE_TRIES 3
#define LAPIC_MAX_DIVIDE 128

u64 tsc_khz;
u64 lapic_timer_khz;
const char *tsc_source = "none";

struct timer_state {
	timer_fn fn;
	void *arg;
};
static struct timer_state timers[MAX_CPUS];

static u16 pit_read_ch0(void)
{
	outb(PIT_COMMAND, PIT_CMD_CH0_LATCH);
	u8 lo = inb(PIT_CH0_DATA);
	u8 hi = inb(PIT_CH0_DATA);
	return (u16)(lo | hi << 8);
}

/* TSC cycles per PIT_CALIBRATE_TICKS of channel 0, free-running in mode 2
 * from 65536; 0 if no PIT answers. */
static u64 pit_calibrate_tsc_khz(void)
{
	outb(PIT_COMMAND, PIT_CMD_CH0_MODE2);
	outb(PIT_CH0_DATA, 0);
	outb(PIT_CH0_DATA, 0);
	u16 prev = pit_read_ch0();
	u64 t0 = rdtsc();
	u64 elapsed = 0;
	for (u64 polls = 0; elapsed < PIT_CALIBRATE_TICKS; polls++) {
		if (polls > PIT_MAX_POLLS)
			return 0;
		u16 now = pit_read_ch0();
		elapsed += (u16)(prev - now); /* counts down, wraps at 65536 */
		prev = now;
	}
	u64 t1 = rdtsc();
	return muldiv64(t1 - t0, PIT_HZ, elapsed * 1000);
}

void tsc_init(void)
{
	u64 v;

	if (world_is_pvm() && rdmsr_safe(MSR_PVM_TSC_KHZ, &v) && v) {
		tsc_khz = v;
		tsc_source = "pvm-msr";
		return;
	}
	u32 a, b, c, d;
	cpuid(1, 0, &a, &b, &c, &d);
	if (c & CPUID1_ECX_HYPERVISOR) {
		cpuid(CPUID_HV_BASE, 0, &a, &b, &c, &d);
		if (a >= CPUID_HV_TIMING) {
			cpuid(CPUID_HV_TIMING, 0, &a, &b, &c, &d);
			if (a) {
				tsc_khz = a;
				tsc_source = "cpuid";
				return;
			}
		}
	}
	tsc_khz = pit_calibrate_tsc_khz();
	tsc_source = "pit";
	if (!tsc_khz) {
		tsc_khz = 1000000; /* no reference at all: assume 1 GHz */
		tsc_source = "guess";
	}
}

/* One (TSC, LAPIC current count) pair: the count read traps, so take the
 * TSC on both sides and keep the tightest of a few tries. */
static void timer_sample(u64 *tsc, u32 *count)
{
	u64 best = ~0ull;

	for (int i = 0; i < LAPIC_CALIBRATE_TRIES; i++) {
		u64 a = rdtsc();
		u32 c = lapic_read(LAPIC_TIMER_CURRENT);
		u64 b = rdtsc();
		if (b - a < best) {
			best = b - a;
			*tsc = a + (b - a) / 2;
			*count = c;
		}
	}
}

void timer_calibrate(void)
{
	u64 t0, t1;
	u32 c0, c1;

	if (lapic_timer_khz)
		return;
	/* Masked one-shot from the maximum count, divide by 1. */
	lapic_timer_start(1, 0xffffffffu, LAPIC_LVT_MASKED | LAPIC_TIMER_ONESHOT, VECTOR_TIMER);
	timer_sample(&t0, &c0);
	u64 wait = us_to_tsc(LAPIC_CALIBRATE_US);
	while (rdtsc() - t0 < wait)
		cpu_relax();
	timer_sample(&t1, &c1);
	lapic_timer_stop();
	lapic_timer_khz = muldiv64(c0 - c1, tsc_khz, t1 - t0);
	if (!lapic_timer_khz)
		lapic_timer_khz = 1000000;
}

static void timer_interrupt(u8 vector, void *arg)
{
	(void)vector;
	(void)arg;
	struct timer_state *t = &timers[this_cpu()->index];
	if (t->fn)
		t->fn(t->arg);
}

void timer_init(void) { irq_set_handler(VECTOR_TIMER, timer_interrupt, NULL); }

/* LAPIC ticks for a TSC interval, as (divide, count) with count <= 2^32-1. */
static void lapic_count_for(u64 tsc_cycles, u32 *divide, u32 *count)
{
	timer_calibrate();
	u64 ticks = muldiv64(tsc_cycles, lapic_timer_khz, tsc_khz);
	u32 div = 1;
	while (ticks / div > 0xffffffffull && div < LAPIC_MAX_DIVIDE)
		div *= 2;
	u64 n = ticks / div;
	if (n > 0xffffffffull)
		n = 0xffffffffull;
	*divide = div;
	*count = n ? (u32)n : 1;
}

static void timer_arm(u64 us, u32 mode, timer_fn fn, void *arg)
{
	struct timer_state *t = &timers[this_cpu()->index];
	u32 divide, count;

	lapic_count_for(us_to_tsc(us), &divide, &count);
	t->fn = fn;
	t->arg = arg;
	lapic_timer_start(divide, count, mode, VECTOR_TIMER);
}

void timer_periodic(u64 period_us, timer_fn fn, void *arg) { timer_arm(period_us, LAPIC_TIMER_PERIODIC, fn, arg); }

void timer_oneshot(u64 us, timer_fn fn, void *arg) { timer_arm(us, LAPIC_TIMER_ONESHOT, fn, arg); }

void timer_stop(void)
{
	lapic_timer_stop();
	timers[this_cpu()->index].fn = NULL;
}

bool wait_event(bool (*cond)(void *), void *arg, u64 timeout_us)
{
	bool flags = irq_save();
	bool forever = timeout_us == WAIT_FOREVER;
	u64 deadline = forever ? 0 : rdtsc() + us_to_tsc(timeout_us);
	bool armed = false, ok;

	for (;;) {
		if (cond(arg)) {
			ok = true;
			break;
		}
		if (!forever) {
			u64 now = rdtsc();
			if (now >= deadline) {
				ok = false;
				break;
			}
			if (!armed) {
				u32 divide, count;
				/* one-shot to the deadline; the interrupt only wakes us */
				lapic_count_for(deadline - now, &divide, &count);
				timers[this_cpu()->index].fn = NULL;
				lapic_timer_start(divide, count + 1, LAPIC_TIMER_ONESHOT, VECTOR_TIMER);
				armed = true;
			} else if (lapic_read(LAPIC_TIMER_CURRENT) == 0) {
				armed = false; /* fired early (rounding): re-arm */
				continue;
			}
		}
		cpu_idle_irqoff();
	}
	if (armed)
		lapic_timer_stop();
	irq_restore(flags);
	return ok;
}

static bool never(void *arg)
{
	(void)arg;
	return false;
}

void sleep_us(u64 us) { wait_event(never, NULL, us); }
