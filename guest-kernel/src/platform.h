/* platform.h - the kvmm guest protocol's platform devices
 * (docs/guest-protocol.md, "Platform devices"), plus legacy PC ports. */
#ifndef KVMM_GUEST_PLATFORM_H
#define KVMM_GUEST_PLATFORM_H

#define COM1_BASE 0x3f8         /* 8250 UART COM1, IRQ 4 */
#define UART_THR 0              /* transmit holding register (DLAB=0) */
#define UART_IER 1              /* interrupt enable register */
#define UART_LCR 3              /* line control register */
#define UART_LCR_8N1 0x03       /* 8 data bits, no parity, 1 stop, DLAB=0 */

#define DEBUG_EXIT_PORT 0xf4    /* value written = exit status */
#define BOOT_TIMER_PORT 0x440   /* any write: kvmm logs time since start */
#define BENCH_PORT 0x441        /* user-space exit and nothing else */
#define BENCH_MMIO_BASE 0xc0000000ull /* 4 KiB, unbacked: MMIO exits */

#define I8042_COMMAND_PORT 0x64
#define I8042_CMD_RESET 0xfe    /* pulse the CPU reset line */

#define POST_PORT 0x80          /* traditional POST port; used as a cheap trap */

/* 8259A PIC data (IMR) ports. */
#define PIC1_DATA 0x21
#define PIC2_DATA 0xa1

/* Exit statuses (docs/guest-protocol.md, "Guest kernel conventions"). */
#define EXIT_PASS 0
#define EXIT_FAIL 1
#define EXIT_EXCEPTION 3

#endif
