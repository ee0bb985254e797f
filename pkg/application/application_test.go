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

func TestDirSeesEditsAndSurvivesABrokenNeighbour(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "shop.yaml")
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "aaa-broken.yaml"), []byte("kind: Application\nspec: [not, a, map]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if a, err := Dir(dir).Application("shop/mariadb"); err != nil || a.Spec.Blueprint != "mariadb" {
		t.Fatalf("a broken file hid a valid one: %+v, %v", a, err)
	}
	if _, err := Dir(dir).Application("shop/other"); err == nil || !strings.Contains(err.Error(), "aaa-broken.yaml") {
		t.Fatalf("a missing application should name the invalid file that might have defined it: %v", err)
	}
	edited := strings.Replace(good, "blueprint: mariadb", "blueprint: mariadb-logical", 1)
	if err := os.WriteFile(path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	// A coarse filesystem clock could keep the modification time: the size
	// changed too, so the edit is seen either way.
	if a, err := Dir(dir).Application("shop/mariadb"); err != nil || a.Spec.Blueprint != "mariadb-logical" {
		t.Fatalf("the edit was not seen: %+v, %v", a, err)
	}
}
