package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	nsA      = "kube-a" // bulk objects, Deployment, custom resources
	nsB      = "kube-b" // watches, events
	nsDoomed = "doomed" // deleted while it has content
	crdName  = "widgets.shimd.example.com"
	nBulk    = 200
)

type scenario struct {
	t       *testing.T
	k       *kubectl
	a       *APIServer
	b       *Backend
	h       *healthWatcher
	bins    *Binaries
	rel     Release
	dir     string
	noCache bool
	start   time.Time

	// configmaps expected in nsA
	cms map[string]bool
	// when the Events were created, and their names
	eventsAt time.Time
	events   []string
}

func (sc *scenario) run() {
	sc.cms = map[string]bool{}
	steps := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"version", sc.version},
		{"namespaces", sc.namespaces},
		{"events", sc.createEvents},
		{"bulk", sc.bulk},
		{"paginate", sc.paginate},
		{"watch", sc.watch},
		{"deployment", sc.deployment},
		{"crd", sc.crd},
		{"conflicts", sc.conflicts},
		{"patches", sc.patches},
		{"deletes", sc.deletes},
		{"namespace-deletion", sc.namespaceDeletion},
		{"compaction", sc.compaction},
		{"event-expiry", sc.eventExpiry},
		{"restart-backend", sc.restartBackend},
		{"crd-deletion", sc.crdDeletion},
		{"final-checks", sc.finalChecks},
	}
	for _, s := range steps {
		if s.name == "restart-backend" && envOr("KUBE_NO_RESTART", "") != "" {
			continue
		}
		start := time.Now()
		ok := sc.t.Run(s.name, func(t *testing.T) {
			sc.k.t = t
			s.fn(t)
		})
		sc.k.t = sc.t
		sc.t.Logf("step %-20s %-4s %6.1fs  (t+%.0fs)", s.name, map[bool]string{true: "ok", false: "FAIL"}[ok],
			time.Since(start).Seconds(), time.Since(sc.start).Seconds())
		if !ok {
			sc.t.Errorf("step %s failed; skipping the rest of the scenario", s.name)
			return
		}
	}
}

func (sc *scenario) etcd(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := sc.b.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// storedCount counts the keys under prefix directly in the backend.
func (sc *scenario) storedCount(t *testing.T, prefix string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := sc.etcd(t).Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("count %s: %v", prefix, err)
	}
	return resp.Count
}

func (sc *scenario) version(t *testing.T) {
	var v struct {
		Client struct{ GitVersion string } `json:"clientVersion"`
		Server struct{ GitVersion string } `json:"serverVersion"`
	}
	sc.k.getJSON(&v, "version", "-o", "json")
	if v.Server.GitVersion != sc.bins.KubeVersion || v.Client.GitVersion != sc.bins.KubeVersion {
		t.Errorf("version: client %s server %s, want %s", v.Client.GitVersion, v.Server.GitVersion, sc.bins.KubeVersion)
	}
	out := sc.k.run("get", "--raw", "/readyz?verbose")
	for _, want := range []string{"[+]etcd ok", "[+]etcd-readiness ok", "readyz check passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("/readyz?verbose lacks %q:\n%s", want, out)
		}
	}
	out = sc.k.run("get", "--raw", "/livez?verbose")
	if !strings.Contains(out, "[+]etcd ok") {
		t.Errorf("/livez?verbose lacks [+]etcd ok:\n%s", out)
	}
	// Objects the apiserver wrote itself while starting.
	for _, args := range [][]string{
		{"get", "namespaces", "default", "kube-system", "kube-public", "kube-node-lease"},
		{"get", "service", "kubernetes", "-n", "default"},
		{"get", "clusterroles", "cluster-admin", "system:discovery"},
		{"get", "priorityclasses", "system-cluster-critical"},
		{"get", "flowschemas", "exempt"},
	} {
		sc.k.run(args...)
	}
}

func (sc *scenario) namespaces(t *testing.T) {
	for _, ns := range []string{nsA, nsB, nsDoomed} {
		sc.k.run("create", "namespace", ns)
	}
	sc.k.fail("already exists", "", "create", "namespace", nsA)
	out := sc.k.run("get", "namespaces", "-o", "name")
	for _, ns := range []string{nsA, nsB, nsDoomed} {
		if !strings.Contains(out, "namespace/"+ns+"\n") {
			t.Errorf("namespace %s not listed:\n%s", ns, out)
		}
	}
}

