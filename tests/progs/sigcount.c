/* sigcount N MS [segv]: writes "tick i" every MS ms, N times, then exits 0 (with "segv": dies
   by SIGSEGV instead). A SIGUSR1 makes the next line "usr1 pid P" (P from getpid()). */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static void h(int s) { (void)s; got = 1; }

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) return 2;
    int n = atoi(argv[1]), ms = atoi(argv[2]);
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_handler = h; sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, 0);
    for (int i = 0; i < n; i++) {
        char line[64];
        int len;
        if (got) { got = 0; len = snprintf(line, sizeof line, "usr1 pid %d\n", (int)getpid()); if (write(1, line, len) != len) return 3; }
        len = snprintf(line, sizeof line, "tick %d\n", i);
        if (write(1, line, (size_t)len) != len) return 3;
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        nanosleep(&ts, 0);
    }
    if (argc == 4) { volatile int *p = 0; *p = 1; }
    return 0;
}
