#ifndef GUEST_SEMIHOSTING_H
#define GUEST_SEMIHOSTING_H
#include <stdint.h>

#define SH_SYS_WRITEC        0x03
#define SH_SYS_WRITE0        0x04
#define SH_SYS_EXIT          0x18
#define SH_SYS_EXIT_EXTENDED 0x20
#define SH_ADP_STOPPED_APPLICATIONEXIT 0x20026

/* HLT #0xF000 with w0 = op, x1 = param; returns x0 */
uint64_t semihost_call(uint32_t op, uint64_t param);
void sys_writec(char c);
void sys_write0(const char *s);
void sys_exit(int status) __attribute__((noreturn));
void sys_exit_extended(int status) __attribute__((noreturn));
#endif
