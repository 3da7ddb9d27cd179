/* dropuid N MS K CODE: N lines "line i pid P uid U" one every MS ms; after line K the process
   (started as root) becomes nobody (groups, gid and uid 65534); exits with CODE. */
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    int n = atoi(argv[1]), ms = atoi(argv[2]), k = atoi(argv[3]), code = atoi(argv[4]);
    for (int i = 0; i < n; i++) {
        if (i == k) {
            if (setgroups(0, NULL) != 0 || setresgid(65534, 65534, 65534) != 0 ||
                setresuid(65534, 65534, 65534) != 0)
                return 4;
        }
        char line[96];
        int len = snprintf(line, sizeof line, "line %d pid %d uid %d\n", i, (int)getpid(),
                           (int)getuid());
        if (write(1, line, (size_t)len) != len) return 3;
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    return code;
}
