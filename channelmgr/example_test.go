package channelmgr_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// waitOwner polls Owner until the channel has an assignment key.
func waitOwner(ctx context.Context, b kv.KV, ch string) (int64, meta.ChannelInfo, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		id, info, err := channelmgr.Owner(ctx, b, ch)
		if !errors.Is(err, channelmgr.ErrNotAssigned) {
			return id, info, err
		}
		select {
		case <-ctx.Done():
			return 0, meta.ChannelInfo{}, ctx.Err()
		case <-tick.C:
		}
	}
}

// DataCoord registers a channel and runs a Coordinator; a DataNode registers
// its session; the leading Coordinator assigns the channel to the node with
// a ToWatch key under channel/<nodeID>/. (Package nodewatch runs the node
// side: it sees the key, calls the handler's Watch, and answers Watched.)
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := memkv.New() // production: etcdkv.New(client, "by-dev/meta")
	defer b.Close()

	// Any process may register: it is desired state, no leader needed.
	const ch = "by-dev-rootcoord-dml_0_449v0"
	if err := channelmgr.Register(ctx, b, meta.ChannelSpec{Name: ch, CollectionID: 449}); err != nil {
		fmt.Println(err)
		return
	}

	// A DataNode's session (nodewatch.Node does this for you).
	s, err := session.New(ctx, b)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close(context.Background())
	node, err := session.RegisterNode(ctx, b, s, meta.NodeSession{Addr: "datanode-1:21124"})
	if err != nil {
		fmt.Println(err)
		return
	}

	// DataCoord: Run campaigns, then reconciles while it leads.
	c, err := channelmgr.New(b, channelmgr.WithID("datacoord-1"))
	if err != nil {
		fmt.Println(err)
		return
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()

	id, info, err := waitOwner(ctx, b, ch)
	fmt.Println(id == node.ID(), info.State, info.CollectionID, err)

	stop() // resigns, so a standby coordinator takes over at once
	fmt.Println(<-done)
	// Output:
	// true ToWatch 449 <nil>
	// <nil>
}

// Registering twice fails with ErrAlreadyRegistered; deregistering an
// unknown channel with ErrNotRegistered.
func ExampleRegister() {
	ctx := context.Background()
	b := memkv.New()
	defer b.Close()

	spec := meta.ChannelSpec{Name: "dml_0", CollectionID: 1, Vchannel: []byte(`{"seek":"..."}`)}
	fmt.Println(channelmgr.Register(ctx, b, spec))
	err := channelmgr.Register(ctx, b, spec)
	fmt.Println(errors.Is(err, channelmgr.ErrAlreadyRegistered))
	fmt.Println(channelmgr.Deregister(ctx, b, "dml_0"))
	err = channelmgr.Deregister(ctx, b, "dml_0")
	fmt.Println(errors.Is(err, channelmgr.ErrNotRegistered))
	// Output:
	// <nil>
	// true
	// <nil>
	// true
}

// Pausing balance (for maintenance) stops new balance moves; failover,
// drains and new placements go on.
func ExamplePauseBalance() {
	ctx := context.Background()
	b := memkv.New()
	defer b.Close()

	fmt.Println(channelmgr.PauseBalance(ctx, b))
	paused, _ := channelmgr.BalancePaused(ctx, b)
	fmt.Println(paused)
	fmt.Println(channelmgr.ResumeBalance(ctx, b))
	paused, _ = channelmgr.BalancePaused(ctx, b)
	fmt.Println(paused)
	// Output:
	// <nil>
	// true
	// <nil>
	// false
}

// The default policy spreads each collection's channels and keeps node
// counts within 1; BalanceStep is the fewest moves that restore that.
func ExampleLeastLoaded() {
	nodes := []channelmgr.NodeLoad{{ID: 1}, {ID: 2}, {ID: 3}}
	var chs []channelmgr.Channel
	for i := 0; i < 6; i++ {
		chs = append(chs, channelmgr.Channel{Name: fmt.Sprintf("c%d", i), CollectionID: int64(i % 2)})
	}
	fmt.Println(channelmgr.LeastLoaded().Place(chs, nodes))

	loaded := []channelmgr.NodeLoad{{ID: 1}, {ID: 2}, {ID: 3}}
	for i := 0; i < 5; i++ {
		loaded[0].Channels = append(loaded[0].Channels, channelmgr.Channel{Name: fmt.Sprintf("c%d", i), Movable: true})
	}
	fmt.Println(channelmgr.BalanceStep(loaded, 8))
	// Output:
	// [1 2 3 1 2 3]
	// [{c0 1 2} {c1 1 3} {c2 1 2}]
}

// A Coordinator with the sticky consistent-hash policy and tighter timeouts.
func ExampleNew() {
	b := memkv.New()
	defer b.Close()
	c, err := channelmgr.New(b,
		channelmgr.WithID("datacoord-1"),
		channelmgr.WithPolicy(channelmgr.ConsistentHash(0)),
		channelmgr.WithWatchTimeout(20*time.Second),
		channelmgr.WithReleaseTimeout(20*time.Second),
		channelmgr.WithMaxMovesInFlight(4),
	)
	fmt.Println(c.ID(), err)
	_, err = channelmgr.New(b, channelmgr.WithCheckInterval(0))
	fmt.Println(errors.Is(err, channelmgr.ErrInvalidOption))
	// Output:
	// datacoord-1 <nil>
	// true
}