// createEvents makes core/v1 Events: kube-apiserver attaches them to an etcd
// lease (ttl = --event-ttl + 3s), so they must vanish when it expires.
func (sc *scenario) createEvents(t *testing.T) {
	now := time.Now().UTC().Format(time.RFC3339)
	var docs []string
	for i := 0; i < 5; i++ {
		name := fmt.Sprintf("ev-%d", i)
		sc.events = append(sc.events, name)
		docs = append(docs, fmt.Sprintf(`{"apiVersion":"v1","kind":"Event","metadata":{"name":%q,"namespace":%q},
"involvedObject":{"apiVersion":"v1","kind":"ConfigMap","namespace":%q,"name":"probe"},
"reason":"ShimdTest","message":"event %d","type":"Normal","count":1,
"firstTimestamp":%q,"lastTimestamp":%q,"source":{"component":"shimd-kube-test"}}`, name, nsB, nsB, i, now, now))
	}
	sc.eventsAt = time.Now()
	sc.k.pipe(`{"apiVersion":"v1","kind":"List","items":[`+strings.Join(docs, ",")+`]}`, "create", "-f", "-")
	out := sc.k.run("get", "events", "-n", nsB, "-o", "name")
	if n := strings.Count(out, "event/ev-"); n != 5 {
		t.Errorf("listed %d events, want 5:\n%s", n, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli := sc.etcd(t)
	resp, err := cli.Get(ctx, "/registry/events/"+nsB+"/ev-0")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("etcd get of event ev-0: %v %v", resp, err)
	}
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	if lease == 0 {
		t.Fatalf("event ev-0 is stored without a lease")
	}
	ttl, err := cli.TimeToLive(ctx, lease, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatalf("TimeToLive(%x): %v", lease, err)
	}
	t.Logf("events stored with lease %x: granted TTL %ds, remaining %ds, %d attached keys", lease, ttl.GrantedTTL, ttl.TTL, len(ttl.Keys))
	if ttl.GrantedTTL < 60 || ttl.GrantedTTL > 70 || ttl.TTL <= 0 {
		t.Errorf("lease %x: granted TTL %d, TTL %d; want about 63 (event-ttl 1m + 3s reuse)", lease, ttl.GrantedTTL, ttl.TTL)
	}
}

func (sc *scenario) bulk(t *testing.T) {
	var docs []string
	for i := 0; i < nBulk; i++ {
		name := fmt.Sprintf("cm-%03d", i)
		sc.cms[name] = true
		docs = append(docs, fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":%q,"namespace":%q,"labels":{"batch":"b%d"}},"data":{"index":"%d","payload":%q}}`,
			name, nsA, i%4, i, strings.Repeat("x", 100+i*10)))
	}
	for i := 0; i < nBulk; i++ {
		docs = append(docs, fmt.Sprintf(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"secret-%03d","namespace":%q,"labels":{"batch":"b%d"}},"type":"Opaque","stringData":{"password":"pw-%d"}}`,
			i, nsA, i%4, i))
	}
	for i := 0; i < 20; i++ {
		docs = append(docs, fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"doomed-%02d","namespace":%q},"data":{"i":"%d"}}`, i, nsDoomed, i))
	}
	start := time.Now()
	out := sc.k.pipe(`{"apiVersion":"v1","kind":"List","items":[`+strings.Join(docs, ",")+`]}`, "create", "-f", "-")
	t.Logf("created %d objects with one kubectl create in %s", len(docs), time.Since(start).Round(time.Millisecond))
	if n := strings.Count(out, " created"); n != len(docs) {
		t.Errorf("kubectl reported %d created, want %d", n, len(docs))
	}
	if got := sc.storedCount(t, "/registry/configmaps/"+nsA+"/"); got != nBulk {
		t.Errorf("backend holds %d configmaps of %s, want %d", got, nsA, nBulk)
	}
	if got := sc.storedCount(t, "/registry/secrets/"+nsA+"/"); got != nBulk {
		t.Errorf("backend holds %d secrets of %s, want %d", got, nsA, nBulk)
	}
	out = sc.k.run("get", "secret", "secret-007", "-n", nsA, "-o", "jsonpath={.data.password}")
	if out != "cHctNw==" { // base64("pw-7")
		t.Errorf("secret-007 password = %q, want cHctNw==", out)
	}
}

// names lists "kind/name" lines of `kubectl get -o name`.
func names(out string) []string {
	var r []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			r = append(r, l)
		}
	}
	return r
}

func (sc *scenario) paginate(t *testing.T) {
	// kubectl's own chunking: 200 configmaps in pages of 50.
	out, errs, err := sc.k.runIn("", "get", "configmaps", "-n", nsA, "--chunk-size=50", "-o", "name", "-v=6")
	if err != nil {
		t.Fatalf("kubectl get --chunk-size=50: %v\n%s", err, errs)
	}
	if got := len(names(out)); got != nBulk {
		t.Errorf("kubectl get --chunk-size=50 listed %d configmaps, want %d", got, nBulk)
	}
	pages := 0
	for _, l := range strings.Split(errs, "\n") {
		if strings.Contains(l, "/configmaps?") && strings.Contains(l, "limit=50") {
			pages++
		}
	}
	if pages < 4 {
		t.Errorf("kubectl made %d requests with limit=50, want >= 4 (4 pages)\n%s", pages, errs)
	}
	t.Logf("kubectl get --chunk-size=50: %d configmaps in %d requests", len(names(out)), pages)
	for _, res := range []string{"secrets"} {
		out := sc.k.run("get", res, "-n", nsA, "--chunk-size=50", "-o", "name")
		if got := len(names(out)); got != nBulk {
			t.Errorf("kubectl get %s --chunk-size=50 listed %d, want %d", res, got, nBulk)
		}
	}
	out = sc.k.run("get", "configmaps", "-A", "--chunk-size=50", "--no-headers")
	if got := len(names(out)); got < nBulk+20 {
		t.Errorf("kubectl get configmaps -A --chunk-size=50 listed %d, want >= %d", got, nBulk+20)
	}
	out = sc.k.run("get", "configmaps", "-n", nsA, "-l", "batch=b1", "--chunk-size=7", "-o", "name")
	if got := len(names(out)); got != nBulk/4 {
		t.Errorf("label-selected chunked list: %d, want %d", got, nBulk/4)
	}

	// The raw API: a paginated list is a snapshot. Create a configmap that
	// sorts last after the first page; the later pages must not show it.
	seen := map[string]bool{}
	cont, rv := "", ""
	for page := 0; ; page++ {
		path := "/api/v1/namespaces/" + nsA + "/configmaps?limit=50"
		if cont != "" {
			path += "&continue=" + cont
		}
		var l obj
		sc.k.getJSON(&l, "get", "--raw", path)
		if page == 0 {
			rv = l.Metadata.ResourceVersion
			sc.k.run("create", "configmap", "zz-late", "-n", nsA, "--from-literal=k=v")
			sc.cms["zz-late"] = true
		} else if l.Metadata.ResourceVersion != rv {
			t.Errorf("page %d has resourceVersion %s, page 0 had %s", page, l.Metadata.ResourceVersion, rv)
		}
		for _, it := range l.Items {
			if seen[it.Metadata.Name] {
				t.Errorf("page %d repeats %s", page, it.Metadata.Name)
			}
			seen[it.Metadata.Name] = true
		}
		remaining := int64(-1)
		if l.Metadata.RemainingItems != nil {
			remaining = *l.Metadata.RemainingItems
		}
		wantRemaining := int64(nBulk - 50*(page+1))
		if l.Metadata.Continue != "" && remaining != wantRemaining {
			t.Errorf("page %d: remainingItemCount %d, want %d", page, remaining, wantRemaining)
		}
		if len(l.Items) != 50 {
			t.Errorf("page %d has %d items, want 50", page, len(l.Items))
		}
		cont = l.Metadata.Continue
		if cont == "" {
			if page != 3 {
				t.Errorf("list ended after %d pages, want 4", page+1)
			}
			break
		}
		if page > 10 {
			t.Fatal("pagination does not end")
		}
	}
	if len(seen) != nBulk || seen["zz-late"] {
		t.Errorf("paginated snapshot at rv %s has %d items (zz-late: %v), want the %d from before", rv, len(seen), seen["zz-late"], nBulk)
	}
	// Reads at an exact older resourceVersion (from etcd) and "any" (cache).
	for _, q := range []string{"resourceVersion=" + rv + "&resourceVersionMatch=Exact&limit=500",
		"resourceVersion=" + rv + "&resourceVersionMatch=NotOlderThan&limit=500", "resourceVersion=0"} {
		var l obj
		sc.k.getJSON(&l, "get", "--raw", "/api/v1/namespaces/"+nsA+"/configmaps?"+q)
		want := nBulk + 1
		if strings.Contains(q, "Exact") {
			want = nBulk
		}
		if len(l.Items) != want {
			t.Errorf("list ?%s: %d items, want %d", q, len(l.Items), want)
		}
	}
}

