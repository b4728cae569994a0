package packaging_test

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/selfannounce/selfannounce/announce/config"
)

// The packaged config is a conffile admins edit by uncommenting: as shipped
// it must change nothing, and uncommented it must state the real defaults.
// A "#key" line (no space after "#") or a "#  nested" line is a setting;
// "# text" is prose.

func readDefaultConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var settingLine = regexp.MustCompile(`^#([^ #]|  )`)

func uncomment(doc string) string {
	var out []string
	for _, l := range strings.Split(doc, "\n") {
		if settingLine.MatchString(l) {
			l = l[1:]
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func TestDefaultConfigAsShippedIsDefault(t *testing.T) {
	c, err := config.Parse([]byte(readDefaultConfig(t)))
	if err != nil {
		t.Fatalf("shipped config does not parse: %v", err)
	}
	if !reflect.DeepEqual(c, config.Default()) {
		t.Fatalf("shipped config is not the default:\n got %+v\nwant %+v", c, config.Default())
	}
}

func TestDefaultConfigUncommentedStatesDefaults(t *testing.T) {
	doc := uncomment(readDefaultConfig(t))
	c, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("uncommented config does not parse: %v\n%s", err, doc)
	}
	want := config.Default()
	// An empty list and no list are the same configuration.
	if len(c.Guests) == 0 && len(want.Guests) == 0 {
		c.Guests, want.Guests = nil, nil
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("values in the comments are not the defaults:\n got %+v\nwant %+v", c, want)
	}
}

// Every key config.File accepts must be documented, so a key added to the
// code without a line here fails this test.
func TestDefaultConfigListsEveryKey(t *testing.T) {
	raw := readDefaultConfig(t)
	doc := uncomment(raw)
	var missing []string
	var walk func(typ reflect.Type, indent string)
	walk = func(typ reflect.Type, indent string) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			key := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if key == "" || key == "-" {
				continue
			}
			re := regexp.MustCompile(`(?m)^` + indent + `(- )?` + regexp.QuoteMeta(key) + `:`)
			if !re.MatchString(doc) {
				missing = append(missing, indent+key)
			}
			ft := f.Type
			if ft.Kind() == reflect.Slice {
				// List items are shown as block or flow examples; their
				// keys need only appear somewhere.
				if ft = ft.Elem(); ft.Kind() == reflect.Struct {
					for j := 0; j < ft.NumField(); j++ {
						k := strings.Split(ft.Field(j).Tag.Get("yaml"), ",")[0]
						if !regexp.MustCompile(`\b` + regexp.QuoteMeta(k) + `:`).MatchString(raw) {
							missing = append(missing, key+"[]."+k)
						}
					}
				}
				continue
			}
			if ft.Kind() == reflect.Struct {
				walk(ft, indent+"  ")
			}
		}
	}
	walk(reflect.TypeOf(config.File{}), "")
	if len(missing) > 0 {
		t.Fatalf("keys missing from packaging/config.yaml: %v", missing)
	}
}

// Examples in prose must be valid too: they get pasted.
func TestDefaultConfigExamplesParse(t *testing.T) {
	n := 0
	for _, l := range strings.Split(readDefaultConfig(t), "\n") {
		ex, ok := strings.CutPrefix(l, "# Example: ")
		if !ok {
			continue
		}
		n++
		if _, err := config.Parse([]byte(ex)); err != nil {
			t.Errorf("example %q: %v", ex, err)
		}
	}
	if n == 0 {
		t.Fatal("no examples found; the guests example was removed?")
	}
}
