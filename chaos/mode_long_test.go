//go:build chaos

package chaos

// long is true under the chaos build tag (`make chaos`): every test runs its
// long version.
const long = true
