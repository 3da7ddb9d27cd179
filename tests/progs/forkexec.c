/* forkexec N MS [exec]: N lines one every MS ms, then fork (the child reports its parent and exits 5;
   the parent reports the child's status), then execve of /bin/sh that says its PID and exits 11 a second later.
   With "exec" there is no fork: the execve comes right after the lines.
   Output depends only on N and the PID. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void say(const char *s) {
    size_t n = strlen(s);
    if (write(1, s, n) != (ssize_t)n) _exit(3);
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) return 2;
    int fork_too = argc == 3;
    int n = atoi(argv[1]), ms = atoi(argv[2]);
    char line[128];
    for (int i = 0; i < n; i++) {
        snprintf(line, sizeof line, "line %d pid %d\n", i, (int)getpid());
        say(line);
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    if (!fork_too) goto exec;
    pid_t me = getpid();
    pid_t c = fork();
    if (c < 0) { say("fork failed\n"); return 4; }
    if (c == 0) {
        snprintf(line, sizeof line, "child of %d: parent ok %d\n", (int)me, getppid() == me);
        say(line);
        _exit(5);
    }
    int st = 0;
    if (waitpid(c, &st, 0) != c) { say("waitpid failed\n"); return 6; }
    snprintf(line, sizeof line, "child exited %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    say(line);
exec:
    execl("/bin/sh", "sh", "-c", "echo exec pid $$; sleep 1; exit 11", (char *)0);
    say("exec failed\n");
    return 7;
}