// watch runs kubectl get --watch-only while objects change.
func (sc *scenario) watch(t *testing.T) {
	sc.watchKind(t, "configmaps", nsB, func(name string, step int) kcmd {
		switch step {
		case 0:
			return kc("create", "configmap", name, "-n", nsB, "--from-literal=v=0")
		case 1:
			return kc("patch", "configmap", name, "-n", nsB, "--type=merge", "-p", `{"data":{"v":"1"}}`)
		case 2:
			return kc("label", "configmap", name, "-n", nsB, "step=two")
		default:
			return kc("delete", "configmap", name, "-n", nsB)
		}
	})
	// A watch resumed from a resourceVersion replays what happened since.
	var l obj
	sc.k.getJSON(&l, "get", "--raw", "/api/v1/namespaces/"+nsB+"/configmaps?limit=1")
	rv := l.Metadata.ResourceVersion
	sc.k.run("create", "configmap", "replayed", "-n", nsB)
	sc.k.run("delete", "configmap", "replayed", "-n", nsB)
	out := sc.k.run("get", "--raw", "/api/v1/namespaces/"+nsB+"/configmaps?watch=1&timeoutSeconds=3&resourceVersion="+rv)
	var types []string
	dec := json.NewDecoder(strings.NewReader(out))
	for {
		var e watchEvent
		if dec.Decode(&e) != nil {
			break
		}
		if e.Object.Metadata.Name == "replayed" {
			types = append(types, e.Type)
		}
	}
	if strings.Join(types, ",") != "ADDED,DELETED" {
		t.Errorf("watch from resourceVersion %s replayed %v for configmap replayed, want [ADDED DELETED]\n%s", rv, types, out)
	}
	// The streaming list (sendInitialEvents): initial state, bookmark, then live.
	out = sc.k.run("get", "--raw", "/api/v1/namespaces/"+nsA+
		"/configmaps?watch=1&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=3")
	dec = json.NewDecoder(strings.NewReader(out))
	added, bookmarks := 0, 0
	for {
		var e watchEvent
		if dec.Decode(&e) != nil {
			break
		}
		switch e.Type {
		case "ADDED":
			added++
		case "BOOKMARK":
			if e.Object.Metadata.Annotations["k8s.io/initial-events-end"] == "true" {
				bookmarks++
			}
		}
	}
	if added != len(sc.cms) || bookmarks != 1 {
		t.Errorf("sendInitialEvents watch: %d ADDED (want %d), %d initial-events-end bookmarks (want 1)", added, len(sc.cms), bookmarks)
	}
}

