package status

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Process is statusd's own cost, on the JSON page: the issue asks what the page costs the box,
// and gokrazy shows a service's RSS but not its CPU time.
type Process struct {
	// CPUSeconds is user plus system time since statusd started.
	CPUSeconds float64 `json:"cpu_seconds"`
	// RSSBytes is the resident set, as the kernel counts it (what gokrazy's overview shows).
	RSSBytes int64 `json:"rss_bytes"`
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every Linux architecture the
// images are built for (amd64, arm64), fixed in the kernel's ABI.
const clockTicks = 100

// readProcess reads statusd's own CPU time and resident set from /proc/self. An error leaves the
// page without the section, it is not a reason to fail the page.
func readProcess() (*Process, error) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return nil, err
	}
	// The command name (field 2) is in parentheses and may hold spaces: count from after it.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/self/stat: no command name")
	}
	f := strings.Fields(string(stat[i+1:]))
	// After the name: state is field 3, utime field 14, stime field 15 (proc(5)).
	if len(f) < 13 {
		return nil, fmt.Errorf("/proc/self/stat: %d fields after the name", len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("/proc/self/stat: utime %q, stime %q", f[11], f[12])
	}
	statm, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return nil, err
	}
	m := strings.Fields(string(statm))
	if len(m) < 2 {
		return nil, fmt.Errorf("/proc/self/statm: %q", statm)
	}
	pages, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("/proc/self/statm: resident %q", m[1])
	}
	return &Process{
		CPUSeconds: float64(utime+stime) / clockTicks,
		RSSBytes:   pages * int64(os.Getpagesize()),
	}, nil
}
