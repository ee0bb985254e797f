#!/usr/bin/env bash
# Installs what the tests need from apt: the database servers that
# tests/dbserver starts (mariadb-server's mariadbd, PostgreSQL 15 under
# /usr/lib/postgresql/15/bin) and xfsprogs for the snapshotter's reflink test. Idempotent:
# installs only what is missing. Needs root (CI runs as root).
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin

export DEBIAN_FRONTEND=noninteractive
# Serialise with test binaries that install the same packages themselves
# (tests/dbserver holds this lock around apt-get too).
exec 9>/tmp/tidemark-apt.lock
flock 9

updated=0
apt_install() {
  if [ "$updated" = 0 ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    updated=1
  fi
  # The package's postinst may try to start a system service; whether that
  # works does not matter (the tests run their own instances), so judge the
  # install by the binaries it leaves, below.
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" || true
}

# mariadbd lives in /usr/sbin, which a non-login PATH may lack.
have_mariadbd() { PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v mariadbd >/dev/null 2>&1; }

if ! have_mariadbd; then
  echo "install-test-deps: installing mariadb-server"
  apt_install mariadb-server
  have_mariadbd || { # mkfs.xfs, for the snapshotter's reflink test on an XFS loop image. Without
# it (or without loop devices) that one test skips and says why.
if ! PATH="$PATH:/usr/sbin:/sbin" command -v mkfs.xfs >/dev/null 2>&1; then
  echo "install-test-deps: installing xfsprogs"
  apt_install xfsprogs
fi

echo "install-test-deps: mariadbd still missing after apt-get install mariadb-server" >&2; exit 1; }
fi

if [ ! -x "$PG_BIN/postgres" ]; then
  echo "install-test-deps: installing postgresql-15"
  apt_install postgresql-15
  [ -x "$PG_BIN/postgres" ] || { echo "install-test-deps: $PG_BIN/postgres still missing after apt-get install postgresql-15" >&2; exit 1; }
fi

# mkfs.xfs, for the snapshotter's reflink test on an XFS loop image. Without
# it (or without loop devices) that one test skips and says why.
if ! PATH="$PATH:/usr/sbin:/sbin" command -v mkfs.xfs >/dev/null 2>&1; then
  echo "install-test-deps: installing xfsprogs"
  apt_install xfsprogs
fi

echo "install-test-deps: mariadbd $(PATH="$PATH:/usr/sbin" mariadbd --version 2>/dev/null | head -1 | awk '{print $3}'), postgres $("$PG_BIN/postgres" --version | awk '{print $3}')"
