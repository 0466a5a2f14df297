/* virtio.c - virtio-mmio version 2 transport, driver side (virtio 1.2
 * sections 3.1 and 4.2), interrupts and waiting for used buffers. */
#include "virtio.h"

#include "irq.h"
#include "timer.h"
#include "x86.h"

#define RESET_POLLS 10000          /* Status reads while waiting for 0 */
#define POLL_STATUS_EVERY_US 5000  /* polled mode: NEEDS_RESET check period */
#define MAX_LINES 8                /* distinct GSIs with virtio devices */
#define DEVS_PER_LINE 4
#define CONFIG_TRIES 100            /* reads while ConfigGeneration changes */

static inline u32 rd(struct virtio_dev *d, u32 reg) { return mmio_read32(d->base + reg); }
static inline void wr(struct virtio_dev *d, u32 reg, u32 v) { mmio_write32(d->base + reg, v); }

const char *virtio_strerror(int err)
{
	switch (err) {
	case VIRTIO_OK: return "ok";
	case VIRTIO_E_MAGIC: return "bad-magic";
	case VIRTIO_E_VERSION: return "not-version-2";
	case VIRTIO_E_NODEV: return "no-device";
	case VIRTIO_E_FEATURES: return "features";
	case VIRTIO_E_QUEUE: return "queue";
	case VIRTIO_E_NOMEM: return "no-memory";
	case VIRTIO_E_RESET: return "reset-timeout";
	default: return "unknown";
	}
}

/* Probe results, so that looking devices up repeatedly costs no exits. */
static struct {
	bool probed;
	bool present;
	u32 version;
	u32 id;
} probes[VIRTIO_MMIO_MAX];

static void probe_all(void)
{
	for (u32 i = 0; i < virtio_mmio_count; i++) {
		if (probes[i].probed)
			continue;
		probes[i].probed = true;
		probes[i].present = virtio_mmio_probe(&virtio_mmio_devs[i], &probes[i].version, &probes[i].id);
	}
}

const struct virtio_mmio_dev *virtio_find(u32 id, u32 index)
{
	probe_all();
	for (u32 i = 0; i < virtio_mmio_count; i++) {
		if (!probes[i].present || probes[i].id != id)
			continue;
		if (index-- == 0)
			return &virtio_mmio_devs[i];
	}
	return NULL;
}

u32 virtio_count(u32 id)
{
	u32 n = 0;

	probe_all();
	for (u32 i = 0; i < virtio_mmio_count; i++)
		if (probes[i].present && probes[i].id == id)
			n++;
	return n;
}

u32 virtio_status(struct virtio_dev *d) { return rd(d, VIRTIO_MMIO_STATUS); }

static void set_status(struct virtio_dev *d, u32 bits) { wr(d, VIRTIO_MMIO_STATUS, rd(d, VIRTIO_MMIO_STATUS) | bits); }

bool virtio_reset(struct virtio_dev *d)
{
	wr(d, VIRTIO_MMIO_STATUS, 0);
	for (u32 i = 0; i < RESET_POLLS; i++)
		if (rd(d, VIRTIO_MMIO_STATUS) == 0)
			return true;
	return false;
}

void virtio_notify(struct virtio_dev *d, u16 queue) { wr(d, VIRTIO_MMIO_QUEUE_NOTIFY, queue); }

