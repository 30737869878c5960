//go:build !chaos

package chaos

// long is false in `go test`: every test runs its short version.
const long = false
