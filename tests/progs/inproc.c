/* inproc N MS CODE [stdin]: an event loop on fds that live inside the process: a pipe (both
   ends held; two messages written per turn, one read, so unread bytes pile up in it), an
   eventfd and a socketpair, all watched by one epoll instance. Each turn it prints
   "turn i got G pipe P ev E sock S pid X" from what it read, sleeps MS ms; exits with CODE.
   With a 4th argument "stdin", the epoll also watches fd 0 (an fd that stays at home when the
   process moves). Output depends only on N. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) return 2;
    int n = atoi(argv[1]), ms = atoi(argv[2]), code = atoi(argv[3]);
    int p[2], sv[2];
    if (pipe2(p, O_NONBLOCK) != 0) return 4;
    int ev = eventfd(0, EFD_NONBLOCK);
    if (ev < 0) return 4;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0) return 4;
    int ep = epoll_create1(0);
    if (ep < 0) return 4;
    int watch[3] = {p[0], ev, sv[1]};
    for (int i = 0; i < 3; i++) {
        struct epoll_event e = {.events = EPOLLIN, .data.u64 = 100 + (uint64_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, watch[i], &e) != 0) return 5;
    }
    if (argc == 5 && strcmp(argv[4], "stdin") == 0) {
        struct epoll_event e = {.events = EPOLLIN, .data.u64 = 200};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &e) != 0) return 5;
    }
    uint64_t pipe_sum = 0, ev_sum = 0, sock_sum = 0;
    for (int i = 0; i < n; i++) {
        char msg[16];
        int l = snprintf(msg, sizeof msg, "m%07d", 2 * i);
        if (write(p[1], msg, (size_t)l) != l) return 6;
        l = snprintf(msg, sizeof msg, "m%07d", 2 * i + 1);
        if (write(p[1], msg, (size_t)l) != l) return 6;
        uint64_t one = (uint64_t)i + 1;
        if (write(ev, &one, 8) != 8) return 6;
        l = snprintf(msg, sizeof msg, "s%07d", i * 3);
        if (write(sv[0], msg, (size_t)l) != l) return 6;
        int got = 0;
        struct epoll_event es[8];
        int k = epoll_wait(ep, es, 8, 1000);
        for (int j = 0; j < k; j++) {
            char buf[8];
            if (es[j].data.u64 == 100) {
                if (read(p[0], buf, 8) == 8) pipe_sum = pipe_sum * 131 + (uint64_t)atoi(buf + 1);
                got |= 1;
            } else if (es[j].data.u64 == 101) {
                uint64_t v;
                if (read(ev, &v, 8) == 8) ev_sum += v;
                got |= 2;
            } else if (es[j].data.u64 == 102) {
                if (read(sv[1], buf, 8) == 8) sock_sum = sock_sum * 17 + (uint64_t)atoi(buf + 1);
                got |= 4;
            }
        }
        char line[160];
        int len = snprintf(line, sizeof line, "turn %d got %d pipe %llu ev %llu sock %llu pid %d\n",
                           i, got, (unsigned long long)pipe_sum, (unsigned long long)ev_sum,
                           (unsigned long long)sock_sum, (int)getpid());
        if (write(1, line, (size_t)len) != len) return 3;
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0) {}
    }
    return code;
}
