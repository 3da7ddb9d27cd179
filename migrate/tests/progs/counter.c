/* Counter: brk heap with checksum, GPR r15 and xmm8/ymm held live across raw nanosleep.
   usage: counter ITER HEAP_MIB SLEEP_MS ; prints one line per iteration to stdout (buffered). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <immintrin.h>

static uint64_t sum(const uint8_t *p, size_t n) { uint64_t s = 1469598103934665603ULL; for (size_t i = 0; i < n; i += 64) s = (s ^ p[i]) * 1099511628211ULL; return s; }

int main(int argc, char **argv) {
    int iters = atoi(argv[1]); size_t heap = (size_t)atoi(argv[2]) << 20; int ms = atoi(argv[3]);
    uint8_t *h = sbrk(heap);
    for (size_t i = 0; i < heap; i++) h[i] = (uint8_t)(i * 7 + (i >> 12));
    uint64_t ref = sum(h, heap);
    int bad = 0;
    for (int i = 0; i < iters; i++) {
        struct timespec ts = { 0, ms * 1000000L };
        long r15v = 0x1234567800000000L + i; double xv = 1.5 * i;
        register long r15 asm("r15") = r15v;
        register __m256d y8 asm("xmm8") = _mm256_set_pd(xv, xv + 1, xv + 2, xv + 3);
        /* hold r15 and ymm8 live across the raw syscall */
        long ret;
        asm volatile("syscall" : "=a"(ret), "+r"(r15), "+x"(y8) : "0"(SYS_nanosleep), "D"(&ts), "S"(0) : "rcx", "r11", "memory");
        double out[4]; _mm256_storeu_pd(out, y8);
        if (r15 != r15v || out[3] != xv || out[0] != xv + 3) { printf("BAD regs at %d\n", i); bad++; }
        if (i % 10 == 0 && sum(h, heap) != ref) { printf("BAD heap at %d\n", i); bad++; }
        printf("iter %d\n", i);
    }
    printf("DONE %s\n", bad ? "bad" : "ok");
    return bad ? 1 : 0;
}
