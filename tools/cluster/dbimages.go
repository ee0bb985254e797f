package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Database images: Debian bookworm (debootstrap, minbase) plus the
// distribution's server package, with an entrypoint that initialises an
// empty data directory and execs the server. debootstrap runs once; each
// image starts from a copy of that rootfs.

const suite = "bookworm"

const mariadbEntrypoint = `#!/bin/sh
# Initialises an empty data directory, then runs MariaDB in the foreground.
# MARIADB_ROOT_PASSWORD (required) and MARIADB_DATABASE (optional).
set -e
datadir=${MARIADB_DATADIR:-/var/lib/mysql}
mkdir -p "$datadir" /run/mysqld
chown mysql:mysql "$datadir" /run/mysqld
if [ ! -d "$datadir/mysql" ]; then
  : "${MARIADB_ROOT_PASSWORD:?MARIADB_ROOT_PASSWORD is required to initialise $datadir}"
  mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db --auth-root-authentication-method=normal >/dev/null
  mariadbd --user=mysql --datadir="$datadir" --skip-networking --socket=/run/mysqld/init.sock &
  pid=$!
  i=0
  until mariadb-admin --socket=/run/mysqld/init.sock ping >/dev/null 2>&1; do
    i=$((i+1)); [ $i -lt 300 ] || { echo "mariadbd did not start" >&2; exit 1; }
    sleep 0.1
  done
  mariadb --socket=/run/mysqld/init.sock <<SQL
ALTER USER 'root'@'localhost' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD}';
CREATE USER 'root'@'%' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD}';
GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;
${MARIADB_DATABASE:+CREATE DATABASE IF NOT EXISTS ${MARIADB_DATABASE};}
SQL
  kill "$pid"
  wait "$pid" || true
fi
exec mariadbd --user=mysql --datadir="$datadir" --bind-address=0.0.0.0 --socket=/run/mysqld/mysqld.sock "$@"
`

const postgresEntrypoint = `#!/bin/sh
# Initialises an empty PGDATA, then runs PostgreSQL in the foreground as
# the postgres user. POSTGRES_PASSWORD (required) and POSTGRES_DB (optional).
set -e
bin=$(echo /usr/lib/postgresql/*/bin)
export PGDATA=${PGDATA:-/var/lib/postgresql/data}
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required to initialise $PGDATA}"
  pw=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
  chown postgres "$pw"
  as_postgres "$bin/initdb" -D "$PGDATA" --username=postgres --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pw"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  if [ -n "$POSTGRES_DB" ]; then
    as_postgres "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null <<SQL
CREATE DATABASE "$POSTGRES_DB";
SQL
  fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$PGDATA" "$@"
`

func (c *cluster) databaseImages(ctx context.Context) ([]image, error) {
	mirror, err := debianMirror()
	if err != nil {
		return nil, err
	}
	base := c.path("images", "rootfs", suite+"-minbase")
	pathEnv := "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	db := func(ref, pkg, entrypoint string, ports []string) image {
		exposed := map[string]struct{}{}
		for _, p := range ports {
			exposed[p] = struct{}{}
		}
		return image{
			ref: ref, key: stringKey(suite, mirror, pkg, entrypoint),
			rootfs: func(dir string) error {
				if err := c.debootstrap(ctx, base, mirror); err != nil {
					return err
				}
				return aptImage(ctx, base, dir, pkg, entrypoint)
			},
			config: v1.Config{Entrypoint: []string{"/usr/local/bin/entrypoint.sh"}, Env: []string{pathEnv, "LANG=C.UTF-8"}, ExposedPorts: exposed},
		}
	}
	return []image{
		db(mariadbImage, "mariadb-server", mariadbEntrypoint, []string{"3306/tcp"}),
		db(postgresImage, "postgresql", postgresEntrypoint, []string{"5432/tcp"}),
	}, nil
}

// debootstrap makes the shared base rootfs once; a marker file says it
// finished (an interrupted debootstrap is started over).
func (c *cluster) debootstrap(ctx context.Context, dir, mirror string) error {
	done := dir + ".done"
	if _, err := os.Stat(done); err == nil {
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	t := time.Now()
	logf("debootstrap --variant=minbase %s from %s (about a minute)", suite, mirror)
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant=minbase", suite, dir, mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("debootstrap: %v\n%s", err, tail(string(out), 3000))
	}
	logf("debootstrap took %.0fs", time.Since(t).Seconds())
	return os.WriteFile(done, nil, 0o644)
}

// aptImage copies base to dir and installs pkg in it with apt in a chroot.
func aptImage(ctx context.Context, base, dir, pkg, entrypoint string) error {
	t := time.Now()
	if out, err := exec.CommandContext(ctx, "cp", "-a", base+"/.", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("copying the base rootfs: %v: %s", err, out)
	}
	// apt's maintainer scripts must not start the server in the chroot.
	if err := writeFile(filepath.Join(dir, "usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n", 0o755); err != nil {
		return err
	}
	if err := copyFile("/etc/resolv.conf", filepath.Join(dir, "etc/resolv.conf"), 0o644); err != nil {
		return err
	}
	proc := filepath.Join(dir, "proc")
	if err := syscall.Mount("proc", proc, "proc", 0, ""); err != nil {
		return fmt.Errorf("mounting proc in the chroot: %w", err)
	}
	defer syscall.Unmount(proc, syscall.MNT_DETACH)
	script := "set -e; apt-get update -q; apt-get install -y -q --no-install-recommends " + pkg +
		"; apt-get clean; rm -rf /var/lib/apt/lists/* /var/lib/mysql/* /var/lib/postgresql/*"
	cmd := exec.CommandContext(ctx, "chroot", dir, "/bin/sh", "-c", script)
	cmd.Env = []string{"DEBIAN_FRONTEND=noninteractive", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get install %s in the chroot: %v\n%s", pkg, err, tail(string(out), 3000))
	}
	if err := syscall.Unmount(proc, 0); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, "usr/sbin/policy-rc.d")); err != nil {
		return err
	}
	logf("%s installed in %.0fs", pkg, time.Since(t).Seconds())
	return writeFile(filepath.Join(dir, "usr/local/bin/entrypoint.sh"), entrypoint, 0o755)
}

// debianMirror is the first bookworm "main" mirror of this machine's apt
// sources (deb822 .sources files or one-line sources.list).
func debianMirror() (string, error) {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, stanza := range strings.Split(string(b), "\n\n") {
			var uris, suites string
			for _, line := range strings.Split(stanza, "\n") {
				if v, ok := strings.CutPrefix(line, "URIs:"); ok {
					uris = strings.TrimSpace(v)
				}
				if v, ok := strings.CutPrefix(line, "Suites:"); ok {
					suites = strings.TrimSpace(v)
				}
			}
			if uris != "" && strings.Contains(" "+suites+" ", " "+suite+" ") && !strings.Contains(uris, "security") {
				return strings.Fields(uris)[0], nil
			}
		}
	}
	f, err := os.Open("/etc/apt/sources.list")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 3 && fields[0] == "deb" && fields[len(fields)-2] != "" {
				i := 1
				if strings.HasPrefix(fields[1], "[") {
					for i < len(fields) && !strings.HasSuffix(fields[i], "]") {
						i++
					}
					i++
				}
				if i+1 < len(fields) && fields[i+1] == suite && !strings.Contains(fields[i], "security") {
					return fields[i], nil
				}
			}
		}
	}
	return "", errNoMirror
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
