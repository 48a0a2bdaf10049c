#!/usr/bin/env bash
# Install alarmgw on Raspberry Pi OS / Debian, or remove it (docs/install.md).
#
#   sudo scripts/install.sh                 install (or update) on this machine
#   sudo scripts/install.sh --uninstall     remove program, unit, user config for sysusers/udev
#   sudo scripts/install.sh --uninstall --purge   ... and /etc/alarmgw, /var/lib/alarmgw
#
# Idempotent: running it again changes nothing that is already in place. It never overwrites
# /etc/alarmgw/gateway.toml or an existing signing key, and uninstall keeps both (and the
# outbox in /var/lib/alarmgw, which may still hold unacknowledged alarms) unless --purge.
#
# Steps: the system user `alarmgw` in groups gpio and dialout (systemd-sysusers), the udev
# rule for /dev/gpiochip*, a virtual environment PREFIX/venv with alarmgw from this source
# tree (pip), the link /usr/local/bin/alarmgw to it, /etc/alarmgw/gateway.toml from
# config/gateway.example.toml, the gateway's Ed25519 key (alarmgw keygen) if absent, the
# systemd unit, enabled (not started: edit the config first).
#
# Options:
#   --root DIR    treat DIR as the file system root (for images and tests; DESTDIR=DIR too):
#                 users go to DIR/etc/passwd, files under DIR, `systemctl --root=DIR enable`.
#   --prefix DIR  where the program lives (default /opt/alarmgw; the venv is PREFIX/venv).
#   --venv DIR    use this existing virtual environment that already has alarmgw installed
#                 (no pip run); the unit runs DIR/bin/alarmgw. Needed with --root, because a
#                 venv built inside a scratch root would point at the scratch path.
#   --uninstall   remove instead of install; --purge with it also removes config, keys, state.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${DESTDIR:-}
PREFIX=/opt/alarmgw
VENV=""
ACTION=install
PURGE=0

