#ifndef GUEST_EXC_H
#define GUEST_EXC_H
#include <stdint.h>

/* Layout must match vectors.S */
struct exc_frame {
    uint64_t x[31];   /* 0x000 .. 0x0f0 */
    uint64_t elr;     /* 0x0f8 */
    uint64_t spsr;    /* 0x100 */
    uint64_t esr;     /* 0x108 */
    uint64_t far;     /* 0x110 */
    uint64_t pad;     /* 0x118 */
};

/* Vector numbers: index of the 0x80 entry in the table */
enum {
    VEC_CUR_SP0_SYNC = 0, VEC_CUR_SP0_IRQ, VEC_CUR_SP0_FIQ, VEC_CUR_SP0_SERROR,
    VEC_CUR_SPX_SYNC = 4, VEC_CUR_SPX_IRQ, VEC_CUR_SPX_FIQ, VEC_CUR_SPX_SERROR,
    VEC_LOW64_SYNC = 8, VEC_LOW64_IRQ, VEC_LOW64_FIQ, VEC_LOW64_SERROR,
    VEC_LOW32_SYNC = 12, VEC_LOW32_IRQ, VEC_LOW32_FIQ, VEC_LOW32_SERROR,
};

#define ESR_EC(esr)  (((esr) >> 26) & 0x3f)
#define ESR_ISS(esr) ((esr) & 0x1ffffff)

#define EC_UNKNOWN      0x00
#define EC_SVC64        0x15
#define EC_HVC64        0x16
#define EC_IABT_LOW     0x20
#define EC_IABT_CUR     0x21
#define EC_DABT_LOW     0x24
#define EC_DABT_CUR     0x25
#define EC_BKPT_LOW     0x30
#define EC_BKPT_CUR     0x31
#define EC_SSTEP_LOW    0x32
#define EC_SSTEP_CUR    0x33
#define EC_WATCH_LOW    0x34
#define EC_WATCH_CUR    0x35
#define EC_BRK64        0x3c

void exception_handler(struct exc_frame *f, unsigned vector);
/* Prints the "unhandled exception" line and exits with status 99. */
void default_exception_report(struct exc_frame *f, unsigned vector) __attribute__((noreturn));
#endif
