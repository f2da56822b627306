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
	"sort"
	"strconv"
	"strings"
	"time"
)

// Binaries are the programs a run needs. Kubernetes' are built once per
// release into .cache/bin/<version>/, each by its own module k8s/v<major>.<minor>
// (the version is that module's k8s.io/kubernetes requirement); shimd is
// rebuilt from the working tree (or KUBE_SHIMD_REF) once per test (Go's build
// cache makes that cheap); etcd is built from the etcd/ module.
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
	// k8sDir holds one build module per Kubernetes release.
	k8sDir = filepath.Join(moduleDir, "k8s")
)

var kubeRequireRE = regexp.MustCompile(`(?m)^(?:require)?\s*k8s\.io/kubernetes (v\S+)\s*(?://.*)?$`)

// Release is a Kubernetes release the scenario runs: the build module in
// Dir requires k8s.io/kubernetes Version.
type Release struct {
	Dir     string
	Version string // v1.37.2
	Minor   int    // 37
}

// kubeVersion is the Kubernetes release the go.mod in dir requires.
func kubeVersion(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return "", err
	}
	m := kubeRequireRE.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("%s/go.mod: no k8s.io/kubernetes requirement", dir)
	}
	return string(m[1]), nil
}

// semver splits v1.37.2 into 1, 37, 2 (-1 where not a number).
func semver(v string) [3]int {
	r := [3]int{-1, -1, -1}
	for i, p := range strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3) {
		p, _, _ = strings.Cut(p, "-")
		if n, err := strconv.Atoi(p); err == nil {
			r[i] = n
		}
	}
	return r
}

// kubeReleases lists the build modules under k8s/, newest release first.
func kubeReleases() ([]Release, error) {
	ents, err := os.ReadDir(k8sDir)
	if err != nil {
		return nil, err
	}
	var rs []Release
	for _, e := range ents {
		dir := filepath.Join(k8sDir, e.Name())
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); !e.IsDir() || err != nil {
			continue
		}
		v, err := kubeVersion(dir)
		if err != nil {
			return nil, err
		}
		rs = append(rs, Release{Dir: dir, Version: v, Minor: semver(v)[1]})
	}
	sort.Slice(rs, func(i, j int) bool {
		a, b := semver(rs[i].Version), semver(rs[j].Version)
		for k := range a {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return false
	})
	if len(rs) == 0 {
		return nil, fmt.Errorf("no build module (k8s/*/go.mod) in %s", k8sDir)
	}
	return rs, nil
}

// selectReleases picks the releases named in list (KUBE_VERSIONS: "1.37",
// "v1.37" or "v1.37.2", comma-separated, in the order given), or all of them,
// newest first, when list is empty.
func selectReleases(list string) ([]Release, error) {
	all, err := kubeReleases()
	if err != nil || strings.TrimSpace(list) == "" {
		return all, err
	}
	var rs []Release
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimPrefix(strings.TrimSpace(name), "v")
		if name == "" {
			continue
		}
		found := false
		for _, r := range all {
			v := strings.TrimPrefix(r.Version, "v")
			if v == name || strings.HasPrefix(v, name+".") {
				rs, found = append(rs, r), true
				break
			}
		}
		if !found {
			var have []string
			for _, r := range all {
				have = append(have, r.Version)
			}
			return nil, fmt.Errorf("KUBE_VERSIONS: no build module for %q under %s (have %s)", name, k8sDir, strings.Join(have, ", "))
		}
	}
	return rs, nil
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

// buildKube builds kube-apiserver and kubectl of release r into
// .cache/bin/<version>/ unless they are there and up to date; logf reports
// progress.
func buildKube(r Release, logf func(string, ...any)) (apiserver, kubectl string, err error) {
	dir := filepath.Join(binDir, r.Version)
	apiserver, kubectl = filepath.Join(dir, "kube-apiserver"), filepath.Join(dir, "kubectl")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	if upToDate(apiserver, r.Version) && upToDate(kubectl, r.Version) {
		logf("kube-apiserver and kubectl %s: cached in %s", r.Version, dir)
		return apiserver, kubectl, nil
	}
	logf("building kube-apiserver and kubectl %s in %s (takes a while on a cold cache)...", r.Version, r.Dir)
	start := time.Now()
	// Build into a temporary directory and rename, so that an
	// interrupted build never leaves a half-written binary behind.
	tmp, err := os.MkdirTemp(cacheDir, "build-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	cmd := goCmd(r.Dir, []string{"CGO_ENABLED=0"}, "build", "-trimpath",
		"-ldflags", versionLDFlags(r.Version), "-o", tmp+string(filepath.Separator),
		"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl")
	if err := run(cmd); err != nil {
		return "", "", err
	}
	for _, name := range []string{"kube-apiserver", "kubectl"} {
		if err := os.Rename(filepath.Join(tmp, name), filepath.Join(dir, name)); err != nil {
			return "", "", err
		}
	}
	logf("built kube-apiserver and kubectl %s in %s", r.Version, time.Since(start).Round(time.Second))
	return apiserver, kubectl, nil
}

// buildShimd builds shimd from the working tree or KUBE_SHIMD_REF into
// .cache/bin/shimd.
func buildShimd(logf func(string, ...any)) (string, error) {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(binDir, "shimd")
	start := time.Now()
	src, what := repoRoot, "the working tree "+repoRoot
	if ref := os.Getenv("KUBE_SHIMD_REF"); ref != "" {
		var err error
		if src, err = checkout(ref); err != nil {
			return "", err
		}
		what = fmt.Sprintf("%s (%s)", ref, filepath.Base(src))
	}
	if err := run(goCmd(src, nil, "build", "-o", bin, "./cmd/shimd")); err != nil {
		return "", err
	}
	logf("built shimd from %s in %s", what, time.Since(start).Round(100*time.Millisecond))
	return bin, nil
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
