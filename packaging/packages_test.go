//go:build linux

package packaging_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/selfannounce/selfannounce/internal/cli"
	"github.com/selfannounce/selfannounce/internal/testenv"
)

// EnvPackages names the directory holding the built .deb and .rpm
// (`make packages` writes them to dist/). Without it the tests skip: they
// inspect artefacts, they do not build them.
const EnvPackages = "SELFANNOUNCE_PACKAGES"

const (
	unitDeb   = "/lib/systemd/system/selfannounce.service"
	unitRPM   = "/usr/lib/systemd/system/selfannounce.service"
	confPath  = "/etc/selfannounce/config.yaml"
	binPath   = "/usr/sbin/announce"
	xapiHook  = "/etc/xapi.d/vm-post-migrate/selfannounce"
	hooksDir  = "/usr/share/selfannounce/hooks"
	man8      = "/usr/share/man/man8"
	wantsLink = "/etc/systemd/system/multi-user.target.wants/selfannounce.service"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func builtPackages(t *testing.T) (deb, rpm string) {
	t.Helper()
	dir := os.Getenv(EnvPackages)
	if dir == "" {
		testenv.Skip(t, EnvPackages+" is not set (run `make packages-test`)")
	}
	find := func(pattern string) string {
		m, _ := filepath.Glob(filepath.Join(dir, pattern))
		if len(m) != 1 {
			t.Fatalf("%s: want exactly one %s, found %d", dir, pattern, len(m))
		}
		return m[0]
	}
	return find("selfannounce_*.deb"), find("selfannounce-*.rpm")
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdin = nil
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// manPages are the pages the command tree calls for: announce(8) and one per
// visible subcommand, so a new subcommand without a page fails here.
func manPages() []string {
	root := cli.NewRoot()
	pages := []string{"announce.8.gz"}
	for _, c := range root.Commands() {
		if !c.IsAvailableCommand() || c.IsAdditionalHelpTopicCommand() || c.Name() == "completion" {
			continue
		}
		pages = append(pages, "announce-"+c.Name()+".8.gz")
	}
	sort.Strings(pages)
	return pages
}

// commonFiles are installed by both packages.
func commonFiles() []string {
	files := []string{
		binPath, confPath, xapiHook,
		hooksDir + "/xapi-vm-post-migrate",
		hooksDir + "/xen-vif-post.hook",
		hooksDir + "/libvirt-qemu",
		"/usr/share/bash-completion/completions/announce",
		"/usr/share/fish/vendor_completions.d/announce.fish",
		"/usr/share/doc/selfannounce/install.md",
		"/usr/share/doc/selfannounce/configuration.md",
		"/usr/share/doc/selfannounce/operations.md",
		"/usr/share/doc/selfannounce/architecture.svg",
		"/usr/share/doc/selfannounce/grafana-dashboard.json",
	}
	for _, p := range manPages() {
		files = append(files, man8+"/"+p)
	}
	return files
}

func debFiles() []string {
	return append(commonFiles(), unitDeb, "/usr/share/zsh/vendor-completions/_announce")
}

func rpmFiles() []string {
	return append(commonFiles(), unitRPM, "/usr/share/zsh/site-functions/_announce")
}

// Places the package must not write to: auto-enabling xl or libvirt hooks
// would change how every VM's network is plugged without the admin asking.
var forbidden = regexp.MustCompile(`^(/etc/xen/|/etc/libvirt/|/usr/local/)`)

// debContents maps each path in the .deb to its mode string.
func debContents(t *testing.T, deb string) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, l := range strings.Split(run(t, "dpkg-deb", "-c", deb), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 {
			continue
		}
		files[strings.TrimSuffix(strings.TrimPrefix(f[len(f)-1], "."), "/")] = f[0]
	}
	return files
}

func TestDebContents(t *testing.T) {
	deb, _ := builtPackages(t)
	testenv.RequireCommands(t, "dpkg-deb")
	files := debContents(t, deb)
	for _, f := range debFiles() {
		if _, ok := files[f]; !ok {
			t.Errorf("%s missing from the .deb", f)
		}
	}
	for _, f := range []string{binPath, xapiHook, hooksDir + "/xen-vif-post.hook", hooksDir + "/libvirt-qemu"} {
		if m := files[f]; !strings.HasPrefix(m, "-rwxr-xr-x") {
			t.Errorf("%s has mode %s, want -rwxr-xr-x", f, m)
		}
	}
	for f := range files {
		if forbidden.MatchString(f) {
			t.Errorf("%s: the .deb must not install there", f)
		}
	}

	if got := run(t, "dpkg-deb", "-f", deb, "Package"); strings.TrimSpace(got) != "selfannounce" {
		t.Errorf("Package = %q", got)
	}
	// A static binary and sh-only maintainer scripts need nothing.
	if got := strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, "Depends", "Pre-Depends")); got != "" {
		t.Errorf("unexpected dependencies: %s", got)
	}
	conffiles := strings.Fields(run(t, "dpkg-deb", "-I", deb, "conffiles"))
	for _, c := range []string{confPath, xapiHook} {
		if !slices.Contains(conffiles, c) {
			t.Errorf("%s is not a conffile (conffiles: %v)", c, conffiles)
		}
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		body := run(t, "dpkg-deb", "-I", deb, s)
		if !strings.Contains(body, "deb-systemd-") || !strings.Contains(body, "/run/systemd/system") {
			t.Errorf("%s does not follow the guarded deb-systemd-helper/invoke convention:\n%s", s, body)
		}
	}

	// What ships is what the repository holds.
	x := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, x)
	root := repoRoot(t)
	for pkg, src := range map[string]string{
		confPath:                           "packaging/config.yaml",
		unitDeb:                            "systemd/selfannounce.service",
		xapiHook:                           "hooks/xapi-vm-post-migrate",
		hooksDir + "/xen-vif-post.hook":    "hooks/xen-vif-post.hook",
		hooksDir + "/libvirt-qemu":         "hooks/libvirt-qemu",
		hooksDir + "/xapi-vm-post-migrate": "hooks/xapi-vm-post-migrate",
	} {
		sameFile(t, filepath.Join(x, pkg), filepath.Join(root, src))
	}
}

