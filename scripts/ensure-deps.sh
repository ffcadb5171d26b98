#!/usr/bin/env bash
# Makes sure the tools the tests and the demo run are installed:
# redis-server and redis-cli (real servers in every integration test) and
# promtool (the alert-rule tests). Installs Debian's packages when missing
# and running as root, or says what to do.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (Debian packages)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  exit 0
fi
cat >&2 <<MSG
error: missing ${missing[*]}.
  redis-server and redis-cli: tests and the demo run real servers;
  promtool (Debian package prometheus): the alert-rule tests.
  Debian/Ubuntu:  sudo apt-get install -y ${missing[*]}
  elsewhere:      install Redis 7.x and Prometheus' promtool and put them on PATH,
                  or set REDIS_SERVER to the redis-server binary.
MSG
exit 1
