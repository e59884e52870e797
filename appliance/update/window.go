package update

import (
	"fmt"

	"github.com/sie-europe/dnssensor/appliance/update/updateconfig"
)

// Window is a daily maintenance window in UTC (the box configuration's update.window).
type Window = updateconfig.Window

// ParseWindow reads -window HH:MM-HH:MM; "" is no window (nil).
func ParseWindow(s string) (*Window, error) {
	w, err := updateconfig.ParseWindow(s)
	if err != nil {
		return nil, fmt.Errorf("-window %v", err)
	}
	return w, nil
}
