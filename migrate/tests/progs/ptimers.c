/* POSIX timers (timer_create) must come back with their ids, clocks, notifications and
   intervals: a SIGEV_SIGNAL timer with a value (checked in the handler), a SIGEV_THREAD timer
   (glibc's helper thread, as vim's), a SIGEV_THREAD_ID timer aimed at a worker thread that
   takes its signal with sigwaitinfo, a SIGEV_NONE one-shot far away (its time left must go
   down, not start again), and a gap in the ids (a deleted timer). Ticks are paced by absolute
   clock_nanosleep so the signals do not shorten them.  usage: ptimers ITERS [cpu] */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile int sig_hits, sig_badval, thr_hits, thr_badval, tid_hits;
static volatile int tid_ready;
static pid_t worker_tid;

static void on_sig(int s, siginfo_t *si, void *u) {
    (void)s; (void)u;
    if (si->si_code != SI_TIMER || si->si_value.sival_int != 4242) sig_badval++;
    sig_hits++;
}
static void on_thread(union sigval v) {
    if (v.sival_int != 777) thr_badval++;
    thr_hits++;
}
static void *worker(void *a) {
    (void)a;
    sigset_t s; sigemptyset(&s); sigaddset(&s, SIGRTMIN + 3);
    worker_tid = (pid_t)syscall(SYS_gettid);
    tid_ready = 1;
    for (;;) {
        siginfo_t si;
        if (sigwaitinfo(&s, &si) == SIGRTMIN + 3 && si.si_value.sival_int == 99) tid_hits++;
    }
    return 0;
}
static timer_t mk(clockid_t c, struct sigevent *ev, long first_ms, long every_ms) {
    timer_t t;
    if (timer_create(c, ev, &t)) { perror("timer_create"); exit(2); }
    struct itimerspec its = { { every_ms / 1000, (every_ms % 1000) * 1000000 },
                              { first_ms / 1000, (first_ms % 1000) * 1000000 } };
    if (timer_settime(t, 0, &its, 0)) { perror("timer_settime"); exit(2); }
    return t;
}

int main(int argc, char **argv) {
    int n = atoi(argv[1]), bad = 0;
    /* the worker's signal stays blocked everywhere but in its sigwaitinfo */
    sigset_t rt; sigemptyset(&rt); sigaddset(&rt, SIGRTMIN + 3);
    pthread_sigmask(SIG_BLOCK, &rt, 0);
    pthread_t w; pthread_create(&w, 0, worker, 0);
    while (!tid_ready) usleep(1000);

    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sig; sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 1, &sa, 0);

    struct sigevent gone = { .sigev_notify = SIGEV_NONE };
    timer_t deleted = mk(CLOCK_MONOTONIC, &gone, 0, 0); /* leaves a gap in the ids */
    struct sigevent es = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN + 1,
                           .sigev_value.sival_int = 4242 };
    timer_t ts = mk(CLOCK_MONOTONIC, &es, 15, 15);
    timer_delete(deleted);
    struct sigevent et = { .sigev_notify = SIGEV_THREAD, .sigev_notify_function = on_thread,
                           .sigev_value.sival_int = 777 };
    timer_t tt = mk(CLOCK_REALTIME, &et, 25, 25);
    struct sigevent ei = { .sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGRTMIN + 3,
                           .sigev_value.sival_int = 99 };
    ei._sigev_un._tid = worker_tid;
    timer_t ti = mk(CLOCK_BOOTTIME, &ei, 20, 20);
    struct sigevent en = { .sigev_notify = SIGEV_NONE };
    timer_t tn = mk(CLOCK_MONOTONIC, &en, 3600 * 1000, 0);

    if (argc > 2) { /* a timer on a CPU-time clock: freeze must refuse it */
        struct sigevent ec = { .sigev_notify = SIGEV_NONE };
        mk(CLOCK_PROCESS_CPUTIME_ID, &ec, 3600 * 1000, 0);
    }
    struct timespec next; clock_gettime(CLOCK_MONOTONIC, &next);
    int half[3] = { 0, 0, 0 };
    struct itimerspec before; timer_gettime(tn, &before);
    for (int i = 0; i < n; i++) {
        next.tv_nsec += 10000000;
        if (next.tv_nsec >= 1000000000) { next.tv_sec++; next.tv_nsec -= 1000000000; }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) ;
        if (i == n / 2) { half[0] = sig_hits; half[1] = thr_hits; half[2] = tid_hits; }
        printf("tick %d\n", i);
        fflush(stdout);
    }
    /* each timer still fires in the second half (after the thaws), with its own value */
    if (sig_hits - half[0] < n / 8 || sig_badval) { printf("BAD signal timer: %d hits, %d bad values\n", sig_hits - half[0], sig_badval); bad++; }
    if (thr_hits - half[1] < n / 12 || thr_badval) { printf("BAD thread timer: %d hits, %d bad values\n", thr_hits - half[1], thr_badval); bad++; }
    if (tid_hits - half[2] < n / 10) { printf("BAD thread-id timer: %d hits\n", tid_hits - half[2]); bad++; }
    struct itimerspec now;
    if (timer_gettime(tn, &now) || now.it_value.tv_sec >= before.it_value.tv_sec || now.it_value.tv_sec < 3000) {
        printf("BAD SIGEV_NONE timer: %ld s left, was %ld\n", (long)now.it_value.tv_sec, (long)before.it_value.tv_sec);
        bad++;
    }
    /* the ids are the same ones: each still names its timer */
    struct itimerspec q;
    if (timer_gettime(ts, &q) || q.it_interval.tv_nsec != 15000000) { printf("BAD id of the signal timer\n"); bad++; }
    if (timer_gettime(tt, &q) || q.it_interval.tv_nsec != 25000000) { printf("BAD id of the thread timer\n"); bad++; }
    if (timer_gettime(ti, &q) || q.it_interval.tv_nsec != 20000000) { printf("BAD id of the thread-id timer\n"); bad++; }
    if (timer_gettime(deleted, &q) == 0) { printf("BAD deleted timer came back\n"); bad++; }
    printf("DONE %s\n", bad ? "bad" : "ok");
    return bad;
}
