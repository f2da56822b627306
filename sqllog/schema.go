package sqllog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/shimd/shimd/drivers"
)

// SchemaVersion is the layout of the tables this code reads and writes.
const SchemaVersion = 1

// shimd's tables, and the log's index on revisions.
const (
	metaTable   = "shimd_meta"
	logTable    = "shimd_log"
	leaseTable  = "shimd_lease"
	alarmTable  = "shimd_alarm"
	memberTable = "shimd_member"
	logRevIndex = "shimd_log_rev"
	// etcd's auth store: the enabled flag and auth revision (one row),
	// users, roles with their permissions, and issued simple tokens.
	authTable      = "shimd_auth"
	authUserTable  = "shimd_auth_user"
	authRoleTable  = "shimd_auth_role"
	authTokenTable = "shimd_auth_token"
	// Each member's address for wake-ups after commits (package peerwake).
	memberWakeTable = "shimd_member_wake"
)

// tableNames is how the drivers learn the tables' names.
var tableNames = drivers.Tables{
	Meta:   metaTable,
	Log:    logTable,
	Lease:  leaseTable,
	Alarm:  alarmTable,
	Member: memberTable,
}

// schemaStatements returns the statements that create shimd's tables if
// absent, spelled as s says. Databases created by earlier versions hold
// tables made by exactly these statements, so a change here is a change of
// SchemaVersion. SQLite keeps each CREATE TABLE's text as written, layout
// included, in sqlite_master: the layout below is the one it has always had.
func schemaStatements(s drivers.Schema) []string {
	var stmts []string
	if s.Lock != "" {
		stmts = append(stmts, s.Lock)
	}
	check := func(expr string) string {
		if !s.Checks {
			return ""
		}
		return " CHECK (" + expr + ")"
	}
	type index struct{ name, columns string }
	table := func(name string, columns []string, indexes ...index) {
		var after []string
		for _, ix := range indexes {
			if s.InlineIndexes {
				columns = append(columns, "INDEX "+ix.name+" ("+ix.columns+")")
			} else {
				after = append(after, "CREATE INDEX IF NOT EXISTS "+ix.name+" ON "+name+" ("+ix.columns+")")
			}
		}
		stmts = append(stmts, "CREATE TABLE IF NOT EXISTS "+name+" (\n\t\t\t"+
			strings.Join(columns, ",\n\t\t\t")+"\n\t\t)"+s.TableOptions)
		stmts = append(stmts, after...)
	}

	// The one row of the log's state; revisions are allocated from it.
	table(metaTable, []string{
		"id " + s.Int + " PRIMARY KEY" + check("id = 1"),
		"schema_version " + s.BigInt + " NOT NULL",
		"rev " + s.BigInt + " NOT NULL",
		"last_id " + s.BigInt + " NOT NULL",
		"compact_rev " + s.BigInt + " NOT NULL",
		"lease_gen " + s.BigInt + " NOT NULL",
		"cluster_id " + s.BigInt + " NOT NULL",
	})
	// One row per key changed by a revision.
	table(logTable, []string{
		"id " + s.BigInt + " PRIMARY KEY",
		"rev " + s.BigInt + " NOT NULL",
		"sub " + s.BigInt + " NOT NULL",
		"kv_key " + s.Key + " NOT NULL",
		"value " + s.Bytes + " NOT NULL",
		"create_rev " + s.BigInt + " NOT NULL",
		"version " + s.BigInt + " NOT NULL",
		"lease " + s.BigInt + " NOT NULL",
		"deleted " + s.Bool + " NOT NULL",
	}, index{logRevIndex, "rev, id"})
	table(leaseTable, []string{
		"id " + s.BigInt + " PRIMARY KEY",
		"ttl " + s.BigInt + " NOT NULL",
		"expires_at " + s.BigInt + " NOT NULL",
	})
	table(alarmTable, []string{
		"member_id " + s.BigInt + " NOT NULL",
		"alarm " + s.Int + " NOT NULL",
		"PRIMARY KEY (member_id, alarm)",
	})
	table(memberTable, []string{
		"id " + s.BigInt + " PRIMARY KEY",
		"name " + s.Text + " NOT NULL",
		"client_urls " + s.Text + " NOT NULL",
		"heartbeat_at " + s.BigInt + " NOT NULL",
	})
	// Auth tables, added after schema version 1 without changing it: they
	// are created where absent, and an absent auth row reads as etcd's
	// fresh auth store (disabled, revision 1). Names are keyed by a hash
	// of the name (MySQL cannot index a BLOB whole).
	table(authTable, []string{
		"id " + s.Int + " PRIMARY KEY" + check("id = 1"),
		"enabled " + s.Bool + " NOT NULL",
		"rev " + s.BigInt + " NOT NULL",
	})
	table(authUserTable, []string{
		"name_hash " + s.BigInt + " NOT NULL",
		"name " + s.Key + " NOT NULL",
		"password " + s.Bytes + " NOT NULL",
		"no_password " + s.Bool + " NOT NULL",
		"roles " + s.Bytes + " NOT NULL",
	}, index{authUserTable + "_hash", "name_hash"})
	table(authRoleTable, []string{
		"name_hash " + s.BigInt + " NOT NULL",
		"name " + s.Key + " NOT NULL",
		"perms " + s.Bytes + " NOT NULL",
	}, index{authRoleTable + "_hash", "name_hash"})
	table(authTokenTable, []string{
		"token_hash " + s.BigInt + " NOT NULL",
		"token " + s.Key + " NOT NULL",
		"user_name " + s.Key + " NOT NULL",
		"expires_at " + s.BigInt + " NOT NULL",
	}, index{authTokenTable + "_hash", "token_hash"})
	// Added after schema version 1 as the auth tables were: beside
	// shimd_member rather than a column of it, so that no table changes.
	table(memberWakeTable, []string{
		"member_id " + s.BigInt + " PRIMARY KEY",
		"addr " + s.Text + " NOT NULL",
	})
	return stmts
}

