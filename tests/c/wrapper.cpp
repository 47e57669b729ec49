// wrapper: the promises of include/lbagent.hpp, checked from C++ (built as C++11 and C++17
// with -Wall -Wextra -Werror -pedantic, run plainly and under valgrind by tests/hosts.rs):
// ownership and moves, exceptions with the code and the library's text, noexcept hot path
// returning codes, status and counters, a real UDP probe; probing (lbagentpp::probe and the
// Prober in a poll() loop) and the TCP listeners' ports; the empty Agent; std::string_view
// (C++17) copied on the stack without allocating; set_log_callback from several threads.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <thread>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>
#include <type_traits>
#include <utility>

#include "lbagent.hpp"

// Every C++ allocation of this program is counted, so that a hot-path call can be shown to
// make none (the library's own threads allocate with malloc, not here).
std::atomic<long> cxx_allocations(0);

void *operator new(std::size_t n) {
    cxx_allocations++;
    if (void *p = std::malloc(n == 0 ? 1 : n)) {
        return p;
    }
    throw std::bad_alloc();
}
void *operator new[](std::size_t n) { return operator new(n); }
void operator delete(void *p) noexcept { std::free(p); }
void operator delete[](void *p) noexcept { std::free(p); }
void operator delete(void *p, std::size_t) noexcept { std::free(p); }
void operator delete[](void *p, std::size_t) noexcept { std::free(p); }

