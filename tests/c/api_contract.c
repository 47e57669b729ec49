/*
 * api_contract: the C API's promises, checked from C (run plainly and under valgrind by
 * tests/c_programs.rs): NULL for every pointer, out-of-range values, strings that are not
 * UTF-8 or are huge, calls after stop, version agreement, and a real UDP probe.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "lbagent.h"

static int checks, failures;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            failures++;                                                              \
            fprintf(stderr, "api_contract.c:%d: check failed: %s\n", __LINE__, #cond); \
        }                                                                            \
    } while (0)

static int last_error_contains(const char *needle) {
    char msg[512];
    lbagent_last_error(msg, sizeof msg);
    if (strstr(msg, needle) == NULL) {
        fprintf(stderr, "  last error \"%s\" lacks \"%s\"\n", msg, needle);
        return 0;
    }
    return 1;
}

/* Sends `request` to 127.0.0.1:port and returns the answer's length (-1: none). */
static int exchange(uint16_t port, const char *request, size_t len, char *answer, size_t cap) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to;
    struct timeval tv = {2, 0};
    ssize_t n;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    connect(fd, (struct sockaddr *)&to, sizeof to);
    send(fd, request, len, 0);
    n = recv(fd, answer, cap, 0);
    close(fd);
    return (int)n;
}

static int passing_check(void *userdata, char *message, size_t message_len) {
    (void)userdata;
    (void)message;
    (void)message_len;
    return 0;
}

