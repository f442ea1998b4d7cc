/* The sandbox ("pause") process of every pod in the cluster tier, built with gcc -static so that
 * the image needs nothing else. It holds the pod's namespaces, reaps orphans (it is PID 1 of the
 * pod's PID namespace when that is shared) and exits at once on SIGTERM/SIGINT so that pod
 * teardown does not wait for a grace period. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void leave(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {.sa_handler = leave}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &stop, NULL);
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;)
        pause();
}