die() { echo "install.sh: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --root=*) ROOT=${1#--root=}; shift ;;
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) PREFIX=${1#--prefix=}; shift ;;
    --venv) VENV=${2:?--venv needs a directory}; shift 2 ;;
    --venv=*) VENV=${1#--venv=}; shift ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

ROOT=${ROOT%/}
if [ -n "$ROOT" ]; then
  [ -d "$ROOT" ] || die "--root $ROOT is not a directory"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" = / ] && ROOT=""
fi
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
[ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || die "--purge goes with --uninstall"
[ "$(id -u)" = 0 ] || die "run as root (sudo)"
if [ "$ACTION" = install ]; then
  # Checked before anything is changed.
  [ -z "$ROOT" ] || [ -n "$VENV" ] || die "--root needs --venv (see --help)"
  [ -z "$VENV" ] || [ -x "$VENV/bin/alarmgw" ] || die "$VENV/bin/alarmgw not found: --venv must have alarmgw installed"
fi

ETC=$ROOT/etc/alarmgw
STATE=$ROOT/var/lib/alarmgw
UNIT_DIR=$ROOT/etc/systemd/system
UNIT=$UNIT_DIR/alarmgw.service
SYSUSERS=$ROOT/etc/sysusers.d/alarmgw.conf
UDEV=$ROOT/etc/udev/rules.d/60-alarmgw-gpio.rules
OWN_VENV=$ROOT$PREFIX/venv
LINK=$ROOT/usr/local/bin/alarmgw

systemctl_() {
  command -v systemctl >/dev/null 2>&1 || { say "no systemctl: skipped systemctl $*"; return 0; }
  if [ -n "$ROOT" ]; then
    systemctl --root="$ROOT" "$@"
  else
    systemctl "$@"
  fi
}

# uid:gid of a user, read from ROOT/etc/passwd (it need not exist on the host).
owner_of() {
  awk -F: -v u="$1" '$1 == u { print $3 ":" $4; found = 1 } END { exit !found }' \
    "$ROOT/etc/passwd" || die "user $1 missing in $ROOT/etc/passwd"
}

gid_of() {
  awk -F: -v g="$1" '$1 == g { print $3; found = 1 } END { exit !found }' \
    "$ROOT/etc/group" || die "group $1 missing in $ROOT/etc/group"
}

do_install() {
  local bin kid
  # 1. User and groups (idempotent by design of systemd-sysusers).
  install -D -m 0644 "$SRC/systemd/alarmgw.sysusers" "$SYSUSERS"
  if [ -n "$ROOT" ]; then
    systemd-sysusers --root="$ROOT" alarmgw.conf
  else
    systemd-sysusers alarmgw.conf
  fi
  install -D -m 0644 "$SRC/systemd/60-alarmgw-gpio.rules" "$UDEV"

  # 2. The program.
  if [ -n "$VENV" ]; then
    bin=$VENV/bin/alarmgw
  else
    [ -x "$OWN_VENV/bin/python" ] || python3 -m venv "$OWN_VENV"
    "$OWN_VENV/bin/python" -m pip install -q --upgrade pip
    "$OWN_VENV/bin/python" -m pip install -q "$SRC"
    bin=$OWN_VENV/bin/alarmgw
  fi
  # `alarmgw` on PATH for technicians: a link to the program (never over someone else's file).
  install -d -m 0755 "$(dirname "$LINK")"
  if [ -e "$LINK" ] && [ ! -L "$LINK" ]; then
    say "$LINK exists and is not a link: left alone; run $bin instead"
  elif [ "$(readlink "$LINK" || true)" != "$bin" ]; then
    ln -sfn "$bin" "$LINK"
  fi

  # 3. Config and state directories. The daemon reads /etc/alarmgw as user alarmgw.
  local own gid
  own=$(owner_of alarmgw)
  gid=$(gid_of alarmgw)
  install -d -m 0750 -o 0 -g "$gid" "$ETC"
  install -d -m 0700 -o "${own%:*}" -g "${own#*:}" "$STATE"
  if [ ! -e "$ETC/gateway.toml" ]; then
    install -m 0640 -o 0 -g "$gid" "$SRC/config/gateway.example.toml" "$ETC/gateway.toml"
    say "wrote $ETC/gateway.toml from the example: edit it (docs/configuration.md)"
  fi

  # 4. The gateway's signing key, once. Mode 0600, owned by the daemon's user.
  if [ ! -e "$ETC/gateway.key" ]; then
    kid=$("$bin" keygen --out "$ETC" --name gateway)
    say "new gateway key, kid $kid: register $ETC/gateway.pub with the command center"
  fi
  chown "$own" "$ETC/gateway.key" "$ETC/gateway.pub"
  chmod 0600 "$ETC/gateway.key"
  chmod 0644 "$ETC/gateway.pub"

  # 5. The unit, pointing at the program, enabled.
  install -d -m 0755 "$UNIT_DIR"
  sed "s#/opt/alarmgw/venv/bin/alarmgw#$bin#" "$SRC/systemd/alarmgw.service" >"$UNIT.tmp"
  chmod 0644 "$UNIT.tmp"
  mv "$UNIT.tmp" "$UNIT"
  [ -n "$ROOT" ] || systemctl_ daemon-reload || true
  systemctl_ enable alarmgw.service
  say "installed. Next: put the center's public key at /etc/alarmgw/center.pub, edit"
  say "/etc/alarmgw/gateway.toml, check it: sudo -u alarmgw $bin config check /etc/alarmgw/gateway.toml"
  say "then start: systemctl start alarmgw; follow: journalctl -u alarmgw -f"
}

do_uninstall() {
  if [ -z "$ROOT" ]; then
    systemctl_ stop alarmgw.service 2>/dev/null || true
  fi
  if [ -e "$UNIT" ]; then
    systemctl_ disable alarmgw.service || true
    rm -f "$UNIT"
  fi
  [ -n "$ROOT" ] || systemctl_ daemon-reload || true
  rm -f "$SYSUSERS" "$UDEV"
  # Only our link (to some venv's bin/alarmgw), never a file someone else put there.
  case "$(readlink "$LINK" || true)" in */bin/alarmgw) rm -f "$LINK" ;; esac
  if [ -d "$OWN_VENV" ]; then
    rm -rf "$OWN_VENV"
    rmdir "$ROOT$PREFIX" 2>/dev/null || true
  fi
  if [ "$PURGE" = 1 ]; then
    rm -rf "$ETC" "$STATE"
    say "removed; purged $ETC and $STATE. The system user alarmgw stays (Debian practice)."
  else
    say "removed; kept $ETC (config, keys) and $STATE (outbox): --purge removes them."
  fi
}

if [ "$ACTION" = install ]; then do_install; else do_uninstall; fi
