#!/usr/bin/env bash
# Installs the system packages that `make demo` and `make test` need, only when missing:
# mosquitto (the broker the tests and demo start on loopback), socat, and python3-venv.
# Runs `apt-get update` first because the package lists on a fresh image may be stale.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v socat >/dev/null 2>&1 || need+=(socat)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d or no systemd: the packaged broker service may not start; we never use it.
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
