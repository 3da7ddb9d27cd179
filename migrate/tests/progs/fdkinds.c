/* Holds one kind of unsupported resource, then loops printing.  usage: fdkinds KIND ITERS
   KIND: epoll eventfd timerfd signalfd inotify sysv posixshm sharedanon pdeathsig mseal */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
    const char *k = argv[1];
    int n = atoi(argv[2]), fd = 0;
    void *p = 0;
    if (!strcmp(k, "epoll")) fd = epoll_create1(0);
    else if (!strcmp(k, "eventfd")) fd = eventfd(0, 0);
    else if (!strcmp(k, "timerfd")) fd = timerfd_create(CLOCK_MONOTONIC, 0);
    else if (!strcmp(k, "signalfd")) { sigset_t m; sigemptyset(&m); sigaddset(&m, SIGUSR1); fd = signalfd(-1, &m, 0); }
    else if (!strcmp(k, "inotify")) fd = inotify_init();
    else if (!strcmp(k, "pdeathsig")) fd = prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    else if (!strcmp(k, "mseal")) {
        p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (syscall(462 /* mseal */, p, 4096, 0) != 0) return 3;
    }
    else if (!strcmp(k, "sysv")) {
        int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
        p = shmat(id, 0, 0);
        shmctl(id, IPC_RMID, 0);
    } else if (!strcmp(k, "sharedanon")) {
        /* MAP_SHARED anonymous memory shared with a child that lives on (after we exit it goes) */
        p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (fork() == 0) { setsid(); if (fork() == 0) { sleep(2); _exit(0); } _exit(0); }
        wait(0);
    } else if (!strcmp(k, "posixshm")) {
        char name[64]; snprintf(name, sizeof name, "/omnode-test-%d", getpid());
        int s = shm_open(name, O_CREAT | O_RDWR, 0600);
        ftruncate(s, 4096);
        p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
        close(s);
        shm_unlink(name);
        /* unlinked: the mapping shows as deleted; keep a named one too */
        s = shm_open(name, O_CREAT | O_RDWR, 0600);
        ftruncate(s, 4096);
        p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
        close(s);
    }
    if (fd < 0 || p == (void *)-1) return 2;
    for (int i = 0; i < n; i++) { printf("iter %d\n", i); usleep(10000); }
    if (!strcmp(k, "posixshm")) { char name[64]; snprintf(name, sizeof name, "/omnode-test-%d", getpid()); shm_unlink(name); }
    printf("DONE ok\n");
    return 0;
}
