/* Files that live inside the process: a self-pipe (both ends held, bytes waiting, the read
 * end dup'ed), a second pipe enlarged to 256 KiB holding 200000 bytes, a semaphore eventfd
 * with a count, a stream socketpair with bytes waiting both ways, and an epoll instance
 * watching four of them (level-triggered). Every iteration
 * feeds and drains them and prints what epoll reports and what waits.  usage: inproc ITERS */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define QN 200000
static unsigned char pat(int i) { return (unsigned char)(i * 7 + i / 251); }

int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    int p[2], q[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) || pipe(q)) return 1;
    if (fcntl(q[1], F_SETPIPE_SZ, 262144) < 262144) return 2;
    for (int off = 0; off < QN;) {
        unsigned char b[4096];
        int k = QN - off < 4096 ? QN - off : 4096;
        for (int j = 0; j < k; j++) b[j] = pat(off + j);
        int w = write(q[1], b, k);
        if (w <= 0) return 3;
        off += w;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) return 4;
    if (write(sv[1], "back", 4) != 4) return 5;
    int dupr = dup(p[0]);
    int ev = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = 111};
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e);
    e.data.u64 = 222;
    epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e);
    e.data.u64 = 0x3333333333ULL;
    epoll_ctl(ep, EPOLL_CTL_ADD, q[0], &e);
    e.data.u64 = 444;
    epoll_ctl(ep, EPOLL_CTL_ADD, sv[1], &e);
    for (int i = 0; i < n; i++) {
        if (i % 3 == 0) {
            char m[32];
            int l = snprintf(m, sizeof m, "msg%d;", i);
            if (write(sv[0], m, l) != l) printf("BAD socket write\n");
        }
        if (i % 3 == 1) {
            char m[6];
            if (read(sv[1], m, 5) != 5) printf("BAD socket read\n");
            else printf("socket gave %.5s\n", m);
        }
        if (i % 4 == 0) {
            if (write(p[1], "xy", 2) != 2) printf("BAD write\n");
            eventfd_write(ev, 2);
        }
        if (i % 4 == 2) {
            char c;
            uint64_t v;
            if (read(dupr, &c, 1) != 1) printf("BAD read\n");
            if (read(ev, &v, 8) != 8 || v != 1) printf("BAD eventfd read\n");
        }
        struct epoll_event out[8];
        int k = epoll_wait(ep, out, 8, 0);
        uint64_t seen[4] = {0, 0, 0, 0};
        for (int j = 0; j < k; j++) seen[j < 4 ? j : 3] += out[j].data.u64;
        int waiting = 0;
        ioctl(p[0], FIONREAD, &waiting);
        printf("iter %d: %d ready (sum %llu), %d bytes in the self-pipe\n", i, k,
               (unsigned long long)(seen[0] + seen[1] + seen[2] + seen[3]), waiting);
        fflush(stdout);
        usleep(10000);
    }
    int bad = 0;
    for (int off = 0; off < QN;) {
        unsigned char b[4096];
        int r = read(q[0], b, sizeof b);
        if (r <= 0) { bad = 1; break; }
        for (int j = 0; j < r; j++) if (b[j] != pat(off + j)) bad = 1;
        off += r;
    }
    int left = 0;
    uint64_t v;
    while (read(ev, &v, 8) == 8) left++;
    char back[8] = "";
    if (read(sv[0], back, 4) != 4 || memcmp(back, "back", 4)) bad = 1;
    int sock_left = 0;
    ioctl(sv[1], FIONREAD, &sock_left);
    printf("pipe %s, eventfd had %d left, %d bytes left in the socket\n", bad ? "BAD" : "ok", left, sock_left);
    printf(bad ? "BAD\n" : "DONE ok\n");
    return bad;
}
