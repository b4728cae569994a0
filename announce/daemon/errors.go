package daemon

import "fmt"

func errf(format string, a ...any) error { return fmt.Errorf(format, a...) }
