// lbagent.hpp: a header-only C++ wrapper over lbagent.h (C++11 or later), in namespace
// lbagentpp (C++ cannot have a namespace `lbagent` next to the C header's `struct lbagent`).
//
//   lbagentpp::Agent agent("listen=0.0.0.0:4950 watchdog_ms=3000"); // throws lbagentpp::Error
//   agent.set_state(lbagentpp::State::Up, "ready");      // noexcept, returns the lbagent_result
//   for (;;) { serve(); agent.heartbeat(); }
//   // ~Agent() stops the agent and frees it.
//
//   lbagentpp::Status s = lbagentpp::probe("10.0.0.7:4950", nullptr, "timeout_ms=500");
//
// - lbagentpp::probe asks one agent and waits (throws Error on no answer: the code says why,
//   LBAGENT_ERR_TIMEOUT, _REFUSED, _WRONG_KEY, ...); lbagentpp::Prober is the move-only,
//   non-blocking prober for an event loop (fd(), send(), receive(), timeout_ms()).
//
// - lbagentpp::Agent owns one agent: started by the constructor, stopped and freed by the
//   destructor. It is move-only; a moved-from Agent holds no agent (its calls return
//   LBAGENT_ERR_NULL_ARGUMENT, or throw for the throwing ones).
// - Start, stop, status, counters, ports and probes throw lbagentpp::Error (the
//   lbagent_result code and the text of lbagent_last_error) on failure.
// - The hot-path calls heartbeat, set_state, set_weight, set_load and worker_heartbeat are
//   noexcept and return the lbagent_result, like the C functions: they stay usable in tight
//   loops and, where the C function is async-signal-safe (heartbeat; set_state(State) without
//   a reason; set_weight and set_load without a service; worker_heartbeat), from a signal
//   handler.
// - Checks and the log callback are std::functions, owned by the agent; an exception they
//   throw never reaches the library (a check that throws fails with what() as its reason).
// - Service names and reasons are taken as `const char *`, `std::string` or, under C++17,
//   `std::string_view` (lbagentpp::Text); nullptr means the whole server, or no reason. The
//   library copies them. A string_view is first copied into a buffer inside the Text, on the
//   caller's stack (no allocation on the hot path), cut to 255 bytes at a character boundary
//   (what the library keeps of a reason; a service name has 64 bytes at most). A name or
//   reason with a NUL inside is refused (LBAGENT_ERR_INVALID_ARGUMENT): C would cut it there.
// - One rule for names in C, C++ and Python: a call that reports about a service not listed
//   in services= fails with LBAGENT_ERR_UNKNOWN_SERVICE (here: the code from set_state,
//   set_weight, set_load, which are [[nodiscard]] when they take a service, so that a
//   misspelt name is not silently ignored; an Error from add_check); reading about one
//   (status, probe) answers State::Unknown, Reason::UnknownService, as a director is told.
//   Every such failed call is also counted (Counter::HostUnknownService).
// - An empty Agent holds no agent: default-constructed (to start one later by assigning,
//   `agent = lbagentpp::Agent(config);`), moved-from or released. Its hot-path calls return
//   LBAGENT_ERR_NULL_ARGUMENT, the others throw Error with that code.
// - ~Agent() blocks at most 5 s for the agent's monitor thread (it normally ends within
//   milliseconds), then for a log callback that is running to return. It never waits for a
//   check that hangs: that check's thread destroys the function when its run returns.
// - Threads: every member function of Agent and Prober may be called from any thread at once,
//   as the C functions may (set_log_callback takes a lock of its own). Constructing, moving,
//   assigning and destroying one must not overlap other calls on the same object.
//
// Requires C++11 (the wrapper needs nothing newer, and servers that embed lbagent are often
// built with old standards); [[nodiscard]] is added under C++17 (and by GCC 10 or later under
// C++11), std::string_view under C++17.
#ifndef LBAGENT_HPP
#define LBAGENT_HPP

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if __cplusplus >= 201703L
#include <string_view>
#define LBAGENT_HPP_STRING_VIEW 1
#endif

#include "lbagent.h"

#if __cplusplus >= 201703L
#define LBAGENT_NODISCARD [[nodiscard]]
#elif defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10
#define LBAGENT_NODISCARD [[nodiscard]]  // GCC takes it under C++11, without a warning
#else
#define LBAGENT_NODISCARD
#endif

