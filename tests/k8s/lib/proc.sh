# Processes this tier started, recognised by PID and executable. Sourced by lib/common.sh
# (cluster.sh) and node2.sh.
# shellcheck shell=bash

# The process started under NAME is still running: same PID, same executable. A zombie or a
# recycled PID has no or another /proc/PID/exe, so neither counts.
pid_is() {
    local pid=$1 exe=$2 actual
    actual=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [ "${actual% (deleted)}" = "$exe" ]
}
