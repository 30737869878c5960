package etcdkv

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/chanwatch/chanwatch/kv"
)

// Txn applies t as one etcd Txn; see kv.KV. It is validated (kv.ValidateTxn
// against MaxTxnOps, kv.ValidateTxnBytes against MaxTxnBytes) before any
// request is sent, so an invalid or oversized Txn writes nothing; a request
// the client or the server still refuses for its size fails with
// kv.ErrTxnTooLarge too. A failure after sending that leaves the outcome open
// wraps kv.ErrUnknownOutcome as well as its cause.
func (k *KV) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	if err := kv.ValidateTxn(t, k.maxTxnOps); err != nil {
		return kv.TxnResponse{}, err
	}
	if err := kv.ValidateTxnBytes(t, k.maxTxnBytes); err != nil {
		return kv.TxnResponse{}, err
	}
	cmps := make([]clientv3.Cmp, len(t.If))
	for i, c := range t.If {
		cmps[i] = k.cmp(c)
	}
	var resp *clientv3.TxnResponse
	err := k.call(ctx, true, func(ctx context.Context) (err error) {
		resp, err = k.cli.Txn(ctx).If(cmps...).Then(k.ops(t.Then)...).Else(k.ops(t.Else)...).Commit()
		return err
	})
	if err != nil {
		return kv.TxnResponse{}, err
	}
	out := kv.TxnResponse{
		Succeeded: resp.Succeeded,
		Revision:  resp.Header.Revision,
		Responses: make([]kv.OpResponse, len(resp.Responses)),
	}
	for i, r := range resp.Responses {
		switch {
		case r.GetResponseRange() != nil:
			if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
				got := k.keyValue(kvs[0])
				out.Responses[i].KV = &got
			}
		case r.GetResponseDeleteRange() != nil:
			out.Responses[i].Deleted = r.GetResponseDeleteRange().Deleted
		}
	}
	return out, nil
}

var cmpOps = map[kv.CmpResult]string{kv.Equal: "=", kv.NotEqual: "!=", kv.Less: "<", kv.Greater: ">"}

// cmp converts a validated kv.Cmp.
func (k *KV) cmp(c kv.Cmp) clientv3.Cmp {
	key := k.full(c.Key)
	op := cmpOps[c.Result]
	switch c.Target {
	case kv.TargetValue:
		return clientv3.Compare(clientv3.Value(key), op, string(c.Value))
	case kv.TargetVersion:
		return clientv3.Compare(clientv3.Version(key), op, c.Num)
	case kv.TargetCreateRevision:
		return clientv3.Compare(clientv3.CreateRevision(key), op, c.Num)
	case kv.TargetModRevision:
		return clientv3.Compare(clientv3.ModRevision(key), op, c.Num)
	}
	panic(fmt.Sprintf("etcdkv: unvalidated compare %v", c)) // ValidateTxn rejects it
}

// ops converts a validated branch.
func (k *KV) ops(branch []kv.Op) []clientv3.Op {
	out := make([]clientv3.Op, len(branch))
	for i, o := range branch {
		key := k.full(o.Key)
		switch o.Type {
		case kv.OpTypePut:
			if o.Lease != kv.NoLease {
				out[i] = clientv3.OpPut(key, string(o.Value), clientv3.WithLease(clientv3.LeaseID(o.Lease)))
			} else {
				out[i] = clientv3.OpPut(key, string(o.Value))
			}
		case kv.OpTypeDelete:
			out[i] = clientv3.OpDelete(key)
		case kv.OpTypeGet:
			out[i] = clientv3.OpGet(key)
		default:
			panic(fmt.Sprintf("etcdkv: unvalidated op type %v", o.Type)) // ValidateTxn rejects it
		}
	}
	return out
}
