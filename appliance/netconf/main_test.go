package netconf

import (
	"os"
	"testing"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
)

// children are the parts of the tests that run inside a network namespace, in a re-executed test
// binary (see netnstest.Child).
var children = map[string]func() (any, error){
	"tap": func() (any, error) { return ConfigureTap(os.Getenv("NETC_IFACE")) },
}

func TestMain(m *testing.M) {
	netnstest.RunChild(children)
	os.Exit(m.Run())
}
