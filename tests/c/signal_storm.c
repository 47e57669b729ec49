/*
 * signal_storm: the async-signal-safe calls, made from real signal handlers while the main
 * thread is itself writing the same state (driven by tests/hosts.rs, also under valgrind).
 *
 *   SIGUSR1  maintenance: lbagent_set_state(agent, NULL, LBAGENT_STATE_MAINT, NULL)
 *   SIGUSR2  back up:     lbagent_set_state(..., LBAGENT_STATE_UP, NULL) and
 *                         lbagent_set_weight(agent, NULL, 100)
 *   SIGTERM  drain:       lbagent_set_state(..., LBAGENT_STATE_DRAIN, NULL); the program
 *                         exits once it has been draining for LINGER_MS with no other signal
 *   SIGALRM  every 2 ms:  lbagent_heartbeat, lbagent_set_load(agent, NULL, ...), and
 *                         lbagent_strerror, lbagent_version, lbagent_state_name
 *
 * Meanwhile the main thread loops on lbagent_set_state with a reason text for whatever state
 * the last signal asked for ("maintenance (SIGUSR1)", ...), so handlers interrupt a writer in
 * the middle of its update. The handler's change is immediate; the main loop adds the text.
 *
 * Usage: signal_storm mask|any LINGER_MS
 *   mask: the signals are blocked while lbagent_start creates its threads, which inherit the
 *         mask, so every handler runs on the main thread, interrupting the writer (checked);
 *   any:  no mask: a handler may also run on the agent's monitor thread.
 * Prints the agent's port, then at exit the number of handler runs; exits 1 if any call
 * returned an error or a static string was wrong.
 */
#define _GNU_SOURCE /* syscall(SYS_gettid) */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "lbagent.h"

static lbagent *agent;
static pid_t main_tid;
static volatile sig_atomic_t requested = LBAGENT_STATE_UP; /* the last state asked for */
static volatile sig_atomic_t sequence;                     /* bumped by every state signal */
static volatile sig_atomic_t runs_usr1, runs_usr2, runs_term, runs_alrm;
static volatile sig_atomic_t off_main_thread, handler_errors;
static volatile sig_atomic_t in_write;           /* the main thread is inside set_state */
static volatile sig_atomic_t interrupted_writes; /* handler runs that interrupted it */
static const char *stopped_text; /* lbagent_strerror(LBAGENT_ERR_STOPPED), read before */

static void note_thread(void) {
    if ((pid_t)syscall(SYS_gettid) != main_tid) {
        off_main_thread++;
    } else if (in_write) {
        interrupted_writes++;
    }
}

/* What every handler does besides its lbagent call: remember the request, count the run. */
static void handled(int state, volatile sig_atomic_t *runs, lbagent_result r) {
    note_thread();
    if (r != LBAGENT_OK) {
        handler_errors++;
    }
    requested = state;
    sequence++;
    (*runs)++;
}

/* The three handlers, as a host would write them (README, "Signal handlers"). */
static void on_sigterm(int sig) { /* drain */
    int saved_errno = errno;
    (void)sig;
    handled(LBAGENT_STATE_DRAIN, &runs_term,
            lbagent_set_state(agent, NULL, LBAGENT_STATE_DRAIN, NULL));
    errno = saved_errno;
}

static void on_sigusr1(int sig) { /* maintenance */
    int saved_errno = errno;
    (void)sig;
    handled(LBAGENT_STATE_MAINT, &runs_usr1,
            lbagent_set_state(agent, NULL, LBAGENT_STATE_MAINT, NULL));
    errno = saved_errno;
}

static void on_sigusr2(int sig) { /* back up, at full weight */
    int saved_errno = errno;
    lbagent_result r = lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, NULL);
    (void)sig;
    if (r == LBAGENT_OK) {
        r = lbagent_set_weight(agent, NULL, 100);
    }
    handled(LBAGENT_STATE_UP, &runs_usr2, r);
    errno = saved_errno;
}

static void on_alarm(int sig) {
    int saved_errno = errno;
    (void)sig;
    note_thread();
    if (lbagent_heartbeat(agent) != LBAGENT_OK ||
        lbagent_set_load(agent, NULL, (uint32_t)(runs_alrm % 64), 64) != LBAGENT_OK) {
        handler_errors++;
    }
    if (strcmp(lbagent_strerror(LBAGENT_ERR_STOPPED), stopped_text) != 0 ||
        strcmp(lbagent_version(), LBAGENT_VERSION) != 0 ||
        strcmp(lbagent_state_name(requested), "invalid") == 0) {
        handler_errors++;
    }
    runs_alrm++;
    errno = saved_errno;
}

