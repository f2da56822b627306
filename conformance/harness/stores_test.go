package harness

import (
	"testing"
)

func TestStoreEndpoints(t *testing.T) {
	for _, c := range []struct{ dsn, want string }{
		{"postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "postgres://postgres@127.0.0.1:5432/test?application_name=s1&search_path=s1&sslmode=disable"},
		{"postgresql://u:p@h/db", "postgresql://u:p@h/db?application_name=s1&search_path=s1"},
		{"host=h user=u dbname=db", "host=h user=u dbname=db search_path=s1 application_name=s1"},
	} {
		if got, err := postgresEndpoint(c.dsn, "s1"); err != nil || got != c.want {
			t.Errorf("postgresEndpoint(%q) = %q, %v; want %q", c.dsn, got, err, c.want)
		}
	}
	for _, c := range []struct{ dsn, want string }{
		{"mysql://root@tcp(127.0.0.1:3306)/test", "mysql://root@tcp(127.0.0.1:3306)/s1"},
		{"mysql://root@127.0.0.1:3306/test", "mysql://root@tcp(127.0.0.1:3306)/s1"},
		{"mysql://u:pw@tcp(h:3307)/", "mysql://u:pw@tcp(h:3307)/s1"},
	} {
		if got, err := mysqlEndpoint(c.dsn, "s1"); err != nil || got != c.want {
			t.Errorf("mysqlEndpoint(%q) = %q, %v; want %q", c.dsn, got, err, c.want)
		}
	}
}

func TestBuildBackends(t *testing.T) {
	t.Setenv(EnvBackends, "mine=postgres://nobody@127.0.0.1:1/x?connect_timeout=1;other=mysql://nobody@tcp(127.0.0.1:1)/x")
	bs, err := buildBackends()
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 3 || bs[0].Kind != KindSQLite || bs[1].Name != "mine" || bs[1].Kind != KindPostgres || bs[2].Name != "other" || bs[2].Kind != KindMySQL {
		t.Fatalf("backends = %+v", bs)
	}
	for _, b := range bs[1:] {
		if b.Unavailable == nil {
			t.Errorf("%s: port 1 reported reachable", b.Name)
		}
	}
	t.Setenv(EnvBackends, "sqlite,oracle")
	if _, err := buildBackends(); err == nil {
		t.Error("unknown backend name accepted")
	}
	t.Setenv(EnvBackends, "x=redis://h")
	if _, err := buildBackends(); err == nil {
		t.Error("unsupported DSN accepted")
	}
	t.Setenv(EnvBackends, "sqlite")
	if bs, err := buildBackends(); err != nil || len(bs) != 1 {
		t.Errorf("sqlite only: %+v, %v", bs, err)
	}
}

func TestRedactDSN(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:secret@h:5432/db?sslmode=disable": "postgres://u:xxxxx@h:5432/db?sslmode=disable",
		"postgres://u@h/db":                             "postgres://u@h/db",
		"mysql://root:secret@tcp(127.0.0.1:3306)/test":  "mysql://root:xxxxx@tcp(127.0.0.1:3306)/test",
		"mysql://root@tcp(127.0.0.1:3306)/test":         "mysql://root@tcp(127.0.0.1:3306)/test",
		"mysql://root:secret@127.0.0.1:3306/test":       "mysql://root:xxxxx@127.0.0.1:3306/test",
	} {
		if got := RedactDSN(in); got != want {
			t.Errorf("RedactDSN(%q) = %q, want %q", in, got, want)
		}
	}
}