namespace lbagentpp {

// The state of the whole server or of one service (LBAGENT_STATE_*).
enum class State : int {
    Unknown = LBAGENT_STATE_UNKNOWN,
    Starting = LBAGENT_STATE_STARTING,
    Up = LBAGENT_STATE_UP,
    Drain = LBAGENT_STATE_DRAIN,
    Maint = LBAGENT_STATE_MAINT,
    Down = LBAGENT_STATE_DOWN,
    Stopping = LBAGENT_STATE_STOPPING,
};

// Why the state is what it is (LBAGENT_REASON_*).
enum class Reason : int {
    Host = LBAGENT_REASON_HOST,
    WatchdogExpired = LBAGENT_REASON_WATCHDOG_EXPIRED,
    CheckFailed = LBAGENT_REASON_CHECK_FAILED,
    AgentStopping = LBAGENT_REASON_AGENT_STOPPING,
    UnknownService = LBAGENT_REASON_UNKNOWN_SERVICE,
    AgentFault = LBAGENT_REASON_AGENT_FAULT,
    CheckTimedOut = LBAGENT_REASON_CHECK_TIMED_OUT,
    WorkerStalled = LBAGENT_REASON_WORKER_STALLED,
    StartTimedOut = LBAGENT_REASON_START_TIMED_OUT,
    Operator = LBAGENT_REASON_OPERATOR,
};

// The level of a line given to a log callback (LBAGENT_LOG_LEVEL_*).
enum class LogLevel : int {
    Error = LBAGENT_LOG_LEVEL_ERROR,
    Warn = LBAGENT_LOG_LEVEL_WARN,
    Info = LBAGENT_LOG_LEVEL_INFO,
};

// The agent's counters (LBAGENT_COUNTER_*); the C names without the prefix.
enum class Counter : int {
    Received = LBAGENT_COUNTER_RECEIVED,
    AnsweredStatus = LBAGENT_COUNTER_ANSWERED_STATUS,
    AnsweredText = LBAGENT_COUNTER_ANSWERED_TEXT,
    AnsweredError = LBAGENT_COUNTER_ANSWERED_ERROR,
    DroppedNotAllowed = LBAGENT_COUNTER_DROPPED_NOT_ALLOWED,
    DroppedSourcePort = LBAGENT_COUNTER_DROPPED_SOURCE_PORT,
    DroppedNotUnicast = LBAGENT_COUNTER_DROPPED_NOT_UNICAST,
    DroppedMalformed = LBAGENT_COUNTER_DROPPED_MALFORMED,
    DroppedTextOff = LBAGENT_COUNTER_DROPPED_TEXT_OFF,
    DroppedLooksLikeReply = LBAGENT_COUNTER_DROPPED_LOOKS_LIKE_REPLY,
    SendFailed = LBAGENT_COUNTER_SEND_FAILED,
    Faults = LBAGENT_COUNTER_FAULTS,
    DroppedRateLimited = LBAGENT_COUNTER_DROPPED_RATE_LIMITED,
    DroppedGlobalLimit = LBAGENT_COUNTER_DROPPED_GLOBAL_LIMIT,
    DroppedAuthFailed = LBAGENT_COUNTER_DROPPED_AUTH_FAILED,
    DroppedAuthStale = LBAGENT_COUNTER_DROPPED_AUTH_STALE,
    ConnAccepted = LBAGENT_COUNTER_CONN_ACCEPTED,
    AnsweredAgent = LBAGENT_COUNTER_ANSWERED_AGENT,
    AnsweredHttp = LBAGENT_COUNTER_ANSWERED_HTTP,
    HttpBadRequest = LBAGENT_COUNTER_HTTP_BAD_REQUEST,
    ConnDroppedLimit = LBAGENT_COUNTER_CONN_DROPPED_LIMIT,
    ConnDroppedNotAllowed = LBAGENT_COUNTER_CONN_DROPPED_NOT_ALLOWED,
    ConnTimedOut = LBAGENT_COUNTER_CONN_TIMED_OUT,
    ConnFailed = LBAGENT_COUNTER_CONN_FAILED,
    HostUnknownService = LBAGENT_COUNTER_HOST_UNKNOWN_SERVICE,
    Pushed = LBAGENT_COUNTER_PUSHED,
    PushFailed = LBAGENT_COUNTER_PUSH_FAILED,
    DroppedReplay = LBAGENT_COUNTER_DROPPED_REPLAY,
    DroppedKeyLimit = LBAGENT_COUNTER_DROPPED_KEY_LIMIT,
    ConnDroppedSourceLimit = LBAGENT_COUNTER_CONN_DROPPED_SOURCE_LIMIT,
    ControlAnswered = LBAGENT_COUNTER_CONTROL_ANSWERED,
    ControlRefused = LBAGENT_COUNTER_CONTROL_REFUSED,
    ControlFailed = LBAGENT_COUNTER_CONTROL_FAILED,
};

// The lower-case name of a state ("up", "drain", ...). Async-signal-safe.
inline const char *state_name(State state) noexcept {
    return lbagent_state_name(static_cast<int>(state));
}

// The lower-case name of a reason ("host", "watchdog-expired", "start-timed-out", ...; as in
// lbagent-probe --json), or "invalid". Async-signal-safe.
inline const char *reason_name(Reason reason) noexcept {
    return lbagent_reason_name(static_cast<int>(reason));
}

// Static English text for a result code. Async-signal-safe.
inline const char *strerror(lbagent_result code) noexcept {
    return lbagent_strerror(static_cast<int>(code));
}

// The library's version ("0.1.0"). Async-signal-safe.
inline const char *version() noexcept { return lbagent_version(); }

// A failed call: the code and the library's detail.
class Error : public std::runtime_error {
public:
    Error(lbagent_result code, const std::string &what) : std::runtime_error(what), code_(code) {}