static const char *reason_for(int state) {
    switch (state) {
    case LBAGENT_STATE_MAINT:
        return "maintenance (SIGUSR1)";
    case LBAGENT_STATE_DRAIN:
        return "draining (SIGTERM)";
    default:
        return "serving";
    }
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void install(int sig, void (*handler)(int), const sigset_t *block_during) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_mask = *block_during;
    sa.sa_flags = SA_RESTART;
    sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
    sigset_t ours, none;
    struct itimerval every_2ms = {{0, 2000}, {0, 2000}};
    struct itimerval off = {{0, 0}, {0, 0}};
    long long writes = 0, write_errors = 0, changed_at;
    int masked, linger_ms, last_sequence;
    uint16_t port = 0;

    if (argc != 3 || (strcmp(argv[1], "mask") != 0 && strcmp(argv[1], "any") != 0)) {
        fprintf(stderr, "usage: signal_storm mask|any LINGER_MS\n");
        return 64;
    }
    masked = strcmp(argv[1], "mask") == 0;
    linger_ms = atoi(argv[2]);
    main_tid = (pid_t)syscall(SYS_gettid);
    setvbuf(stdout, NULL, _IOLBF, 0);

    sigemptyset(&ours);
    sigaddset(&ours, SIGUSR1);
    sigaddset(&ours, SIGUSR2);
    sigaddset(&ours, SIGTERM);
    sigaddset(&ours, SIGALRM);
    sigemptyset(&none);
    stopped_text = lbagent_strerror(LBAGENT_ERR_STOPPED);
    /* Handlers first: no signal may ever find the default action, which would kill us. */
    sigprocmask(SIG_BLOCK, &ours, NULL);
    install(SIGUSR1, on_sigusr1, &none);
    install(SIGUSR2, on_sigusr2, &none);
    install(SIGTERM, on_sigterm, &none);
    install(SIGALRM, on_alarm, &none);

    if (!masked) {
        sigprocmask(SIG_UNBLOCK, &ours, NULL);
    }
    if (lbagent_start(NULL, &agent) != LBAGENT_OK) {
        char msg[256];
        lbagent_last_error(msg, sizeof msg);
        fprintf(stderr, "signal_storm: lbagent_start: %s\n", msg);
        return 1;
    }
    /* The agent's threads inherited the mask: from here on handlers run on this thread. */
    (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, reason_for(LBAGENT_STATE_UP));
    sigprocmask(SIG_UNBLOCK, &ours, NULL);
    setitimer(ITIMER_REAL, &every_2ms, NULL);
    if (lbagent_local_port(agent, 0, &port) != LBAGENT_OK) {
        fprintf(stderr, "signal_storm: no UDP port\n");
        return 1;
    }
    printf("signal_storm: agent on UDP port %u, pid %ld\n", port, (long)getpid());

    last_sequence = sequence;
    changed_at = now_ms();
    for (;;) {
        int i;
        struct timespec pause = {0, 1000000};
        for (i = 0; i < 200; i++) {
            int state = requested;
            lbagent_result r;
            in_write = 1;
            r = lbagent_set_state(agent, NULL, state, reason_for(state));
            in_write = 0;
            if (r != LBAGENT_OK || lbagent_heartbeat(agent) != LBAGENT_OK) {
                write_errors++;
            }
            writes++;
        }
        if (sequence != last_sequence) {
            last_sequence = sequence;
            changed_at = now_ms();
        } else if (requested == LBAGENT_STATE_DRAIN && now_ms() - changed_at >= linger_ms) {
            break;
        }
        nanosleep(&pause, NULL); /* EINTR is fine: the loop goes on */
    }

    setitimer(ITIMER_REAL, &off, NULL);
    sigprocmask(SIG_BLOCK, &ours, NULL); /* no handler may touch the agent once it is freed */
    (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_STOPPING, "exiting");
    if (lbagent_stop(agent, 5000) != LBAGENT_OK) {
        write_errors++;
    }
    lbagent_free(agent);
    printf("signal_storm: usr1=%d usr2=%d term=%d alrm=%d interrupted_writes=%d off_main=%d "
           "writes=%lld write_errors=%lld handler_errors=%d\n",
           (int)runs_usr1, (int)runs_usr2, (int)runs_term, (int)runs_alrm,
           (int)interrupted_writes, (int)off_main_thread, writes, write_errors,
           (int)handler_errors);
    if (write_errors != 0 || handler_errors != 0 || (masked && off_main_thread != 0)) {
        return 1;
    }
    return 0;
}
