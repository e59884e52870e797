//go:build !dnssensor_broken_ecs && !dnssensor_broken_client

package app

// brokenBuild names the privacy rule a test build breaks on purpose; "" in a normal build.
const brokenBuild = ""
