/* An interval timer (ITIMER_REAL, 20 ms) must keep firing after thaw; the loop is paced by
   absolute clock_nanosleep so SIGALRM does not shorten it.  usage: timer ITERS */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static volatile int alarms;
static void h(int s) { (void)s; alarms++; }

int main(int argc, char **argv) {
    int n = atoi(argv[1]), bad = 0;
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_handler = h; sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, 0);
    struct itimerval it = { { 0, 20000 }, { 0, 20000 } };
    setitimer(ITIMER_REAL, &it, 0);
    struct timespec next; clock_gettime(CLOCK_MONOTONIC, &next);
    int last = 0, late = 0;
    for (int i = 0; i < n; i++) {
        next.tv_nsec += 10000000;
        if (next.tv_nsec >= 1000000000) { next.tv_sec++; next.tv_nsec -= 1000000000; }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) ;
        if (i >= n / 2 && alarms > last) late++; /* alarms still arriving in the second half */
        last = alarms;
        printf("tick %d\n", i);
    }
    if (alarms < n / 4 || late < n / 8) { printf("BAD timer: %d alarms, %d late\n", alarms, late); bad++; }
    printf("DONE %s\n", bad ? "bad" : "ok");
    return bad;
}
