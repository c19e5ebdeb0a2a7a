#!/usr/bin/env bash
# Install Debian packages with apt-get, waiting for another apt (unattended upgrades on a fresh VM) to let go
# of its lock; on failure, say what apt said. Used by scripts/setup.sh and by the tests (tests/conftest.py).
#
#   scripts/apt_install.sh dataset-fashion-mnist      # as root
#
# APT_LOCK_TIMEOUT: seconds to wait for a held lock (default 600). APT_LOG: apt's output, appended (default: a
# temporary file). APT_RETRY_SECONDS: pause between tries of `apt-get update` (default 5).
# `apt-get install` waits for the dpkg lock itself (-o DPkg::Lock::Timeout), but `apt-get update` (apt 2.6)
# fails at once on the package lists' lock whatever that option says, so update is retried here until the
# timeout. Exit status 0 when installed; otherwise apt's, with the log's last lines on stderr.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: $0 PACKAGE..." >&2; exit 2; }
timeout=${APT_LOCK_TIMEOUT:-600}
retry=${APT_RETRY_SECONDS:-5}
log=${APT_LOG:-$(mktemp -t apt-install.XXXXXX.log)}
export DEBIAN_FRONTEND=noninteractive

apt_get() {  # apt-get with the lock timeout; its output goes to the log after a line naming the command
  local command=(apt-get -o "DPkg::Lock::Timeout=$timeout" "$@")
  echo "\$ ${command[*]}" >>"$log"
  "${command[@]}" >>"$log" 2>&1
}

update() {  # apt-get update, tried again while another process holds the lists' lock
  local deadline=$((SECONDS + timeout)) start
  while true; do
    start=$(wc -l <"$log")
    apt_get update -q && return 0
    local status=$?
    if ! tail -n +"$((start + 1))" "$log" | grep -q "Could not get lock" || [ "$SECONDS" -ge "$deadline" ]; then
      return "$status"
    fi
    echo "[apt] another apt holds the package lists' lock; trying again in ${retry}s" >&2
    sleep "$retry"
  done
}

# A clean machine may have no package lists yet: update, then install again.
apt_get install -y -q "$@" || { update && apt_get install -y -q "$@"; }
status=$?
if [ "$status" -ne 0 ]; then
  echo "[apt] \`apt-get install $*\` failed (exit status $status); apt said (full log: $log):" >&2
  tail -n 15 "$log" | sed 's/^/    /' >&2
fi
exit "$status"
