package channelmgr

import (
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

// A pass's decisions on one channel share a txn, and a txn may write a key
// only once: every backend refuses it (memkv, raftkv: kv.ErrInvalidTxn;
// etcd: duplicate key given in txn request), as a permanent error, and the
// next pass, deciding the same, is refused again. A later decision that
// writes a key an earlier one of the pass writes waits for the next pass;
// decisions on other keys of the channel still merge.
func TestPlanAddNeverWritesAKeyTwice(t *testing.T) {
	p := &plan{byCh: map[string]*unit{}}
	p.add(&unit{ch: "x", cmps: []kv.Cmp{kv.CmpModRevision("prepare/2/x", kv.Equal, 5)}, ops: []kv.Op{kv.OpDelete("prepare/2/x")}})
	p.add(&unit{ch: "x", cmps: []kv.Cmp{kv.CmpMissing("prepare/2/x")}, ops: []kv.Op{kv.OpPut("prepare/2/x", []byte("v"))}})
	p.add(&unit{ch: "x", cmps: []kv.Cmp{kv.CmpModRevision("channel/3/x", kv.Equal, 4)}, ops: []kv.Op{kv.OpPut("channel/3/x", []byte("w"))}})
	if len(p.units) != 1 {
		t.Fatalf("%d units, want one for the channel", len(p.units))
	}
	u := p.units[0]
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	if err := kv.ValidateTxn(kv.Txn{If: u.cmps, Then: u.ops}, store.MaxTxnOps()); err != nil {
		t.Fatalf("the channel's unit %v: %v", u.ops, err)
	}
	if len(u.ops) != 2 || u.ops[0].Key != "prepare/2/x" || u.ops[1].Key != "channel/3/x" {
		t.Fatalf("ops %v: want the delete of prepare/2/x and the put of channel/3/x", u.ops)
	}
}
