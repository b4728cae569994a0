// Package testbin builds the real announce binary once per test process, so
// end-to-end tests run exactly what operators run.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	once sync.Once
	path string
	err  error
	out  []byte
)

// EnvAnnounce names an announce binary built beforehand: the kernel VM
// runs tests with the one its host built, instead of compiling under TCG.
const EnvAnnounce = "SELFANNOUNCE_ANNOUNCE_BIN"

// Announce returns the path of a freshly built announce binary, or the one
// EnvAnnounce names.
func Announce(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvAnnounce); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", EnvAnnounce, err)
		}
		return p
	}
	once.Do(func() {
		dir, derr := os.MkdirTemp("", "announce-bin")
		if derr != nil {
			err = derr
			return
		}
		path = filepath.Join(dir, "announce")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		gobin, lerr := exec.LookPath("go")
		if lerr != nil {
			gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		cmd := exec.Command(gobin, "build", "-o", path, "./cmd/announce")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		t.Fatalf("building announce: %v\n%s", err, out)
	}
	return path
}
