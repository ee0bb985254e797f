package application

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const good = `apiVersion: tidemark.io/v1alpha1
kind: Application
metadata: {name: shop/mariadb}
spec:
  blueprint: mariadb
  volumes: {data: /var/lib/mysql}
  connections:
    primary:
      driver: mysql
      dsn: root@tcp(127.0.0.1:3306)/
      passwordFrom: {env: SHOP_DB_PASSWORD}
`

func TestPasswordIsResolvedFromTheEnvironment(t *testing.T) {
	a, err := Parse("app.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SHOP_DB_PASSWORD", "s3cret")
	dsn, err := a.Spec.Connections["primary"].ResolvedDSN()
	if err != nil || dsn != "root:s3cret@tcp(127.0.0.1:3306)/" {
		t.Fatalf("dsn %q, %v", dsn, err)
	}
}

func TestPostgresPasswordFromFile(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("p@ss:word\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Connection{Driver: DriverPostgres, DSN: "postgres://backup@127.0.0.1:5432/app?sslmode=disable", PasswordFrom: &SecretRef{File: pw}}
	dsn, err := c.ResolvedDSN()
	if err != nil || dsn != "postgres://backup:p%40ss%3Aword@127.0.0.1:5432/app?sslmode=disable" {
		t.Fatalf("dsn %q, %v", dsn, err)
	}
}

func TestInvalidApplicationsNameTheFieldAndTheFix(t *testing.T) {
	for want, doc := range map[string]string{
		"dsn holds a password":      strings.Replace(good, "root@tcp", "root:hunter2@tcp", 1),
		"passwordFrom: set exactly": strings.Replace(good, "{env: SHOP_DB_PASSWORD}", "{env: A, file: /b}", 1),
		`driver "oracle"`:           strings.Replace(good, "driver: mysql", "driver: oracle", 1),
		"must be an absolute":       strings.Replace(good, "/var/lib/mysql", "data", 1),
		"unknown field":             strings.Replace(good, "blueprint: mariadb", "blueprint: mariadb\n  colour: blue", 1),
	} {
		_, err := Parse("app.yaml", []byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q, got %v", want, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the error repeats the password: %v", err)
		}
	}
}

func TestDirFindsApplicationsByName(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shop.yaml"), []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	// A blueprint kept next to the applications (sorted first) is not an
	// application and must not hide them.
	if err := os.WriteFile(filepath.Join(dir, "a-blueprint.yaml"), []byte("apiVersion: tidemark.io/v1alpha1\nkind: Blueprint\nmetadata: {name: x}\nspec: {actions: {}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := Dir(dir).Application("shop/mariadb")
	if err != nil || a.Spec.Blueprint != "mariadb" {
		t.Fatalf("%+v, %v", a, err)
	}
	if _, err := Dir(dir).Application("shop/other"); err == nil {
		t.Fatal("found an application no file names")
	}
}
