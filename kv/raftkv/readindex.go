package raftkv

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// linearize returns once this node's store has applied everything
// committed before the call: the read-index protocol. The leader confirms
// it still leads (VerifyLeader) after reading its commit index; a follower
// gets that index from the leader. Either then waits for its own FSM.
func (n *Node) linearize(ctx context.Context) error {
	var idx uint64
	err := n.onLeader(ctx, "read", func(ctx context.Context) error {
		i, err := n.readIndexLocal(ctx)
		idx = i
		return err
	}, func(ctx context.Context, leader string) error {
		resp, err := n.forward(ctx, leader, &rpcRequest{Method: rpcReadIndex})
		if err == nil {
			idx = resp.Index
		}
		return retryable(ctx, err)
	})
	if err != nil {
		return err
	}
	return n.fsm.waitApplied(ctx, n.ctx.Done(), idx)
}

// readIndexLocal returns an index that covers every write acknowledged
// before the call, after checking that this node is still the leader.
func (n *Node) readIndexLocal(ctx context.Context) (uint64, error) {
	if n.raft.State() != raft.Leader {
		return 0, errNotLeader
	}
	term := n.raft.CurrentTerm()
	if n.readyTerm.Load() != term {
		// The barrier of this term has not applied yet; onLeader waits
		// for the change notification.
		return 0, fmt.Errorf("%w: new leader not ready", errNotLeader)
	}
	idx := n.raft.CommitIndex()
	if err := n.verifier.verify(ctx); err != nil {
		return 0, err
	}
	if n.raft.CurrentTerm() != term {
		return 0, errNotLeader
	}
	return idx, nil
}

// verifier batches leadership checks: every caller waits for a
// VerifyLeader round that started after it asked, and one round serves all
// the callers that asked while the previous one ran. A round that takes
// longer than its timeout fails with errNotLeader, so the callers retry
// with a fresh round instead of waiting on one that may never answer (a
// check stuck behind a slow follower, or lost in a leadership change).
type verifier struct {
	r       *raft.Raft
	timeout time.Duration

	mu      sync.Mutex
	running bool
	next    *verifyRound // the round callers join now; starts when the running one ends
}

type verifyRound struct {
	done chan struct{}
	err  error
}

func newVerifier(r *raft.Raft, timeout time.Duration) *verifier {
	return &verifier{r: r, timeout: timeout}
}

// verify returns nil once a quorum confirmed this node's leadership after
// the call began. Errors: errNotLeader (wrapped), ctx's error.
func (v *verifier) verify(ctx context.Context) error {
	v.mu.Lock()
	if v.next == nil {
		v.next = &verifyRound{done: make(chan struct{})}
	}
	r := v.next
	if !v.running {
		v.startLocked()
	}
	v.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startLocked runs the next round; v.mu is held.
func (v *verifier) startLocked() {
	r := v.next
	v.next, v.running = nil, true
	go func() {
		r.err = waitVerify(v.r.VerifyLeader(), v.timeout)
		close(r.done)
		v.mu.Lock()
		defer v.mu.Unlock()
		v.running = false
		if v.next != nil {
			v.startLocked()
		}
	}()
}

// waitVerify waits for f up to timeout.
func waitVerify(f raft.Future, timeout time.Duration) error {
	done := make(chan error, 1)
	// raft queues verify futures in a buffered channel and does not answer
	// those still queued when it shuts down: this goroutine may then stay
	// blocked for good. It is one small goroutine per closed node at most.
	go func() { done <- f.Error() }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			return verifyError(err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("%w: leadership not confirmed within %v", errNotLeader, timeout)
	}
}
