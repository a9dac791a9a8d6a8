/*
 * Dirty-page logging for guest RAM, the emulated VM's KVM_MEM_LOG_DIRTY_PAGES and
 * KVM_GET_DIRTY_LOG: which pages were written since the last look, without comparing memory.
 *
 * A logged slot's host memory is made read-only. The first store to a page (by Unicorn's
 * generated code, by Unicorn itself or by the VMM) faults; the SIGSEGV handler here marks the
 * page in the slot's bitmap and makes that page writable again, and the store is retried. Each
 * collect hands out the bitmap and makes the whole slot read-only again (one mprotect, which
 * also merges the mapping back into one VMA). A fault costs about 8 us here, so a run pays for
 * the pages it writes, not for the size of RAM.
 *
 * If making a page writable fails (ENOMEM: each writable page splits the mapping, and
 * vm.max_map_count caps them), the whole slot becomes writable and the next collect reports
 * every page. A fault outside the logged slots goes to the handler that was there before
 * (Python's faulthandler, say), else to the default action.
 *
 * Collect only while nothing else writes the slot (between vCPU runs). Loaded with ctypes, as
 * _runctl.c; no Python or Unicorn headers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE_SHIFT 12
#define PAGE_SIZE (1ul << PAGE_SHIFT)
#define MAX_LOGGED 16

struct logged {
    uintptr_t base;
    size_t size;
    uint8_t *bitmap;  /* bit n of byte n / 8: page n written */
    volatile int overflow;
};

static struct logged logged[MAX_LOGGED];
static struct sigaction previous;
static int installed;

static void on_segv(int sig, siginfo_t *si, void *context)
{
    uintptr_t addr = (uintptr_t)si->si_addr;
    for (int i = 0; i < MAX_LOGGED; i++) {
        struct logged *l = &logged[i];
        if (l->bitmap == NULL || addr < l->base || addr >= l->base + l->size)
            continue;
        size_t page = (addr - l->base) >> PAGE_SHIFT;
        __atomic_or_fetch(&l->bitmap[page >> 3], (uint8_t)(1u << (page & 7)), __ATOMIC_RELAXED);
        if (mprotect((void *)(l->base + (page << PAGE_SHIFT)), PAGE_SIZE, PROT_READ | PROT_WRITE) != 0) {
            l->overflow = 1;
            mprotect((void *)l->base, l->size, PROT_READ | PROT_WRITE);
        }
        return;
    }
    if (previous.sa_flags & SA_SIGINFO) {
        if (previous.sa_sigaction != NULL) {
            previous.sa_sigaction(sig, si, context);
            return;
        }
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL);  /* the access runs again and takes the default action */
}

static struct logged *find(uintptr_t base)
{
    for (int i = 0; i < MAX_LOGGED; i++)
        if (logged[i].bitmap != NULL && logged[i].base == base)
            return &logged[i];
    return NULL;
}

/* Start logging [base, base + size) (page aligned). 0, or -errno. */
int dirtylog_start(uintptr_t base, size_t size)
{
    if (base % PAGE_SIZE || size % PAGE_SIZE || size == 0)
        return -EINVAL;
    if (find(base) != NULL)
        return -EEXIST;
    struct logged *slot = NULL;
    for (int i = 0; i < MAX_LOGGED && slot == NULL; i++)
        if (logged[i].bitmap == NULL)
            slot = &logged[i];
    if (slot == NULL)
        return -ENOSPC;
    if (!installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGSEGV, &sa, &previous) != 0)
            return -errno;
        installed = 1;
    }
    uint8_t *bitmap = calloc((size / PAGE_SIZE + 7) / 8, 1);
    if (bitmap == NULL)
        return -ENOMEM;
    slot->base = base;
    slot->size = size;
    slot->overflow = 0;
    __atomic_store_n(&slot->bitmap, bitmap, __ATOMIC_RELEASE);
    if (mprotect((void *)base, size, PROT_READ) != 0) {
        int err = errno;
        slot->bitmap = NULL;
        free(bitmap);
        return -err;
    }
    return 0;
}

/* Stop logging the slot at `base`: writable again. 0, or -errno. */
int dirtylog_stop(uintptr_t base)
{
    struct logged *l = find(base);
    if (l == NULL)
        return -ENOENT;
    int rc = mprotect((void *)l->base, l->size, PROT_READ | PROT_WRITE) ? -errno : 0;
    uint8_t *bitmap = l->bitmap;
    __atomic_store_n(&l->bitmap, NULL, __ATOMIC_RELEASE);
    free(bitmap);
    return rc;
}

/* The pages written since the last collect, as a bitmap into `out` (`out_len` bytes: one bit per
 * page), and the slot read-only again. Returns how many pages are marked, or -errno. */
long dirtylog_collect(uintptr_t base, uint8_t *out, size_t out_len)
{
    struct logged *l = find(base);
    if (l == NULL)
        return -ENOENT;
    size_t len = (l->size / PAGE_SIZE + 7) / 8;
    if (out_len < len)
        return -EINVAL;
    /* Read-only first: a store after this faults and is marked, whichever collect sees it. */
    if (mprotect((void *)l->base, l->size, PROT_READ) != 0)
        return -errno;
    long marked = 0;
    if (l->overflow) {
        l->overflow = 0;
        memset(out, 0xff, len);
        memset(l->bitmap, 0, len);
        return (long)(l->size / PAGE_SIZE);
    }
    for (size_t i = 0; i < len; i++) {
        uint8_t bits = __atomic_exchange_n(&l->bitmap[i], 0, __ATOMIC_RELAXED);
        out[i] = bits;
        marked += __builtin_popcount(bits);
    }
    return marked;
}