func (st *store) initSchema(ctx context.Context) error {
	tx, err := st.be.Dialect.BeginWrite(ctx, st.be.Write)
	if err != nil {
		return fmt.Errorf("begin schema transaction: %w", err)
	}
	defer tx.Rollback()
	for _, stmt := range schemaStatements(st.be.Dialect.Schema()) {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+metaTable).Scan(&n); err != nil {
		return fmt.Errorf("read meta: %w", err)
	}
	if n == 0 {
		// etcd's store starts at revision 1 with no keys.
		clusterID := rand.Int64N(1<<62) + 1
		if _, err := tx.ExecContext(ctx, st.q(`INSERT INTO `+metaTable+` (id, schema_version, rev, last_id, compact_rev, lease_gen, cluster_id) VALUES (1, ?, 1, 0, 0, 0, ?)`),
			SchemaVersion, clusterID); err != nil {
			// Another process starting at the same time got there first.
			tx.Rollback()
			if _, merr := st.readMeta(ctx, st.be.Write, false); merr == nil {
				return nil
			}
			return fmt.Errorf("init meta: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit schema: %w", err)
	}
	return st.addAuthGen(ctx)
}

// addAuthGen adds the meta row's auth_gen column where the store predates
// it: the auth generation (AuthData.Gen), kept on the row every write
// batch locks and conditions on, so that an auth change and a write are
// ordered as etcd's apply loop orders them. Older processes on the same
// database neither read nor write it; the default is a fresh auth store's.
func (st *store) addAuthGen(ctx context.Context) error {
	has := func() bool {
		var g int64
		err := st.be.Write.QueryRowContext(ctx, `SELECT auth_gen FROM `+metaTable+` WHERE id = 1`).Scan(&g)
		return err == nil
	}
	if has() {
		return nil
	}
	s := st.be.Dialect.Schema()
	if _, err := st.be.Write.ExecContext(ctx, `ALTER TABLE `+metaTable+` ADD COLUMN auth_gen `+s.BigInt+` NOT NULL DEFAULT 2`); err != nil {
		// Another process starting at the same time got there first.
		if has() {
			return nil
		}
		return fmt.Errorf("add meta auth_gen: %w", err)
	}
	// A store whose auth row exists already (restored, or written by a
	// process of this version before the column was added) keeps its
	// generation.
	_, err := st.be.Write.ExecContext(ctx, `UPDATE `+metaTable+` SET auth_gen = COALESCE((SELECT 2 * rev + CASE WHEN enabled THEN 1 ELSE 0 END FROM `+authTable+` WHERE id = 1), 2) WHERE id = 1`)
	if err != nil {
		return fmt.Errorf("set meta auth_gen: %w", err)
	}
	return nil
}