    // The lbagent_result of the failed call.
    lbagent_result code() const noexcept { return code_; }

    // The error for a call that failed with `code`. Its text is this thread's
    // lbagent_last_error(), which every failing call sets as "call: what was wrong" (it names
    // the key, value, address or argument); the hot-path calls never touch it, so for them
    // it is "call: " and lbagent_strerror().
    static Error from_call(lbagent_result code, const char *call) {
        std::size_t len = lbagent_last_error(nullptr, 0);
        std::string prefix = std::string(call) + ":";
        if (len > 0) {
            std::vector<char> detail(len + 1);
            lbagent_last_error(detail.data(), detail.size());
            std::string text(detail.data(), len);
            if (text.compare(0, prefix.size(), prefix) == 0) {
                return Error(code, text);
            }
        }
        return Error(code, prefix + " " + lbagent_strerror(static_cast<int>(code)));
    }

    // The same, about a probe target: what() is "TARGET: what happened" (the target
    // replaces the call's name, which says less).
    static Error from_probe(lbagent_result code, const char *call, const char *target) {
        std::string text = from_call(code, call).what();
        std::string::size_type colon = text.find(": ");
        std::string detail = colon == std::string::npos ? text : text.substr(colon + 2);
        return Error(code, std::string(target != nullptr ? target : "(null)") + ": " + detail);
    }

private:
    lbagent_result code_;
};

// A service name or a reason: a `const char *` (nullptr allowed) or a `std::string`, passed
// on without copying, or (C++17) a `std::string_view`, copied into a buffer inside the Text
// (it need not end with a NUL), cut to 255 bytes at a UTF-8 character boundary. Only for
// arguments: it must not outlive the string it was made from.
class Text {
public:
    Text(std::nullptr_t) noexcept : s_(nullptr) {}
    Text(const char *s) noexcept : s_(s) {}
    Text(const std::string &s) noexcept
        : s_(s.c_str()), nul_(std::strlen(s.c_str()) != s.size()) {}
#ifdef LBAGENT_HPP_STRING_VIEW
    Text(std::string_view s) noexcept
        : s_(nullptr), nul_(s.find('\0') != s.npos), view_(true), whole_(s) {
        std::size_t n = s.size() < sizeof buf_ ? s.size() : sizeof buf_ - 1;
        if (n < s.size()) {
            // Cut before a character's continuation bytes, never inside the character.
            while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) {
                n--;
            }
        }
        std::memcpy(buf_, s.data(), n);
        buf_[n] = '\0';
    }
#endif

    // The NUL-terminated text (nullptr for nullptr).
    const char *c_str() const noexcept {
#ifdef LBAGENT_HPP_STRING_VIEW
        if (view_) {
            return buf_;
        }
#endif
        return s_;
    }

    // True when the string has a NUL inside (C would see only what comes before it).
    bool has_nul() const noexcept { return nul_; }

    // The whole text, even a string_view longer than the buffer: for the calls that are no
    // hot path (a configuration may be long).
    std::string whole() const {
#ifdef LBAGENT_HPP_STRING_VIEW
        if (view_) {
            return std::string(whole_);
        }
#endif
        return s_ != nullptr ? std::string(s_) : std::string();
    }

    // True when c_str() is not the whole text (a string_view of 256 bytes or more).
    bool cut() const noexcept {
#ifdef LBAGENT_HPP_STRING_VIEW
        return view_ && whole_.size() >= sizeof buf_;
#else
        return false;
#endif
    }

private:
    const char *s_;
    bool nul_ = false;
#ifdef LBAGENT_HPP_STRING_VIEW
    bool view_ = false;
    std::string_view whole_;
    char buf_[256];
#endif
};

namespace detail {

// Throws Error(LBAGENT_ERR_INVALID_ARGUMENT) when `text` has a NUL inside.
inline void check_no_nul(const Text &text, const char *call, const char *what) {
    if (text.has_nul()) {
        throw Error(LBAGENT_ERR_INVALID_ARGUMENT,
                    std::string(call) + ": " + what + " contains a NUL character");
    }
}

// A Text for a call outside the hot path: refused with a NUL inside; a string_view too long
// for Text's buffer is passed whole (copied into `spare`).
inline const char *whole(const Text &text, std::string &spare, const char *call,
                         const char *what) {
    check_no_nul(text, call, what);
    if (!text.cut()) {
        return text.c_str();
    }
    spare = text.whole();
    return spare.c_str();
}

}  // namespace detail

