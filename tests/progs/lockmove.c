/* Holds locks whose owner glibc records as its cached TID (an error-checking mutex, a rwlock
 * taken for writing) while it waits for a line on stdin (it is moved meanwhile), then
 * releases and takes them again (on the remote), and once more after coming home at an mmap
 * of a home file (a relative path) made while holding them. Prints every result, and whether
 * the cached TID is the TID the kernel knows at the end: an unmoved run prints the same. A
 * lock its unlock corrupted would block for ever. Exit code 3. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
    pthread_mutexattr_t ma;
    pthread_mutex_t m;
    pthread_rwlock_t rw = PTHREAD_RWLOCK_INITIALIZER;
    char line[64];
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&m, &ma);

    int l1 = pthread_mutex_lock(&m);
    int l2 = pthread_rwlock_wrlock(&rw);
    ssize_t n = read(0, line, sizeof line);
    int u2 = pthread_rwlock_unlock(&rw);
    int u1 = pthread_mutex_unlock(&m);
    int r1 = pthread_mutex_lock(&m);
    int r2 = pthread_rwlock_wrlock(&rw);
    printf("read %zd lock %d %d unlock %d %d again %d %d\n", n, l1, l2, u1, u2, r1, r2);

    int fd = open("homelock.data", O_RDONLY);
    if (fd < 0) {
        perror("open homelock.data");
        return 1;
    }
    char *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    u2 = pthread_rwlock_unlock(&rw);
    u1 = pthread_mutex_unlock(&m);
    r1 = pthread_mutex_lock(&m);
    r2 = pthread_rwlock_wrlock(&rw);
    printf("home unlock %d %d again %d %d text %.*s", u1, u2, r1, r2, 16, p);
    int *ta = NULL;
    int got = prctl(PR_GET_TID_ADDRESS, &ta);
    printf("tid address %d set %d cached tid is gettid %d\n", got, ta != NULL,
           ta != NULL && *ta == (int)syscall(SYS_gettid));
    return 3;
}
