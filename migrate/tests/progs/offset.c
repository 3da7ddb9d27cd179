/* Writes 64-byte records with write() to FILE (offset must continue after thaw), and alternates
   unbuffered stdout/stderr lines (run with both on one open file).  usage: offset FILE ITERS */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

int main(int argc, char **argv) {
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int n = atoi(argv[2]), bad = 0;
    int dfd = open("/", O_RDONLY | O_DIRECTORY);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 0; i < n; i++) {
        char rec[64]; memset(rec, 'a' + i % 26, sizeof rec); rec[63] = '\n';
        if (write(fd, rec, sizeof rec) != sizeof rec) bad++;
        if (lseek(fd, 0, SEEK_CUR) != (off_t)(i + 1) * 64) { printf("BAD offset at %d\n", i); bad++; }
        if (i % 2) fprintf(stderr, "err %d\n", i); else printf("out %d\n", i);
        usleep(10000);
    }
    struct stat st;
    if (fstat(dfd, &st) || !S_ISDIR(st.st_mode) || faccessat(dfd, "proc", F_OK, 0)) { printf("BAD directory fd\n"); bad++; }
    printf("DONE %s\n", bad ? "bad" : "ok");
    return bad;
}