// What a director asking about the server or a service would be told (lbagent_status).
struct Status {
    State state = State::Unknown;
    Reason reason = Reason::Host;
    unsigned weight_pct = 0;   // percent of the weight configured on the director
    std::uint32_t in_use = 0;  // load reported with set_load
    std::uint32_t capacity = 0;
    std::uint32_t generation = 0;  // increases on every change of what is answered
    std::uint32_t since_ms = 0;    // time in this state
    std::uint64_t instance_id = 0; // random at each start
    std::string message;           // the reason text, UTF-8

    // True when the server should receive new connections: UP with a weight above zero.
    bool serving() const noexcept { return state == State::Up && weight_pct > 0; }

    // The C structure, converted.
    static Status from_c(const lbagent_status &raw) {
        Status s;
        s.state = static_cast<State>(raw.state);
        s.reason = static_cast<Reason>(raw.reason);
        s.weight_pct = raw.weight_pct;
        s.in_use = raw.in_use;
        s.capacity = raw.capacity;
        s.generation = raw.generation;
        s.since_ms = raw.since_ms;
        s.instance_id = raw.instance_id;
        s.message = raw.message;
        return s;
    }
};

// How far a drain has come (Agent::drain_status).
struct Drain {
    bool complete = false;          // draining, every recent prober told, nothing in use
    bool draining = false;          // the answer says "no new connections"
    std::uint32_t probers_told = 0;    // probers seen within drain_window_ms, told enough
    std::uint32_t probers_pending = 0; // and those not told enough yet
    bool probers_untracked = false;    // more probers than the agent tracks asked
    std::uint32_t drain_ms = 0;        // since the answer stopped saying "serving"
    std::uint64_t in_use = 0;          // work in progress reported with set_load
    State state = State::Unknown;      // the state answered

    // The C structure, converted.
    static Drain from_c(const lbagent_drain &raw) {
        Drain d;
        d.complete = raw.complete != 0;
        d.draining = raw.draining != 0;
        d.probers_told = raw.probers_told;
        d.probers_pending = raw.probers_pending;
        d.probers_untracked = raw.probers_untracked != 0;
        d.drain_ms = raw.drain_ms;
        d.in_use = raw.in_use;
        d.state = static_cast<State>(raw.state);
        return d;
    }
};

// A running agent, owned: started by the constructor, stopped and freed by the destructor.
class Agent {
public:
    // An empty Agent, holding no agent (nothing starts, nothing is bound): for a member or a
    // variable whose agent is started later, by assigning one (`agent = Agent(config);`).
    // Its hot-path calls return LBAGENT_ERR_NULL_ARGUMENT; the others throw Error with it.
    Agent() noexcept : agent_(nullptr) {}