func sameFile(t *testing.T, got, want string) {
	t.Helper()
	a, err := os.ReadFile(got)
	if err != nil {
		t.Error(err)
		return
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Error(err)
		return
	}
	if !bytes.Equal(a, b) {
		t.Errorf("%s differs from %s", got, want)
	}
}

// rpmlib features the rpm 4.11 of a CentOS 7 based XenServer/XCP-ng dom0
// knows; a package needing another (PayloadIsZstd, RichDependencies,
// CaretInVersions) does not install there.
var centos7RPMLib = map[string]bool{
	"rpmlib(CompressedFileNames)":      true,
	"rpmlib(PayloadFilesHavePrefix)":   true,
	"rpmlib(FileDigests)":              true,
	"rpmlib(PayloadIsXz)":              true,
	"rpmlib(PayloadIsLzma)":            true,
	"rpmlib(PayloadIsBzip2)":           true,
	"rpmlib(VersionedDependencies)":    true,
	"rpmlib(PartialHardlinkSets)":      true,
	"rpmlib(ScriptletInterpreterArgs)": true,
	"rpmlib(ExplicitPackageProvide)":   true,
	"rpmlib(HeaderLoadSortsTags)":      true,
	"rpmlib(TildeInVersions)":          true,
	"rpmlib(BuiltinLuaScripts)":        true,
	"rpmlib(FileCaps)":                 true,
	"rpmlib(ConcurrentAccess)":         true,
	"rpmlib(PayloadIsGzip)":            true,
	"/bin/sh":                          true,
}

func TestRPMContents(t *testing.T) {
	_, rpm := builtPackages(t)
	testenv.RequireCommands(t, "rpm")
	list := strings.Fields(run(t, "rpm", "-qlp", rpm))
	for _, f := range rpmFiles() {
		if !slices.Contains(list, f) {
			t.Errorf("%s missing from the .rpm", f)
		}
	}
	for _, f := range list {
		if forbidden.MatchString(f) || f == unitDeb {
			t.Errorf("%s: the .rpm must not install there", f)
		}
	}
	for _, r := range strings.Split(strings.TrimSpace(run(t, "rpm", "-qp", "--requires", rpm)), "\n") {
		// "rpmlib(X) <= 4.6.0-1" names the version that introduced X.
		if f := strings.Fields(r); len(f) > 0 && !centos7RPMLib[f[0]] {
			t.Errorf("requirement %q may not be met on a CentOS 7 based dom0", r)
		}
	}
	if c := strings.TrimSpace(run(t, "rpm", "-qp", "--qf", "%{PAYLOADCOMPRESSOR}", rpm)); c != "xz" && c != "gzip" {
		t.Errorf("payload compressor %q: rpm 4.11 reads only gzip, bzip2, xz and lzma", c)
	}
	config := strings.Fields(run(t, "rpm", "-qpc", rpm))
	for _, c := range []string{confPath, xapiHook} {
		if !slices.Contains(config, c) {
			t.Errorf("%s is not %%config (config files: %v)", c, config)
		}
	}
	flags := run(t, "rpm", "-qp", "--qf", `[%{FILENAMES} %{FILEFLAGS:fflags}\n]`, rpm)
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(confPath) + ` \S*n`).MatchString(flags) {
		t.Errorf("%s is not %%config(noreplace):\n%s", confPath, flags)
	}
}

