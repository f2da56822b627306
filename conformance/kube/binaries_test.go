package kube

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// Binaries are the programs a run needs. Kubernetes' are built once per
// version into .cache/bin (the version is the k8s.io/kubernetes requirement in
// this module's go.mod); shimd is rebuilt from the working tree (or
// KUBE_SHIMD_REF) every run (Go's build cache makes that cheap); etcd is built
// from the etcd/ module.
type Binaries struct {
	KubeVersion   string
	KubeAPIServer string
	Kubectl       string
	Shimd         string
	Etcd          string
}

var (
	// moduleDir is this module's directory (the test's working directory).
	moduleDir, _ = os.Getwd()
	repoRoot     = filepath.Clean(filepath.Join(moduleDir, "..", ".."))
	cacheDir     = filepath.Join(moduleDir, ".cache")
	binDir       = filepath.Join(cacheDir, "bin")
)

var kubeRequireRE = regexp.MustCompile(`(?m)^(?:require)?\s*k8s\.io/kubernetes (v\S+)\s*(?://.*)?$`)

// kubeVersion is the Kubernetes release go.mod requires.
func kubeVersion() (string, error) {
	b, err := os.ReadFile(filepath.Join(moduleDir, "go.mod"))
	if err != nil {
		return "", err
	}
	m := kubeRequireRE.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("go.mod: no k8s.io/kubernetes requirement")
	}
	return string(m[1]), nil
}

// upToDate reports whether bin was built by this Go toolchain against
// k8s.io/kubernetes version v (read from the binary's embedded build info).
func upToDate(bin, v string) bool {
	info, err := buildinfo.ReadFile(bin)
	if err != nil || info.GoVersion != runtime.Version() {
		return false
	}
	// The main package's module is recorded as Main, even when it is a
	// dependency of the module the build ran in.
	for _, d := range append([]*debug.Module{&info.Main}, info.Deps...) {
		if d.Path == "k8s.io/kubernetes" {
			return d.Version == v
		}
	}
	return false
}

// versionLDFlags stamps the release into the binaries as hack/lib/version.sh
// does (otherwise they report v0.0.0-master).
func versionLDFlags(v string) string {
	major, minor := "1", ""
	if p := strings.Split(strings.TrimPrefix(v, "v"), "."); len(p) >= 2 {
		major, minor = p[0], p[1]
	}
	flags := []string{"-s", "-w"}
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		flags = append(flags,
			"-X", pkg+".gitVersion="+v,
			"-X", pkg+".gitMajor="+major,
			"-X", pkg+".gitMinor="+minor,
			"-X", pkg+".gitTreeState=clean",
			"-X", pkg+".buildDate=1970-01-01T00:00:00Z")
	}
	return strings.Join(flags, " ")
}

func goCmd(dir string, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

func run(cmd *exec.Cmd) error {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out.String())
	}
	return nil
}

// buildBinaries builds what is missing or stale; logf reports progress.
func buildBinaries(logf func(string, ...any)) (*Binaries, error) {
	v, err := kubeVersion()
	if err != nil {
		return nil, err
	}
	b := &Binaries{
		KubeVersion:   v,
		KubeAPIServer: filepath.Join(binDir, "kube-apiserver"),
		Kubectl:       filepath.Join(binDir, "kubectl"),
		Shimd:         filepath.Join(binDir, "shimd"),
		Etcd:          filepath.Join(binDir, "etcd"),
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, err
	}
	if upToDate(b.KubeAPIServer, v) && upToDate(b.Kubectl, v) {
		logf("kube-apiserver and kubectl %s: cached in %s", v, binDir)
	} else {
		logf("building kube-apiserver and kubectl %s (takes a while on a cold cache)...", v)
		start := time.Now()
		// Build into a temporary directory and rename, so that an
		// interrupted build never leaves a half-written binary behind.
		tmp, err := os.MkdirTemp(cacheDir, "build-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		cmd := goCmd(moduleDir, []string{"CGO_ENABLED=0"}, "build", "-trimpath",
			"-ldflags", versionLDFlags(v), "-o", tmp+string(filepath.Separator),
			"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl")
		if err := run(cmd); err != nil {
			return nil, err
		}
		for _, name := range []string{"kube-apiserver", "kubectl"} {
			if err := os.Rename(filepath.Join(tmp, name), filepath.Join(binDir, name)); err != nil {
				return nil, err
			}
		}
		logf("built kube-apiserver and kubectl %s in %s", v, time.Since(start).Round(time.Second))
	}

	start := time.Now()
	src, what := repoRoot, "the working tree "+repoRoot
	if ref := os.Getenv("KUBE_SHIMD_REF"); ref != "" {
		if src, err = checkout(ref); err != nil {
			return nil, err
		}
		what = fmt.Sprintf("%s (%s)", ref, filepath.Base(src))
	}
	if err := run(goCmd(src, nil, "build", "-o", b.Shimd, "./cmd/shimd")); err != nil {
		return nil, err
	}
	logf("built shimd from %s in %s", what, time.Since(start).Round(100*time.Millisecond))
	return b, nil
}

// checkout extracts the shimd sources of a git ref (git archive, so neither
// the working tree nor the repository changes) into .cache/src/<commit>.
func checkout(ref string) (string, error) {
	out, err := exec.Command("git", "-C", repoRoot, "rev-parse", "--verify", ref+"^{commit}").Output()
	if err != nil {
		return "", fmt.Errorf("KUBE_SHIMD_REF=%s: git rev-parse: %v", ref, err)
	}
	sha := strings.TrimSpace(string(out))
	dir := filepath.Join(cacheDir, "src", sha)
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
		return dir, nil
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	cmd := exec.Command("sh", "-c", `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, "sh", repoRoot, sha, tmp)
	if err := run(cmd); err != nil {
		return "", err
	}
	return dir, os.Rename(tmp, dir)
}

// buildEtcd builds the reference etcd from the etcd/ module next to this one
// (it pins the etcd release shimd's Status reports); Go's build cache makes
// that cheap after the first time.
func buildEtcd(b *Binaries, logf func(string, ...any)) error {
	start := time.Now()
	if err := run(goCmd(filepath.Join(moduleDir, "etcd"), nil, "build", "-o", b.Etcd, "go.etcd.io/etcd/server/v3")); err != nil {
		return err
	}
	logf("built etcd in %s", time.Since(start).Round(100*time.Millisecond))
	return nil
}