    // Starts an agent with `config` (key=value pairs, see the README); nullptr reads the
    // LBAGENT_CONFIG environment variable. Throws Error (LBAGENT_ERR_CONFIG, _BIND, _SYSTEM)
    // whose what() names the bad key and value or the address that could not be bound.
    explicit Agent(Text config) : agent_(nullptr) {
        std::string spare;
        const char *text = detail::whole(config, spare, "lbagent_start", "config");
        lbagent_result r = lbagent_start(text, &agent_);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_start");
        }
    }

    // Takes ownership of a handle from lbagent_start (nullptr: an empty Agent).
    static Agent adopt(lbagent *handle) noexcept { return Agent(handle, Adopt()); }

    Agent(const Agent &) = delete;
    Agent &operator=(const Agent &) = delete;

    // Moving is not thread-safe: no other call on either Agent may run meanwhile.
    Agent(Agent &&other) noexcept
        : agent_(other.agent_), log_callbacks_(std::move(other.log_callbacks_)) {
        other.agent_ = nullptr;
    }

    Agent &operator=(Agent &&other) noexcept {
        if (this != &other) {
            lbagent_free(agent_);  // before our log callbacks go
            agent_ = other.agent_;
            other.agent_ = nullptr;
            log_callbacks_ = std::move(other.log_callbacks_);
        }
        return *this;
    }

    // Stops the agent and frees it, then destroys the log callbacks (checks release their
    // own when their last run has returned). Blocks at most 5 s for the monitor thread, then
    // until a log callback that is running returns; never for a check that hangs.
    ~Agent() { lbagent_free(agent_); }

    // ---- The hot path: noexcept, return the code (LBAGENT_OK on success). ----

    // Tells the watchdog the host is alive. Async-signal-safe.
    lbagent_result heartbeat() noexcept { return lbagent_heartbeat(agent_); }

    // Sets the whole server's state; async-signal-safe when `reason` is nullptr. Setting any
    // state but Starting ends the start: the watchdog is armed from then on (as it is by the
    // first heartbeat).
    lbagent_result set_state(State state, Text reason = nullptr) noexcept {
        if (reason.has_nul()) {
            return LBAGENT_ERR_INVALID_ARGUMENT;
        }
        return lbagent_set_state(agent_, nullptr, static_cast<int>(state), reason.c_str());
    }

    // Sets one configured service's state. [[nodiscard]]: a name not listed in services=
    // returns LBAGENT_ERR_UNKNOWN_SERVICE (cast to void to ignore it on purpose).
    LBAGENT_NODISCARD lbagent_result set_state(Text service, State state,
                                               Text reason = nullptr) noexcept {
        if (service.has_nul() || reason.has_nul()) {
            return LBAGENT_ERR_INVALID_ARGUMENT;
        }
        return lbagent_set_state(agent_, service.c_str(), static_cast<int>(state),
                                 reason.c_str());
    }

    // Sets the whole server's weight, 0..=100 percent. Async-signal-safe.
    lbagent_result set_weight(unsigned weight_pct) noexcept {
        return lbagent_set_weight(agent_, nullptr, weight_pct);
    }

    // Sets one service's weight ([[nodiscard]], as set_state with a service).
    LBAGENT_NODISCARD lbagent_result set_weight(Text service, unsigned weight_pct) noexcept {
        if (service.has_nul()) {
            return LBAGENT_ERR_INVALID_ARGUMENT;
        }
        return lbagent_set_weight(agent_, service.c_str(), weight_pct);
    }

    // Reports the whole server's load (capacity 0 = unknown). Async-signal-safe.
    lbagent_result set_load(std::uint32_t in_use, std::uint32_t capacity) noexcept {
        return lbagent_set_load(agent_, nullptr, in_use, capacity);
    }

    // Reports one service's load ([[nodiscard]], as set_state with a service).
    LBAGENT_NODISCARD lbagent_result set_load(Text service, std::uint32_t in_use,
                                              std::uint32_t capacity) noexcept {
        if (service.has_nul()) {
            return LBAGENT_ERR_INVALID_ARGUMENT;
        }
        return lbagent_set_load(agent_, service.c_str(), in_use, capacity);
    }

    // ---- Everything else throws Error on failure. ----

    // What a director asking about `service` (nullptr: the whole server) is told now. An
    // unknown service gives State::Unknown, Reason::UnknownService.
    LBAGENT_NODISCARD Status status(Text service = nullptr) const {
        detail::check_no_nul(service, "lbagent_get_status", "service");
        lbagent_status raw;
        lbagent_result r = lbagent_get_status(agent_, service.c_str(), &raw);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_get_status");
        }
        return Status::from_c(raw);
    }

    // How far a drain of `service` (nullptr: the whole server) has come. Throws Error
    // (LBAGENT_ERR_WRONG_PROCESS in a forked worker, LBAGENT_ERR_UNKNOWN_SERVICE).
    LBAGENT_NODISCARD Drain drain_status(Text service = nullptr) const {
        lbagent_drain raw;
        lbagent_result r = lbagent_drain_status(agent_, service.c_str(), &raw);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_drain_status");
        }
        return Drain::from_c(raw);
    }

    // Waits until the drain of `service` (nullptr: the whole server) is complete, at most
    // `timeout_ms` (0: checks once). Returns true when complete, false on time-out (the
    // drain as it stood is drain_status()). Blocks this thread; the agent keeps answering.
    LBAGENT_NODISCARD bool wait_drained(std::uint32_t timeout_ms, Text service = nullptr) {
        lbagent_result r = lbagent_wait_drained(agent_, service.c_str(), timeout_ms);
        if (r == LBAGENT_ERR_TIMEOUT) {
            return false;
        }
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_wait_drained");
        }
        return true;
    }

    // One of the agent's counters.
    LBAGENT_NODISCARD std::uint64_t counter(Counter which) const {
        std::uint64_t value = 0;
        lbagent_result r = lbagent_get_counter(agent_, static_cast<int>(which), &value);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_get_counter");
        }
        return value;
    }

    // The UDP port bound for the index-th listen= address (useful with port 0). Throws
    // Error (LBAGENT_ERR_INVALID_ARGUMENT past the last address).
    LBAGENT_NODISCARD std::uint16_t local_port(std::size_t index = 0) const {
        return port(lbagent_local_port, "lbagent_local_port", index);
    }

    // The TCP port bound for the index-th tcp_agent= address (HAProxy agent-check).
    LBAGENT_NODISCARD std::uint16_t tcp_agent_port(std::size_t index = 0) const {
        return port(lbagent_tcp_agent_port, "lbagent_tcp_agent_port", index);
    }

    // The TCP port bound for the index-th http= address (HTTP health checks).
    LBAGENT_NODISCARD std::uint16_t http_port(std::size_t index = 0) const {
        return port(lbagent_http_port, "lbagent_http_port", index);
    }

    // Stops answering (every answer says STOPPING from now on) and waits up to `timeout_ms`
    // for the monitor thread (0 waits for ever). Idempotent. Throws on LBAGENT_ERR_TIMEOUT
    // (call again to wait again). The destructor stops too; call this to bound the wait.
    void stop(std::uint32_t timeout_ms = 1000) {
        lbagent_result r = lbagent_stop(agent_, timeout_ms);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_stop");
        }
    }

    // ---- Checks and the log callback: functions the agent calls on its own threads. ----

    // A self-check: returns true when it passes; to fail, returns false (and may set
    // `reason`) or throws (what() is the reason).
    using Check = std::function<bool(std::string &reason)>;

    // Runs `check` on a thread of the agent's at once and every `interval_ms`; while it
    // fails, or a run lasts longer than `timeout_ms` (0: no limit), the answers for `service`
    // (nullptr: the whole server) say DOWN, "check failed" or "check timed out", with the
    // message "NAME: reason". The agent owns the function and destroys it, on the check's
    // thread, once the check is removed and its last run has returned. Throws Error
    // (LBAGENT_ERR_EXISTS, _FULL, _INVALID_ARGUMENT, _UNKNOWN_SERVICE, _STOPPED).
    void add_check(Text service, Text name, Check check, std::uint32_t interval_ms,
                   std::uint32_t timeout_ms = 0) {
        detail::check_no_nul(service, "lbagent_add_check_with_free", "service");
        detail::check_no_nul(name, "lbagent_add_check_with_free", "name");
        std::unique_ptr<Check> owned(new Check(std::move(check)));
        lbagent_result r =
            lbagent_add_check_with_free(agent_, service.c_str(), name.c_str(), &run_check,
                                        owned.get(), &destroy_check, interval_ms, timeout_ms);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_add_check_with_free");  // `owned` is still ours
        }
        owned.release();  // the library's now
    }

    // Removes a check; a run in progress finishes on its own. Throws Error
    // (LBAGENT_ERR_NOT_FOUND).
    void remove_check(Text name) {
        detail::check_no_nul(name, "lbagent_remove_check", "name");
        lbagent_result r = lbagent_remove_check(agent_, name.c_str());
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_remove_check");
        }
    }

    using LogCallback = std::function<void(LogLevel level, const char *line)>;

    // Sends the agent's log lines (rate-limited) to `callback`, called on the agent's logger
    // thread; an empty function stops it. Exceptions it throws are swallowed. Every callback
    // set is kept until the Agent is destroyed (the logger may still be running one that was
    // just replaced). Thread-safe (a lock of the Agent's guards the callbacks it keeps).
    void set_log_callback(LogCallback callback) {
        lbagent_result r;
        if (!callback) {
            r = lbagent_set_log_callback(agent_, nullptr, nullptr);
        } else {
            std::unique_ptr<LogCallback> owned(new LogCallback(std::move(callback)));
            std::lock_guard<std::mutex> hold(log_mutex_);
            log_callbacks_.reserve(log_callbacks_.size() + 1);  // no throw once it is set
            r = lbagent_set_log_callback(agent_, &run_log, owned.get());
            if (r == LBAGENT_OK) {
                log_callbacks_.push_back(std::move(owned));
            }
        }
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_set_log_callback");
        }
    }

    // ---- Worker watchdog slots and fork ----

    // Claims a worker slot (config workers=N) for the calling thread or process. Throws
    // Error (LBAGENT_ERR_FULL when no slot is free).
    LBAGENT_NODISCARD unsigned worker_register() {
        unsigned slot = 0;
        lbagent_result r = lbagent_worker_register(agent_, &slot);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_worker_register");
        }
        return slot;
    }

    // Records that the worker in `slot` is alive. Async-signal-safe.
    lbagent_result worker_heartbeat(unsigned slot) noexcept {
        return lbagent_worker_heartbeat(agent_, slot);
    }

    // Releases a worker slot (LBAGENT_ERR_NOT_FOUND if it is not registered).
    lbagent_result worker_unregister(unsigned slot) noexcept {
        return lbagent_worker_unregister(agent_, slot);
    }

    // Releases the slots of worker process `pid` (after waitpid); returns how many.
    unsigned worker_release_pid(int pid) {
        unsigned released = 0;
        lbagent_result r = lbagent_worker_release_pid(agent_, pid, &released);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_worker_release_pid");
        }
        return released;
    }

    // In a child right after fork(), when it takes the agent over (a daemon whose parent
    // exits). Throws Error (LBAGENT_ERR_WRONG_PROCESS, _SYSTEM).
    void after_fork_child() {
        lbagent_result r = lbagent_after_fork_child(agent_);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_after_fork_child");
        }
    }

    // In a prefork worker right after fork(): its calls report into the parent's answers.
    void after_fork_worker() {
        lbagent_result r = lbagent_after_fork_worker(agent_);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_after_fork_worker");
        }
    }

    // The C handle, for calls the wrapper does not cover; still owned by this Agent.
    lbagent *get() const noexcept { return agent_; }

    // Gives up ownership: the caller must lbagent_free() the returned handle.
    LBAGENT_NODISCARD lbagent *release() noexcept {
        lbagent *handle = agent_;
        agent_ = nullptr;
        return handle;
    }

    // False for a moved-from or released Agent.
    explicit operator bool() const noexcept { return agent_ != nullptr; }

