/* modes.h - test programs selected with "mode=NAME". Each prints exactly
 * one verdict line and exits through finish() (kernel.h). */
#ifndef KVMM_GUEST_MODES_H
#define KVMM_GUEST_MODES_H

#include "types.h"

struct mode {
	const char *name;
	void (*run)(void); /* does not return: ends in finish() */
};

const struct mode *mode_find(const char *name);

noreturn void mode_hello(void);
noreturn void mode_timer(void);
noreturn void mode_smp(void);
noreturn void mode_mem(void);
noreturn void mode_fault(void);
noreturn void mode_reset(void);
noreturn void mode_iobench(void);
noreturn void mode_mmiobench(void);
noreturn void mode_exception(void);
noreturn void mode_irq(void);
noreturn void mode_blktest(void);
noreturn void mode_blkbench(void);
noreturn void mode_blkmulti(void);
noreturn void mode_flood(void);
noreturn void mode_blkwrite(void);
noreturn void mode_hostile_blk(void);
noreturn void mode_netecho(void);
noreturn void mode_netbench(void);
noreturn void mode_hostile_net(void);

#endif
