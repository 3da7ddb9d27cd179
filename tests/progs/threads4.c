/* threads4 ROUNDS MS CODE [spawn]: 4 worker threads compute a share of each round (a heap walk) and
   add it to a sum under a mutex; the main thread waits on a condition variable until all 4 are
   done, prints "round i sum S pid P", sleeps MS ms and starts the next round. Every 5th round
   it also sends SIGUSR1 to worker i%4 with pthread_kill and waits until THAT worker's handler
   ran ("signal to worker k handled"), and checks gettid() == getpid() in the main thread.
   With "spawn", at round ROUNDS/2 the main thread also makes a 6th thread (pthread_create:
   clone) that computes and is joined ("extra thread computed X").
   Output depends only on ROUNDS; exits with CODE. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define W 4
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER, go_cv = PTHREAD_COND_INITIALIZER;
static int round_no = -1, done_count, rounds;
static uint64_t shares[W];
static uint8_t *heap;
static const size_t HEAP = 8 << 20;
static pthread_t tids[W];
static volatile sig_atomic_t handled[W];

static void on_usr1(int sig) {
    (void)sig;
    pthread_t me = pthread_self();
    for (int k = 0; k < W; k++)
        if (pthread_equal(me, tids[k])) handled[k]++;
}

static void *worker(void *arg) {
    int k = (int)(intptr_t)arg;
    for (int r = 0; r < rounds; r++) {
        pthread_mutex_lock(&mu);
        while (round_no < r) pthread_cond_wait(&go_cv, &mu);
        pthread_mutex_unlock(&mu);
        uint64_t s = (uint64_t)k + 1;
        for (size_t j = ((size_t)r * 4096 + (size_t)k * 8192) % HEAP; j < HEAP; j += 4099)
            s = s * 31 + heap[j];
        pthread_mutex_lock(&mu);
        shares[k] = s;
        done_count++;
        pthread_cond_signal(&done_cv);
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

static void *extra(void *arg) {
    uint64_t s = 0;
    for (size_t j = 0; j < HEAP; j += 8191) s = s * 131 + heap[j];
    *(uint64_t *)arg = s;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) return 2;
    int spawn = argc == 5 && strcmp(argv[4], "spawn") == 0;
    rounds = atoi(argv[1]);
    int ms = atoi(argv[2]), code = atoi(argv[3]);
    heap = malloc(HEAP);
    for (size_t i = 0; i < HEAP; i++) heap[i] = (uint8_t)(i * 13 + (i >> 10));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    for (int k = 0; k < W; k++)
        if (pthread_create(&tids[k], NULL, worker, (void *)(intptr_t)k) != 0) return 4;
    uint64_t checksum = 0;
    for (int r = 0; r < rounds; r++) {
        pthread_mutex_lock(&mu);
        done_count = 0;
        round_no = r;
        pthread_cond_broadcast(&go_cv);
        while (done_count < W) pthread_cond_wait(&done_cv, &mu);
        for (int k = 0; k < W; k++) checksum = checksum * 1000003 + shares[k];
        pthread_mutex_unlock(&mu);
        char line[128];
        int len = snprintf(line, sizeof line, "round %d checksum %llu pid %d\n", r,
                           (unsigned long long)checksum, (int)getpid());
        if (write(1, line, (size_t)len) != len) return 3;
        if (r % 5 == 0) {
            int k = r / 5 % W;
            sig_atomic_t before = handled[k];
            pthread_kill(tids[k], SIGUSR1);
            int waited = 0;
            while (handled[k] == before && waited < 5000) {
                struct timespec t = {0, 1000000L};
                nanosleep(&t, NULL);
                waited++;
            }
            len = snprintf(line, sizeof line, "signal to worker %d %s; main tid %s\n", k,
                           handled[k] != before ? "handled" : "LOST",
                           syscall(SYS_gettid) == getpid() ? "is pid" : "DIFFERS");
            if (write(1, line, (size_t)len) != len) return 3;
        }
        if (spawn && r == rounds / 2) {
            pthread_t x;
            uint64_t got = 0;
            if (pthread_create(&x, NULL, extra, &got) != 0) return 5;
            pthread_join(x, NULL);
            len = snprintf(line, sizeof line, "extra thread computed %llu\n",
                           (unsigned long long)got);
            if (write(1, line, (size_t)len) != len) return 3;
        }
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0) {}
    }
    for (int k = 0; k < W; k++) pthread_join(tids[k], NULL);
    return code;
}