// watchKind starts a watch on resource in ns, then makes change(name, 0..3)
// (create, two updates, delete) and expects the four events in order.
func (sc *scenario) watchKind(t *testing.T, resource, ns string, change func(name string, step int) kcmd) {
	t.Helper()
	w, err := sc.k.watch(resource, "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	// The watch is established once it reports a probe object created after it started.
	established := false
	for i := 0; i < 20 && !established; i++ {
		probe := fmt.Sprintf("probe-%d-%d", time.Now().UnixNano()%100000, i)
		change(probe, 0).run(sc.k)
		established = w.waitFor(3*time.Second, func(e watchEvent) bool { return e.Object.Metadata.Name == probe })
		change(probe, 3).run(sc.k)
	}
	if !established {
		t.Fatalf("kubectl get %s --watch-only reported nothing:\n%s", resource, w.out.String())
	}
	name := "watched"
	for step := 0; step < 4; step++ {
		change(name, step).run(sc.k)
	}
	if !w.waitFor(30*time.Second, func(e watchEvent) bool { return e.Type == "DELETED" && e.Object.Metadata.Name == name }) {
		t.Errorf("no DELETED event for %s within 30s", name)
	}
	var types []string
	var last int64
	for _, e := range w.events() {
		if e.Object.Metadata.Name != name {
			continue
		}
		types = append(types, e.Type)
		rv, _ := strconv.ParseInt(e.Object.Metadata.ResourceVersion, 10, 64)
		if rv <= last {
			t.Errorf("event %s of %s: resourceVersion %d not after %d", e.Type, name, rv, last)
		}
		last = rv
	}
	if strings.Join(types, ",") != "ADDED,MODIFIED,MODIFIED,DELETED" {
		t.Errorf("watch of %s saw %v for %s, want [ADDED MODIFIED MODIFIED DELETED]", resource, types, name)
	}
	t.Logf("kubectl get %s --watch-only: %d events, %v for %q", resource, len(w.events()), types, name)
}

type deployment struct {
	obj
	SpecT struct {
		Replicas int64 `json:"replicas"`
		Template struct {
			Spec struct {
				Containers []struct {
					Name  string `json:"name"`
					Image string `json:"image"`
					Env   []struct{ Name, Value string }
				} `json:"containers"`
			} `json:"spec"`
		} `json:"template"`
	}
}

func (sc *scenario) getDeployment(t *testing.T) deployment {
	t.Helper()
	var d deployment
	sc.k.getJSON(&d.obj, "get", "deployment", "web", "-n", nsA, "-o", "json")
	if err := json.Unmarshal(d.Spec, &d.SpecT); err != nil {
		t.Fatal(err)
	}
	return d
}

// deployment changes a Deployment several times. There is no
// controller-manager, so the ReplicaSets `kubectl rollout history` and
// `rollout undo` read are created by hand, one per template revision, the way
// the deployment controller would name and label them.
func (sc *scenario) deployment(t *testing.T) {
	sc.k.run("create", "deployment", "web", "-n", nsA, "--image=registry.k8s.io/pause:3.10", "--replicas=2")
	d := sc.getDeployment(t)
	if d.Metadata.Generation != 1 {
		t.Errorf("new deployment has generation %d", d.Metadata.Generation)
	}
	uid := d.Metadata.UID
	revision := 0
	makeRS := func(cause string) {
		revision++
		tmpl := sc.k.run("get", "deployment", "web", "-n", nsA, "-o", "jsonpath={.spec.template}")
		var m map[string]any
		if err := json.Unmarshal([]byte(tmpl), &m); err != nil {
			t.Fatalf("template: %v\n%s", err, tmpl)
		}
		hash := fmt.Sprintf("rev%d", revision)
		md := m["metadata"].(map[string]any)
		md["labels"].(map[string]any)["pod-template-hash"] = hash
		tb, _ := json.Marshal(m)
		rs := fmt.Sprintf(`{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":"web-%s","namespace":%q,
"labels":{"app":"web","pod-template-hash":%q},
"annotations":{"deployment.kubernetes.io/revision":"%d","kubernetes.io/change-cause":%q},
"ownerReferences":[{"apiVersion":"apps/v1","kind":"Deployment","name":"web","uid":%q,"controller":true,"blockOwnerDeletion":true}]},
"spec":{"replicas":0,"selector":{"matchLabels":{"app":"web","pod-template-hash":%q}},"template":%s}}`,
			hash, nsA, hash, revision, cause, uid, hash, tb)
		sc.k.pipe(rs, "create", "-f", "-")
		sc.k.run("annotate", "deployment", "web", "-n", nsA, "--overwrite", fmt.Sprintf("deployment.kubernetes.io/revision=%d", revision))
	}
	makeRS("create deployment (pause:3.10)")

	type change struct {
		args  []string
		bumps bool // changes .spec or annotations: generation must advance
	}
	changes := []change{
		{[]string{"set", "image", "deployment/web", "pause=registry.k8s.io/pause:3.9"}, true},
		// Deployments count annotation changes as generations too (they are
		// copied to the ReplicaSets), labels not.
		{[]string{"annotate", "deployment", "web", "note=first"}, true},
		{[]string{"scale", "deployment", "web", "--replicas=3"}, true},
		{[]string{"set", "env", "deployment/web", "MODE=blue"}, true},
		{[]string{"patch", "deployment", "web", "--type=strategic", "-p",
			`{"spec":{"template":{"spec":{"containers":[{"name":"pause","resources":{"limits":{"cpu":"100m"}}}]}}}}`}, true},
		{[]string{"label", "deployment", "web", "tier=frontend"}, false},
	}
	prev := sc.getDeployment(t)
	for i, c := range changes {
		sc.k.run(append(c.args, "-n", nsA)...)
		cur := sc.getDeployment(t)
		prevRV, _ := strconv.ParseInt(prev.Metadata.ResourceVersion, 10, 64)
		curRV, _ := strconv.ParseInt(cur.Metadata.ResourceVersion, 10, 64)
		if curRV <= prevRV {
			t.Errorf("change %d (%v): resourceVersion %d -> %d", i, c.args, prevRV, curRV)
		}
		wantGen := prev.Metadata.Generation
		if c.bumps {
			wantGen++
		}
		if cur.Metadata.Generation != wantGen {
			t.Errorf("change %d (%v): generation %d -> %d, want %d", i, c.args, prev.Metadata.Generation, cur.Metadata.Generation, wantGen)
		}
		prev = cur
		switch i {
		case 0:
			makeRS("set image pause:3.9")
			prev = sc.getDeployment(t)
		case 4:
			makeRS("env MODE=blue, cpu limit")
			prev = sc.getDeployment(t)
		}
	}
	c := prev.SpecT.Template.Spec.Containers
	if prev.SpecT.Replicas != 3 || len(c) != 1 || c[0].Image != "registry.k8s.io/pause:3.9" || len(c[0].Env) != 1 {
		t.Errorf("deployment after changes: replicas %d, containers %+v", prev.SpecT.Replicas, c)
	}
	hist := sc.k.run("rollout", "history", "deployment/web", "-n", nsA)
	for _, want := range []string{"1         create deployment (pause:3.10)", "2         set image pause:3.9", "3         env MODE=blue, cpu limit"} {
		if !strings.Contains(hist, want) {
			t.Errorf("rollout history lacks %q:\n%s", want, hist)
		}
	}
	if out := sc.k.run("rollout", "history", "deployment/web", "-n", nsA, "--revision=2"); !strings.Contains(out, "registry.k8s.io/pause:3.9") {
		t.Errorf("rollout history --revision=2 lacks the image:\n%s", out)
	}
	// rollout undo copies revision 1's template back into the Deployment.
	sc.k.run("rollout", "undo", "deployment/web", "-n", nsA, "--to-revision=1")
	cur := sc.getDeployment(t)
	if cur.Metadata.Generation != prev.Metadata.Generation+1 ||
		cur.SpecT.Template.Spec.Containers[0].Image != "registry.k8s.io/pause:3.10" || len(cur.SpecT.Template.Spec.Containers[0].Env) != 0 {
		t.Errorf("after rollout undo --to-revision=1: generation %d (was %d), containers %+v",
			cur.Metadata.Generation, prev.Metadata.Generation, cur.SpecT.Template.Spec.Containers)
	}
	t.Logf("deployment: generation 1 -> %d, resourceVersion %s -> %s; %d hand-made ReplicaSets",
		cur.Metadata.Generation, d.Metadata.ResourceVersion, cur.Metadata.ResourceVersion, revision)
	if out := sc.k.run("get", "replicasets", "-n", nsA, "-l", "app=web", "-o", "name"); len(names(out)) != revision {
		t.Errorf("replicasets: %q", out)
	}
}

const crdManifest = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.shimd.example.com
spec:
  group: shimd.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              color: {type: string}
              tags: {type: array, items: {type: string}}
          status:
            type: object
            properties:
              ready: {type: boolean}
`

func (sc *scenario) crd(t *testing.T) {
	sc.k.pipe(crdManifest, "apply", "-f", "-")
	sc.k.run("wait", "--for=condition=Established", "crd/"+crdName, "--timeout=60s")
	var docs []string
	for i := 0; i < 30; i++ {
		docs = append(docs, fmt.Sprintf(`{"apiVersion":"shimd.example.com/v1","kind":"Widget","metadata":{"name":"w-%02d","namespace":%q,"labels":{"parity":"p%d"}},"spec":{"size":%d,"color":"red"}}`,
			i, nsA, i%2, i))
	}
	list := `{"apiVersion":"v1","kind":"List","items":[` + strings.Join(docs, ",") + `]}`
	// Discovery of the new group may lag Established by a moment.
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, errs, err := sc.k.runIn(list, "create", "-f", "-")
		if err == nil {
			break
		}
		if time.Now().After(deadline) || strings.Contains(errs, "AlreadyExists") {
			t.Fatalf("creating widgets: %v\n%s%s", err, out, errs)
		}
		time.Sleep(time.Second)
	}
	out := sc.k.run("get", "widgets", "-n", nsA, "--chunk-size=7", "-o", "name")
	if got := len(names(out)); got != 30 {
		t.Errorf("kubectl get widgets --chunk-size=7: %d, want 30", got)
	}
	if got := sc.storedCount(t, "/registry/shimd.example.com/widgets/"+nsA+"/"); got != 30 {
		t.Errorf("backend holds %d widgets, want 30", got)
	}
	// The watch of a custom resource (a separate watch cache of unstructured objects).
	sc.watchKind(t, "widgets", nsA, func(name string, step int) kcmd {
		switch step {
		case 0:
			return kcmd{in: fmt.Sprintf(`{"apiVersion":"shimd.example.com/v1","kind":"Widget","metadata":{"name":%q,"namespace":%q},"spec":{"size":0}}`, name, nsA), args: []string{"create", "-f", "-"}}
		case 1:
			return kc("patch", "widget", name, "-n", nsA, "--type=merge", "-p", `{"spec":{"size":1}}`)
		case 2:
			return kc("patch", "widget", name, "-n", nsA, "--type=json", "-p", `[{"op":"add","path":"/spec/color","value":"blue"}]`)
		default:
			return kc("delete", "widget", name, "-n", nsA)
		}
	})

	// Spec changes advance generation; status changes (subresource) do not.
	var w obj
	sc.k.getJSON(&w, "get", "widget", "w-01", "-n", nsA, "-o", "json")
	gen := w.Metadata.Generation
	sc.k.run("patch", "widget", "w-01", "-n", nsA, "--type=merge", "-p", `{"spec":{"size":42,"tags":["a","b"]}}`)
	sc.k.run("patch", "widget", "w-01", "-n", nsA, "--type=json", "-p", `[{"op":"replace","path":"/spec/color","value":"green"},{"op":"add","path":"/spec/tags/-","value":"c"}]`)
	sc.k.run("patch", "widget", "w-01", "-n", nsA, "--subresource=status", "--type=merge", "-p", `{"status":{"ready":true}}`)
	sc.k.getJSON(&w, "get", "widget", "w-01", "-n", nsA, "-o", "json")
	var spec struct {
		Size  int
		Color string
		Tags  []string
	}
	var status struct{ Ready bool }
	_ = json.Unmarshal(w.Spec, &spec)
	_ = json.Unmarshal(w.Status, &status)
	if spec.Size != 42 || spec.Color != "green" || strings.Join(spec.Tags, ",") != "a,b,c" || !status.Ready || w.Metadata.Generation != gen+2 {
		t.Errorf("widget w-01 after patches: spec %+v status %+v generation %d (was %d)", spec, status, w.Metadata.Generation, gen)
	}
	// Strategic merge patches do not exist for custom resources.
	sc.k.fail("application/strategic-merge-patch+json is not supported", "", "patch", "widget", "w-02", "-n", nsA, "--type=strategic", "-p", `{"spec":{"size":7}}`)
	sc.k.run("delete", "widgets", "-n", nsA, "-l", "parity=p1")
	if out := sc.k.run("get", "widgets", "-n", nsA, "-o", "name"); len(names(out)) != 15 {
		t.Errorf("after deleting parity=p1: %d widgets, want 15", len(names(out)))
	}
}

func (sc *scenario) conflicts(t *testing.T) {
	// kubectl replace with a stale resourceVersion.
	stale := sc.k.run("get", "configmap", "cm-000", "-n", nsA, "-o", "json")
	sc.k.run("label", "configmap", "cm-000", "-n", nsA, "touched=yes")
	msg := sc.k.fail("the object has been modified", stale, "replace", "-f", "-")
	if !strings.Contains(msg, "Conflict") && !strings.Contains(msg, "conflict") {
		t.Logf("stale replace error: %s", msg)
	}
	// The same for a custom resource.
	staleW := sc.k.run("get", "widget", "w-00", "-n", nsA, "-o", "json")
	sc.k.run("patch", "widget", "w-00", "-n", nsA, "--type=merge", "-p", `{"spec":{"size":100}}`)
	sc.k.fail("the object has been modified", staleW, "replace", "-f", "-")

	// Concurrent replaces from the same resourceVersion: exactly one wins.
	var cur obj
	sc.k.getJSON(&cur, "get", "configmap", "cm-001", "-n", nsA, "-o", "json")
	const n = 6
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	var other []string
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			doc := fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm-001","namespace":%q,"resourceVersion":%q},"data":{"writer":"%d"}}`,
				nsA, cur.Metadata.ResourceVersion, i)
			_, errs, err := sc.k.runIn(doc, "replace", "-f", "-")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case strings.Contains(errs, "the object has been modified"):
				conflicts++
			default:
				other = append(other, errs)
			}
		}(i)
	}
	wg.Wait()
	if wins != 1 || conflicts != n-1 {
		t.Errorf("%d concurrent replaces at resourceVersion %s: %d succeeded, %d conflicts, other errors %q; want 1 and %d",
			n, cur.Metadata.ResourceVersion, wins, conflicts, other, n-1)
	}
	// Creating what exists.
	sc.k.fail("already exists", "", "create", "configmap", "cm-002", "-n", nsA)
	// Server-side apply: a second field manager conflicts, --force-conflicts takes over.
	ssa := func(v string) string {
		return fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ssa","namespace":%q},"data":{"owner":%q}}`, nsA, v)
	}
	sc.k.pipe(ssa("alice"), "apply", "--server-side", "--field-manager=alice", "-f", "-")
	sc.cms["ssa"] = true
	sc.k.fail("conflict", ssa("bob"), "apply", "--server-side", "--field-manager=bob", "-f", "-")
	sc.k.pipe(ssa("bob"), "apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-")
	if v := sc.k.run("get", "configmap", "ssa", "-n", nsA, "-o", "jsonpath={.data.owner}"); v != "bob" {
		t.Errorf("ssa owner = %q, want bob", v)
	}
	// Deleting with a stale precondition (resourceVersion) conflicts too.
	var c obj
	sc.k.getJSON(&c, "get", "configmap", "cm-003", "-n", nsA, "-o", "json")
	sc.k.run("label", "configmap", "cm-003", "-n", nsA, "touched=yes")
	del := fmt.Sprintf(`{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{"resourceVersion":%q}}`, c.Metadata.ResourceVersion)
	_, errs, err := sc.k.runIn(del, "delete", "--raw", "/api/v1/namespaces/"+nsA+"/configmaps/cm-003", "-f", "-")
	if err == nil || !strings.Contains(errs, "Precondition failed") && !strings.Contains(errs, "Conflict") {
		t.Errorf("delete with stale resourceVersion precondition: err %v, %s", err, errs)
	}
}

