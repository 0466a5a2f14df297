/* pattern.h - the data pattern the block modes write, and checksums.
 *
 * The 8-byte little-endian word i (0..63) of 512-byte sector s, for a
 * seed, is mix64(seed * 0x9e3779b97f4a7c15 + s * 64 + i) (mod 2^64),
 * where mix64 is the SplitMix64 finalizer. A host-side check in Python:
 *
 *   M = (1 << 64) - 1
 *   def mix64(x):
 *       x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9 & M
 *       x = (x ^ (x >> 27)) * 0x94d049bb133111eb & M
 *       return x ^ (x >> 31)
 *   def word(seed, s, i): return mix64((seed * 0x9e3779b97f4a7c15 + s * 64 + i) & M)
 *
 * blktest uses seed = disk index; blkwrite uses seed= from the command
 * line. */
#ifndef KVMM_GUEST_PATTERN_H
#define KVMM_GUEST_PATTERN_H

#include "types.h"

#define SECTOR_SIZE 512
#define SECTOR_WORDS (SECTOR_SIZE / 8)

static inline u64 mix64(u64 x)
{
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static inline u64 pattern_word(u64 seed, u64 sector, u32 i)
{
	return mix64(seed * 0x9e3779b97f4a7c15ull + sector * SECTOR_WORDS + i);
}

static inline void pattern_fill(u64 seed, u64 sector, void *buf, u64 nsectors)
{
	u64 *w = buf;

	for (u64 s = 0; s < nsectors; s++)
		for (u32 i = 0; i < SECTOR_WORDS; i++)
			*w++ = pattern_word(seed, sector + s, i);
}

/* Checksum of one sector's 64 words (order-sensitive). */
static inline u64 sum_step(u64 h, u64 w) { return (((h << 5) | (h >> 59)) ^ w) * 0x100000001b3ull; }

static inline u64 sector_sum(const void *sector)
{
	const u64 *w = sector;
	u64 h = 0xcbf29ce484222325ull;

	for (u32 i = 0; i < SECTOR_WORDS; i++)
		h = sum_step(h, w[i]);
	return h;
}

static inline u64 pattern_sum(u64 seed, u64 sector)
{
	u64 h = 0xcbf29ce484222325ull;

	for (u32 i = 0; i < SECTOR_WORDS; i++)
		h = sum_step(h, pattern_word(seed, sector, i));
	return h;
}

static inline bool sector_is_zero(const void *sector)
{
	const u64 *w = sector;

	for (u32 i = 0; i < SECTOR_WORDS; i++)
		if (w[i])
			return false;
	return true;
}

#endif
