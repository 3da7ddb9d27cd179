/* ppid: sleeps ITER x 10 ms, then prints what getppid() returns (raw syscall: never cached). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
    int iters = atoi(argv[1]);
    printf("start ppid %ld\n", syscall(SYS_getppid));
    fflush(stdout);
    for (int i = 0; i < iters; i++) {
        struct timespec ts = { 0, 10 * 1000000L };
        nanosleep(&ts, 0);
    }
    printf("end ppid %ld\n", syscall(SYS_getppid));
    return 0;
}
