/* pipecount N MS CODE: a heap, then N lines "line i sum S" written with write(2) to fd 1,
   one every MS ms; exits with CODE. Output depends only on N. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int n = atoi(argv[1]), ms = atoi(argv[2]), code = atoi(argv[3]);
    size_t heap = 4 << 20;
    uint8_t *h = malloc(heap);
    for (size_t i = 0; i < heap; i++) h[i] = (uint8_t)(i * 13 + (i >> 10));
    uint64_t s = 0;
    for (int i = 0; i < n; i++) {
        for (size_t j = (size_t)i * 4096 % heap; j < heap; j += 65536) s = s * 31 + h[j];
        char line[96];
        int len = snprintf(line, sizeof line, "line %d sum %llu pid %d\n", i,
                           (unsigned long long)s, (int)getpid());
        if (write(1, line, (size_t)len) != len) return 3;
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    return code;
}
