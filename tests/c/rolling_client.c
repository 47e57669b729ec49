/*
 * rolling_client: the load generator of the rolling restart behind IPVS (tests/lvs/). Sends
 * RATE short requests a second to ADDRESS:PORT, each on a new TCP connection ("hello\n",
 * then it reads the answer "ok NAME MS\n" until the server closes), on a fixed schedule: a
 * pool of threads takes the requests as they fall due, so a slow one does not delay the next.
 * Runs until SIGTERM or SIGINT, then waits for the requests in flight and prints one line per
 * request:
 *
 *   DUE_MS LATENCY_MS OUTCOME
 *
 * DUE_MS: when it was due, from the start; LATENCY_MS: from then until it was answered or
 * failed; OUTCOME: the server's NAME, or error:connect, error:read, error:answer.
 *
 * Usage: rolling_client ADDRESS PORT RATE
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 48
#define MAX_REQUESTS 200000
#define TIMEOUT_S 10

struct record {
    long long due;
    long long latency;
    char outcome[40];
};

static struct sockaddr_in target;
static struct record *records;
static long next_due, scheduled, taken;
static int finished;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER;
static long long started;
static volatile sig_atomic_t stop;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_until(long long at) {
    long long left = at - now_ms();
    if (left > 0) {
        struct timespec ts = {left / 1000, (left % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR && !stop) {
        }
    }
}

static void one_request(struct record *r) {
    struct timeval timeout = {TIMEOUT_S, 0};
    char answer[128], name[40];
    size_t got = 0;
    ssize_t n;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        snprintf(r->outcome, sizeof r->outcome, "error:socket");
        return;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    if (connect(fd, (struct sockaddr *)&target, sizeof target) != 0) {
        snprintf(r->outcome, sizeof r->outcome, "error:connect");
        close(fd);
        return;
    }
    if (write(fd, "hello\n", 6) != 6) {
        snprintf(r->outcome, sizeof r->outcome, "error:write");
        close(fd);
        return;
    }
    while (got < sizeof answer - 1 && (n = read(fd, answer + got, sizeof answer - 1 - got)) > 0) {
        got += (size_t)n;
    }
    close(fd);
    answer[got] = '\0';
    if (sscanf(answer, "ok %39s", name) == 1) {
        snprintf(r->outcome, sizeof r->outcome, "%s", name);
    } else {
        snprintf(r->outcome, sizeof r->outcome, got == 0 ? "error:read" : "error:answer");
    }
}

static void *worker(void *unused) {
    (void)unused;
    for (;;) {
        long i;
        pthread_mutex_lock(&lock);
        while (taken == scheduled && !finished) {
            pthread_cond_wait(&more, &lock);
        }
        if (taken == scheduled) {
            pthread_mutex_unlock(&lock);
            return NULL;
        }
        i = taken++;
        pthread_mutex_unlock(&lock);
        sleep_until(started + records[i].due);
        one_request(&records[i]);
        records[i].latency = now_ms() - started - records[i].due;
    }
}

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    pthread_t threads[WORKERS];
    struct sigaction sa;
    double period;
    long i;
    if (argc != 4) {
        fprintf(stderr, "usage: rolling_client ADDRESS PORT RATE\n");
        return 64;
    }
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &target.sin_addr) != 1 || atoi(argv[3]) <= 0) {
        fprintf(stderr, "rolling_client: bad address or rate\n");
        return 64;
    }
    period = 1000.0 / atoi(argv[3]);
    records = calloc(MAX_REQUESTS, sizeof *records);
    if (records == NULL) {
        return 1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    started = now_ms();
    for (i = 0; i < WORKERS; i++) {
        pthread_create(&threads[i], NULL, worker, NULL);
    }
    while (!stop && next_due < MAX_REQUESTS) {
        long long due = (long long)(next_due * period);
        sleep_until(started + due);
        if (stop) {
            break;
        }
        pthread_mutex_lock(&lock);
        records[next_due].due = due;
        scheduled = ++next_due;
        pthread_cond_signal(&more);
        pthread_mutex_unlock(&lock);
    }
    pthread_mutex_lock(&lock);
    finished = 1;
    pthread_cond_broadcast(&more);
    pthread_mutex_unlock(&lock);
    for (i = 0; i < WORKERS; i++) {
        pthread_join(threads[i], NULL);
    }
    for (i = 0; i < scheduled; i++) {
        printf("%lld %lld %s\n", records[i].due, records[i].latency, records[i].outcome);
    }
    free(records);
    return 0;
}
