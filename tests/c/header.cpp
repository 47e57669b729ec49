// The header compiled as C++ (-std=c++11 -Wall -Wextra -Werror -pedantic) and used.
#include <cstdio>
#include <cstring>

#include "lbagent.h"

int main() {
    lbagent *agent = nullptr;
    if (lbagent_start("listen=127.0.0.1:0", &agent) != LBAGENT_OK) {
        char msg[256];
        lbagent_last_error(msg, sizeof msg);
        std::fprintf(stderr, "header.cpp: %s\n", msg);
        return 1;
    }
    lbagent_status status;
    std::memset(&status, 0, sizeof status);
    if (lbagent_get_status(agent, nullptr, &status) != LBAGENT_OK ||
        status.state != LBAGENT_STATE_STARTING) {
        return 1;
    }
    lbagent_result r = lbagent_set_state(agent, nullptr, LBAGENT_STATE_UP, "ready");
    lbagent_free(agent);
    std::printf("header.cpp: ok (%s, lbagent %s)\n", lbagent_strerror(r), LBAGENT_VERSION);
    return r == LBAGENT_OK ? 0 : 1;
}
