/* CPU-bound job for the balancing tests: iterates an LCG argv[1] million times and writes
 * the final value to fd 1 with write(2) (stdio would fstat stdout, a call a moved process
 * cannot make yet), so a moved run's output can be compared with an uninterrupted one. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    unsigned long long n = argc > 1 ? strtoull(argv[1], NULL, 10) : 100;
    unsigned long long x = 12345;
    for (unsigned long long i = 0; i < n * 1000000ULL; i++)
        x = x * 6364136223846793005ULL + 1442695040888963407ULL + (x >> 17);
    char line[64];
    int len = snprintf(line, sizeof line, "spin %llu: %llu\n", n, x);
    if (write(1, line, (size_t)len) != len) return 3;
    return 0;
}
