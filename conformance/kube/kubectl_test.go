package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// kubectl runs the kubectl binary against one apiserver and keeps a
// transcript of every command in kubectl.log.
type kubectl struct {
	t          *testing.T
	bin        string
	kubeconfig string
	cacheDir   string
	dir        string
	mu         sync.Mutex
	log        *os.File
	n          int
}

func newKubectl(t *testing.T, bin, kubeconfig, dir string) (*kubectl, error) {
	f, err := os.Create(filepath.Join(dir, "kubectl.log"))
	if err != nil {
		return nil, err
	}
	return &kubectl{t: t, bin: bin, kubeconfig: kubeconfig, cacheDir: filepath.Join(dir, "kubectl-cache"), dir: dir, log: f}, nil
}

func (k *kubectl) command(ctx context.Context, stdin string, args ...string) *exec.Cmd {
	full := append([]string{"--kubeconfig=" + k.kubeconfig, "--cache-dir=" + k.cacheDir, "--request-timeout=60s"}, args...)
	cmd := exec.CommandContext(ctx, k.bin, full...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+k.kubeconfig, "KUBECTL_COMMAND_HEADERS=false")
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	return cmd
}

// runIn runs kubectl with stdin; it returns stdout, stderr and the error.
func (k *kubectl) runIn(stdin string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := k.command(ctx, stdin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	k.record(args, stdin, out.String(), errb.String(), err, time.Since(start))
	return out.String(), errb.String(), err
}

func (k *kubectl) record(args []string, stdin, out, errs string, err error, d time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.n++
	fmt.Fprintf(k.log, "\n### [%d] %s kubectl %s  (%s, err=%v)\n", k.n, time.Now().Format("15:04:05.000"), strings.Join(args, " "), d.Round(time.Millisecond), err)
	if stdin != "" && len(stdin) < 4000 {
		fmt.Fprintf(k.log, "--- stdin\n%s\n", stdin)
	} else if stdin != "" {
		fmt.Fprintf(k.log, "--- stdin: %d bytes\n", len(stdin))
	}
	if out != "" {
		if len(out) > 20000 {
			out = out[:20000] + "\n...(truncated)"
		}
		fmt.Fprintf(k.log, "--- stdout\n%s", out)
	}
	if errs != "" {
		if len(errs) > 20000 {
			errs = errs[:20000] + "\n...(truncated)"
		}
		fmt.Fprintf(k.log, "--- stderr\n%s", errs)
	}
}

// run runs kubectl and fails the test on error.
func (k *kubectl) run(args ...string) string {
	k.t.Helper()
	out, errs, err := k.runIn("", args...)
	if err != nil {
		k.t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, out, errs)
	}
	return out
}

// apply pipes a manifest to kubectl (e.g. "create", "-f", "-").
func (k *kubectl) pipe(stdin string, args ...string) string {
	k.t.Helper()
	out, errs, err := k.runIn(stdin, args...)
	if err != nil {
		k.t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, out, errs)
	}
	return out
}

// fail runs kubectl expecting it to fail with a message containing want.
func (k *kubectl) fail(want string, stdin string, args ...string) string {
	k.t.Helper()
	out, errs, err := k.runIn(stdin, args...)
	if err == nil {
		k.t.Errorf("kubectl %s succeeded, want an error containing %q\n%s", strings.Join(args, " "), want, out)
		return errs
	}
	if !strings.Contains(errs+out, want) {
		k.t.Errorf("kubectl %s: error %q does not contain %q", strings.Join(args, " "), strings.TrimSpace(errs), want)
	}
	return errs
}

// getJSON runs kubectl with -o json (or --raw) and decodes the output.
func (k *kubectl) getJSON(v any, args ...string) {
	k.t.Helper()
	out := k.run(args...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		k.t.Fatalf("kubectl %s: decoding output: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// obj is the part of an object the checks look at.
type obj struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		UID               string            `json:"uid"`
		ResourceVersion   string            `json:"resourceVersion"`
		Generation        int64             `json:"generation"`
		Labels            map[string]string `json:"labels"`
		Annotations       map[string]string `json:"annotations"`
		DeletionTimestamp string            `json:"deletionTimestamp"`
		Continue          string            `json:"continue"`
		RemainingItems    *int64            `json:"remainingItemCount"`
	} `json:"metadata"`
	Data   map[string]string `json:"data"`
	Spec   json.RawMessage   `json:"spec"`
	Status json.RawMessage   `json:"status"`
	Items  []obj             `json:"items"`
}

// watcher is a background `kubectl get --watch-only --output-watch-events -o json`.
type watcher struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	cancel context.CancelFunc
	done   chan struct{}
	args   []string
	k      *kubectl
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type watchEvent struct {
	Type   string `json:"type"`
	Object obj    `json:"object"`
}

func (k *kubectl) watch(args ...string) (*watcher, error) {
	ctx, cancel := context.WithCancel(context.Background())
	full := append([]string{"get"}, args...)
	full = append(full, "--watch-only", "--output-watch-events", "-o", "json")
	cmd := k.command(ctx, "", full...)
	w := &watcher{cmd: cmd, out: &syncBuffer{}, cancel: cancel, done: make(chan struct{}), args: full, k: k}
	var errb syncBuffer
	cmd.Stdout, cmd.Stderr = w.out, &errb
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	start := time.Now()
	go func() {
		err := cmd.Wait()
		k.record(full, "", w.out.String(), errb.String(), err, time.Since(start))
		close(w.done)
	}()
	return w, nil
}

// events decodes what the watch printed so far.
func (w *watcher) events() []watchEvent {
	dec := json.NewDecoder(strings.NewReader(w.out.String()))
	var evs []watchEvent
	for {
		var e watchEvent
		if err := dec.Decode(&e); err != nil {
			return evs
		}
		evs = append(evs, e)
	}
}

// waitFor waits until an event satisfies ok.
func (w *watcher) waitFor(timeout time.Duration, ok func(watchEvent) bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, e := range w.events() {
			if ok(e) {
				return true
			}
		}
		select {
		case <-w.done:
			for _, e := range w.events() {
				if ok(e) {
					return true
				}
			}
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
	return false
}

func (w *watcher) stop() {
	w.cancel()
	<-w.done
}

// kcmd is one kubectl invocation with optional stdin.
type kcmd struct {
	in   string
	args []string
}

func kc(args ...string) kcmd { return kcmd{args: args} }

func (c kcmd) run(k *kubectl) string {
	k.t.Helper()
	return k.pipe(c.in, c.args...)
}
