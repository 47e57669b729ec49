# shellcheck shell=bash
# keepalived's native UDP_CHECK, exactly as README.md documents it (require_reply 7570 "up",
# min_reply_length 2): the real_server blocks are the README's example with only the
# addresses adapted, so this checker defines no checker_block. It does not convey weights
# (a reply either starts with "up" or not), so the weight steps do not apply.
# The functions a checker may define are described at the top of guest.sh.
