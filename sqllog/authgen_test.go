package sqllog

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/shimd/shimd/drivers/sqlite"
)

// TestAuthGenAddedToOldStore: a store made before the meta row had its
// auth_gen column opens, and the column takes the generation of the
// store's auth row.
func TestAuthGenAddedToOldStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shimd.db")
	be, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// The tables as schema version 1 created them, auth disabled at auth
	// revision 3 (generation 6).
	stmts := append(schemaStatements(be.Dialect.Schema()),
		`INSERT INTO shimd_meta (id, schema_version, rev, last_id, compact_rev, lease_gen, cluster_id) VALUES (1, 1, 1, 0, 0, 0, 7)`,
		`INSERT INTO shimd_auth (id, enabled, rev) VALUES (1, false, 3)`)
	for _, q := range stmts {
		if _, err := be.Write.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}

	l := openAt(t, path)
	defer l.Close()
	m, err := l.readMeta(context.Background(), l.be.Read, false)
	if err != nil || m.authGen != 6 || l.AuthGen() != 6 {
		t.Fatalf("auth_gen %d (process saw %d), %v; want 6", m.authGen, l.AuthGen(), err)
	}
	put(t, l, "k", "v")
}

// TestWriteCheckedAtStaleAuthGen: a write checked at an auth generation
// that is not the database's fails with ErrAuthStale and writes nothing,
// whether this process made the auth change or only the database knows
// it (another process's change, not yet seen here).
func TestWriteCheckedAtStaleAuthGen(t *testing.T) {
	l, _ := openTemp(t)
	ctx := context.Background()
	write := func(gen int64) error {
		return l.Write(CheckedAt(ctx, gen), func(tw *TxnWrite) error {
			tw.Put([]byte("k"), []byte("v"), 0)
			return nil
		})
	}
	gen := l.AuthGen()
	if err := write(gen); err != nil {
		t.Fatal(err)
	}
	if _, err := l.UpdateAuth(ctx, func(d *AuthData) (AuthChange, error) {
		d.Users["u"] = &AuthUser{Name: "u", Password: []byte("hash")}
		return AuthChange{Write: true, Bump: true}, nil
	}); err != nil {
		t.Fatal(err)
	}
	rev := l.Rev()
	if err := write(gen); !errors.Is(err, ErrAuthStale) || l.Rev() != rev {
		t.Fatalf("write checked before this process's auth change: %v, revision %d -> %d", err, rev, l.Rev())
	}
	gen = l.AuthGen()
	if err := write(gen); err != nil {
		t.Fatalf("write checked at the current generation: %v", err)
	}

	// Another process's change: only the meta row says so.
	if _, err := l.be.Write.Exec(`UPDATE shimd_meta SET auth_gen = auth_gen + 2 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	rev = l.Rev()
	if err := write(gen); !errors.Is(err, ErrAuthStale) || l.Rev() != rev {
		t.Fatalf("write checked before a change only the database knows: %v, revision %d -> %d", err, rev, l.Rev())
	}
	if l.AuthGen() != gen+2 {
		t.Fatalf("the process saw generation %d, want %d", l.AuthGen(), gen+2)
	}
	if err := write(0); err != nil {
		t.Fatalf("an unchecked write (the lessor's): %v", err)
	}
}
