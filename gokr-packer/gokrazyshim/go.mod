module github.com/gokrazy/dnssensor-shim

go 1.26.8

// Pinned on purpose: the wrappers below are written against this exact version of
// gokrazy/internal, the same version the main module pins. gokr-packer's
// TestShimPinnedVersion fails if the two drift apart.
require github.com/gokrazy/internal v0.0.0-20251208203110-3c1aa9087c82