namespace {

int checks, failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        checks++;                                                                     \
        if (!(cond)) {                                                                \
            failures++;                                                               \
            std::fprintf(stderr, "wrapper.cpp:%d: check failed: %s\n", __LINE__, #cond); \
        }                                                                             \
    } while (0)

// The types' promises, at compile time.
using lbagentpp::Agent;
static_assert(!std::is_copy_constructible<Agent>::value, "move-only");
static_assert(!std::is_copy_assignable<Agent>::value, "move-only");
static_assert(std::is_nothrow_move_constructible<Agent>::value, "noexcept move");
static_assert(std::is_nothrow_move_assignable<Agent>::value, "noexcept move");
static_assert(std::is_nothrow_default_constructible<Agent>::value, "an empty Agent");
static_assert(std::is_base_of<std::runtime_error, lbagentpp::Error>::value, "std exception");
static_assert(noexcept(std::declval<Agent &>().heartbeat()), "hot path is noexcept");
static_assert(noexcept(std::declval<Agent &>().set_state(lbagentpp::State::Up)), "noexcept");
static_assert(noexcept(std::declval<Agent &>().set_state("svc", lbagentpp::State::Up, "r")),
              "noexcept");
static_assert(noexcept(std::declval<Agent &>().set_weight(50u)), "noexcept");
static_assert(noexcept(std::declval<Agent &>().set_load(1u, 2u)), "noexcept");
static_assert(std::is_same<decltype(std::declval<Agent &>().heartbeat()), lbagent_result>::value,
              "hot path returns the code");
static_assert(static_cast<int>(lbagentpp::State::Stopping) == LBAGENT_STATE_STOPPING, "numbers");
static_assert(static_cast<int>(lbagentpp::Counter::DroppedAuthStale) ==
                  LBAGENT_COUNTER_DROPPED_AUTH_STALE,
              "numbers");
static_assert(static_cast<int>(lbagentpp::Counter::ConnFailed) == LBAGENT_COUNTER_CONN_FAILED,
              "numbers");
static_assert(static_cast<int>(lbagentpp::Counter::HostUnknownService) ==
                  LBAGENT_COUNTER_HOST_UNKNOWN_SERVICE,
              "numbers");
static_assert(static_cast<int>(lbagentpp::Reason::StartTimedOut) ==
                  LBAGENT_REASON_START_TIMED_OUT,
              "numbers");
static_assert(static_cast<int>(lbagentpp::Counter::ConnDroppedSourceLimit) ==
                  LBAGENT_COUNTER_CONN_DROPPED_SOURCE_LIMIT,
              "numbers");
using lbagentpp::Prober;
static_assert(!std::is_copy_constructible<Prober>::value, "move-only");
static_assert(!std::is_copy_assignable<Prober>::value, "move-only");
static_assert(std::is_nothrow_move_constructible<Prober>::value, "noexcept move");
static_assert(std::is_nothrow_move_assignable<Prober>::value, "noexcept move");
static_assert(noexcept(std::declval<Prober &>().fd()), "noexcept");
static_assert(noexcept(std::declval<Prober &>().timeout_ms()), "noexcept");

// 127.0.0.1:port as a socket address.
sockaddr_in loopback(std::uint16_t port) {
    sockaddr_in a;
    std::memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

// Sends keepalived's default payload to 127.0.0.1:port; returns the answer ("" for none).
std::string ask(std::uint16_t port) {
    const char request[] = "keepalived check - keepalived ch";
    char answer[64];
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in to = loopback(port);
    timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = -1;
    if (connect(fd, reinterpret_cast<sockaddr *>(&to), sizeof to) == 0 &&
        send(fd, request, sizeof request - 1, 0) > 0) {
        n = recv(fd, answer, sizeof answer, 0);
    }
    close(fd);
    return n > 0 ? std::string(answer, static_cast<std::size_t>(n)) : std::string();
}

// A UDP socket bound to 127.0.0.1 on a port chosen by the system (its port in `port`).
int udp_socket(std::uint16_t &port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
    getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
    port = ntohs(a.sin_port);
    return fd;
}

// Connects over TCP to 127.0.0.1:port, sends `request`, reads until the agent closes.
std::string tcp_exchange(std::uint16_t port, const std::string &request) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in to = loopback(port);
    timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string answer;
    if (connect(fd, reinterpret_cast<sockaddr *>(&to), sizeof to) == 0 &&
        (request.empty() || send(fd, request.data(), request.size(), 0) > 0)) {
        char buf[512];
        ssize_t n;
        while ((n = recv(fd, buf, sizeof buf, 0)) > 0) {
            answer.append(buf, static_cast<std::size_t>(n));
        }
    }
    close(fd);
    return answer;
}

std::string target(std::uint16_t port) { return "127.0.0.1:" + std::to_string(port); }

bool starts_with(const std::string &s, const char *prefix) {
    return s.compare(0, std::strlen(prefix), prefix) == 0;
}

// The code of the Error that `f` throws (LBAGENT_OK if it throws none), its text in `what`.
template <typename F>
lbagent_result thrown_code(F f, std::string *what = nullptr) {
    try {
        f();
    } catch (const lbagentpp::Error &e) {
        if (what != nullptr) {
            *what = e.what();
        }
        return e.code();
    }
    return LBAGENT_OK;
}

void errors_are_exceptions() {
    bool thrown = false;
    try {
        Agent agent("listen=127.0.0.1:0 watchdog_ms=soon");
    } catch (const lbagentpp::Error &e) {
        thrown = true;
        CHECK(e.code() == LBAGENT_ERR_CONFIG);
        CHECK(std::strstr(e.what(), "\"watchdog_ms\"") != nullptr);
        CHECK(std::strstr(e.what(), "\"soon\"") != nullptr);
    }
    CHECK(thrown);

    Agent first("listen=127.0.0.1:0");
    std::string taken = "listen=127.0.0.1:" + std::to_string(first.local_port());
    thrown = false;
    try {
        Agent second(taken);  // std::string config
    } catch (const std::exception &e) {  // catchable as a standard exception too
        thrown = true;
        CHECK(dynamic_cast<const lbagentpp::Error *>(&e) != nullptr);
        CHECK(dynamic_cast<const lbagentpp::Error &>(e).code() == LBAGENT_ERR_BIND);
        CHECK(std::strstr(e.what(), "in use") != nullptr);
    }
    CHECK(thrown);

    thrown = false;
    try {
        (void)first.counter(static_cast<lbagentpp::Counter>(99));
    } catch (const lbagentpp::Error &e) {
        thrown = true;
        CHECK(e.code() == LBAGENT_ERR_INVALID_ARGUMENT);
        CHECK(starts_with(e.what(), "lbagent_get_counter: "));
    }
    CHECK(thrown);
    thrown = false;
    try {
        (void)first.local_port(1);
    } catch (const lbagentpp::Error &e) {
        thrown = e.code() == LBAGENT_ERR_INVALID_ARGUMENT;
    }
    CHECK(thrown);
}

void hot_path_returns_codes() {
    Agent agent("listen=127.0.0.1:0 services=game,chat");
    CHECK(agent.set_state(lbagentpp::State::Unknown) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(agent.set_state(static_cast<lbagentpp::State>(42)) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(agent.set_weight(101) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(agent.set_state("nope", lbagentpp::State::Up) == LBAGENT_ERR_UNKNOWN_SERVICE);
    CHECK(agent.set_load(std::string("nope"), 1, 2) == LBAGENT_ERR_UNKNOWN_SERVICE);
    CHECK(agent.set_weight("nope", 1) == LBAGENT_ERR_UNKNOWN_SERVICE);
    (void)agent.set_state("gmae", lbagentpp::State::Up);  // ignored on purpose: still counted
    CHECK(agent.counter(lbagentpp::Counter::HostUnknownService) == 4);
    // One rule: reporting about an unknown service fails (a code here, an Error from
    // add_check, naming it); reading about one answers Unknown.
    std::string what;
    CHECK(thrown_code([&] { agent.add_check("gmae", "db", [](std::string &) { return true; },
                                            1000); },
                      &what) == LBAGENT_ERR_UNKNOWN_SERVICE);
    CHECK(what == "lbagent_add_check_with_free: unknown service \"gmae\": not listed in "
                  "services= (game, chat)");
    // A NUL inside a std::string would cut the name in C: refused.
    CHECK(agent.set_state(std::string("game\0x", 6), lbagentpp::State::Up) ==
          LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(agent.set_state(lbagentpp::State::Up, std::string("a\0b", 3)) ==
          LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(thrown_code([&] { (void)agent.status(std::string("game\0x", 6)); }, &what) ==
          LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(what == "lbagent_get_status: service contains a NUL character");

    CHECK(agent.set_state(lbagentpp::State::Up, "ready") == LBAGENT_OK);
    CHECK(agent.set_weight(60) == LBAGENT_OK);
    CHECK(agent.set_load(3, 10) == LBAGENT_OK);
    CHECK(agent.heartbeat() == LBAGENT_OK);
    std::string service = "game", reason = "patching";
    CHECK(agent.set_state(service, lbagentpp::State::Maint, reason) == LBAGENT_OK);
    CHECK(agent.set_weight("chat", 50) == LBAGENT_OK);
    CHECK(agent.set_load("chat", 7, 8) == LBAGENT_OK);

    lbagentpp::Status s = agent.status();
    CHECK(s.state == lbagentpp::State::Up && s.reason == lbagentpp::Reason::Host);
    CHECK(s.weight_pct == 60 && s.in_use == 3 && s.capacity == 10);
    CHECK(s.message == "ready" && s.serving() && s.instance_id != 0 && s.generation > 0);
    s = agent.status("game");
    CHECK(s.state == lbagentpp::State::Maint && s.message == "patching" && !s.serving());
    s = agent.status(std::string("chat"));
    CHECK(s.state == lbagentpp::State::Up && s.weight_pct == 30 && s.in_use == 7);
    s = agent.status("nope");
    CHECK(s.state == lbagentpp::State::Unknown && s.reason == lbagentpp::Reason::UnknownService);

    // What a director sees.
    std::uint16_t port = agent.local_port();
    CHECK(starts_with(ask(port), "up ready 60%"));
    CHECK(agent.set_state(lbagentpp::State::Drain, nullptr) == LBAGENT_OK);
    CHECK(starts_with(ask(port), "drain"));
    // The monitor counts an answer after sending it: poll briefly (bounded).
    for (int i = 0; i < 500 && agent.counter(lbagentpp::Counter::AnsweredText) < 2; i++) {
        usleep(10000);
    }
    CHECK(agent.counter(lbagentpp::Counter::AnsweredText) == 2);
    CHECK(agent.counter(lbagentpp::Counter::Received) == 2);

    // stop: idempotent; then updates return LBAGENT_ERR_STOPPED and the status is STOPPING.
    agent.stop(5000);
    agent.stop();
    CHECK(agent.heartbeat() == LBAGENT_ERR_STOPPED);
    CHECK(agent.set_state(lbagentpp::State::Up) == LBAGENT_ERR_STOPPED);
    CHECK(agent.status().state == lbagentpp::State::Stopping);
    CHECK(agent.status().reason == lbagentpp::Reason::AgentStopping);
    CHECK(std::strcmp(lbagentpp::state_name(agent.status().state), "stopping") == 0);
    CHECK(std::strcmp(lbagentpp::reason_name(agent.status().reason), "agent-stopping") == 0);
}

void empty_and_deferred_agent() {
    Agent agent;  // empty: nothing started
    CHECK(!agent && agent.get() == nullptr);
    CHECK(agent.heartbeat() == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(agent.set_state(lbagentpp::State::Up) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(thrown_code([&] { (void)agent.status(); }) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(thrown_code([&] { agent.stop(); }) == LBAGENT_ERR_NULL_ARGUMENT);
    // Started later, by assigning.
    agent = Agent("listen=127.0.0.1:0");
    CHECK(agent && agent.set_state(lbagentpp::State::Up, "late") == LBAGENT_OK);
    CHECK(starts_with(ask(agent.local_port()), "up ready 100% #late"));
}

// set_log_callback from several threads at once: the callbacks the Agent keeps are guarded.
void log_callbacks_from_threads() {
    Agent agent("listen=127.0.0.1:0 services=game");
    std::atomic<int> delivered(0), failed(0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++) {
        threads.push_back(std::thread([&agent, &delivered, &failed] {
            for (int i = 0; i < 50; i++) {
                agent.set_log_callback([&delivered](lbagentpp::LogLevel, const char *) {
                    delivered++;
                });
                if (agent.set_state("game", lbagentpp::State::Up) != LBAGENT_OK) {
                    failed++;
                }
            }
        }));
    }
    for (std::size_t t = 0; t < threads.size(); t++) {
        threads[t].join();
    }
    CHECK(failed.load() == 0);
    agent.stop(5000);  // its "stopped" line reaches the last callback set
    CHECK(delivered.load() == 1);
}

#if __cplusplus >= 201703L && !defined(__cpp_lib_string_view)
#error "C++17 without std::string_view: the string_view tests would not run"
#endif

#ifdef __cpp_lib_string_view
// std::string_view: copied into a NUL-terminated buffer on the stack, no allocation.
void string_views() {
    Agent agent("listen=127.0.0.1:0 services=game,chat");
    std::string_view names = "gamechat";  // neither part ends with a NUL
    std::string_view game = names.substr(0, 4), chat = names.substr(4);
    std::string reason_text(300, 'x');
    reason_text.replace(250, 6, "\xc3\xa9\xc3\xa9\xc3\xa9");  // "ééé" across byte 255
    std::string_view reason = reason_text;
    long before = cxx_allocations.load();
    lbagent_result r1 = agent.set_state(game, lbagentpp::State::Maint, reason);
    lbagent_result r2 = agent.set_weight(chat, 50);
    lbagent_result r3 = agent.set_load(chat, 1, 2);
    lbagent_result r4 = agent.set_state(lbagentpp::State::Up, std::string_view("ready!", 5));
    lbagent_result r5 = agent.set_state(std::string_view("chatter", 4), lbagentpp::State::Up);
    long during = cxx_allocations.load() - before;
    CHECK(r1 == LBAGENT_OK && r2 == LBAGENT_OK && r3 == LBAGENT_OK && r4 == LBAGENT_OK &&
          r5 == LBAGENT_OK);
    CHECK(during == 0);
    lbagentpp::Status s = agent.status(game);
    CHECK(s.state == lbagentpp::State::Maint);
    // Cut before the character that byte 255 would split: 250 x and two "é".
    CHECK(s.message == reason_text.substr(0, 254));
    CHECK(agent.status(chat).weight_pct == 50 && agent.status().message == "ready");
    CHECK(agent.set_state(std::string_view("ga\0me", 5), lbagentpp::State::Up) ==
          LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(agent.set_state(std::string_view("games", 5), lbagentpp::State::Up) ==
          LBAGENT_ERR_UNKNOWN_SERVICE);
    // A name longer than the buffer stays unknown (never cut into a known one).
    std::string long_name = "game" + std::string(400, 'x');
    CHECK(agent.set_weight(std::string_view(long_name), 1) == LBAGENT_ERR_UNKNOWN_SERVICE);
    // A configuration longer than the buffer is passed whole.
    std::string config = "listen=127.0.0.1:0 " + std::string(300, ' ') + " services=late";
    Agent other{std::string_view(config)};
    CHECK(other.status("late").state == lbagentpp::State::Starting);
    std::string padded = target(agent.local_port()) + "  ";
    lbagentpp::Status probed =
        lbagentpp::probe(std::string_view(padded).substr(0, padded.size() - 2), chat);
    CHECK(probed.weight_pct == 50);
}
#endif

void ownership_and_moves() {
    Agent a("listen=127.0.0.1:0");
    std::uint16_t port = a.local_port();
    CHECK(static_cast<bool>(a));
    Agent b(std::move(a));
    CHECK(!a && b && b.local_port() == port);
    // A moved-from Agent holds nothing: the hot path says so, the rest throws.
    CHECK(a.heartbeat() == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(a.set_state(lbagentpp::State::Up) == LBAGENT_ERR_NULL_ARGUMENT);
    bool thrown = false;
    try {
        (void)a.status();
    } catch (const lbagentpp::Error &e) {
        thrown = e.code() == LBAGENT_ERR_NULL_ARGUMENT;
    }
    CHECK(thrown);
    CHECK(b.set_state(lbagentpp::State::Up, "moved") == LBAGENT_OK);
    CHECK(starts_with(ask(port), "up ready 100% #moved"));

    // Move assignment frees what the target held: its port stops answering.
    Agent c("listen=127.0.0.1:0");
    std::uint16_t c_port = c.local_port();
    c = std::move(b);
    CHECK(c.local_port() == port && ask(c_port).empty());
    Agent &same = c;
    c = std::move(same);  // a self-move keeps the agent
    CHECK(c && c.local_port() == port);

    // release() and adopt() hand the C handle over and back.
    lbagent *raw = c.release();
    CHECK(!c && raw != nullptr);
    CHECK(lbagent_set_state(raw, nullptr, LBAGENT_STATE_DRAIN, nullptr) == LBAGENT_OK);
    Agent d = Agent::adopt(raw);
    CHECK(d.get() == raw && d.status().state == lbagentpp::State::Drain);

    // Destruction stops the agent: nothing answers on its port afterwards.
    {
        Agent scoped("listen=127.0.0.1:0");
        port = scoped.local_port();
        CHECK(!ask(port).empty());
    }
    CHECK(ask(port).empty());
}

// Polls `done` for up to 20 s (checks run on their own threads).
template <typename F>
bool eventually(F done) {
    for (int i = 0; i < 2000; i++) {
        if (done()) {
            return true;
        }
        usleep(10000);
    }
    return false;
}

void checks_workers_and_log() {
    Agent agent("listen=127.0.0.1:0 services=db workers=1 worker_timeout_ms=60000");
    CHECK(agent.set_state(lbagentpp::State::Up, "ready") == LBAGENT_OK);

    // A check the agent owns: a lambda with captured state, destroyed by the library.
    std::shared_ptr<int> alive = std::make_shared<int>(0);
    std::weak_ptr<int> watch = alive;
    agent.add_check("db", "ping",
                    [alive](std::string &reason) {
                        reason = "db unreachable";
                        return *alive != 0;
                    },
                    50);
    alive.reset();  // only the agent's copy of the lambda holds it now
    CHECK(eventually([&] { return agent.status("db").message == "ping: db unreachable"; }));
    CHECK(agent.status("db").reason == lbagentpp::Reason::CheckFailed);
    CHECK(agent.status().state == lbagentpp::State::Up);
    agent.add_check(nullptr, "throws",
                    [](std::string &) -> bool { throw std::runtime_error("disk full"); }, 50);
    CHECK(eventually([&] { return agent.status().message == "throws: disk full"; }));
    bool thrown = false;
    try {
        agent.add_check(nullptr, "throws", [](std::string &) { return true; }, 50);
    } catch (const lbagentpp::Error &e) {
        thrown = e.code() == LBAGENT_ERR_EXISTS;
    }
    CHECK(thrown);
    agent.remove_check("throws");
    agent.remove_check("ping");
    CHECK(eventually([&] { return watch.expired(); }));  // the library destroyed the lambda
    CHECK(eventually([&] { return agent.status().message == "ready"; }));
    thrown = false;
    try {
        agent.remove_check("ping");
    } catch (const lbagentpp::Error &e) {
        thrown = e.code() == LBAGENT_ERR_NOT_FOUND;
    }
    CHECK(thrown);

    // Worker slots.
    unsigned slot = agent.worker_register();
    CHECK(agent.worker_heartbeat(slot) == LBAGENT_OK);
    thrown = false;
    try {
        (void)agent.worker_register();
    } catch (const lbagentpp::Error &e) {
        thrown = e.code() == LBAGENT_ERR_FULL;
    }
    CHECK(thrown);
    CHECK(agent.worker_unregister(slot) == LBAGENT_OK);
    CHECK(agent.worker_heartbeat(slot) == LBAGENT_ERR_NOT_FOUND);
    CHECK(agent.worker_release_pid(static_cast<int>(getpid())) == 0);
    thrown = false;
    try {
        agent.after_fork_worker();  // not a forked process
    } catch (const lbagentpp::Error &e) {
        thrown = e.code() == LBAGENT_ERR_WRONG_PROCESS;
    }
    CHECK(thrown);

    // The log callback: the agent's "stopped" line arrives on the logger thread.
    std::vector<std::string> lines;
    agent.set_log_callback([&lines](lbagentpp::LogLevel level, const char *line) {
        if (level == lbagentpp::LogLevel::Info) {
            lines.push_back(line);
        }
    });
    agent.set_log_callback([&lines](lbagentpp::LogLevel, const char *line) {
        lines.push_back(line);
        throw std::runtime_error("swallowed");
    });
    agent.stop(5000);  // joins the logger thread: `lines` is ours again
    CHECK(lines.size() == 1 && lines[0] == "stopped");
    agent.set_log_callback(nullptr);
}

void tcp_listener_ports() {
    Agent agent("listen=127.0.0.1:0 tcp_agent=127.0.0.1:0 http=127.0.0.1:0");
    CHECK(agent.set_state(lbagentpp::State::Up, "ready") == LBAGENT_OK);
    std::uint16_t tcp = agent.tcp_agent_port(), http = agent.http_port(0);
    CHECK(tcp != 0 && http != 0 && tcp != http);
    CHECK(tcp_exchange(tcp, "") == "up ready 100% #ready\n");
    std::string answer = tcp_exchange(http, "GET /health HTTP/1.1\r\nHost: lb\r\n\r\n");
    CHECK(starts_with(answer, "HTTP/1.1 200 "));
    CHECK(eventually([&] { return agent.counter(lbagentpp::Counter::ConnAccepted) == 2; }));
    CHECK(thrown_code([&] { (void)agent.tcp_agent_port(1); }) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(thrown_code([&] { (void)agent.http_port(1); }) == LBAGENT_ERR_INVALID_ARGUMENT);
    Agent plain("listen=127.0.0.1:0");
    CHECK(thrown_code([&] { (void)plain.tcp_agent_port(); }) == LBAGENT_ERR_INVALID_ARGUMENT);
}

void blocking_probe(const std::string &agent, const std::string &closed,
                    const std::string &silent) {
    lbagentpp::Status s = lbagentpp::probe(agent);
    CHECK(s.state == lbagentpp::State::Up && s.serving() && s.instance_id != 0);
    s = lbagentpp::probe(agent.c_str(), "game", "timeout_ms=3000");
    CHECK(s.state == lbagentpp::State::Maint && s.message == "patching" && !s.serving());
    s = lbagentpp::probe(agent, std::string("nope"));
    CHECK(s.state == lbagentpp::State::Unknown && s.reason == lbagentpp::Reason::UnknownService);

    std::string what;
    CHECK(thrown_code([&] { (void)lbagentpp::probe(closed); }, &what) == LBAGENT_ERR_REFUSED);
    CHECK(starts_with(what, (closed + ": refused").c_str()));
    CHECK(thrown_code([&] { (void)lbagentpp::probe(silent, nullptr, "timeout_ms=200"); },
                      &what) == LBAGENT_ERR_TIMEOUT);
    CHECK(what.find("no answer within 200 ms") != std::string::npos);
    CHECK(thrown_code([&] { (void)lbagentpp::probe(agent, nullptr, "colour=blue"); }, &what) ==
          LBAGENT_ERR_CONFIG);
    CHECK(what.find("\"colour\"") != std::string::npos);
    CHECK(thrown_code([&] { (void)lbagentpp::probe("127.0.0.1:99999"); }) ==
          LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(thrown_code([&] { (void)lbagentpp::probe(nullptr); }) == LBAGENT_ERR_NULL_ARGUMENT);
}

void prober_event_loop(const std::string &agent, const std::string &closed,
                       const std::string &silent) {
    const std::uint64_t probes = 40, closed_token = 1000, silent_token = 1001;
    Prober prober("timeout_ms=300");
    CHECK(prober.fd() >= 0 && prober.pending() == 0 && prober.timeout_ms() == -1);
    for (std::uint64_t i = 0; i < probes; i++) {
        prober.send(agent, i % 2 == 0 ? nullptr : "game", i);
    }
    prober.send(closed, nullptr, closed_token);
    prober.send(silent.c_str(), "game", silent_token);
    // Something is in flight, so there is a timeout (0 once a deadline has passed: under
    // valgrind on a busy machine 42 sends can outlast the 300 ms).
    CHECK(prober.pending() == probes + 2 && prober.timeout_ms() >= 0);
    CHECK(thrown_code([&] { prober.send("localhost:4950", nullptr, 7); }) ==
          LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(prober.pending() == probes + 2);

    // Moving hands the socket and the probes in flight over.
    Prober loop(std::move(prober));
    CHECK(!prober && prober.fd() == -1 && prober.pending() == 0 && loop.pending() == probes + 2);
    CHECK(thrown_code([&] { (void)prober.receive(); }) == LBAGENT_ERR_NULL_ARGUMENT);

    std::map<std::uint64_t, lbagentpp::ProbeResult> done;
    std::vector<lbagentpp::ProbeResult> batch;
    for (int rounds = 0; loop.pending() > 0 && rounds < 1000; rounds++) {
        pollfd p = {loop.fd(), POLLIN, 0};
        (void)poll(&p, 1, loop.timeout_ms());
        batch.clear();
        loop.receive(batch);
        for (std::size_t i = 0; i < batch.size(); i++) {
            CHECK(done.count(batch[i].token) == 0);  // each probe finishes exactly once
            done[batch[i].token] = batch[i];
        }
    }
    CHECK(done.size() == probes + 2 && loop.timeout_ms() == -1);
    for (std::uint64_t i = 0; i < probes; i++) {
        const lbagentpp::ProbeResult &r = done[i];
        CHECK(r.ok() && r.rtt_us > 0);
        CHECK(r.value().state ==
              (i % 2 == 0 ? lbagentpp::State::Up : lbagentpp::State::Maint));
    }
    CHECK(done[closed_token].result == LBAGENT_ERR_REFUSED);
    const lbagentpp::ProbeResult &timed_out = done[silent_token];
    CHECK(!timed_out.ok() && timed_out.rtt_us == 0 && timed_out.status.message.empty());
    CHECK(thrown_code([&] { (void)timed_out.value(); }) == LBAGENT_ERR_TIMEOUT);

    // A moved-into Prober frees what it held; a bad option names itself.
    Prober other;
    other = std::move(loop);
    CHECK(other.fd() >= 0 && !loop);
    std::string what;
    CHECK(thrown_code([] { Prober bad("timeout_ms=soon"); }, &what) == LBAGENT_ERR_CONFIG);
    CHECK(what.find("\"soon\"") != std::string::npos);
}

void probing() {
    Agent agent("listen=127.0.0.1:0 services=game initial_state=up rate_per_source=0");
    CHECK(agent.set_state("game", lbagentpp::State::Maint, "patching") == LBAGENT_OK);
    std::uint16_t closed_port, silent_port;
    close(udp_socket(closed_port));  // nothing listens there now: ICMP port unreachable
    int silent_fd = udp_socket(silent_port);
    blocking_probe(target(agent.local_port()), target(closed_port), target(silent_port));
    prober_event_loop(target(agent.local_port()), target(closed_port), target(silent_port));
    close(silent_fd);
}

}  // namespace

// A drain: its progress, waiting for it, and its errors.
void draining() {
    Agent agent("listen=127.0.0.1:0 initial_state=up services=game");
    lbagentpp::Drain d = agent.drain_status();
    CHECK(!d.draining && !d.complete && d.state == lbagentpp::State::Up);
    CHECK(!agent.wait_drained(0));  // serving: not drained
    CHECK(agent.set_load(2, 10) == LBAGENT_OK);
    CHECK(agent.set_state(lbagentpp::State::Drain) == LBAGENT_OK);
    d = agent.drain_status();
    CHECK(d.draining && !d.complete && d.in_use == 2 && d.probers_pending == 0);
    CHECK(!agent.wait_drained(30));
    CHECK(agent.set_load(0, 10) == LBAGENT_OK);
    CHECK(agent.wait_drained(1000));  // no prober seen: only the work counted
    CHECK(agent.drain_status().complete);
    CHECK(agent.drain_status("game").draining);  // a service follows the whole server
    bool thrown = false;
    try {
        (void)agent.drain_status("nope");
    } catch (const lbagentpp::Error &e) {
        thrown = e.code() == LBAGENT_ERR_UNKNOWN_SERVICE &&
                 starts_with(e.what(), "lbagent_drain_status: ");
    }
    CHECK(thrown);
}

int main() {
    CHECK(std::strcmp(lbagentpp::version(), LBAGENT_VERSION) == 0);
    CHECK(std::strcmp(lbagentpp::strerror(LBAGENT_ERR_STOPPED), lbagent_strerror(8)) == 0);
    CHECK(std::strcmp(lbagentpp::state_name(lbagentpp::State::Maint), "maint") == 0);
    CHECK(std::strcmp(lbagentpp::reason_name(lbagentpp::Reason::WatchdogExpired),
                      "watchdog-expired") == 0);
    CHECK(std::strcmp(lbagentpp::reason_name(static_cast<lbagentpp::Reason>(99)), "invalid") == 0);
    errors_are_exceptions();
    hot_path_returns_codes();
    ownership_and_moves();
    empty_and_deferred_agent();
    log_callbacks_from_threads();
#ifdef __cpp_lib_string_view
    string_views();
#endif
    checks_workers_and_log();
    tcp_listener_ports();
    probing();
    draining();
    std::printf("wrapper.cpp (C++%ld): %d checks, %d failed\n", __cplusplus / 100 % 100, checks,
                failures);
    return failures == 0 ? 0 : 1;
}