func (sc *scenario) patches(t *testing.T) {
	get := func(name string) map[string]string {
		var o obj
		sc.k.getJSON(&o, "get", "configmap", name, "-n", nsA, "-o", "json")
		return o.Data
	}
	sc.k.run("patch", "configmap", "cm-010", "-n", nsA, "--type=strategic", "-p", `{"data":{"index":"ten","added":"s"}}`)
	if d := get("cm-010"); d["index"] != "ten" || d["added"] != "s" {
		t.Errorf("strategic patch: %v", d)
	}
	sc.k.run("patch", "configmap", "cm-010", "-n", nsA, "--type=json", "-p", `[{"op":"replace","path":"/data/index","value":"TEN"},{"op":"remove","path":"/data/added"},{"op":"test","path":"/data/index","value":"TEN"}]`)
	if d := get("cm-010"); d["index"] != "TEN" || d["added"] != "" {
		t.Errorf("json patch: %v", d)
	}
	sc.k.run("patch", "configmap", "cm-010", "-n", nsA, "--type=merge", "-p", `{"data":{"payload":null,"m":"1"}}`)
	if d := get("cm-010"); d["payload"] != "" || d["m"] != "1" || d["index"] != "TEN" {
		t.Errorf("merge patch: %v", d)
	}
	// A failing JSON patch test op changes nothing.
	sc.k.fail("", "", "patch", "configmap", "cm-010", "-n", nsA, "--type=json", "-p", `[{"op":"test","path":"/data/index","value":"nope"},{"op":"replace","path":"/data/m","value":"2"}]`)
	if d := get("cm-010"); d["m"] != "1" {
		t.Errorf("failed json patch changed the object: %v", d)
	}
	// Strategic merge of a Deployment's container list merges by name.
	sc.k.run("patch", "deployment", "web", "-n", nsA, "--type=strategic", "-p",
		`{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"registry.k8s.io/pause:3.10"}]}}}}`)
	out := sc.k.run("get", "deployment", "web", "-n", nsA, "-o", "jsonpath={.spec.template.spec.containers[*].name}")
	if out != "pause sidecar" && out != "sidecar pause" {
		t.Errorf("strategic patch of containers: %q, want both containers", out)
	}
	// Many small updates of one object in a row.
	for i := 0; i < 20; i++ {
		sc.k.run("patch", "configmap", "cm-011", "-n", nsA, "--type=merge", "-p", fmt.Sprintf(`{"data":{"counter":"%d"}}`, i))
	}
	if d := get("cm-011"); d["counter"] != "19" {
		t.Errorf("counter = %q after 20 patches", d["counter"])
	}
}

