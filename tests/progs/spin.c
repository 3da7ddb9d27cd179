/* spin SECONDS: writes "start", then computes for SECONDS seconds of wall time without any
   system call (clock_gettime goes through the vDSO), then writes "done" and exits 0. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    double secs = atof(argv[1]);
    if (write(1, "start\n", 6) != 6) return 3;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t x = 1, k = 0;
    for (;;) {
        for (int i = 0; i < 1000000; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        k++;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 >= secs) break;
    }
    if (x == 0) k++; /* keep the computation */
    if (write(1, "done\n", 5) != 5) return 3;
    return k == 0;
}
