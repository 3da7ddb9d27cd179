/* lockpair FIRST SECOND GO: write-locks all of FIRST (F_SETLKW), prints "locked", waits until
   the file GO exists, then write-locks all of SECOND (F_SETLKW) and prints "second: ok" or
   "second: errno E"; then exits (its locks go). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int lock_all(int fd) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    return fcntl(fd, F_SETLKW, &fl);
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int a = open(argv[1], O_RDWR), b = open(argv[2], O_RDWR);
    if (a < 0 || b < 0) {
        printf("open: errno %d\n", errno);
        return 3;
    }
    if (lock_all(a) != 0) {
        printf("first: errno %d\n", errno);
        return 4;
    }
    printf("locked\n");
    fflush(stdout);
    while (access(argv[3], F_OK) != 0) usleep(10000);
    if (lock_all(b) != 0) printf("second: errno %d\n", errno);
    else printf("second: ok\n");
    return 0;
}
