package kube

import (
	"errors"
	"strings"
	"testing"
)

func TestParseAppName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want AppName
	}{
		{"shop", AppName{Namespace: "shop"}},
		{"shop:app=db", AppName{Namespace: "shop", Selector: "app=db"}},
		{"shop:app.kubernetes.io/name=db,tier in (data,cache)", AppName{Namespace: "shop", Selector: "app.kubernetes.io/name=db,tier in (data,cache)"}},
		{"shop/db", AppName{Namespace: "shop", Name: "db"}},
		{"shop/statefulset/db", AppName{Namespace: "shop", Kind: "statefulset", Name: "db"}},
		{"shop/PerconaServerMongoDB/orders", AppName{Namespace: "shop", Kind: "PerconaServerMongoDB", Name: "orders"}},
		{"shop/perconaservermongodbs.psmdb.percona.com/orders", AppName{Namespace: "shop", Kind: "perconaservermongodbs.psmdb.percona.com", Name: "orders"}},
	} {
		got, err := ParseAppName(tc.in)
		if err != nil {
			t.Errorf("ParseAppName(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseAppName(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if got.String() != tc.in {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), tc.in)
		}
	}
}

// Each error names the part that is wrong and how to write it.
func TestParseAppNameErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", []string{"empty", AppNameForms}},
		{"/db", []string{"does not start with a namespace", AppNameForms}},
		{"Shop/db", []string{`namespace "Shop" is not a namespace name`}},
		{"shop/db:app=db", []string{"a label selector goes with a namespace alone", "shop:app=db"}},
		{"shop:", []string{"label selector", "is empty", "shop:app=db"}},
		{"shop:app in x", []string{`label selector "app in x"`}},
		{"shop/a/b/c", []string{"4 parts", AppNameForms}},
		{"shop/Db", []string{`"Db" is not an object name`}},
		{"shop/stateful set/db", []string{`kind "stateful set"`}},
		{"shop/", []string{`"" is not an object name`}},
	} {
		_, err := ParseAppName(tc.in)
		if !errors.Is(err, ErrInvalidAppName) {
			t.Errorf("ParseAppName(%q): err = %v, want ErrInvalidAppName", tc.in, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("ParseAppName(%q): %q does not say %q", tc.in, err, w)
			}
		}
	}
}

func TestAppNamespace(t *testing.T) {
	for in, want := range map[string]string{"shop": "shop", "shop:app=db": "shop", "shop/db": "shop", "shop/deployment/web": "shop"} {
		if got, err := AppNamespace(in); err != nil || got != want {
			t.Errorf("AppNamespace(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := AppNamespace("shop/a/b/c"); !errors.Is(err, ErrInvalidAppName) {
		t.Errorf("AppNamespace of a bad name: err = %v", err)
	}
}