func (sc *scenario) deletes(t *testing.T) {
	var args []string
	for i := 150; i < nBulk; i++ {
		name := fmt.Sprintf("cm-%03d", i)
		args = append(args, name)
		delete(sc.cms, name)
	}
	sc.k.run(append([]string{"delete", "configmaps", "-n", nsA, "--wait=false"}, args...)...)
	sc.k.run("delete", "secrets", "-n", nsA, "-l", "batch=b0")
	sc.k.fail("NotFound", "", "delete", "configmap", "cm-199", "-n", nsA)
	sc.k.run("delete", "configmap", "cm-199", "-n", nsA, "--ignore-not-found")
	out := sc.k.run("get", "configmaps", "-n", nsA, "--chunk-size=50", "-o", "name")
	var want []string
	for n := range sc.cms {
		want = append(want, "configmap/"+n)
	}
	sort.Strings(want)
	got := names(out)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("configmaps after deletes: %d listed, want %d", len(got), len(want))
	}
	if n := sc.storedCount(t, "/registry/configmaps/"+nsA+"/"); n != int64(len(want)) {
		t.Errorf("backend holds %d configmaps, want %d", n, len(want))
	}
	if out := sc.k.run("get", "secrets", "-n", nsA, "--chunk-size=50", "-o", "name"); len(names(out)) != nBulk*3/4 {
		t.Errorf("secrets after deleting batch=b0: %d, want %d", len(names(out)), nBulk*3/4)
	}
	if n := sc.storedCount(t, "/registry/secrets/"+nsA+"/"); n != nBulk*3/4 {
		t.Errorf("backend holds %d secrets, want %d", n, nBulk*3/4)
	}
	// Deleting with a finalizer: the object stays (with a deletionTimestamp) until it is removed.
	sc.k.pipe(fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"held","namespace":%q,"finalizers":["shimd.example.com/hold"]}}`, nsA), "create", "-f", "-")
	sc.k.run("delete", "configmap", "held", "-n", nsA, "--wait=false")
	var held obj
	sc.k.getJSON(&held, "get", "configmap", "held", "-n", nsA, "-o", "json")
	if held.Metadata.DeletionTimestamp == "" {
		t.Errorf("configmap held has no deletionTimestamp after delete")
	}
	sc.k.run("patch", "configmap", "held", "-n", nsA, "--type=json", "-p", `[{"op":"remove","path":"/metadata/finalizers"}]`)
	sc.k.fail("NotFound", "", "get", "configmap", "held", "-n", nsA)
}

// namespaceDeletion: without kube-controller-manager nothing empties a
// deleted namespace, so it stays Terminating; its content can still be
// deleted, new content is refused, and finalizing it by hand removes it.
func (sc *scenario) namespaceDeletion(t *testing.T) {
	sc.k.run("delete", "namespace", nsDoomed, "--wait=false")
	var ns struct {
		obj
		St struct{ Phase string } `json:"status"`
	}
	sc.k.getJSON(&ns, "get", "namespace", nsDoomed, "-o", "json")
	if ns.St.Phase != "Terminating" || ns.Metadata.DeletionTimestamp == "" {
		t.Errorf("deleted namespace: phase %q, deletionTimestamp %q", ns.St.Phase, ns.Metadata.DeletionTimestamp)
	}
	sc.k.fail("because it is being terminated", "", "create", "configmap", "late", "-n", nsDoomed)
	if out := sc.k.run("get", "configmaps", "-n", nsDoomed, "-o", "name"); len(names(out)) != 20 {
		t.Errorf("terminating namespace lists %d configmaps, want 20", len(names(out)))
	}
	sc.k.run("delete", "configmaps", "--all", "-n", nsDoomed)
	if out := sc.k.run("get", "configmaps", "-n", nsDoomed, "-o", "name"); len(names(out)) != 0 {
		t.Errorf("after delete --all: %q", out)
	}
	if n := sc.storedCount(t, "/registry/configmaps/"+nsDoomed+"/"); n != 0 {
		t.Errorf("backend still holds %d configmaps of %s", n, nsDoomed)
	}
	// What the namespace controller does last: clear spec.finalizers.
	raw := sc.k.run("get", "namespace", nsDoomed, "-o", "json")
	var m map[string]any
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatal(err)
	}
	m["spec"] = map[string]any{"finalizers": []any{}}
	fin, _ := json.Marshal(m)
	sc.k.pipe(string(fin), "replace", "--raw", "/api/v1/namespaces/"+nsDoomed+"/finalize", "-f", "-")
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, errs, err := sc.k.runIn("", "get", "namespace", nsDoomed)
		if err != nil && strings.Contains(errs, "NotFound") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace %s still exists 30s after finalizing", nsDoomed)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// compaction waits until kube-apiserver's compactor (every 30s) has compacted
// at least twice: its compact_rev_key has been written three times.
func (sc *scenario) compaction(t *testing.T) {
	cli := sc.etcd(t)
	deadline := time.Now().Add(4 * time.Minute)
	var version int64
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := cli.Get(ctx, "compact_rev_key")
		cancel()
		if err != nil {
			t.Fatalf("get compact_rev_key: %v", err)
		}
		if len(resp.Kvs) == 1 {
			version = resp.Kvs[0].Version
		}
		if version >= 3 {
			t.Logf("compact_rev_key: version %d, value %s (last compaction target), mod revision %d", version, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("compact_rev_key version %d after waiting; the compactor does not run", version)
		}
		// Keep some traffic going meanwhile.
		sc.k.run("patch", "configmap", "cm-012", "-n", nsA, "--type=merge", "-p", fmt.Sprintf(`{"data":{"t":"%d"}}`, time.Now().UnixNano()))
		time.Sleep(2 * time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := cli.Get(ctx, "/registry/configmaps/"+nsA+"/cm-000", clientv3.WithRev(2))
	if err == nil || !strings.Contains(err.Error(), "compacted") {
		t.Errorf("get at revision 2 after compaction: %v, want 'required revision has been compacted'", err)
	}
	// Everything still works after compaction: lists, watches, updates.
	out := sc.k.run("get", "configmaps", "-n", nsA, "--chunk-size=50", "-o", "name")
	if len(names(out)) != len(sc.cms) {
		t.Errorf("after compaction: %d configmaps, want %d", len(names(out)), len(sc.cms))
	}
	sc.watchKind(t, "configmaps", nsB, func(name string, step int) kcmd {
		switch step {
		case 0:
			return kc("create", "configmap", name, "-n", nsB)
		case 1, 2:
			return kc("label", "configmap", name, "-n", nsB, "--overwrite", fmt.Sprintf("s=%d", step))
		default:
			return kc("delete", "configmap", name, "-n", nsB)
		}
	})
}

// eventExpiry: the Events' lease (63s) must expire and take them along.
func (sc *scenario) eventExpiry(t *testing.T) {
	deadline := sc.eventsAt.Add(63*time.Second + 90*time.Second)
	for {
		out := sc.k.run("get", "events", "-n", nsB, "-o", "name")
		n := strings.Count(out, "event/ev-")
		stored := sc.storedCount(t, "/registry/events/"+nsB+"/ev-")
		if n == 0 && stored == 0 {
			t.Logf("events expired %s after their creation", time.Since(sc.eventsAt).Round(time.Second))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after creating them, %d events still listed, %d stored (lease TTL 63s)", time.Since(sc.eventsAt).Round(time.Second), n, stored)
		}
		time.Sleep(2 * time.Second)
	}
}

// restartBackend stops and restarts the storage under a running apiserver,
// with a kubectl watch open across the restart.
func (sc *scenario) restartBackend(t *testing.T) {
	w, err := sc.k.watch("configmaps", "-n", nsB)
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	time.Sleep(2 * time.Second)
	sc.h.pause(true)
	defer sc.h.pause(false)
	if err := sc.b.Stop(); err != nil {
		t.Errorf("stopping %s: %v", sc.b.Name, err)
	}
	// Give the apiserver a moment to notice.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if code, _, _ := sc.a.get("/readyz/etcd"); code != 200 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	code, body, _ := sc.a.get("/readyz/etcd")
	t.Logf("with %s stopped: /readyz/etcd %d %s", sc.b.Name, code, strings.TrimSpace(body))
	restart := time.Now()
	if err := sc.b.Start(); err != nil {
		t.Fatalf("restarting %s: %v", sc.b.Name, err)
	}
	if err := sc.a.waitReady(90 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("/readyz ok %s after restarting %s", time.Since(restart).Round(100*time.Millisecond), sc.b.Name)
	// kube-apiserver's health probes are rate-limited (one per second, the
	// others get the last result) and each has its own etcd client, whose
	// gRPC reconnect back-off may still be running: a probe sent just then
	// waits out its 2s timeout. Wait until every check stays ok for 5s.
	flaps, err := sc.a.waitStable(5*time.Second, 60*time.Second)
	for _, f := range flaps {
		t.Logf("after the restart: %s", f)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("health stable %s after restarting %s", time.Since(restart).Round(100*time.Millisecond), sc.b.Name)
	sc.h.pause(false)
	// Writes made after the restart reach the watch opened before it (the
	// apiserver re-establishes its etcd watch from its last revision).
	sc.k.run("create", "configmap", "after-restart", "-n", nsB)
	if w.waitFor(30*time.Second, func(e watchEvent) bool { return e.Object.Metadata.Name == "after-restart" }) {
		t.Logf("the watch opened before the restart saw the configmap created after it")
	} else {
		select {
		case <-w.done:
			t.Errorf("the kubectl watch opened before the restart ended (see kubectl.log)")
		default:
			t.Errorf("the kubectl watch opened before the restart did not see the configmap created after it")
		}
	}
	out := sc.k.run("get", "configmaps", "-n", nsA, "--chunk-size=50", "-o", "name")
	if len(names(out)) != len(sc.cms) {
		t.Errorf("after restart: %d configmaps, want %d", len(names(out)), len(sc.cms))
	}
	sc.watchKind(t, "configmaps", nsB, func(name string, step int) kcmd {
		switch step {
		case 0:
			return kc("create", "configmap", name, "-n", nsB)
		case 1, 2:
			return kc("annotate", "configmap", name, "-n", nsB, "--overwrite", fmt.Sprintf("s=%d", step))
		default:
			return kc("delete", "configmap", name, "-n", nsB)
		}
	})
}

// crdDeletion: deleting a CRD makes the apiserver's own finalizer delete every
// custom resource before the CRD goes.
func (sc *scenario) crdDeletion(t *testing.T) {
	sc.k.run("delete", "crd", crdName, "--timeout=120s")
	if n := sc.storedCount(t, "/registry/shimd.example.com/widgets/"); n != 0 {
		t.Errorf("backend still holds %d widgets after the CRD was deleted", n)
	}
	sc.k.fail("NotFound", "", "get", "crd", crdName)
}

func (sc *scenario) finalChecks(t *testing.T) {
	out := sc.k.run("get", "--raw", "/readyz?verbose")
	if !strings.Contains(out, "[+]etcd ok") || !strings.Contains(out, "readyz check passed") {
		t.Errorf("/readyz?verbose at the end:\n%s", out)
	}
	metrics := sc.k.run("get", "--raw", "/metrics")
	var keep []string
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "apiserver_storage_") || strings.HasPrefix(l, "etcd_") ||
			strings.HasPrefix(l, "apiserver_watch_cache_") || strings.HasPrefix(l, "apiserver_storage_list_") {
			keep = append(keep, l)
		}
	}
	writeLines(sc.dir+"/storage-metrics.txt", keep)
	// Consistent lists (resourceVersion="") served from the watch cache:
	// the apiserver asks etcd for its current revision and waits for the
	// cache to reach it, sending RequestProgress on its watch streams.
	// fallback="true" or success="false" would mean the progress never came.
	var consistent, fallback, bookmarks float64
	for _, l := range keep {
		v := 0.0
		if i := strings.LastIndexByte(l, ' '); i > 0 {
			v, _ = strconv.ParseFloat(l[i+1:], 64)
		}
		switch {
		case strings.HasPrefix(l, "apiserver_watch_cache_consistent_read_total{"):
			consistent += v
			if (strings.Contains(l, `fallback="true"`) || strings.Contains(l, `success="false"`)) && v > 0 {
				fallback += v
				t.Errorf("consistent read not served by the watch cache: %s", l)
			}
		case strings.HasPrefix(l, "etcd_bookmark_total{"):
			bookmarks += v
		case strings.HasPrefix(l, "apiserver_storage_objects{resource=\"configmaps\"}"),
			strings.HasPrefix(l, "apiserver_storage_size_bytes"):
			t.Logf("metric %s", l)
		}
	}
	t.Logf("consistent reads from the watch cache: %.0f (%.0f fell back to etcd); progress-notify bookmarks from the backend: %.0f",
		consistent, fallback, bookmarks)
	sc.rangeStreamUsed(t, keep)
}

// rangeStreamUsed: from 1.37 on (feature gate EtcdRangeStream, beta, on by
// default) kube-apiserver reads unfiltered recursive lists with etcd 3.7's
// KV.RangeStream, and falls back to paginated Ranges (for 10 minutes, then
// tries again) when the server answers Unimplemented. The storage layer's
// list latency histogram is labelled streamed="true"/"false"; etcd requests
// of operation "listStream" count those and the watches' initial syncs
// (the watch caches' initial lists), which use RangeStream too.
func (sc *scenario) rangeStreamUsed(t *testing.T, metrics []string) {
	if sc.rel.Minor < 37 {
		return
	}
	sum := func(prefix, label string) float64 {
		n := 0.0
		for _, l := range metrics {
			if strings.HasPrefix(l, prefix+"{") && strings.Contains(l, label) {
				if i := strings.LastIndexByte(l, ' '); i > 0 {
					v, _ := strconv.ParseFloat(l[i+1:], 64)
					n += v
				}
			}
		}
		return n
	}
	streamed := sum("apiserver_storage_list_duration_seconds_count", `streamed="true"`)
	paged := sum("apiserver_storage_list_duration_seconds_count", `streamed="false"`)
	requests := sum("etcd_requests_total", `operation="listStream"`)
	errs := sum("etcd_request_errors_total", `operation="listStream"`)
	t.Logf("storage lists: %.0f streamed (RangeStream), %.0f paginated Range; etcd_requests_total{operation=listStream} %.0f, errors %.0f",
		streamed, paged, requests, errs)
	if streamed == 0 {
		t.Errorf("kube-apiserver %s made no list with RangeStream (apiserver_storage_list_duration_seconds_count{streamed=\"true\"} is 0)", sc.rel.Version)
	}
	for _, l := range metrics {
		if strings.HasPrefix(l, "apiserver_storage_list_duration_seconds_count{") && strings.Contains(l, `streamed="true"`) {
			t.Logf("metric %s", l)
		}
	}
}
