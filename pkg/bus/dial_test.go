package bus

import (
	"strings"
	"testing"
)

func TestDialConfigNamesTheBadFlag(t *testing.T) {
	for want, c := range map[string]DialConfig{
		"--nats-url":   {URL: "127.0.0.1:4222"},
		"scheme":       {URL: "http://127.0.0.1:4222"},
		"--nats-creds": {URL: "nats://127.0.0.1:4222", CredsFile: "/nonexistent/user.creds"},
		"go together":  {URL: "nats://127.0.0.1:4222", TLSCertFile: "dial_test.go"},
	} {
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: Validate() = %v, want it to mention %q", c, err, want)
		}
	}
}

func TestDialErrorsNeverShowThePassword(t *testing.T) {
	_, err := Dial(DialConfig{URL: "nats://admin:s3cret-pw@127.0.0.1:1"})
	if err == nil {
		t.Fatal("dialled a closed port")
	}
	if strings.Contains(err.Error(), "s3cret-pw") {
		t.Fatalf("error shows the password: %v", err)
	}
}
