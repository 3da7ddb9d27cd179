/* manymaps: N one-page mappings that cannot merge (alternating protections), each touched,
   then sleeps ITER x 10 ms.  usage: manymaps N ITER */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv) {
    int n = atoi(argv[1]), iters = atoi(argv[2]);
    char *base = mmap(0, (size_t)n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < n; i++) {
        base[(size_t)i * 4096] = (char)i;
        if (i % 2) mprotect(base + (size_t)i * 4096, 4096, PROT_READ);
    }
    printf("mapped %d\n", n);
    fflush(stdout);
    for (int i = 0; i < iters; i++) {
        struct timespec ts = { 0, 10 * 1000000L };
        nanosleep(&ts, 0);
    }
    long sum = 0;
    for (int i = 0; i < n; i++) sum += base[(size_t)i * 4096];
    printf("sum %ld\nDONE ok\n", sum);
    return 0;
}
