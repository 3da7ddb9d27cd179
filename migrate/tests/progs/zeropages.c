/* 32 MiB of private anonymous memory: every 4th page written, every odd page only read (it maps
 * the shared zero page), the rest untouched. Prints "ready", sleeps ITERS x 10 ms, then checks
 * every byte (written bytes hold their value, all others are zero) and prints a hash of all. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#define PAGES 8192L
int main(int argc, char **argv) {
    int iters = argc > 1 ? atoi(argv[1]) : 100;
    long pg = sysconf(_SC_PAGESIZE);
    unsigned char *m = mmap(0, PAGES * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 2;
    /* 4 KiB zero pages, not the huge zero page, whatever the THP setting */
    madvise(m, PAGES * pg, MADV_NOHUGEPAGE);
    unsigned long sum = 0;
    for (long p = 0; p < PAGES; p++) {
        if (p % 4 == 0)
            m[p * pg + p % 4000] = (unsigned char)(p * 7 + 1);
        else if (p % 2 == 1)
            sum += ((volatile unsigned char *)m)[p * pg + 100];
    }
    printf("ready %lu\n", sum);
    fflush(stdout);
    for (int i = 0; i < iters; i++) {
        struct timespec t = {0, 10 * 1000 * 1000};
        nanosleep(&t, 0);
    }
    unsigned long h = 0;
    long bad = -1;
    for (long k = 0; k < PAGES * pg; k++) {
        unsigned char c = m[k];
        long p = k / pg;
        unsigned char want = (p % 4 == 0 && k % pg == p % 4000) ? (unsigned char)(p * 7 + 1) : 0;
        h = h * 31 + c;
        if (c != want && bad < 0) bad = p;
    }
    if (bad >= 0)
        printf("BAD page %ld\n", bad);
    else
        printf("ok %lx\n", h);
    return 0;
}
