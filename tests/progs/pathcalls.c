/* pathcalls WAIT_MS SECRETDIR: waits WAIT_MS (the test moves it meanwhile), then makes path
   calls relative to its cwd (which holds a file "f" with "hello\n") and in SECRETDIR (root's,
   0700), printing each result or errno. Output depends only on the files and the caller's
   rights, never on the node it runs on. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void out(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (write(1, line, (size_t)len) != len) exit(3);
}

static void st(const char *what, const char *path, int follow) {
    struct stat sb;
    int r = follow ? stat(path, &sb) : lstat(path, &sb);
    if (r) out("%s: errno %d\n", what, errno);
    else out("%s: mode %o size %lld nlink %lu uid %u\n", what, sb.st_mode, (long long)sb.st_size,
             (unsigned long)sb.st_nlink, sb.st_uid);
}

static void rc(const char *what, int r) {
    if (r < 0) out("%s: errno %d\n", what, errno);
    else out("%s: %d\n", what, r);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int ms = atoi(argv[1]);
    char p[4096];
    for (int i = 0; i < ms / 10; i++) {
        struct timespec ts = { 0, 10000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    out("pid is home's: %d\n", getpid() == getpid());
    st("stat f", "f", 1);
    st("lstat missing", "missing", 0);
    rc("mkdir n", mkdir("n", 0777));
    rc("mkdir n again", mkdir("n", 0777));
    st("stat n", "n", 1);
    rc("rename f n/g", rename("f", "n/g"));
    st("stat f after", "f", 1);
    st("stat n/g", "n/g", 1);
    rc("access n/g rw", access("n/g", R_OK | W_OK));
    rc("symlink", symlink("n/g", "l"));
    ssize_t k = readlink("l", p, sizeof p - 1);
    if (k >= 0) { p[k] = 0; out("readlink l: %s\n", p); } else rc("readlink l", -1);
    rc("chmod n/g", chmod("n/g", 0640));
    st("stat l", "l", 1);
    rc("truncate n/g", truncate("n/g", 3));
    rc("chdir n", chdir("n"));
    if (getcwd(p, sizeof p)) out("getcwd ends in: %s\n", strrchr(p, '/'));
    int fd = open("g", O_RDONLY);
    if (fd < 0) rc("open g", -1);
    else { char b[16] = {0}; ssize_t n = read(fd, b, 15); out("read g: %zd \"%s\"\n", n, b); close(fd); }
    rc("chdir ..", chdir(".."));
    rc("unlink n/g", unlink("n/g"));
    rc("unlink n/g again", unlink("n/g"));
    rc("rmdir n", rmdir("n"));
    st("stat n after", "n", 1);
    rc("unlink l", unlink("l"));
    snprintf(p, sizeof p, "%s/x", argv[2]);
    rc("mkdir in root's dir", mkdir(p, 0777));
    st("stat in root's dir", p, 1);
    rc("open missing", open("nope", O_RDONLY));
    rc("access root's dir w", access(argv[2], W_OK));
    /* ends in a new directory, for a while: its cwd is seen at home */
    rc("mkdir stay", mkdir("stay", 0777));
    rc("chdir stay", chdir("stay"));
    for (int i = 0; i < 60; i++) {
        struct timespec ts = { 0, 10000000L };
        while (nanosleep(&ts, &ts) != 0) {}
    }
    return 0;
}
