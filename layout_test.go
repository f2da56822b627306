package shimd_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// The layout rules of docs/architecture.md, checked over the product code
// (tests and the conformance module aside), so that they cannot erode
// unnoticed: a type's methods live in at most maxMethodFiles files, no file
// is longer than maxFileLines, the schema's DDL is written once, and the
// gRPC layer never builds the function the log's writer runs.
const (
	maxMethodFiles = 4
	maxFileLines   = 450
)

// productFiles returns the repository's Go files outside tests and the
// conformance module, by path relative to the repository.
func productFiles(t *testing.T) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (path == "conformance" || strings.HasPrefix(d.Name(), ".") && path != ".") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 20 {
		t.Fatalf("found only %d product files: not run from the repository root?", len(out))
	}
	return out
}

func TestLayoutMethodsAndFileLength(t *testing.T) {
	fset := token.NewFileSet()
	files := map[string]map[string]bool{} // "dir.Type" -> files with its methods
	for _, path := range productFiles(t) {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(src), "\n"); n > maxFileLines {
			t.Errorf("%s has %d lines (at most %d)", path, n, maxFileLines)
		}
		f, err := parser.ParseFile(fset, path, src, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv == nil {
				continue
			}
			typ := fn.Recv.List[0].Type
			if st, ok := typ.(*ast.StarExpr); ok {
				typ = st.X
			}
			if ix, ok := typ.(*ast.IndexExpr); ok {
				typ = ix.X
			}
			id, ok := typ.(*ast.Ident)
			if !ok {
				continue
			}
			key := filepath.Dir(path) + "." + id.Name
			if files[key] == nil {
				files[key] = map[string]bool{}
			}
			files[key][filepath.Base(path)] = true
		}
	}
	if len(files) < 20 {
		t.Fatalf("found methods of only %d types", len(files))
	}
	for typ, fs := range files {
		if len(fs) > maxMethodFiles {
			var names []string
			for f := range fs {
				names = append(names, f)
			}
			sort.Strings(names)
			t.Errorf("the methods of %s are spread over %d files (at most %d): %v", typ, len(fs), maxMethodFiles, names)
		}
	}
}

func TestLayoutSchemaWrittenOnce(t *testing.T) {
	fset := token.NewFileSet()
	found := 0
	for _, path := range productFiles(t) {
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING || !strings.Contains(strings.ToUpper(lit.Value), "CREATE TABLE") {
				return true
			}
			found++
			if path != filepath.Join("sqllog", "schema.go") {
				t.Errorf("%s: DDL (CREATE TABLE): the schema belongs in sqllog/schema.go, with dialect hooks in drivers", fset.Position(lit.Pos()))
			}
			return true
		})
	}
	if found == 0 {
		t.Error("no CREATE TABLE statement found at all")
	}
}

// The gRPC layer validates and delegates: the function run inside the
// log's writer (over a *sqllog.TxnWrite) is built by the apply layer,
// server/txn, never by package server itself.
func TestLayoutServerDelegates(t *testing.T) {
	for _, path := range productFiles(t) {
		if filepath.Dir(path) != "server" {
			continue
		}
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(src), "sqllog.TxnWrite") {
			t.Errorf("%s works on a sqllog.TxnWrite: writes go through server/txn", path)
		}
	}
}

// Every file the architecture's request path names exists.
func TestLayoutDocumentedPath(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	i := strings.Index(s, "## The code: one Put")
	if i < 0 {
		t.Fatal("docs/architecture.md has no section \"The code: one Put\"")
	}
	block := s[i:]
	start := strings.Index(block, "```text\n")
	end := strings.Index(block[start+8:], "```")
	if start < 0 || end < 0 {
		t.Fatal("the section has no text block")
	}
	fileRE := regexp.MustCompile(`[a-z/]*[a-z_]+\.go`)
	checked := 0
	for _, line := range strings.Split(block[start+8:start+8+end], "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.Contains(fields[0], "<") {
			continue
		}
		for _, f := range fileRE.FindAllString(fields[0], -1) {
			checked++
			if _, err := os.Stat(f); err != nil {
				t.Errorf("docs/architecture.md names %s on the request path, which does not exist", f)
			}
		}
	}
	if checked < 8 {
		t.Errorf("only %d files checked on the documented path", checked)
	}
}