static u64 read_device_features(struct virtio_dev *d)
{
	wr(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	u64 hi = rd(d, VIRTIO_MMIO_DEVICE_FEATURES);
	wr(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	u64 lo = rd(d, VIRTIO_MMIO_DEVICE_FEATURES);
	return hi << 32 | lo;
}

/* 3.1.1 steps 4-6 with d->features. */
static int write_features(struct virtio_dev *d)
{
	wr(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(d->features >> 32));
	wr(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)d->features);
	set_status(d, VIRTIO_STATUS_FEATURES_OK);
	if (!(rd(d, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
		set_status(d, VIRTIO_STATUS_FAILED);
		return VIRTIO_E_FEATURES;
	}
	return VIRTIO_OK;
}

int virtio_dev_init(struct virtio_dev *d, const struct virtio_mmio_dev *m, u64 wanted, u64 required)
{
	d->mmio = m;
	d->base = m->base;
	d->gsi = m->irq;
	d->vector = -1;
	d->nvqs = 0;
	if (mmio_read32(d->base + VIRTIO_MMIO_MAGIC) != VIRTIO_MMIO_MAGIC_VALUE)
		return VIRTIO_E_MAGIC;
	d->version = rd(d, VIRTIO_MMIO_VERSION);
	if (d->version != 2)
		return VIRTIO_E_VERSION;
	d->device_id = rd(d, VIRTIO_MMIO_DEVICE_ID);
	if (d->device_id == 0)
		return VIRTIO_E_NODEV;

	if (!virtio_reset(d)) /* 1 */
		return VIRTIO_E_RESET;
	set_status(d, VIRTIO_STATUS_ACKNOWLEDGE); /* 2 */
	set_status(d, VIRTIO_STATUS_DRIVER);      /* 3 */
	d->device_features = read_device_features(d);
	required |= BIT64(VIRTIO_F_VERSION_1);
	if ((d->device_features & required) != required) {
		set_status(d, VIRTIO_STATUS_FAILED);
		return VIRTIO_E_FEATURES;
	}
	d->wanted = wanted | required;
	d->features = d->device_features & d->wanted;
	return write_features(d); /* 4-6 */
}

int virtio_setup_queue(struct virtio_dev *d, struct virtq *vq, u16 idx, u16 max_num)
{
	wr(d, VIRTIO_MMIO_QUEUE_SEL, idx);
	if (rd(d, VIRTIO_MMIO_QUEUE_READY) != 0)
		return VIRTIO_E_QUEUE;
	u32 num_max = rd(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (num_max == 0)
		return VIRTIO_E_QUEUE;
	u32 num = num_max < max_num ? num_max : max_num;
	if (num > VIRTQ_MAX_SIZE)
		num = VIRTQ_MAX_SIZE;
	while (num & (num - 1)) /* round down to a power of two */
		num &= num - 1;
	if (num < 2)
		return VIRTIO_E_QUEUE;
	if (!vq->desc) {
		if (!virtq_alloc(vq, d, idx, (u16)num))
			return VIRTIO_E_NOMEM;
	} else if (num > vq->num_max) {
		num = vq->num_max;
	}
	virtq_init(vq, (u16)num, virtio_has(d, VIRTIO_RING_F_EVENT_IDX), virtio_has(d, VIRTIO_RING_F_INDIRECT_DESC));
	if (d->poll)
		virtq_disable_cb(vq);

	u64 desc = (u64)(uintptr_t)vq->desc, avail = (u64)(uintptr_t)vq->avail, used = (u64)(uintptr_t)vq->used;
	wr(d, VIRTIO_MMIO_QUEUE_NUM, num);
	wr(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)desc);
	wr(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (u32)(desc >> 32));
	wr(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (u32)avail);
	wr(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
	wr(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (u32)used);
	wr(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
	wr(d, VIRTIO_MMIO_QUEUE_READY, 1);
	bool known = false;
	for (u32 i = 0; i < d->nvqs; i++)
		known |= d->vqs[i] == vq;
	if (!known && d->nvqs < VIRTIO_MAX_QUEUES)
		d->vqs[d->nvqs++] = vq;
	return VIRTIO_OK;
}

/* Interrupt lines: several devices may share one GSI. */
static struct line {
	u32 gsi;
	int vector;
	u32 ndevs;
	struct virtio_dev *devs[DEVS_PER_LINE];
} lines[MAX_LINES];
static u32 nlines;

static void virtio_interrupt(u8 vector, void *arg)
{
	struct line *l = arg;

	(void)vector;
	for (u32 i = 0; i < l->ndevs; i++) {
		struct virtio_dev *d = l->devs[i];
		u32 isr = rd(d, VIRTIO_MMIO_INTERRUPT_STATUS);
		if (!isr)
			continue;
		wr(d, VIRTIO_MMIO_INTERRUPT_ACK, isr);
		d->irqs++;
		if (isr & VIRTIO_MMIO_INT_CONFIG)
			d->config_irqs++;
	}
}

static void route_irq(struct virtio_dev *d)
{
	struct line *l = NULL;

	for (u32 i = 0; i < nlines; i++)
		if (lines[i].gsi == d->gsi)
			l = &lines[i];
	if (!l) {
		if (nlines == MAX_LINES)
			return;
		l = &lines[nlines];
		l->gsi = d->gsi;
		l->vector = irq_register_gsi(d->gsi, virtio_interrupt, l);
		if (l->vector < 0)
			return;
		nlines++;
	}
	for (u32 i = 0; i < l->ndevs; i++)
		if (l->devs[i] == d) {
			d->vector = l->vector;
			return;
		}
	if (l->ndevs < DEVS_PER_LINE) {
		l->devs[l->ndevs++] = d;
		d->vector = l->vector;
	}
}

void virtio_driver_ok(struct virtio_dev *d)
{
	if (d->vector < 0)
		route_irq(d);
	set_status(d, VIRTIO_STATUS_DRIVER_OK);
	d->config_seen = d->config_irqs;
}

int virtio_reinit(struct virtio_dev *d)
{
	d->resets++;
	if (!virtio_reset(d))
		return VIRTIO_E_RESET;
	set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(d, VIRTIO_STATUS_DRIVER);
	int err = write_features(d);
	if (err)
		return err;
	u32 n = d->nvqs;
	for (u32 i = 0; i < n; i++) {
		struct virtq *vq = d->vqs[i];
		err = virtio_setup_queue(d, vq, vq->index, vq->num);
		if (err)
			return err;
	}
	virtio_driver_ok(d);
	return VIRTIO_OK;
}

u8 virtio_cfg8(struct virtio_dev *d, u32 off) { return mmio_read8(d->base + VIRTIO_MMIO_CONFIG + off); }
u16 virtio_cfg16(struct virtio_dev *d, u32 off) { return mmio_read16(d->base + VIRTIO_MMIO_CONFIG + off); }
u32 virtio_cfg32(struct virtio_dev *d, u32 off) { return mmio_read32(d->base + VIRTIO_MMIO_CONFIG + off); }

u64 virtio_cfg64(struct virtio_dev *d, u32 off)
{
	u64 v = 0;

	for (int tries = 0; tries < CONFIG_TRIES; tries++) {
		u32 gen = rd(d, VIRTIO_MMIO_CONFIG_GENERATION);
		u64 lo = virtio_cfg32(d, off), hi = virtio_cfg32(d, off + 4);
		v = hi << 32 | lo;
		if (rd(d, VIRTIO_MMIO_CONFIG_GENERATION) == gen)
			break;
	}
	return v;
}

struct wait_set {
	struct virtq *const *vqs;
	u32 n;
};

static bool any_used(const struct wait_set *w)
{
	for (u32 i = 0; i < w->n; i++)
		if (virtq_has_used(w->vqs[i]))
			return true;
	return false;
}

static bool any_config(const struct wait_set *w)
{
	for (u32 i = 0; i < w->n; i++) {
		struct virtio_dev *d = w->vqs[i]->dev;
		if (READ_ONCE(d->config_irqs) != d->config_seen)
			return true;
	}
	return false;
}

static bool wait_cond(void *arg)
{
	const struct wait_set *w = arg;

	return any_used(w) || any_config(w);
}

static void ack_config(const struct wait_set *w)
{
	for (u32 i = 0; i < w->n; i++) {
		struct virtio_dev *d = w->vqs[i]->dev;
		d->config_seen = READ_ONCE(d->config_irqs);
	}
}

static bool any_needs_reset(const struct wait_set *w)
{
	for (u32 i = 0; i < w->n; i++)
		if (virtio_needs_reset(w->vqs[i]->dev))
			return true;
	return false;
}

static enum virtio_wait_result wait_polled(const struct wait_set *w, u64 timeout_us)
{
	bool forever = timeout_us == WAIT_FOREVER;
	u64 start = rdtsc(), deadline = start + (forever ? 0 : us_to_tsc(timeout_us));
	u64 period = us_to_tsc(POLL_STATUS_EVERY_US), next_check = start + period;

	for (;;) {
		if (any_used(w))
			return VIRTIO_WAIT_USED;
		u64 now = rdtsc();
		if (!forever && now >= deadline)
			return VIRTIO_WAIT_TIMEOUT;
		if (now >= next_check) {
			next_check = now + period;
			if (any_needs_reset(w))
				return VIRTIO_WAIT_CONFIG;
		}
		cpu_relax();
	}
}

enum virtio_wait_result virtio_wait(struct virtq *const *vqs, u32 n, u64 timeout_us)
{
	struct wait_set w = { vqs, n };
	bool polled = true;

	for (u32 i = 0; i < n; i++)
		polled &= vqs[i]->dev->poll;
	if (polled)
		return wait_polled(&w, timeout_us);

	bool ready = false;
	for (u32 i = 0; i < n; i++)
		ready |= virtq_enable_cb(vqs[i]);
	if (!ready && !any_config(&w))
		wait_event(wait_cond, &w, timeout_us);
	for (u32 i = 0; i < n; i++)
		virtq_disable_cb(vqs[i]);
	if (any_used(&w))
		return VIRTIO_WAIT_USED;
	if (any_config(&w)) {
		ack_config(&w);
		return VIRTIO_WAIT_CONFIG;
	}
	return VIRTIO_WAIT_TIMEOUT;
}
