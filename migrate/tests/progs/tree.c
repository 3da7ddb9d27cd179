/* A small process tree for the tree freeze/thaw tests.
 * tree zombie: forks a child that exits 42 at once (a zombie until reaped), and a writer child
 *   that sends 400 lines through a pipe at once and then sleeps 1.5 s before it exits 7; the
 *   parent reads them slowly (bytes wait in the pipe meanwhile), sums them, then reaps both
 *   and prints what wait() said. The output names no
 *   PID, so an interrupted run must print exactly what an uninterrupted one does.
 * tree produce N: prints N pseudo-random lines slowly (for `tree produce N | sort | md5sum`).
 * tree groups: leads a new session, forks A (leads its own process group) and B (joins A's
 *   group); each reports, after a while, whether its session, group and parent are what they
 *   were made (1 = yes), then the parent reaps both. No PID is printed.
 * tree shm: maps shared anonymous memory, forks, and both sleep (a tree that is refused). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void nap(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {
    }
}

static int produce(int n) {
    unsigned x = 12345;
    for (int i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        printf("%u line %d\n", x % 100000u, i);
        if (i % 25 == 24) {
            fflush(stdout);
            nap(10);
        }
    }
    return 0;
}

static int zombie(void) {
    int p[2];
    if (pipe(p) != 0) return 2;
    pid_t z = fork();
    if (z == 0) _exit(42);
    pid_t w = fork();
    if (w == 0) {
        close(p[0]);
        for (int i = 0; i < 400; i++) {
            char b[64];
            int n = snprintf(b, sizeof b, "line %d %d\n", i, i * i);
            if (write(p[1], b, n) != n) _exit(3);
        }
        nap(1500);
        _exit(7);
    }
    close(p[1]);
    FILE *in = fdopen(p[0], "r");
    char line[128];
    long sum = 0, lines = 0;
    while (fgets(line, sizeof line, in)) {
        int a, b;
        if (sscanf(line, "line %d %d", &a, &b) != 2 || b != a * a) {
            printf("BAD line %s", line);
            return 4;
        }
        sum += b;
        lines++;
        if (lines % 10 == 0) nap(30);
    }
    printf("lines %ld sum %ld\n", lines, sum);
    int st = 0;
    pid_t r = waitpid(z, &st, 0);
    printf("zombie: waitpid %s, exited %d status %d\n", r == z ? "same pid" : "OTHER PID",
           WIFEXITED(st), WEXITSTATUS(st));
    r = waitpid(w, &st, 0);
    printf("writer: waitpid %s, exited %d status %d\n", r == w ? "same pid" : "OTHER PID",
           WIFEXITED(st), WEXITSTATUS(st));
    return 0;
}

static int groups(void) {
    if (setsid() < 0) return 2;
    pid_t p = getpid();
    pid_t a = fork();
    if (a == 0) {
        setpgid(0, 0);
        nap(1500);
        printf("A: same session %d, own group %d, parent %d\n", getsid(0) == p,
               getpgid(0) == getpid(), getppid() == p);
        fflush(stdout);
        _exit(0);
    }
    setpgid(a, a); /* as a shell does, so that B can join at once */
    pid_t b = fork();
    if (b == 0) {
        setpgid(0, a);
        nap(1700);
        printf("B: same session %d, A's group %d, parent %d\n", getsid(0) == p, getpgid(0) == a,
               getppid() == p);
        fflush(stdout);
        _exit(0);
    }
    setpgid(b, a);
    int sa = -1, sb = -1;
    pid_t ra = waitpid(a, &sa, 0), rb = waitpid(b, &sb, 0);
    printf("P: leads session %d and group %d; reaped A %d B %d\n", getsid(0) == p,
           getpgid(0) == p, ra == a && sa == 0, rb == b && sb == 0);
    return 0;
}

static int shm(void) {
    volatile char *m = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 2;
    m[0] = 1;
    if (fork() == 0) {
        nap(30000);
        _exit(0);
    }
    nap(30000);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "groups") == 0) return groups();
    if (argc >= 2 && strcmp(argv[1], "shm") == 0) return shm();
    if (argc >= 3 && strcmp(argv[1], "produce") == 0) return produce(atoi(argv[2]));
    if (argc >= 2 && strcmp(argv[1], "zombie") == 0) return zombie();
    fprintf(stderr, "usage: tree zombie | tree produce N\n");
    return 2;
}
