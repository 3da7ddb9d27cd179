/* Holds file locks of every kind while it ticks: flock(LOCK_EX) on DIR/a, fcntl write lock
   on bytes 5..14 and read lock from 100 to EOF of DIR/b, an OFD write lock on bytes 0..9 of
   DIR/c, and flock(LOCK_SH) on DIR/s.  usage: locks DIR TICKS */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static int open_in(const char *dir, const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_RDWR | O_CREAT, 0600);
    if (fd < 0) { perror(p); exit(2); }
    return fd;
}
static void lk(int fd, int cmd, short type, off_t start, off_t len) {
    struct flock l = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    if (fcntl(fd, cmd, &l)) { perror("fcntl lock"); exit(2); }
}
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    int a = open_in(argv[1], "a"), b = open_in(argv[1], "b"), c = open_in(argv[1], "c");
    int s = open_in(argv[1], "s");
    if (flock(a, LOCK_EX)) { perror("flock"); return 2; }
    if (flock(s, LOCK_SH)) { perror("flock"); return 2; }
    lk(b, F_SETLK, F_WRLCK, 5, 10);
    lk(b, F_SETLK, F_RDLCK, 100, 0);
    lk(c, F_OFD_SETLK, F_WRLCK, 0, 10);
    for (int i = 0; i < n; i++) {
        struct timespec t = { 0, 10000000 };
        nanosleep(&t, 0);
        printf("tick %d\n", i);
        fflush(stdout);
    }
    printf("DONE ok\n");
    return 0;
}
