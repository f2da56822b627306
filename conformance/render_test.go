package conformance

import (
	"crypto/sha256"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

// normalize converts clientv3 response types to their wire messages, deep
// copies them through the wire encoding (so nil and empty compare equal, as
// on the wire) and zeroes the header fields that legitimately differ between
// servers: cluster_id, member_id and raft_term, at every nesting level.
func normalize(v any) any {
	switch r := v.(type) {
	case nil:
		return nil
	case *clientv3.GetResponse:
		v = (*pb.RangeResponse)(r)
	case *clientv3.PutResponse:
		v = (*pb.PutResponse)(r)
	case *clientv3.DeleteResponse:
		v = (*pb.DeleteRangeResponse)(r)
	case *clientv3.TxnResponse:
		v = (*pb.TxnResponse)(r)
	case *clientv3.CompactResponse:
		v = (*pb.CompactionResponse)(r)
	case []*pb.RangeResponse: // a RangeStream's chunks
		out := make([]any, len(r))
		for i, m := range r {
			out[i] = normalize(m)
		}
		return out
	}
	m, ok := v.(proto.Message)
	if !ok {
		return v
	}
	if reflect.ValueOf(m).IsNil() {
		return v
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Sprintf("<marshal error: %v>", err)
	}
	cp := m.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(b, cp); err != nil {
		return fmt.Sprintf("<unmarshal error: %v>", err)
	}
	clearHeaders(reflect.ValueOf(cp))
	return cp
}

var headerType = reflect.TypeOf(&pb.ResponseHeader{})

func clearHeaders(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return
		}
		if v.Type() == headerType {
			h := v.Interface().(*pb.ResponseHeader)
			h.ClusterId, h.MemberId, h.RaftTerm = 0, 0, 0
			return
		}
		clearHeaders(v.Elem())
	case reflect.Interface:
		if !v.IsNil() {
			clearHeaders(v.Elem())
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				clearHeaders(v.Field(i))
			}
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			clearHeaders(v.Index(i))
		}
	}
}

// ignoreXXX compares messages by their fields, not their bookkeeping
// (size cache, unknown fields, internal state).
var ignoreXXX = protocmp.Transform()

// render prints a message as one field per line; short sub-messages (e.g. a
// KeyValue) stay on one line. Zero fields are omitted, bytes are Go-quoted.
func render(v any) []string {
	if v == nil {
		return []string{"<nil>"}
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return []string{"<nil>"}
		}
		rv = rv.Elem()
	}
	if rv.Kind() != reflect.Struct {
		return []string{fmt.Sprint(v)}
	}
	var out []string
	walkFields(rv, func(name string, f reflect.Value) {
		out = append(out, renderField(name, f, "")...)
	})
	if len(out) == 0 {
		out = []string{"{}"}
	}
	return out
}

func renderField(name string, f reflect.Value, indent string) []string {
	if f.Kind() == reflect.Slice && f.Type().Elem().Kind() != reflect.Uint8 {
		var out []string
		for i := 0; i < f.Len(); i++ {
			out = append(out, renderField(fmt.Sprintf("%s[%d]", name, i), f.Index(i), indent)...)
		}
		return out
	}
	line := oneLineValue(f)
	if len(line) <= 110 || !isMessage(f) {
		return []string{indent + name + ": " + line}
	}
	out := []string{indent + name + ":"}
	sv := f
	for sv.Kind() == reflect.Pointer || sv.Kind() == reflect.Interface {
		sv = sv.Elem()
	}
	walkFields(sv, func(n string, ff reflect.Value) {
		out = append(out, renderField(n, ff, indent+"    ")...)
	})
	return out
}

func isMessage(v reflect.Value) bool {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return false
		}
		v = v.Elem()
	}
	return v.Kind() == reflect.Struct
}

// oneLine renders any message on a single line (for op descriptions).
func oneLine(v any) string {
	return oneLineValue(reflect.ValueOf(v))
}

func oneLineValue(v reflect.Value) string {
	switch v.Kind() {
	case reflect.Invalid:
		return "<nil>"
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return "<nil>"
		}
		return oneLineValue(v.Elem())
	case reflect.Struct:
		var parts []string
		walkFields(v, func(name string, f reflect.Value) {
			parts = append(parts, name+":"+oneLineValue(f))
		})
		return "{" + strings.Join(parts, " ") + "}"
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return quoteTrunc(v.Bytes())
		}
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = oneLineValue(v.Index(i))
		}
		return "[" + strings.Join(parts, " ") + "]"
	case reflect.Int32:
		if s, ok := v.Interface().(fmt.Stringer); ok {
			return s.String() // enums
		}
	}
	return fmt.Sprint(v.Interface())
}

// walkFields visits the non-zero proto fields of a generated struct, naming
// them as in the .proto file. Oneof wrappers are flattened, keeping zero
// values there (a Compare against version 0 must show "version:0").
func walkFields(v reflect.Value, fn func(name string, f reflect.Value)) {
	walkFieldsZero(v, false, fn)
}

func walkFieldsZero(v reflect.Value, keepZero bool, fn func(name string, f reflect.Value)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if !sf.IsExported() || strings.HasPrefix(sf.Name, "XXX_") {
			continue
		}
		f := v.Field(i)
		if f.IsZero() && !keepZero {
			continue
		}
		if _, ok := sf.Tag.Lookup("protobuf_oneof"); ok {
			w := f.Elem() // *Wrapper
			if w.Kind() == reflect.Pointer && !w.IsNil() {
				walkFieldsZero(w.Elem(), true, fn)
			}
			continue
		}
		fn(protoName(sf), f)
	}
}

func protoName(sf reflect.StructField) string {
	for _, part := range strings.Split(sf.Tag.Get("protobuf"), ",") {
		if n, ok := strings.CutPrefix(part, "name="); ok {
			return n
		}
	}
	return sf.Name
}

// quoteTrunc quotes bytes Go-style; long values are cut and fingerprinted.
func quoteTrunc(b []byte) string {
	if len(b) <= 48 {
		return strconv.Quote(string(b))
	}
	sum := sha256.Sum256(b)
	return fmt.Sprintf("%s…(len=%d sha256=%x)", strconv.Quote(string(b[:24])), len(b), sum[:6])
}
