package sqlsession

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/tests/dbserver"
)

// No MongoDB server runs on these machines (Debian has no package for it),
// so MongoDB is tested as far as it can be without one: how statements
// become commands, how replies become outputs, and how a failed connection
// is reported. fsyncLock against a real server is not tested here.

func TestMongoStatementsBecomeOrderedCommands(t *testing.T) {
	cmd, err := parseCommand(`{"fsyncLock": 1, "comment": "tidemark run-1"}`)
	if err != nil {
		t.Fatal(err)
	}
	if cmd[0].Key != "fsyncLock" || cmd[1].Key != "comment" {
		t.Fatalf("command %v: the command name must stay first", cmd)
	}
	if _, err := parseCommand(`db.fsyncLock()`); err == nil || !strings.Contains(err.Error(), "Extended JSON") {
		t.Fatalf("a shell expression: err = %v", err)
	}
	if _, err := parseCommand(`{}`); err == nil {
		t.Fatal("an empty command was accepted")
	}
}

func TestMongoRepliesBecomeOutputs(t *testing.T) {
	out := flattenReply(bson.M{"ok": 1.0, "lockCount": int64(1), "info": "now locked against writes", "seeAlso": bson.D{{Key: "x", Value: 1}}})
	if out["info"] != "now locked against writes" || out["lockCount"] != "1" || out["ok"] != "1" || out["seeAlso"] != `{"x":1}` {
		t.Fatalf("outputs %v", out)
	}
}

func TestMongoConnectionFailureIsClearAndKeepsThePasswordOut(t *testing.T) {
	t.Setenv("MONGO_PW", "m0ngo-s3cret")
	c := application.Connection{Driver: application.DriverMongoDB, DSN: "mongodb://backup@127.0.0.1:1/?serverSelectionTimeoutMS=300", PasswordFrom: &application.SecretRef{Env: "MONGO_PW"}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Open(ctx, c)
	if err == nil || !strings.Contains(err.Error(), "connecting (mongodb)") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "m0ngo-s3cret") {
		t.Fatalf("the error shows the password: %v", err)
	}
}

func TestStatementsRunOnOneSessionAndErrorsHideThePassword(t *testing.T) {
	srv := dbserver.MariaDB(t)
	t.Setenv("DB_PW", srv.Password)
	c := application.Connection{Driver: application.DriverMySQL, DSN: srv.User + "@tcp(127.0.0.1:" + strconv.Itoa(srv.Port) + ")/", PasswordFrom: &application.SecretRef{Env: "DB_PW"}}
	s, err := Open(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// A session variable set by one statement is seen by the next: one session.
	out, err := s.Run(context.Background(), []string{"SET @tidemark = 'held'", "SELECT @tidemark AS v, CONNECTION_ID() AS id"})
	if err != nil || out["v"] != "held" {
		t.Fatalf("%v, %v", out, err)
	}
	again, err := s.Run(context.Background(), []string{"SELECT CONNECTION_ID() AS id"})
	if err != nil || again["id"] != out["id"] {
		t.Fatalf("second run on connection %v, first on %v (%v)", again["id"], out["id"], err)
	}
	_, err = s.Run(context.Background(), []string{"SELECT '" + srv.Password + "' FROM no_such_table"})
	if err == nil || strings.Contains(err.Error(), srv.Password) {
		t.Fatalf("err = %v", err)
	}
}
