// Package sqlsession holds one database session open across step
// boundaries. Session-bound locks (MariaDB's FLUSH TABLES WITH READ LOCK,
// PostgreSQL's pg_backup_start) live exactly as long as the session that
// took them, so the statements that take and release them must run on the
// same connection, and that connection must not be returned to a pool.
package sqlsession

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"

	_ "github.com/go-sql-driver/mysql" // driver "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"

	"github.com/tidemark-dev/tidemark/pkg/application"
)

// Session is one live database connection.
type Session struct {
	mu      sync.Mutex
	backend backend
	secret  string
}

// backend is one driver's way to run statements on one connection.
type backend interface {
	run(ctx context.Context, statement string) (map[string]string, error)
	ping(ctx context.Context) error
	close() error
}

// sqlBackend is a database/sql connection taken out of its pool for good.
type sqlBackend struct {
	db   *sql.DB
	conn *sql.Conn
}

func (b *sqlBackend) run(ctx context.Context, stmt string) (map[string]string, error) {
	rows, err := b.conn.QueryContext(ctx, stmt)
	if err != nil {
		return nil, err
	}
	return firstRow(rows)
}

func (b *sqlBackend) ping(ctx context.Context) error { return b.conn.PingContext(ctx) }

func (b *sqlBackend) close() error { return errors.Join(b.conn.Close(), b.db.Close()) }

// Open connects with c. The connection's password is read here and kept
// only to scrub it from driver errors.
func Open(ctx context.Context, c application.Connection) (*Session, error) {
	dsn, err := c.ResolvedDSN()
	if err != nil {
		return nil, err
	}
	secret, _ := c.Password()
	var driver string
	switch c.Driver {
	case application.DriverMySQL:
		driver = "mysql"
	case application.DriverPostgres:
		driver = "pgx"
	case application.DriverMongoDB:
		b, err := openMongo(ctx, dsn)
		if err != nil {
			return nil, scrub(fmt.Errorf("connecting (mongodb): %w", err), secret)
		}
		return &Session{backend: b, secret: secret}, nil
	default:
		return nil, fmt.Errorf("sql steps support mysql, postgres and mongodb connections, not %q", c.Driver)
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, scrub(err, secret)
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, scrub(fmt.Errorf("connecting (%s): %w", c.Driver, err), secret)
	}
	return &Session{backend: &sqlBackend{db: db, conn: conn}, secret: secret}, nil
}

// Run executes statements in order on the session. The columns of the first
// row the last statement returns become the outputs.
func (s *Session) Run(ctx context.Context, statements []string) (map[string]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.backend == nil {
		return nil, errors.New("session is closed")
	}
	var out map[string]string
	for i, stmt := range statements {
		var err error
		out, err = s.backend.run(ctx, stmt)
		if err != nil {
			return nil, scrub(fmt.Errorf("statement %d (%s): %w", i+1, firstWords(stmt), err), s.secret)
		}
	}
	return out, nil
}

// Alive reports whether the session's connection still answers.
func (s *Session) Alive(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.backend == nil {
		return errors.New("session is closed")
	}
	return scrub(s.backend.ping(ctx), s.secret)
}

// Close ends the session; whatever it held is released by the server.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.backend == nil {
		return nil
	}
	err := s.backend.close()
	s.backend = nil
	return err
}

func firstRow(rows *sql.Rows) (map[string]string, error) {
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil || len(cols) == 0 {
		return nil, err
	}
	out := map[string]string{}
	if rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		for i, c := range cols {
			out[c] = vals[i].String
		}
	}
	for rows.Next() {
	}
	return out, rows.Err()
}

func firstWords(stmt string) string {
	f := strings.Fields(stmt)
	if len(f) > 4 {
		f = f[:4]
	}
	return strings.Join(f, " ")
}

// scrub removes the password from an error message, whatever the driver
// chose to put in it.
func scrub(err error, secret string) error {
	if err == nil || secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), secret, "REDACTED"))
}
