#!/usr/bin/env bash
# Makes sure redis-server and redis-cli are installed: installs Debian's
# package when missing and running as root, or says what to do.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing redis-server (Debian package)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq redis-server >&2
  exit 0
fi
cat >&2 <<'MSG'
error: redis-server and redis-cli are needed (tests and the demo run real servers).
  Debian/Ubuntu:  sudo apt-get install -y redis-server
  elsewhere:      install Redis 7.x and put redis-server and redis-cli on PATH,
                  or set REDIS_SERVER to the redis-server binary.
MSG
exit 1
