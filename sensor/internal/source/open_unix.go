//go:build unix

package source

import (
	"os"
	"syscall"
)

// unblockOpen ends an open of path that waits for a FIFO's writer, by opening it for writing
// without blocking (which fails harmlessly for anything but a FIFO with a waiting reader).
func unblockOpen(path string) {
	if w, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		w.Close()
	}
}