// The RPM scriptlets follow %systemd_post/_preun/_postun_with_restart: a
// fake systemctl on PATH records what each would do to systemd.
func TestRPMScriptletsFollowConvention(t *testing.T) {
	testenv.RequireCommands(t, "sh")
	dir := t.TempDir()
	logf := filepath.Join(dir, "calls")
	fake := "#!/bin/sh\necho \"$*\" >>" + logf + "\n"
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		script string
		arg    int
		want   []string
	}{
		{"post", 1, []string{"--no-reload preset selfannounce.service"}},
		{"post", 2, nil},
		{"preun", 0, []string{"--no-reload disable selfannounce.service", "stop selfannounce.service"}},
		{"preun", 1, nil},
		{"postun", 0, []string{"daemon-reload"}},
		{"postun", 1, []string{"daemon-reload", "try-restart selfannounce.service"}},
	} {
		os.Remove(logf)
		cmd := exec.Command("sh", filepath.Join("scripts/rpm", c.script), strconv.Itoa(c.arg))
		cmd.Env = []string{"PATH=" + dir + ":/usr/bin:/bin"}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s %d: %v\n%s", c.script, c.arg, err, out)
			continue
		}
		b, _ := os.ReadFile(logf)
		got := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(b) == 0 {
			got = nil
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s %d: systemctl calls %q, want %q", c.script, c.arg, got, c.want)
		}
	}
}

var bumpOnce struct {
	sync.Mutex
	dirs map[string]string
}

// bumped builds the same tree as a higher version, to upgrade to.
func bumped(t *testing.T, packager, version string) string {
	t.Helper()
	bumpOnce.Lock()
	defer bumpOnce.Unlock()
	if d, ok := bumpOnce.dirs[packager]; ok {
		return d
	}
	dist, err := os.MkdirTemp("", "selfannounce-upgrade-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dist) })
	run(t, "make", "-s", "-C", repoRoot(t), "-f", "packaging/packaging.mk", "packages-"+packager,
		"PKG_VERSION="+version, "PKG_DIST="+dist, "PKG_STAGE="+filepath.Join(dist, "stage"))
	m, _ := filepath.Glob(filepath.Join(dist, "selfannounce*."+packager))
	if len(m) != 1 {
		t.Fatalf("building version %s made %v", version, m)
	}
	if bumpOnce.dirs == nil {
		bumpOnce.dirs = map[string]string{}
	}
	bumpOnce.dirs[packager] = m[0]
	return m[0]
}

// nextVersion returns a semver above the package's upstream version.
func nextVersion(t *testing.T, upstream string) string {
	t.Helper()
	m := regexp.MustCompile(`^(\d+)\.(\d+)\.(\d+)`).FindStringSubmatch(upstream)
	if m == nil {
		t.Fatalf("package version %q is not semver", upstream)
	}
	p, _ := strconv.Atoi(m[3])
	return fmt.Sprintf("%s.%s.%d", m[1], m[2], p+1)
}

func editConfig(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(b), "#rate: 10000", "rate: 5000", 1)
	if edited == string(b) {
		t.Fatal("default config has no \"#rate: 10000\" line to edit")
	}
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	return edited
}

