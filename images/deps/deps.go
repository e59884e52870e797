//go:build gokrazy_deps

// Package deps is the build module for everything in a device image that does not
// come from the main module: the generated init (github.com/gokrazy/gokrazy), the
// gokrazy system programs (the `tool` lines in go.mod) and the kernel, firmware and
// EEPROM modules whose files gokr-packer copies into the image. Keeping them here
// rather than in the main go.mod pins the device side in one place without adding
// dependencies that only the image needs to the sensor's module graph.
//
// The gokrazy and gokrazy/internal versions must equal the main module's (checked
// by gokr-packer's tests). To move the kernel: `go get github.com/gokrazy/kernel.amd64@latest`
// in this folder. The build tag keeps this file out of every build; it exists so
// `go mod tidy` here keeps the non-tool requirements.
package deps

import (
	_ "github.com/gokrazy/firmware"
	_ "github.com/gokrazy/gokrazy"
	_ "github.com/gokrazy/kernel.amd64"
	_ "github.com/gokrazy/kernel.arm64"
	_ "github.com/gokrazy/kernel.rpi"
	_ "github.com/gokrazy/rpi-eeprom"
)
