package blueprint

import (
	"errors"
	"strings"
	"testing"
)

func TestSecretsRenderAsPlaceholdersAndResolveLater(t *testing.T) {
	got, err := ResolveSecrets("ApiKey "+SecretPlaceholder("apiKey")+" for "+SecretPlaceholder("user"), func(name string) (string, error) {
		return map[string]string{"apiKey": "k3y", "user": "ops"}[name], nil
	})
	if err != nil || got != "ApiKey k3y for ops" {
		t.Fatalf("%q, %v", got, err)
	}
	_, err = ResolveSecrets(SecretPlaceholder("nope"), func(string) (string, error) { return "", errors.New("not declared") })
	if err == nil || !strings.Contains(err.Error(), `secret "nope": not declared`) {
		t.Fatalf("err = %v", err)
	}
}

func TestSecretTransformedIsCaught(t *testing.T) {
	for text, want := range map[string]bool{
		`{{ .Secrets.password }}`:               false,
		`ApiKey {{ .Secrets.apiKey }}`:          false,
		`{{ index .Secrets "db-pass" }}`:        false,
		`{{ printf "%q" .Secrets.password }}`:   true,
		`{{ .Secrets.password | printf "%s" }}`: true,
		`{{ if .Secrets.password }}x{{ end }}`:  true,
		`{{ $p := .Secrets.password }}{{ $p }}`: true,
		`{{ .App.Name }} has no secret`:         false,
	} {
		if got := secretTransformed(text); got != want {
			t.Errorf("secretTransformed(%q) = %v, want %v", text, got, want)
		}
	}
}