private:
    struct Adopt {};
    Agent(lbagent *handle, Adopt) noexcept : agent_(handle) {}

    using PortFn = lbagent_result (*)(const lbagent *, std::size_t, std::uint16_t *);
    std::uint16_t port(PortFn fn, const char *call, std::size_t index) const {
        std::uint16_t value = 0;
        lbagent_result r = fn(agent_, index, &value);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, call);
        }
        return value;
    }

    // The C callbacks behind add_check and set_log_callback: never let an exception out.
    static int run_check(void *userdata, char *message, std::size_t message_len) noexcept {
        std::string reason;
        bool passed = false;
        try {
            passed = (*static_cast<Check *>(userdata))(reason);
        } catch (const std::exception &e) {
            try {
                reason = e.what();
            } catch (...) {
            }
        } catch (...) {
            reason = "exception";
        }
        if (!passed && message_len > 0) {
            std::size_t n = reason.size() < message_len - 1 ? reason.size() : message_len - 1;
            std::memcpy(message, reason.data(), n);
            message[n] = '\0';
        }
        return passed ? 0 : 1;
    }

    static void destroy_check(void *userdata) noexcept { delete static_cast<Check *>(userdata); }

    static void run_log(void *userdata, int level, const char *line) noexcept {
        try {
            (*static_cast<LogCallback *>(userdata))(static_cast<LogLevel>(level), line);
        } catch (...) {
        }
    }

    lbagent *agent_;
    std::mutex log_mutex_;  // each Agent its own, never moved
    std::vector<std::unique_ptr<LogCallback>> log_callbacks_;
};

