/*
 * The host calls make no system call: a thread in seccomp strict mode (only read, write,
 * _exit and sigreturn allowed; anything else kills the thread) calls
 * lbagent_heartbeat, lbagent_set_state, lbagent_set_weight, lbagent_set_load and
 * lbagent_worker_heartbeat in a loop, for the whole server and for a service, with and
 * without a reason. Prints "ok" and exits 0 if the process survives and the agent shows the
 * last values set.
 */
#define _GNU_SOURCE
#include <linux/seccomp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lbagent.h"

#define ROUNDS 20000

static lbagent *agent;
static unsigned slot;
static int done[2];

static void *strict_thread(void *arg) {
    int i;
    (void)arg;
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0) {
        (void)!write(done[1], "E", 1);
        return NULL;
    }
    for (i = 0; i < ROUNDS; i++) {
        int state = i % 2 ? LBAGENT_STATE_UP : LBAGENT_STATE_DRAIN;
        if (lbagent_heartbeat(agent) != LBAGENT_OK ||
            lbagent_set_state(agent, NULL, state, NULL) != LBAGENT_OK ||
            lbagent_set_state(agent, NULL, state, i % 3 ? "busy" : "a longer reason text") !=
                LBAGENT_OK ||
            lbagent_set_state(agent, "game", state, "game reason") != LBAGENT_OK ||
            lbagent_set_weight(agent, NULL, (unsigned)(i % 101)) != LBAGENT_OK ||
            lbagent_set_weight(agent, "game", 50) != LBAGENT_OK ||
            lbagent_set_load(agent, NULL, (uint32_t)i, ROUNDS) != LBAGENT_OK ||
            lbagent_set_load(agent, "game", 1, 2) != LBAGENT_OK ||
            /* a misspelt service: an error and a count, no system call */
            lbagent_set_state(agent, "gmae", state, NULL) != LBAGENT_ERR_UNKNOWN_SERVICE ||
            lbagent_worker_heartbeat(agent, slot) != LBAGENT_OK) {
            (void)!write(done[1], "F", 1);
            syscall(SYS_exit, 0);
        }
    }
    /* Leave the last values readable: UP, weight 100, reason "done". */
    lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, "done");
    lbagent_set_weight(agent, NULL, 100);
    (void)!write(done[1], "K", 1);
    /* Only exit is allowed: no return through glibc's thread teardown (munmap, futex...). */
    syscall(SYS_exit, 0);
    return NULL;
}

int main(void) {
    pthread_t thread;
    char verdict = 0;
    lbagent_status st;
    if (lbagent_start("listen=127.0.0.1:0 services=game workers=1 watchdog_ms=60000", &agent) !=
            LBAGENT_OK ||
        lbagent_worker_register(agent, &slot) != LBAGENT_OK || pipe(done) != 0) {
        fprintf(stderr, "no_syscalls: setup failed\n");
        return 2;
    }
    /* The first calls bind the library's symbols (lazy binding), outside strict mode. */
    lbagent_heartbeat(agent);
    lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, NULL);
    lbagent_set_state(agent, "game", LBAGENT_STATE_UP, "x");
    lbagent_set_weight(agent, NULL, 100);
    lbagent_set_load(agent, NULL, 0, 1);
    lbagent_worker_heartbeat(agent, slot);
    if (pthread_create(&thread, NULL, strict_thread, NULL) != 0) {
        fprintf(stderr, "no_syscalls: pthread_create failed\n");
        return 2;
    }
    /* The thread ends either way: through its raw exit, or killed by seccomp (in a process
     * with several threads SIGKILL from seccomp strict mode ends only the offending thread). */
    pthread_join(thread, NULL);
    close(done[1]);
    if (read(done[0], &verdict, 1) != 1) {
        fprintf(stderr, "no_syscalls: the strict thread was killed: a host call made a system "
                        "call\n");
        return 1;
    }
    if (verdict != 'K') {
        fprintf(stderr, "no_syscalls: the strict thread reported '%c'\n", verdict);
        return 1;
    }
    if (lbagent_get_status(agent, NULL, &st) != LBAGENT_OK || st.state != LBAGENT_STATE_UP ||
        st.weight_pct != 100 || strcmp(st.message, "done") != 0) {
        fprintf(stderr, "no_syscalls: the agent does not show the last values\n");
        return 1;
    }
    printf("ok: %d rounds of host calls in seccomp strict mode\n", ROUNDS);
    lbagent_free(agent);
    return 0;
}
