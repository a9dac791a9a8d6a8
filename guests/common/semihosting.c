#include "semihosting.h"

uint64_t semihost_call(uint32_t op, uint64_t param)
{
    register uint64_t x0 __asm__("x0") = op;
    register uint64_t x1 __asm__("x1") = param;
    __asm__ volatile("hlt #0xf000" : "+r"(x0) : "r"(x1) : "memory");
    return x0;
}

void sys_writec(char c)
{
    volatile char ch = c;
    semihost_call(SH_SYS_WRITEC, (uint64_t)&ch);
}

void sys_write0(const char *s)
{
    semihost_call(SH_SYS_WRITE0, (uint64_t)s);
}

static void __attribute__((noreturn)) exit_common(uint32_t op, int status)
{
    volatile uint64_t block[2];
    block[0] = SH_ADP_STOPPED_APPLICATIONEXIT;
    block[1] = (uint64_t)(int64_t)status;
    semihost_call(op, (uint64_t)block);
    for (;;)
        __asm__ volatile("wfi");
}

void sys_exit(int status)
{
    exit_common(SH_SYS_EXIT, status);
}

void sys_exit_extended(int status)
{
    exit_common(SH_SYS_EXIT_EXTENDED, status);
}
