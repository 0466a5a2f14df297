/* modes.c - the mode table. */
#include "modes.h"

#include "string.h"

static const struct mode modes[] = {
	{ "hello", mode_hello },
	{ "timer", mode_timer },
	{ "smp", mode_smp },
	{ "mem", mode_mem },
	{ "fault", mode_fault },
	{ "reset", mode_reset },
	{ "iobench", mode_iobench },
	{ "mmiobench", mode_mmiobench },
	{ "exception", mode_exception },
	{ "irq", mode_irq },
	{ "blktest", mode_blktest },
	{ "blkbench", mode_blkbench },
	{ "blkmulti", mode_blkmulti },
	{ "flood", mode_flood },
	{ "blkwrite", mode_blkwrite },
	{ "hostile-blk", mode_hostile_blk },
	{ "netecho", mode_netecho },
	{ "netbench", mode_netbench },
	{ "hostile-net", mode_hostile_net },
};

const struct mode *mode_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(modes); i++)
		if (strcmp(modes[i].name, name) == 0)
			return &modes[i];
	return NULL;
}
