/* Comes home (under `mosrun -j2`) at an mmap of a home file made inside glibc locks, with
 * libc's own data changed before: the random state (srand) and the stdout lock (flockfile),
 * both in libc's .data/.bss. Prints numbers drawn before and after, and the mapped text: an
 * unmoved run prints the same. Exit code 3. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void)
{
    srand(7);
    int a = rand();
    /* a relative path: the remote cannot map it from a local file, the process goes home */
    int fd = open("homelock.data", O_RDONLY);
    if (fd < 0) {
        perror("open homelock.data");
        return 1;
    }
    flockfile(stdout);
    char *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    funlockfile(stdout);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    int b = rand();
    printf("a %d b %d\n", a, b);
    fflush(stdout);
    printf("text %.*s", 16, p);
    return 3;
}
