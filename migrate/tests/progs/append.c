/* O_APPEND counter paced by clock_nanosleep(TIMER_ABSTIME); checks CLOCK_MONOTONIC (vDSO) never
   goes back and never wakes early.  usage: append FILE ITERS */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h>

static int before(struct timespec a, struct timespec b) { return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec); }

int main(int argc, char **argv) {
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    int n = atoi(argv[2]), bad = 0;
    struct timespec next, last;
    clock_gettime(CLOCK_MONOTONIC, &next);
    last = next;
    struct timeval tv0; gettimeofday(&tv0, 0);
    for (int i = 0; i < n; i++) {
        next.tv_nsec += 10000000;
        if (next.tv_nsec >= 1000000000) { next.tv_sec++; next.tv_nsec -= 1000000000; }
        int r;
        while ((r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL)) == EINTR) ;
        if (r) { dprintf(fd, "BAD clock_nanosleep %d\n", r); bad++; }
        struct timespec now; clock_gettime(CLOCK_MONOTONIC, &now);
        if (before(now, last)) { dprintf(fd, "BAD monotonic went back\n"); bad++; }
        if (before(now, next)) { dprintf(fd, "BAD woke early\n"); bad++; }
        struct timeval tv; gettimeofday(&tv, 0);
        if (tv.tv_sec < tv0.tv_sec) { dprintf(fd, "BAD gettimeofday\n"); bad++; }
        last = now;
        dprintf(fd, "count %d\n", i);
    }
    dprintf(fd, "DONE %s\n", bad ? "bad" : "ok");
    return bad;
}