// ---- Probing agents, as a director does ------------------------------------------------

// Asks the agent at `target` ("HOST[:PORT]", "[IPv6]:PORT"; names are resolved) about
// `service` (nullptr: the whole server) and waits for the answer. `options`: nullptr, or
// "timeout_ms=N" (default 1000), "key_file=PATH" ["key_id=N"] (seal the probe; accept only
// answers sealed with that key). Throws Error when there is no answer, its code saying why
// (LBAGENT_ERR_TIMEOUT, _REFUSED, _UNREACHABLE, _NOT_AN_AGENT, _VERSION_MISMATCH,
// _AUTH_REQUIRED, _WRONG_KEY, _UNAUTHENTICATED) and what() "TARGET: " and the library's text; also
// LBAGENT_ERR_INVALID_ARGUMENT (bad target or service) and _CONFIG (bad options).
inline Status probe(Text target, Text service = nullptr, Text options = nullptr) {
    detail::check_no_nul(target, "lbagent_probe", "target");
    detail::check_no_nul(service, "lbagent_probe", "service");
    std::string spare;
    const char *opts = detail::whole(options, spare, "lbagent_probe", "options");
    lbagent_status raw;
    lbagent_result r = lbagent_probe(target.c_str(), service.c_str(), opts, &raw);
    if (r != LBAGENT_OK) {
        throw Error::from_probe(r, "lbagent_probe", target.c_str());
    }
    return Status::from_c(raw);
}

// One finished probe of a Prober: an answer, or the code that says why there is none.
struct ProbeResult {
    std::uint64_t token = 0;             // as given to Prober::send
    lbagent_result result = LBAGENT_OK;  // LBAGENT_OK when `status` holds the answer
    std::uint32_t rtt_us = 0;            // round-trip time (0 without an answer, or pushed)
    Status status;                       // the answer (empty unless ok())

    bool ok() const noexcept { return result == LBAGENT_OK; }

    // A change the agent pushed (a Prober made with "subscribe_ms=N"), not an answer.
    bool pushed() const noexcept { return ok() && rtt_us == 0; }

    // The answer, or throws Error with the code when there is none.
    const Status &value() const {
        if (!ok()) {
            throw Error(result, "probe " + std::to_string(token) + ": " +
                                    lbagent_strerror(static_cast<int>(result)));
        }
        return status;
    }
};

