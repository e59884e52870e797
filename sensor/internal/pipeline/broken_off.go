//go:build !dnssensor_broken_client

package pipeline

// brokenClientRule is true only in a test build (-tags dnssensor_broken_client) that keeps
// client traffic, to prove that sensord's privacy self-test catches a pipeline that leaks client
// addresses. A production build cannot reach it: the constant is false and the branch compiled
// away.
const brokenClientRule = false
