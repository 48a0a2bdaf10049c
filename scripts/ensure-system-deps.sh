#!/usr/bin/env bash
# Installs the system packages that `make demo` and `make test` need, only when missing:
# mosquitto (the broker the tests and demo start on loopback), gcc and the Mosquitto headers
# (the tests build its plugin), socat, python3-venv, systemd (systemd-analyze) and
# nodejs/npm; then the node packages the tests use.
# Runs `apt-get update` first because the package lists on a fresh image may be stale.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v socat >/dev/null 2>&1 || need+=(socat)
# gcc and the Mosquitto headers: the tests build config/mosquitto/alarmgw_acl.c, the
# subscription plugin of the production broker config.
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
[ -f /usr/include/mosquitto_plugin.h ] || need+=(mosquitto-dev)
[ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# systemd: systemd-analyze (unit verify/security), systemd-sysusers and systemctl (install test).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# tzdata: the IANA zones zoneinfo reads ([bollard] timezone; tests use two zones).
[ -e /usr/share/zoneinfo/Asia/Shanghai ] || need+=(tzdata)
# node and npm: the official AsyncAPI parser checks docs/asyncapi.yaml (ensure-node-deps.sh).
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
# postgresql: the center's shared store; its tests start a throwaway server with the
# initdb/pg_ctl under /usr/lib/postgresql/<ver>/bin.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# chromium and its driver: the web console's browser tests (selenium, headless).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
node_deps="$(dirname "$0")/ensure-node-deps.sh"
[ ${#need[@]} -eq 0 ] && exec "$node_deps"
echo "installing system packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d or no systemd: the packaged broker service may not start; we never use it.
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
exec "$node_deps"
