// cpp_server: a C++ TCP line server embedding lbagent through include/lbagent.hpp.
//
// Every line a client sends is echoed back; "STATS" answers the number of lines echoed. The
// poll() loop heart-beats once per iteration and reports its load (clients out of capacity).
// The agent lives in an lbagentpp::Agent: a bad configuration is an exception with the
// library's text; the destructor stops and frees the agent. SIGTERM drains from the signal
// handler (Agent::set_state without a reason is async-signal-safe); the loop keeps serving,
// new connections too, until Agent::drain_status says the drain is complete (every director
// that asks was told, no client left; at most kDrainLimit), then reports STOPPING and returns.
//
// Usage: cpp_server [TCP_PORT]   (default 7072; 0 lets the system choose)
// The agent is configured by LBAGENT_CONFIG, e.g. "listen=127.0.0.1:4950 watchdog_ms=1500".
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "lbagent.hpp"

namespace {

const std::uint32_t kCapacity = 32;
const std::chrono::milliseconds kDrainLimit(15000);

lbagentpp::Agent *agent_for_signals = nullptr;  // set before the handler is installed
volatile sig_atomic_t terminate_requested = 0;

void on_sigterm(int) {
    agent_for_signals->set_state(lbagentpp::State::Drain);  // async-signal-safe
    terminate_requested = 1;
}

// A socket descriptor, closed when it goes out of scope.
class Socket {
public:
    explicit Socket(int fd = -1) noexcept : fd_(fd) {}
    Socket(Socket &&other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
    Socket &operator=(Socket &&other) noexcept {
        std::swap(fd_, other.fd_);
        return *this;
    }
    Socket(const Socket &) = delete;
    Socket &operator=(const Socket &) = delete;
    ~Socket() {
        if (fd_ >= 0) {
            close(fd_);
        }
    }
    int fd() const noexcept { return fd_; }

private:
    int fd_;
};

struct Client {
    Socket socket;
    std::string pending;  // bytes read, not yet a whole line
};

Socket listen_tcp(int port, int &bound_port) {
    Socket s(socket(AF_INET, SOCK_STREAM, 0));
    int one = 1;
    sockaddr_in addr{};
    socklen_t len = sizeof addr;
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s.fd(), reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 ||
        listen(s.fd(), 16) != 0 ||
        getsockname(s.fd(), reinterpret_cast<sockaddr *>(&addr), &len) != 0) {
        return Socket();
    }
    bound_port = ntohs(addr.sin_port);
    return s;
}

void send_all(int fd, const std::string &text) {
    std::size_t sent = 0;
    while (sent < text.size()) {
        ssize_t n = send(fd, text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) {
            return;
        }
        sent += static_cast<std::size_t>(n);
    }
}

// Reads what the client sent and answers every whole line; false when it is gone.
bool serve(Client &c, unsigned long &echoed) {
    char buf[512];
    ssize_t n = read(c.socket.fd(), buf, sizeof buf);
    if (n <= 0) {
        return false;
    }
    c.pending.append(buf, static_cast<std::size_t>(n));
    std::string::size_type nl;
    while ((nl = c.pending.find('\n')) != std::string::npos) {
        std::string line = c.pending.substr(0, nl);
        c.pending.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') {
            line.pop_back();
        }
        if (line == "STATS") {
            send_all(c.socket.fd(), std::to_string(echoed) + "\n");
        } else {
            send_all(c.socket.fd(), line + "\n");
            echoed++;
        }
    }
    return c.pending.size() < 4096;  // a client that never ends its line is dropped
}

int run(int port) {
    // Start first: directors see STARTING (not ready) until the port is open.
    lbagentpp::Agent agent(nullptr);
    agent.set_state(lbagentpp::State::Starting, "opening port");

    int bound_port = 0;
    Socket listener = listen_tcp(port, bound_port);
    if (listener.fd() < 0) {
        std::perror("cpp_server: listen");
        return 1;
    }
    std::printf("cpp_server: agent on UDP port %u, serving TCP 127.0.0.1:%d (lbagent %s)\n",
                agent.local_port(), bound_port, lbagentpp::version());
    std::fflush(stdout);

    agent_for_signals = &agent;
    struct sigaction sa {};
    sa.sa_handler = on_sigterm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    agent.set_state(lbagentpp::State::Up, "ready");

    std::vector<Client> clients;
    unsigned long echoed = 0;
    bool draining = false;
    auto stop_at = std::chrono::steady_clock::time_point::max();
    while (std::chrono::steady_clock::now() < stop_at) {
        agent.heartbeat();
        agent.set_load(static_cast<std::uint32_t>(clients.size()), kCapacity);
        if (terminate_requested && !draining) {
            draining = true;  // the handler already drained; add the reason text
            agent.set_state(lbagentpp::State::Drain, "shutting down");
            stop_at = std::chrono::steady_clock::now() + kDrainLimit;
        }
        if (draining && agent.drain_status().complete) {
            break;  // every director knows, and no client is left
        }

        std::vector<pollfd> fds;
        fds.push_back(pollfd{listener.fd(), POLLIN, 0});
        for (const Client &c : clients) {
            fds.push_back(pollfd{c.socket.fd(), POLLIN, 0});
        }
        if (poll(fds.data(), fds.size(), 100) < 0) {
            if (errno == EINTR) {
                continue;
            }
            std::perror("cpp_server: poll");
            break;
        }
        std::vector<Client> still;
        for (std::size_t i = 0; i < clients.size(); i++) {
            if (!(fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) ||
                serve(clients[i], echoed)) {
                still.push_back(std::move(clients[i]));
            }
        }
        clients.swap(still);
        if (fds[0].revents & POLLIN) {
            Socket s(accept(listener.fd(), nullptr, nullptr));
            if (s.fd() >= 0 && clients.size() < kCapacity) {
                clients.push_back(Client{std::move(s), std::string()});
            }
        }
    }

    agent.set_state(lbagentpp::State::Stopping, "exiting");
    agent.stop(1000);
    // The handler uses the agent: put the defaults back before the Agent is destroyed.
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    std::printf("cpp_server: stopped after %lu lines\n", echoed);
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    try {
        return run(argc > 1 ? std::atoi(argv[1]) : 7072);
    } catch (const lbagentpp::Error &e) {
        std::fprintf(stderr, "cpp_server: lbagent: %s (%s)\n", e.what(),
                     lbagentpp::strerror(e.code()));
        return 1;
    }
}
