/* bigheap MIB N MS CODE: a heap of MIB MiB filled with a pseudo-random pattern (no page is
   zero, none alike), then N lines "line i sum S" written with write(2) to fd 1, one every MS
   ms, each step changing one word in every page; the last line is a hash of the whole heap.
   Exits with CODE. The output depends only on the arguments. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    size_t mib = (size_t)atol(argv[1]);
    int n = atoi(argv[2]), ms = atoi(argv[3]), code = atoi(argv[4]);
    size_t words = mib << 17; /* 8-byte words */
    uint64_t *h = malloc(words * 8);
    if (!h) return 4;
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < words; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; h[i] = x; }
    uint64_t s = 0;
    for (int i = 0; i < n; i++) {
        for (size_t j = (size_t)i % 512; j < words; j += 512) { h[j] = h[j] * 31 + (uint64_t)i; s += h[j]; }
        char line[96];
        int len = snprintf(line, sizeof line, "line %d sum %llu\n", i, (unsigned long long)s);
        if (write(1, line, (size_t)len) != len) return 3;
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    uint64_t all = 1469598103934665603ULL;
    for (size_t i = 0; i < words; i++) all = (all ^ h[i]) * 1099511628211ULL;
    char line[64];
    int len = snprintf(line, sizeof line, "heap %llu\n", (unsigned long long)all);
    if (write(1, line, (size_t)len) != len) return 3;
    return code;
}
