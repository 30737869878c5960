// Command chanwatch runs and inspects MEP 7 channel coordination: a demo on
// an embedded etcd, coordinator and node daemons, an operator's status view,
// admin commands and benchmarks.
//
// Exit codes: 0 success, 1 runtime error, 2 usage error. Errors are one line
// on stderr naming what is wrong and what to do; never a stack trace.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return runContext(ctx, args, stdout, stderr)
}

// runContext runs the command line until ctx is done and returns the exit code.
func runContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ue *usageError
	if strings.HasPrefix(err.Error(), "unknown command") {
		// cobra's own usage error, with its "did you mean" on later lines.
		fmt.Fprintln(stderr, "chanwatch: "+strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "Did you mean this?", "did you mean:")), " "))
		return 2
	}
	fmt.Fprintln(stderr, "chanwatch: "+oneLine(err))
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// usageError marks a mistake in the command line: exit code 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

func oneLine(err error) string {
	s := err.Error()
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}

// sigterm returns a channel that receives SIGTERM.
func sigterm() (<-chan os.Signal, func()) {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM)
	return ch, func() { signal.Stop(ch) }
}
