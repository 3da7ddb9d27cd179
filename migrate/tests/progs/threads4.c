/* Four pthreads computing in rounds and the main thread printing each round's results.
 * Each worker has a name, thread-local state, live FP registers, its own signal mask (worker
 * 1 blocks SIGUSR1) and spends its time in nanosleep and condition-variable (futex) waits.
 * At the end the main thread signals each worker with pthread_kill (the cached TID) and joins
 * them (clear_child_tid); every worker checks its own state.  usage: threads4 ROUNDS */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#define N 4
static __thread unsigned long long acc;
static __thread volatile int got_usr2;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int round_no, done_count, killed, rounds;
static unsigned long long results[N];

static void on_usr2(int s) { (void)s; got_usr2++; }

static void *worker(void *a) {
    int id = (int)(long)a;
    char name[16];
    snprintf(name, sizeof name, "worker-%d", id);
    pthread_setname_np(pthread_self(), name);
    if (id == 1) {
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGUSR1);
        pthread_sigmask(SIG_BLOCK, &s, 0);
    }
    long tid = syscall(SYS_gettid);
    double x = id + 1.0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < 100000; i++) {
            acc = acc * 6364136223846793005ULL + (unsigned)id + (unsigned)i;
            x = x * 1.0000001 + 0.5;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, 0);
        pthread_mutex_lock(&mu);
        results[id] = acc ^ (unsigned long long)x;
        done_count++;
        pthread_cond_broadcast(&cv);
        while (round_no == r) pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
    }
    pthread_mutex_lock(&mu);
    while (!killed) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    char got[16] = "";
    pthread_getname_np(pthread_self(), got, sizeof got);
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, 0, &cur);
    int bad = 0;
    if (strcmp(got, name) != 0) { printf("BAD name %s %s\n", got, name); bad = 1; }
    if (sigismember(&cur, SIGUSR1) != (id == 1)) { printf("BAD mask of %d\n", id); bad = 1; }
    if (got_usr2 != 1) { printf("BAD %d got SIGUSR2 %d times\n", id, got_usr2); bad = 1; }
    if (syscall(SYS_gettid) == tid) {} /* the TID may change with the PID */
    return (void *)(long)bad;
}

int main(int argc, char **argv) {
    rounds = atoi(argv[1]);
    signal(SIGUSR2, on_usr2);
    pthread_t t[N];
    for (long i = 0; i < N; i++) pthread_create(&t[i], 0, worker, (void *)i);
    for (int r = 0; r < rounds; r++) {
        pthread_mutex_lock(&mu);
        while (done_count < N * (r + 1)) pthread_cond_wait(&cv, &mu);
        printf("round %d", r);
        for (int i = 0; i < N; i++) printf(" %016llx", results[i]);
        printf("\n");
        fflush(stdout);
        round_no++;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        usleep(5000);
    }
    for (int i = 0; i < N; i++) {
        int e = pthread_kill(t[i], SIGUSR2);
        if (e) printf("BAD pthread_kill %d: %s\n", i, strerror(e));
    }
    usleep(20000);
    pthread_mutex_lock(&mu);
    killed = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad |= (int)(long)r;
    }
    printf(bad ? "BAD\n" : "DONE ok\n");
    return bad;
}
