package resolve_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/selfannounce/selfannounce/announce/resolve"
)

func copyTestdata(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files, _ := filepath.Glob("testdata/libvirt/*.xml")
	if len(files) == 0 {
		t.Fatal("no testdata")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLibvirtResolver(t *testing.T) {
	dir := copyTestdata(t)
	ctx := ctxT(t)
	r := resolve.Libvirt(dir)
	if r.Name() != "libvirt" {
		t.Fatal(r.Name())
	}
	g, known, err := r.Resolve(ctx, "vnet3")
	if err != nil || !known || g.MAC.String() != "52:54:00:6b:3c:58" || len(g.IPs) != 0 || g.Source != "libvirt" {
		t.Fatalf("vnet3: %v %v %v", g, known, err)
	}
	g, known, err = r.Resolve(ctx, "vnet4")
	if err != nil || !known || g.MAC.String() != "52:54:00:d1:07:9e" {
		t.Fatalf("vnet4: %v %v %v", g, known, err)
	}
	if got := ipsString(g.IPs); got != "[192.0.2.41 2001:db8:41::41]" {
		t.Fatalf("vnet4 IPs %s", got)
	}
	// A bare <domain> file.
	if g, known, err := r.Resolve(ctx, "tap-db02"); err != nil || !known || g.MAC.String() != "52:54:00:0a:bb:02" {
		t.Fatalf("tap-db02: %v %v %v", g, known, err)
	}
	// vnet5's MAC is multicast: never a guest's.
	for _, port := range []string{"vnet5", "eth0", "web01"} {
		if _, known, err := r.Resolve(ctx, port); known || err != nil {
			t.Fatalf("%s: known=%v err=%v", port, known, err)
		}
	}
}

func TestLibvirtCache(t *testing.T) {
	dir := copyTestdata(t)
	ctx := ctxT(t)
	r := resolve.Libvirt(dir)
	if _, known, _ := r.Resolve(ctx, "vnet3"); !known {
		t.Fatal("vnet3 unknown")
	}
	web := filepath.Join(dir, "web01.xml")
	orig, _ := os.ReadFile(web)
	fi, _ := os.Stat(web)

	// Same inode, size and mtime: the cached parse stands, proving the file
	// is not read again on every lookup.
	same := strings.Replace(string(orig), "'vnet3'", "'vnet8'", 1)
	if err := os.WriteFile(web, []byte(same), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(web, fi.ModTime(), fi.ModTime())
	if _, known, _ := r.Resolve(ctx, "vnet3"); !known {
		t.Fatal("unchanged mtime but file re-read")
	}

	// libvirt rewrites by rename: a new file is seen at once.
	tmp := filepath.Join(dir, "web01.xml.new")
	os.WriteFile(tmp, []byte(strings.Replace(string(orig), "'vnet3'", "'vnet9'", 1)), 0o600)
	os.Chtimes(tmp, fi.ModTime(), fi.ModTime())
	if err := os.Rename(tmp, web); err != nil {
		t.Fatal(err)
	}
	if _, known, _ := r.Resolve(ctx, "vnet9"); !known {
		t.Fatal("rewritten file not re-read")
	}
	if _, known, _ := r.Resolve(ctx, "vnet3"); known {
		t.Fatal("stale port still known")
	}

	// An mtime change alone is enough too.
	os.WriteFile(web, orig, 0o600)
	os.Chtimes(web, time.Now().Add(time.Second), time.Now().Add(time.Second))
	if _, known, _ := r.Resolve(ctx, "vnet3"); !known {
		t.Fatal("vnet3 not back after rewrite")
	}

	// The domain went away.
	os.Remove(web)
	if _, known, err := r.Resolve(ctx, "vnet3"); known || err != nil {
		t.Fatalf("removed domain: known=%v err=%v", known, err)
	}
}

func TestLibvirtBadFiles(t *testing.T) {
	dir := copyTestdata(t)
	ctx := ctxT(t)
	os.WriteFile(filepath.Join(dir, "broken.xml"), []byte("<domstatus><domain><name>x</name>"), 0o600)
	os.WriteFile(filepath.Join(dir, "other.xml"), []byte("<network><name>default</name></network>"), 0o600)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("<<<"), 0o600)
	r := resolve.Libvirt(dir)
	if _, known, err := r.Resolve(ctx, "vnet3"); !known || err != nil {
		t.Fatalf("good file beside broken ones: known=%v err=%v", known, err)
	}
	_, known, err := r.Resolve(ctx, "vnet77")
	if known || err == nil || !strings.Contains(err.Error(), "broken.xml") || !strings.Contains(err.Error(), "<network>") {
		t.Fatalf("unknown port beside broken files: known=%v err=%v", known, err)
	}
	if _, known, err := resolve.Libvirt(filepath.Join(dir, "absent")).Resolve(ctx, "vnet3"); known || err != nil {
		t.Fatalf("missing dir (libvirt not in use): known=%v err=%v", known, err)
	}
}

func TestLibvirtDomainInterfaces(t *testing.T) {
	dir := copyTestdata(t)
	ifs, err := resolve.LibvirtDomainInterfaces(dir, "web01")
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 2 || ifs[0].Dev != "vnet3" || ifs[1].Dev != "vnet4" ||
		ifs[0].MAC.String() != "52:54:00:6b:3c:58" || ipsString(ifs[1].IPs) != "[192.0.2.41 2001:db8:41::41]" {
		t.Fatalf("web01: %+v", ifs)
	}
	if _, err := resolve.LibvirtDomainInterfaces(dir, "nosuch"); !errors.Is(err, resolve.ErrUnknownDomain) {
		t.Fatalf("unknown domain: %v", err)
	}
}
