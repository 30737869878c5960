package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

// BusyLoops is how many CPU-bound neighbours --contended starts: two, one
// per core of the machines the figures come from, as make test-load does.
const BusyLoops = 2

// StartBusyLoops starts n processes that spin on the CPU (yes, writing to
// the null device directly, so no pipe costs this process anything), as a
// busy neighbour of a production coordinator would, and returns a function
// that kills and reaps them. It fails when yes is not installed.
func StartBusyLoops(n int) (stop func(), err error) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	var cmds []*exec.Cmd
	stop = func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
		_ = devnull.Close()
	}
	for range n {
		c := exec.Command("yes")
		c.Stdout = devnull
		if err := c.Start(); err != nil {
			stop()
			if errors.Is(err, exec.ErrNotFound) {
				return nil, fmt.Errorf("bench: --contended needs yes(1) on PATH: %w", err)
			}
			return nil, fmt.Errorf("bench: busy loop: %w", err)
		}
		cmds = append(cmds, c)
	}
	return stop, nil
}
