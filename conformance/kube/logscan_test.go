package kube

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// storageRE picks the kube-apiserver log lines about storage.
var storageRE = regexp.MustCompile(`(?i)etcd|storage|rpc error|unimplemented|compact|watch chan|requestprogress|progress notif|unexpected|grpc|cacher|reflector|too old resource version|lease`)

// klogRE splits a klog line: severity, time, pid, location, message.
var klogRE = regexp.MustCompile(`^([IWEF])(\d{4} \d\d:\d\d:\d\d\.\d+)\s+\d+\s+([^\]]+)\]\s?(.*)$`)

// ignored are W/E lines that have nothing to do with storage.
var ignored = regexp.MustCompile(`Skipping API \S+ because it has no resources|The manifest file is empty, ignoring`)

// known are the warnings and errors kube-apiserver logs whatever the storage
// (they appear with the reference etcd too), with the reason they are
// harmless here. They are listed, counted, and do not fail the run.
var known = []struct {
	re     *regexp.Regexp
	reason string
}{
	{regexp.MustCompile(`addrConn.createTransport failed to connect .*(operation was canceled|use of closed network connection|authentication handshake failed: context canceled)`),
		"grpc-go noise: kube-apiserver closed one of its etcd clients (short-lived ones for the storage feature checks at start, the CRD's storage when a CRD is created or deleted) while its connection was still being set up"},
	{regexp.MustCompile(`addrConn.createTransport failed to connect .*connection refused`),
		"the backend was down on purpose (restart-backend step); grpc-go redials"},
	{regexp.MustCompile(`Resetting endpoints for master service "kubernetes" to \[(192\.0\.2\.1)?\]`),
		"the lease endpoint reconciler writes the kubernetes Endpoints when they differ from the master leases: at start with the advertised address (--advertise-address=192.0.2.1), at shutdown without it; once each, as in any cluster"},
	{regexp.MustCompile(`namespaces \\"kube-system\\" not found`),
		"start-up order: a controller ran before the bootstrap controller had created kube-system; retried"},
	{regexp.MustCompile(`watch chan error: etcdserver: mvcc: required revision has been compacted`),
		"an etcd watch resumed (after the backend restart, or a lagging watch) at a revision the 30s compaction had removed; the watch cache relists, exactly as with etcd"},
}

// rangeStreamFallbackRE is what kube-apiserver ≥ 1.37 logs (at V(4), see
// --vmodule in runKube) when the storage answered a RangeStream with
// Unimplemented.
var rangeStreamFallbackRE = regexp.MustCompile(`does not support RangeStream|falling back to paginated list`)

// normalize makes similar messages group together.
var (
	numRE  = regexp.MustCompile(`\b\d+\b|0x[0-9a-f]+|[0-9a-f]{8}-[0-9a-f-]{27}`)
	portRE = regexp.MustCompile(`127\.0\.0\.1:\d+`)
)

func normalize(s string) string {
	s = portRE.ReplaceAllString(s, "127.0.0.1:PORT")
	s = numRE.ReplaceAllString(s, "N")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

type logGroup struct {
	key, example, reason string
	count                int
}

// scanLogs lists kube-apiserver's storage-related warnings and errors and the
// backend's log, grouped by message, into storage-errors.txt.
func (sc *scenario) scanLogs() {
	t := sc.t
	groups := map[string]*logGroup{}
	infos, fallbacks := 0, 0
	f, err := os.Open(sc.a.LogFile)
	if err != nil {
		t.Errorf("reading the apiserver log: %v", err)
		return
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 16<<20)
	for s.Scan() {
		line := s.Text()
		m := klogRE.FindStringSubmatch(line)
		if m == nil || ignored.MatchString(line) {
			continue
		}
		sev, loc, msg := m[1], m[3], m[4]
		if rangeStreamFallbackRE.MatchString(msg) {
			fallbacks++
			if fallbacks <= 5 {
				t.Errorf("kube-apiserver fell back from RangeStream to paginated lists: %s", line)
			}
		}
		if sev == "I" {
			if storageRE.MatchString(line) {
				infos++
			}
			continue
		}
		key := sev + " " + loc + "] " + normalize(msg)
		g := groups[key]
		if g == nil {
			g = &logGroup{key: key, example: line}
			for _, k := range known {
				if k.re.MatchString(line) {
					g.reason = k.reason
					break
				}
			}
			groups[key] = g
		}
		g.count++
	}
	var list []*logGroup
	total, unknown := 0, 0
	for _, g := range groups {
		list = append(list, g)
		total += g.count
		if g.reason == "" {
			unknown += g.count
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].count > list[j].count })
	var b strings.Builder
	fmt.Fprintf(&b, "kube-apiserver log %s: %d W/E/F lines in %d groups (%d unexplained); %d storage-related I lines; %d RangeStream fallbacks\n\n",
		sc.a.LogFile, total, len(list), unknown, infos, fallbacks)
	for _, g := range list {
		reason := g.reason
		if reason == "" {
			reason = "UNEXPLAINED"
		}
		storage := ""
		if storageRE.MatchString(g.example) {
			storage = " [storage]"
		}
		fmt.Fprintf(&b, "%5d ×%s %s\n        reason: %s\n        e.g.: %s\n", g.count, storage, g.key, reason, g.example)
	}
	backendLines := sc.backendLog()
	fmt.Fprintf(&b, "\n%s log %s: %d lines (level warn and up)\n", sc.b.Name, sc.b.LogFile, len(backendLines))
	for _, l := range backendLines {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	out := filepath.Join(sc.dir, "storage-errors.txt")
	_ = os.WriteFile(out, []byte(b.String()), 0o644)
	t.Logf("kube-apiserver log: %d warning/error lines in %d groups, %d unexplained (details: %s)", total, len(list), unknown, out)
	for _, g := range list {
		if g.reason != "" {
			t.Logf("  %4d × %s", g.count, g.key)
			continue
		}
		if storageRE.MatchString(g.example) {
			t.Errorf("unexplained storage-related kube-apiserver log line (%d×): %s", g.count, g.example)
		} else {
			t.Logf("  %4d × %s [UNEXPLAINED, not storage-related]", g.count, g.key)
		}
	}
	t.Logf("%s log: %d lines", sc.b.Name, len(backendLines))
	for _, l := range first(backendLines, 20) {
		t.Logf("  %s", l)
	}
}

// backendLog returns the backend's log lines other than the harness's markers.
func (sc *scenario) backendLog() []string {
	data, err := os.ReadFile(sc.b.LogFile)
	if err != nil {
		return []string{err.Error()}
	}
	var r []string
	for _, l := range strings.Split(string(data), "\n") {
		if l != "" && !strings.HasPrefix(l, "### ") {
			if len(l) > 400 {
				l = l[:400] + "…"
			}
			r = append(r, l)
		}
	}
	return r
}
