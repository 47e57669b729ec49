# shellcheck shell=bash
# keepalived's native UDP_CHECK with require_reply "up": docs/DIRECTORS.md's (and README.md's)
# ```keepalived udp-check block. No helper, no fork. A reply either starts with "up" or not,
# so it does not convey weights (no weight steps), and a drain takes the server out like DOWN.
# The functions a checker defines are described at the top of guest.sh.

checker_snippet() { echo udp-check; }