// A non-blocking prober (lbagent_prober), owned and move-only: one UDP socket on which any
// number of probes are in flight. The event loop: send() for each target; wait until fd()
// is readable (POLLIN) or timeout_ms() have passed; receive() every finished probe (each
// exactly once, answered, failed or timed out); repeat while pending() > 0. With a key only a
// sealed answer completes a probe and nothing else ends it early: at the timeout a probe the
// agent dropped (it lacks the key) but whose unsealed half-way probe it answered finishes as
// LBAGENT_ERR_WRONG_KEY, other replies as _UNAUTHENTICATED, silence as _TIMEOUT. A moved-from Prober holds
// nothing: fd() is -1, pending() 0, and send/receive throw (LBAGENT_ERR_NULL_ARGUMENT).
// With the option "subscribe_ms=N" every probe also subscribes to the agent's changes;
// receive() then also returns the changes agents push (ProbeResult::pushed()).
class Prober {
public:
    // `options` as for probe(): "timeout_ms=N" (every probe's timeout), "key_file=PATH"
    // ["key_id=N"]. Throws Error (LBAGENT_ERR_CONFIG naming the key and value, _SYSTEM).
    explicit Prober(Text options = nullptr) : prober_(nullptr) {
        std::string spare;
        const char *opts = detail::whole(options, spare, "lbagent_prober_new", "options");
        lbagent_result r = lbagent_prober_new(opts, &prober_);
        if (r != LBAGENT_OK) {
            throw Error::from_call(r, "lbagent_prober_new");
        }
    }

    Prober(const Prober &) = delete;
    Prober &operator=(const Prober &) = delete;
    Prober(Prober &&other) noexcept : prober_(other.prober_) { other.prober_ = nullptr; }
    Prober &operator=(Prober &&other) noexcept {
        if (this != &other) {
            lbagent_prober_free(prober_);
            prober_ = other.prober_;
            other.prober_ = nullptr;
        }
        return *this;
    }

    // Closes the socket and frees the prober; probes in flight are dropped.
    ~Prober() { lbagent_prober_free(prober_); }

    // The socket to poll for POLLIN; it belongs to the prober (do not read or close it).
    int fd() const noexcept { return lbagent_prober_fd(prober_); }

    // Sends one probe about `service` (nullptr: the whole server) to `target`, numeric only
    // ("IPv4[:PORT]", "[IPv6]:PORT"), and returns at once; it finishes through receive()
    // with `token`. Throws Error (LBAGENT_ERR_INVALID_ARGUMENT, _UNREACHABLE, _SYSTEM);
    // nothing is then in flight.
    void send(Text target, Text service, std::uint64_t token) {
        detail::check_no_nul(target, "lbagent_prober_send", "target");
        detail::check_no_nul(service, "lbagent_prober_send", "service");
        lbagent_result r = lbagent_prober_send(prober_, target.c_str(), service.c_str(), token);
        if (r != LBAGENT_OK) {
            throw Error::from_probe(r, "lbagent_prober_send", target.c_str());
        }
    }

    // Appends every probe finished since the last call to `out` (never blocks); returns how
    // many. Reuse `out` to keep its memory across iterations.
    std::size_t receive(std::vector<ProbeResult> &out) {
        lbagent_probe_result batch[16];
        const std::size_t capacity = sizeof batch / sizeof batch[0];
        std::size_t total = 0, count = 0;
        do {
            lbagent_result r = lbagent_prober_receive(prober_, batch, capacity, &count);
            if (r != LBAGENT_OK) {
                throw Error::from_call(r, "lbagent_prober_receive");
            }
            for (std::size_t i = 0; i < count; i++) {
                ProbeResult result;
                result.token = batch[i].token;
                result.result = static_cast<lbagent_result>(batch[i].result);
                result.rtt_us = batch[i].rtt_us;
                if (result.ok()) {
                    result.status = Status::from_c(batch[i].status);
                }
                out.push_back(std::move(result));
            }
            total += count;
        } while (count == capacity);
        return total;
    }

    // Every probe finished since the last call.
    LBAGENT_NODISCARD std::vector<ProbeResult> receive() {
        std::vector<ProbeResult> out;
        receive(out);
        return out;
    }

    // Milliseconds until receive() has something to do (a probe to expire, or a keyed probe's
    // diagnostic to send); 0 when finished probes are waiting; -1 when nothing is in flight.
    // The timeout for poll().
    int timeout_ms() const noexcept { return lbagent_prober_timeout_ms(prober_); }

    // Probes sent and not yet returned by receive().
    std::size_t pending() const noexcept { return lbagent_prober_pending(prober_); }

    // The C handle, still owned by this Prober.
    lbagent_prober *get() const noexcept { return prober_; }

    // False for a moved-from Prober.
    explicit operator bool() const noexcept { return prober_ != nullptr; }

private:
    lbagent_prober *prober_;
};

}  // namespace lbagentpp

#undef LBAGENT_NODISCARD
#undef LBAGENT_HPP_STRING_VIEW

#endif  // LBAGENT_HPP
