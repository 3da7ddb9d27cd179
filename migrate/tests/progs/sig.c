/* A SIGUSR1 handler on an alternate stack must keep firing; SIGUSR2 is blocked, sent by the test
   before the freeze, and must still be pending (then delivered) at the end.  usage: sig ITERS */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile int hits, onalt, usr2;
static char alt[65536];
static void h(int s) { (void)s; char x; hits++; if (&x >= alt && &x < alt + sizeof alt) onalt++; }
static void h2(int s) { (void)s; usr2++; }

int main(int argc, char **argv) {
    int n = atoi(argv[1]), bad = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    stack_t ss = { .ss_sp = alt, .ss_size = sizeof alt, .ss_flags = 0 };
    sigaltstack(&ss, 0);
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_handler = h; sa.sa_flags = SA_ONSTACK | SA_RESTART;
    sigaction(SIGUSR1, &sa, 0);
    sa.sa_handler = h2; sa.sa_flags = 0;
    sigaction(SIGUSR2, &sa, 0);
    sigset_t m; sigemptyset(&m); sigaddset(&m, SIGUSR2); sigprocmask(SIG_BLOCK, &m, 0);
    for (int i = 0; i < n; i++) {
        raise(SIGUSR1);
        usleep(10000);
        if (hits != i + 1 || onalt != i + 1) { printf("BAD handler hits=%d onalt=%d at %d\n", hits, onalt, i); bad++; }
        printf("tick %d\n", i);
    }
    sigset_t p; sigpending(&p);
    printf("usr2 pending %d\n", sigismember(&p, SIGUSR2));
    sigprocmask(SIG_UNBLOCK, &m, 0);
    printf("usr2 delivered %d\n", usr2);
    printf("DONE %s\n", bad ? "bad" : "ok");
    return bad;
}