static void null_arguments(void) {
    lbagent_status st;
    uint64_t v;
    uint16_t port;
    unsigned slot = 0;
    lbagent *a = NULL;

    CHECK(lbagent_start(NULL, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(last_error_contains("out is NULL"));
    CHECK(lbagent_set_state(NULL, NULL, LBAGENT_STATE_UP, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_set_weight(NULL, NULL, 50) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_set_load(NULL, NULL, 1, 2) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_heartbeat(NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_get_status(NULL, NULL, &st) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_get_counter(NULL, 0, &v) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_local_port(NULL, 0, &port) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_tcp_agent_port(NULL, 0, &port) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_http_port(NULL, 0, &port) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_stop(NULL, 0) == LBAGENT_ERR_NULL_ARGUMENT);
    lbagent_free(NULL); /* a no-op */
    CHECK(lbagent_last_error(NULL, 0) > 0);
    CHECK(a == NULL);

    /* Checks, logging, worker slots and fork, with no agent. */
    CHECK(lbagent_add_check(NULL, NULL, "c", passing_check, NULL, 100, 0) ==
          LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_add_check_with_free(NULL, NULL, "c", passing_check, NULL, NULL, 100, 0) ==
          LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_remove_check(NULL, "c") == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_set_log_callback(NULL, NULL, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_worker_register(NULL, &slot) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_worker_heartbeat(NULL, 0) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_worker_unregister(NULL, 0) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_worker_release_pid(NULL, 1, &slot) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_after_fork_child(NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_after_fork_worker(NULL) == LBAGENT_ERR_NULL_ARGUMENT);

    /* A live agent, NULL where a pointer is required. */
    CHECK(lbagent_start("listen=127.0.0.1:0 workers=1", &a) == LBAGENT_OK);
    CHECK(lbagent_get_status(a, NULL, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_get_counter(a, 0, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_local_port(a, 0, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_add_check(a, NULL, NULL, passing_check, NULL, 100, 0) ==
          LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_add_check(a, NULL, "c", NULL, NULL, 100, 0) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(last_error_contains("callback"));
    CHECK(lbagent_remove_check(a, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_worker_register(a, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_worker_release_pid(a, getpid(), NULL) == LBAGENT_OK); /* count optional */
    CHECK(lbagent_set_log_callback(a, NULL, NULL) == LBAGENT_OK); /* NULL: no callback */
    lbagent_free(a);
}

static void config_errors(void) {
    lbagent *a = NULL;
    CHECK(lbagent_start("watchdog_ms=soon", &a) == LBAGENT_ERR_CONFIG);
    CHECK(a == NULL);
    CHECK(last_error_contains("\"watchdog_ms\"") && last_error_contains("\"soon\""));
    CHECK(lbagent_start("listen=127.0.0.1:0 colour=blue", &a) == LBAGENT_ERR_CONFIG);
    CHECK(last_error_contains("unknown key \"colour\""));
    CHECK(lbagent_start("listen=127.0.0.1:0 listen=127.0.0.1:0", &a) == LBAGENT_ERR_CONFIG);
    CHECK(last_error_contains("duplicate key \"listen\""));
    CHECK(lbagent_start("text=\xff", &a) == LBAGENT_ERR_CONFIG);
    CHECK(a == NULL);
}

/* config == NULL: LBAGENT_CONFIG if set, else the defaults (every address, UDP port 4950). */
static void config_from_the_environment(void) {
    lbagent *a = NULL;
    uint16_t port = 0;
    lbagent_result r;
    CHECK(setenv("LBAGENT_CONFIG", "listen=127.0.0.1:0 watchdog_ms=soon", 1) == 0);
    CHECK(lbagent_start(NULL, &a) == LBAGENT_ERR_CONFIG && a == NULL);
    CHECK(last_error_contains("\"watchdog_ms\"") && last_error_contains("\"soon\""));
    CHECK(setenv("LBAGENT_CONFIG", "listen=127.0.0.1:0 initial_state=up", 1) == 0);
    CHECK(lbagent_start(NULL, &a) == LBAGENT_OK);
    CHECK(lbagent_local_port(a, 0, &port) == LBAGENT_OK && port != 4950);
    lbagent_free(a);
    a = NULL;
    CHECK(unsetenv("LBAGENT_CONFIG") == 0);
    r = lbagent_start(NULL, &a);
    if (r == LBAGENT_OK) {
        CHECK(lbagent_local_port(a, 0, &port) == LBAGENT_OK && port == 4950);
        lbagent_free(a);
    } else {
        /* Another program holds the port: the error still shows the default address. */
        CHECK(r == LBAGENT_ERR_BIND && last_error_contains("0.0.0.0:4950"));
    }
}

static void bind_error(void) {
    lbagent *a = NULL, *b = NULL;
    uint16_t port = 0;
    char config[64];
    CHECK(lbagent_start("listen=127.0.0.1:0", &a) == LBAGENT_OK);
    CHECK(lbagent_local_port(a, 0, &port) == LBAGENT_OK && port != 0);
    snprintf(config, sizeof config, "listen=127.0.0.1:%u", port);
    CHECK(lbagent_start(config, &b) == LBAGENT_ERR_BIND);
    CHECK(b == NULL);
    CHECK(last_error_contains(config + 7) && last_error_contains("in use"));
    lbagent_free(a);
}

static void tcp_ports(void) {
    lbagent *a = NULL, *b = NULL;
    uint16_t agent_port = 0, http_port = 0, port = 0;
    char config[96];
    CHECK(lbagent_start("listen=127.0.0.1:0 tcp_agent=127.0.0.1:0 http=127.0.0.1:0", &a) ==
          LBAGENT_OK);
    CHECK(lbagent_tcp_agent_port(a, 0, &agent_port) == LBAGENT_OK && agent_port != 0);
    CHECK(lbagent_http_port(a, 0, &http_port) == LBAGENT_OK && http_port != 0);
    CHECK(agent_port != http_port);
    CHECK(lbagent_tcp_agent_port(a, 1, &port) == LBAGENT_ERR_INVALID_ARGUMENT && port == 0);
    CHECK(lbagent_http_port(a, 0, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    /* The HTTP port is taken: the error names the key and the address. */
    snprintf(config, sizeof config, "listen=127.0.0.1:0 http=127.0.0.1:%u", http_port);
    CHECK(lbagent_start(config, &b) == LBAGENT_ERR_BIND);
    CHECK(b == NULL);
    CHECK(last_error_contains("http=") && last_error_contains(config + 24));
    /* No tcp_agent configured: no port. */
    CHECK(lbagent_start("listen=127.0.0.1:0", &b) == LBAGENT_OK);
    CHECK(lbagent_tcp_agent_port(b, 0, &port) == LBAGENT_ERR_INVALID_ARGUMENT);
    lbagent_free(b);
    lbagent_free(a);
}

static void lifecycle(void) {
    lbagent *a = NULL;
    lbagent_status st;
    uint64_t v = 12345;
    uint16_t port = 0;
    char answer[600], *big;
    int n;

    CHECK(lbagent_start("listen=127.0.0.1:0 services=game watchdog_ms=0", &a) == LBAGENT_OK);
    CHECK(a != NULL);
    CHECK(lbagent_local_port(a, 0, &port) == LBAGENT_OK);
    CHECK(lbagent_local_port(a, 1, &port) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(lbagent_local_port(a, 0, NULL) == LBAGENT_ERR_NULL_ARGUMENT);

    /* Out-parameters. */
    CHECK(lbagent_get_status(a, NULL, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_get_counter(a, LBAGENT_COUNTER_RECEIVED, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_get_counter(a, 99, &v) == LBAGENT_ERR_INVALID_ARGUMENT && v == 12345);
    CHECK(lbagent_get_counter(a, -1, &v) == LBAGENT_ERR_INVALID_ARGUMENT);

    /* The initial state. */
    CHECK(lbagent_get_status(a, NULL, &st) == LBAGENT_OK);
    CHECK(st.state == LBAGENT_STATE_STARTING && st.reason == LBAGENT_REASON_HOST);
    CHECK(st.weight_pct == 100 && st.generation == 0 && st.message[0] == '\0');

    /* Out-of-range values. */
    CHECK(lbagent_set_state(a, NULL, LBAGENT_STATE_UNKNOWN, NULL) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(lbagent_set_state(a, NULL, -1, NULL) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(lbagent_set_state(a, NULL, 7, NULL) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(lbagent_set_state(a, NULL, 258, NULL) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(lbagent_set_weight(a, NULL, 101) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(lbagent_set_weight(a, NULL, 4294967295u) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(lbagent_set_state(a, "nope", LBAGENT_STATE_UP, NULL) == LBAGENT_ERR_UNKNOWN_SERVICE);
    CHECK(lbagent_set_weight(a, "nope", 5) == LBAGENT_ERR_UNKNOWN_SERVICE);
    CHECK(lbagent_set_load(a, "nope", 1, 1) == LBAGENT_ERR_UNKNOWN_SERVICE);
    /* Each such call is counted, so that a typo whose result is ignored still shows; a check
     * on an unknown service says which name and which names there are. */
    CHECK(lbagent_add_check(a, "gmae", "db", passing_check, NULL, 100, 0) ==
          LBAGENT_ERR_UNKNOWN_SERVICE);
    CHECK(last_error_contains(
        "lbagent_add_check: unknown service \"gmae\": not listed in services= (game)"));
    CHECK(lbagent_get_counter(a, LBAGENT_COUNTER_HOST_UNKNOWN_SERVICE, &v) == LBAGENT_OK && v == 4);

    /* A reason that is not UTF-8 and one of 1 MB: both accepted, cleaned, cut. */
    CHECK(lbagent_set_state(a, "", LBAGENT_STATE_UP, "bad \xff\xfe\n utf8") == LBAGENT_OK);
    CHECK(lbagent_get_status(a, "", &st) == LBAGENT_OK);
    CHECK(st.state == LBAGENT_STATE_UP && strstr(st.message, "bad ") == st.message);
    CHECK(strchr(st.message, '\n') == NULL);
    big = malloc(1 << 20);
    memset(big, 'x', (1 << 20) - 1);
    big[(1 << 20) - 1] = '\0';
    CHECK(lbagent_set_state(a, "game", LBAGENT_STATE_DRAIN, big) == LBAGENT_OK);
    free(big);
    CHECK(lbagent_get_status(a, "game", &st) == LBAGENT_OK);
    CHECK(st.state == LBAGENT_STATE_DRAIN && strlen(st.message) == 255);
    CHECK(lbagent_get_status(a, "nope", &st) == LBAGENT_OK);
    CHECK(st.state == LBAGENT_STATE_UNKNOWN && st.reason == LBAGENT_REASON_UNKNOWN_SERVICE);

    /* Weight, load, heartbeat. */
    CHECK(lbagent_set_weight(a, NULL, 40) == LBAGENT_OK);
    CHECK(lbagent_set_load(a, NULL, 3, 10) == LBAGENT_OK);
    CHECK(lbagent_heartbeat(a) == LBAGENT_OK);
    CHECK(lbagent_get_status(a, NULL, &st) == LBAGENT_OK);
    CHECK(st.weight_pct == 40 && st.in_use == 3 && st.capacity == 10);

    /* What a director sees: keepalived's default 32-byte payload. */
    n = exchange(port, "keepalived check - keepalived ch", 32, answer, sizeof answer);
    CHECK(n > 2 && n <= 32 && memcmp(answer, "up ready 40%", 12) == 0);
    CHECK(lbagent_set_state(a, NULL, LBAGENT_STATE_DOWN, "broken") == LBAGENT_OK);
    n = exchange(port, "keepalived check - keepalived ch", 32, answer, sizeof answer);
    CHECK(n > 2 && n <= 32 && memcmp(answer, "fail", 4) == 0);
    CHECK(lbagent_get_counter(a, LBAGENT_COUNTER_ANSWERED_TEXT, &v) == LBAGENT_OK && v >= 1);

    /* Stop: idempotent; then updates are refused and the status says STOPPING. */
    CHECK(lbagent_stop(a, 5000) == LBAGENT_OK);
    CHECK(lbagent_stop(a, 0) == LBAGENT_OK);
    CHECK(lbagent_set_state(a, NULL, LBAGENT_STATE_UP, NULL) == LBAGENT_ERR_STOPPED);
    CHECK(lbagent_heartbeat(a) == LBAGENT_ERR_STOPPED);
    CHECK(lbagent_set_weight(a, NULL, 10) == LBAGENT_ERR_STOPPED);
    CHECK(lbagent_get_status(a, NULL, &st) == LBAGENT_OK);
    CHECK(st.state == LBAGENT_STATE_STOPPING && st.reason == LBAGENT_REASON_AGENT_STOPPING);
    lbagent_free(a);

    /* A second free, and a stop after free, are detected without touching freed memory. */
    lbagent_free(a);
    CHECK(last_error_contains("already freed"));
    CHECK(lbagent_stop(a, 0) == LBAGENT_ERR_BAD_HANDLE);
}

static void foreign_pointers(void) {
    /* A pointer that never came from lbagent_start. */
    long not_an_agent[8] = {0};
    lbagent *bogus = (lbagent *)(void *)not_an_agent;
    lbagent_status st;
    lbagent_free(bogus);
    CHECK(lbagent_stop(bogus, 0) == LBAGENT_ERR_BAD_HANDLE);
    CHECK(lbagent_heartbeat(bogus) == LBAGENT_ERR_BAD_HANDLE);
    CHECK(lbagent_set_state(bogus, NULL, LBAGENT_STATE_UP, NULL) == LBAGENT_ERR_BAD_HANDLE);
    CHECK(lbagent_get_status(bogus, NULL, &st) == LBAGENT_ERR_BAD_HANDLE);
    CHECK(not_an_agent[0] == 0);
}

static void static_strings(void) {
    char small[8];
    size_t full;
    CHECK(strcmp(lbagent_version(), LBAGENT_VERSION) == 0);
    CHECK(strcmp(lbagent_strerror(LBAGENT_OK), "success") == 0);
    CHECK(strcmp(lbagent_strerror(12345), "unknown result code") == 0);
    CHECK(strcmp(lbagent_strerror(-1), "unknown result code") == 0);
    CHECK(strlen(lbagent_strerror(LBAGENT_ERR_BIND)) > 0);
    CHECK(strcmp(lbagent_state_name(LBAGENT_STATE_DRAIN), "drain") == 0);
    CHECK(strcmp(lbagent_state_name(99), "invalid") == 0);
    CHECK(strcmp(lbagent_reason_name(LBAGENT_REASON_WATCHDOG_EXPIRED), "watchdog-expired") == 0);
    CHECK(strcmp(lbagent_reason_name(LBAGENT_REASON_START_TIMED_OUT), "start-timed-out") == 0);
    CHECK(strcmp(lbagent_reason_name(-1), "invalid") == 0);
    CHECK(strcmp(lbagent_reason_name(256), "invalid") == 0);
    /* lbagent_last_error: snprintf-like length, NUL-terminated cut. */
    {
        lbagent *a = NULL;
        CHECK(lbagent_start("watchdog_ms=soon", &a) == LBAGENT_ERR_CONFIG);
    }
    full = lbagent_last_error(small, sizeof small);
    CHECK(full > sizeof small && strlen(small) == sizeof small - 1);
    CHECK(lbagent_last_error(NULL, 0) == full);
}

int main(void) {
    null_arguments();
    config_errors();
    config_from_the_environment();
    bind_error();
    tcp_ports();
    lifecycle();
    foreign_pointers();
    static_strings();
    printf("api_contract: %d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
