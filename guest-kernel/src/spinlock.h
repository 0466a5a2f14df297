/* spinlock.h - test-and-test-and-set spinlock. */
#ifndef KVMM_GUEST_SPINLOCK_H
#define KVMM_GUEST_SPINLOCK_H

#include "types.h"
#include "world.h"
#include "x86.h"

typedef struct {
	volatile u32 locked;
} spinlock_t;

static inline bool spin_trylock(spinlock_t *l)
{
	return __atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE) == 0;
}

static inline void spin_lock(spinlock_t *l)
{
	while (!spin_trylock(l))
		while (l->locked)
			cpu_relax();
}

static inline bool spin_trylock_bounded(spinlock_t *l, u64 tries)
{
	while (tries--) {
		if (spin_trylock(l))
			return true;
		cpu_relax();
	}
	return false;
}

static inline void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE); }

static inline bool spin_lock_irqsave(spinlock_t *l)
{
	bool flags = irq_save();

	spin_lock(l);
	return flags;
}

static inline void spin_unlock_irqrestore(spinlock_t *l, bool flags)
{
	spin_unlock(l);
	irq_restore(flags);
}

#endif
