//go:build dnssensor_broken_ecs || dnssensor_broken_client

package app

// brokenBuild: this test build breaks a privacy rule on purpose (ECS zeroing or the client rule).
const brokenBuild = "scrubber broken on purpose"
