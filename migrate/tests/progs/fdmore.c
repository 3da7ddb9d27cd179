/* More files that live inside the process: a periodic timerfd read every iteration, a
 * one-shot timerfd that expired long ago and is read only at the end (its unread
 * expiration), a signalfd for a blocked SIGUSR1 raised at the start and read halfway, a
 * sealed memfd read a little each iteration, and a deleted file appended to and summed each
 * iteration.  usage: fdmore DIR ITERS */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define MN 300000
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    char path[4096];
    snprintf(path, sizeof path, "%s/scratch", argv[1]);
    int tp = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct itimerspec its = {{0, 10000000}, {0, 10000000}};
    timerfd_settime(tp, 0, &its, 0);
    int t1 = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
    struct itimerspec once = {{0, 0}, {0, 1000000}};
    timerfd_settime(t1, 0, &once, 0);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, 0);
    int sf = signalfd(-1, &m, SFD_NONBLOCK);
    raise(SIGUSR1);
    int mf = memfd_create("fdmore", MFD_ALLOW_SEALING);
    unsigned char *buf = malloc(MN);
    for (int i = 0; i < MN; i++) buf[i] = (unsigned char)(i * 13 + i / 777);
    if (write(mf, buf, MN) != MN) return 1;
    fcntl(mf, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
    lseek(mf, 1234, SEEK_SET);
    int df = open(path, O_CREAT | O_RDWR | O_APPEND, 0640);
    if (df < 0 || write(df, "start\n", 6) != 6) return 2;
    unlink(path);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        uint64_t ticks;
        if (read(tp, &ticks, 8) != 8 || ticks < 1) { printf("BAD timerfd\n"); bad = 1; }
        if (i == n / 2) {
            struct signalfd_siginfo si;
            if (read(sf, &si, sizeof si) != sizeof si || si.ssi_signo != SIGUSR1) { printf("BAD signalfd\n"); bad = 1; }
            else printf("signalfd gave signal %d\n", si.ssi_signo);
        }
        unsigned char c[10];
        if (read(mf, c, 10) != 10) { printf("BAD memfd read\n"); bad = 1; }
        unsigned sum = 0;
        for (int j = 0; j < 10; j++) sum = sum * 31 + c[j];
        char line[64];
        int l = snprintf(line, sizeof line, "line %d\n", i);
        if (write(df, line, l) != l) { printf("BAD append\n"); bad = 1; }
        struct stat st;
        fstat(df, &st);
        char *all = malloc(st.st_size);
        unsigned dsum = 0;
        if (pread(df, all, st.st_size, 0) != st.st_size) { printf("BAD pread\n"); bad = 1; }
        for (int j = 0; j < st.st_size; j++) dsum = dsum * 33 + (unsigned char)all[j];
        free(all);
        printf("iter %d: memfd at %ld sum %u, deleted file %ld bytes sum %u\n", i,
               (long)lseek(mf, 0, SEEK_CUR), sum, (long)st.st_size, dsum);
        fflush(stdout);
    }
    uint64_t once_ticks = 0;
    if (read(t1, &once_ticks, 8) != 8 || once_ticks != 1) { printf("BAD one-shot %llu\n", (unsigned long long)once_ticks); bad = 1; }
    int seals = fcntl(mf, F_GET_SEALS);
    struct stat ms;
    fstat(mf, &ms);
    printf("seals %#x, memfd %ld bytes, one-shot expired %llu time\n", seals, (long)ms.st_size,
           (unsigned long long)once_ticks);
    printf(bad ? "BAD\n" : "DONE ok\n");
    return bad;
}
