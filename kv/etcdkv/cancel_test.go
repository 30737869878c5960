package etcdkv

import (
	"context"
	"errors"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chanwatch/chanwatch/kv"
)

// A watch the server cancels reaches us as text only; its status must still
// map onto the kv sentinels.
func TestWatchCancelReasonMapping(t *testing.T) {
	// convertError only asks the client whether it was closed; this one
	// never dials.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	k := &KV{cli: cli}
	for reason, want := range map[string]error{
		"rpc error: code = PermissionDenied desc = etcdserver: permission denied": kv.ErrPermissionDenied,
		"rpc error: code = InvalidArgument desc = etcdserver: invalid auth token": kv.ErrPermissionDenied,
		"rpc error: code = Unavailable desc = etcdserver: no leader":              kv.ErrUnavailable,
	} {
		raw := status.Error(codes.FailedPrecondition, reason) // as clientv3's WatchResponse.Err builds it
		got := k.convertError(context.Background(), cancelReasonError(raw), false)
		if !errors.Is(got, want) {
			t.Errorf("%q -> %v, want %v", reason, got, want)
		}
	}
	other := errors.New("something else")
	if got := cancelReasonError(other); got != other {
		t.Errorf("unparseable reason changed the error: %v", got)
	}
}
