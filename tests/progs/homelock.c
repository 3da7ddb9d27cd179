/* Comes home (under `mosrun -j2`) at an mmap of a home file made while it holds locks whose
 * owner glibc records as its cached TID (an error-checking mutex, a rwlock taken for
 * writing), with libc's own data changed before (the random state). Prints the results of
 * the unlocks, of taking the locks again, numbers drawn before and after, the mapped text and
 * whether its clear_child_tid and cached TID are right at home: an unmoved run prints the
 * same. Exit code 3. */
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
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&m, &ma);

    srand(7);
    int a = rand();
    /* a relative path: the remote cannot map it from a local file, the process goes home */
    int fd = open("homelock.data", O_RDONLY);
    if (fd < 0) {
        perror("open homelock.data");
        return 1;
    }
    int l1 = pthread_mutex_lock(&m);
    int l2 = pthread_rwlock_wrlock(&rw);
    flockfile(stdout);
    char *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    funlockfile(stdout);
    int u2 = pthread_rwlock_unlock(&rw);
    int u1 = pthread_mutex_unlock(&m);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    /* taken again: a lock left corrupted by its unlock would block here for ever */
    int r2 = pthread_rwlock_wrlock(&rw);
    int r1 = pthread_mutex_lock(&m);
    int b = rand();
    printf("lock %d %d unlock %d %d again %d %d\n", l1, l2, u1, u2, r1, r2);
    printf("a %d b %d\n", a, b);
    printf("text %.*s", 16, p);
    /* at home again: the kernel clears the TID glibc caches (its clear_child_tid), and that
     * TID is the one the kernel knows */
    int *ta = NULL;
    int got = prctl(PR_GET_TID_ADDRESS, &ta);
    printf("tid address %d set %d cached tid is gettid %d\n", got, ta != NULL,
           ta != NULL && *ta == (int)syscall(SYS_gettid));
    return 3;
}