func TestDebLifecycle(t *testing.T) {
	deb, _ := builtPackages(t)
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "dpkg", "dpkg-deb", "systemd-analyze", "man", "make", "go")
	if out, err := runErr("dpkg-query", "-W", "-f", "${Status}", "selfannounce"); err == nil && strings.Contains(out, "installed") {
		t.Fatalf("selfannounce is already installed (%s); this test installs and purges it, so remove it first: dpkg -P selfannounce", out)
	}
	t.Cleanup(func() { runErr("dpkg", "-P", "selfannounce") })

	t.Log(run(t, "dpkg", "-i", deb))
	for _, f := range debFiles() {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("after install: %v", err)
		}
	}
	// Debian enables on install, even where systemd is not running.
	if dst, err := os.Readlink(wantsLink); err != nil || dst != unitDeb {
		t.Errorf("unit not enabled: %s -> %q, %v", wantsLink, dst, err)
	}
	if out, err := runErr("systemd-analyze", "verify", unitDeb); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitDeb, err, out)
	}
	if out := strings.TrimSpace(run(t, "man", "-w", "announce")); out != man8+"/announce.8.gz" {
		t.Errorf("man -w announce = %q", out)
	}
	page := run(t, "env", "MANPAGER=cat", "MANWIDTH=80", "man", "8", "announce-daemon")
	for _, s := range []string{"announce-daemon", "--config", "SIGHUP", "SIGNALS"} {
		if !strings.Contains(page, s) {
			t.Errorf("man announce-daemon lacks %q:\n%s", s, page)
		}
	}
	if out := run(t, binPath, "--help"); !strings.Contains(out, "daemon") {
		t.Errorf("%s --help does not list the daemon:\n%s", binPath, out)
	}
	if out := run(t, "bash", "-c", "source /usr/share/bash-completion/completions/announce && complete -p announce"); !strings.Contains(out, "announce") {
		t.Errorf("bash completion not registered: %s", out)
	}

	// An edited conffile survives an upgrade.
	edited := editConfig(t, confPath)
	version := strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, "Version"))
	next := bumped(t, "deb", nextVersion(t, version))
	t.Log(run(t, "dpkg", "-i", next))
	if got := strings.TrimSpace(run(t, "dpkg-query", "-W", "-f", "${Version}", "selfannounce")); got == version {
		t.Fatalf("upgrade left version %s installed", got)
	}
	if b, _ := os.ReadFile(confPath); string(b) != edited {
		t.Errorf("upgrade lost the edit to %s", confPath)
	}

	// remove keeps conffiles, purge takes them and the enablement.
	t.Log(run(t, "dpkg", "-r", "selfannounce"))
	for _, f := range []string{binPath, unitDeb, man8 + "/announce.8.gz"} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("after dpkg -r, %s: %v", f, err)
		}
	}
	if b, _ := os.ReadFile(confPath); string(b) != edited {
		t.Errorf("dpkg -r did not keep the edited %s", confPath)
	}
	t.Log(run(t, "dpkg", "-P", "selfannounce"))
	for _, f := range []string{confPath, "/etc/selfannounce", xapiHook, wantsLink} {
		if _, err := os.Lstat(f); !os.IsNotExist(err) {
			t.Errorf("after dpkg -P, %s: %v", f, err)
		}
	}
	if out, err := runErr("dpkg-query", "-W", "selfannounce"); err == nil {
		t.Errorf("dpkg still knows the package after purge: %s", out)
	}
}

// The rpm installs, upgrades and erases with rpm itself, in a scratch root
// (this machine's rpm database is not the system's package manager), so
// %config(noreplace) is exercised for real. Scriptlets need a shell inside
// the root and are covered by TestRPMScriptletsFollowConvention.
func TestRPMLifecycle(t *testing.T) {
	_, pkg := builtPackages(t)
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "rpm", "make", "go")
	root := t.TempDir()
	rpm := func(args ...string) string {
		return run(t, "rpm", append([]string{"--root", root, "--noscripts"}, args...)...)
	}
	rpm("-i", pkg)
	for _, f := range rpmFiles() {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("after install: %v", err)
		}
	}
	conf := filepath.Join(root, confPath)
	edited := editConfig(t, conf)

	version := strings.TrimSpace(run(t, "rpm", "-qp", "--qf", "%{VERSION}", pkg))
	rpm("-U", bumped(t, "rpm", nextVersion(t, version)))
	if b, _ := os.ReadFile(conf); string(b) != edited {
		t.Errorf("rpm -U lost the edit to %s", confPath)
	}
	rpm("-e", "selfannounce")
	if _, err := os.Stat(filepath.Join(root, binPath)); !os.IsNotExist(err) {
		t.Errorf("after rpm -e, %s: %v", binPath, err)
	}
	// rpm keeps an edited config as .rpmsave on erase.
	if b, err := os.ReadFile(conf + ".rpmsave"); err != nil || string(b) != edited {
		t.Errorf("rpm -e did not save the edited config: %v", err)
	}
}
