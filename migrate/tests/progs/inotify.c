/* inotify watches must come back with their descriptors: a watch of a directory (IN_CREATE,
   IN_DELETE, with names) and of a file in it (IN_MODIFY). Each round appends a line to the
   file, every 10th round also creates and deletes a file, and reads the events it caused,
   printing them; then it waits in poll on the inotify fd (nothing unread there).
   usage: inotify DIR ROUNDS */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>
#include <fcntl.h>

static int in;
static void take(int want) {
    char buf[4096] __attribute__((aligned(8)));
    while (want > 0) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n <= 0) { printf("BAD read %zd\n", n); exit(1); }
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            printf("  wd %d mask %#x %s\n", e->wd, e->mask, e->len ? e->name : "-");
            p += sizeof *e + e->len;
            want--;
        }
    }
}
int main(int argc, char **argv) {
    const char *dir = argv[1];
    int n = atoi(argv[2]);
    char log[4096], tmp[4200];
    snprintf(log, sizeof log, "%s/log", dir);
    FILE *f = fopen(log, "w");
    in = inotify_init1(IN_CLOEXEC);
    int wd_dir = inotify_add_watch(in, dir, IN_CREATE | IN_DELETE);
    int wd_log = inotify_add_watch(in, log, IN_MODIFY);
    printf("wds %d %d\n", wd_dir, wd_log);
    for (int i = 0; i < n; i++) {
        fprintf(f, "line %d\n", i);
        fflush(f);
        int want = 1;
        if (i % 10 == 0) {
            snprintf(tmp, sizeof tmp, "%s/f%d", dir, i);
            close(open(tmp, O_CREAT | O_WRONLY, 0600));
            unlink(tmp);
            want += 2;
        }
        printf("round %d\n", i);
        take(want);
        fflush(stdout);
        struct pollfd p = { in, POLLIN, 0 };
        if (poll(&p, 1, 10) != 0) { printf("BAD event nobody caused\n"); exit(1); }
    }
    printf("DONE ok\n");
    return 0;
}
