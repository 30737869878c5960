package conformance

import (
	"testing"
)

// ChurnSeed is RandomizedChurn's seed; 0 picks one from the time (the
// scenario logs it, and prints it again when it fails). A test binary
// usually sets it from a flag (-seed).
var ChurnSeed int64

// ChurnRounds is how many random steps RandomizedChurn takes (-rounds);
// 0 means the default: 60 on a fake clock, 30 on real time.
var ChurnRounds int

// mepScenario is one named MEP scenario.
type mepScenario struct {
	name string
	run  func(t *testing.T, m *mep)
}

// mepScenarios lists the suite, in the order it runs.
var mepScenarios = []mepScenario{
	{"AssignSingleNode", mepAssignSingleNode},
	{"SpreadEvenly", mepSpreadEvenly},
	{"NodeJoinRebalance", mepNodeJoinRebalance},
	{"NodeCrashFailover", mepNodeCrashFailover},
	{"LastNodeToRemaining", mepLastNodeToRemaining},
	{"RemainingToNewNode", mepRemainingToNewNode},
	{"WatchTimeoutReassign", mepWatchTimeoutReassign},
	{"WatchFailureReassign", mepWatchFailureReassign},
	{"FailureReasonKept", mepFailureReasonKept},
	{"SlowWatchWithProgress", mepSlowWatchWithProgress},
	{"WatchProgressOnce", mepWatchProgressOnce},
	{"SlowReleaseWithProgress", mepSlowReleaseWithProgress},
	{"AttemptCap", mepAttemptCap},
	{"ReleaseTimeout", mepReleaseTimeout},
	{"StaleAckRejected", mepStaleAckRejected},
	{"CoordinatorRestart", mepCoordinatorRestart},
	{"CoordinatorFailoverFencing", mepCoordinatorFailoverFencing},
	{"NodeRestartNewID", mepNodeRestartNewID},
	{"Deregister", mepDeregister},
	{"WatchCompactedRelist", mepWatchCompactedRelist},
	{"CoordinatorCompactedRelist", mepCoordinatorCompactedRelist},
	{"LargeBatch", mepLargeBatch},
	{"GracefulDrain", mepGracefulDrain},
	{"SelfFenceOnSessionLoss", mepSelfFenceOnSessionLoss},
	{"AddThenKillImmediately", mepAddThenKillImmediately},
	{"BalancePaused", mepBalancePaused},
	{"BadValues", mepBadValues},
	{"BadRegistryCalls", mepBadRegistryCalls},
	{"HandlerPanics", mepHandlerPanics},
	{"HandlerNeverReturns", mepHandlerNeverReturns},
	{"EvictionWriteAmbiguous", mepEvictionWriteAmbiguous},
	{"EvictionRevokeAmbiguous", mepEvictionRevokeAmbiguous},
	{"LeaseRevokedByStore", mepLeaseRevokedByStore},
	{"NodeIDCounterLost", mepNodeIDCounterLost},
	{"NodeIDCounterCorrupt", mepNodeIDCounterCorrupt},
	{"CorruptLeaderKey", mepCorruptLeaderKey},
	{"CorruptLeaderKeyCutOff", mepCorruptLeaderKeyCutOff},
	{"CorruptControlFlags", mepCorruptControlFlags},
	{"NodeWritesAmbiguous", mepNodeWritesAmbiguous},
	{"ReleaseFailsDuringSelfFence", mepReleaseFailsDuringSelfFence},
	{"ReleaseFailsTwiceDuringSelfFence", mepReleaseFailsTwiceDuringSelfFence},
	{"FailingNodeQuarantined", mepFailingNodeQuarantined},
	{"TwoFailingNodes", mepTwoFailingNodes},
	{"FailingNodeRecovers", mepFailingNodeRecovers},
	{"MoveBudget", mepMoveBudget},
	{"NodeMoveLimit", mepNodeMoveLimit},
	{"Undrain", mepUndrain},
	{"RollingRestart", mepRollingRestart},
	{"WeightedSpread", mepWeightedSpread},
	{"CapacityChange", mepCapacityChange},
	{"LabelConstrainedPlacement", mepLabelConstrainedPlacement},
	{"ConstraintNoNodeMeets", mepConstraintNoNodeMeets},
	{"ZoneSpreadSurvivesZoneLoss", mepZoneSpreadSurvivesZoneLoss},
	{"MeasuredLoad", mepMeasuredLoad},
	{"PrepareSucceeds", mepPrepareSucceeds},
	{"PrepareFails", mepPrepareFails},
	{"PrepareTimesOut", mepPrepareTimesOut},
	{"PrepareProgress", mepPrepareProgress},
	{"DestinationDiesWhilePreparing", mepDestinationDiesWhilePreparing},
	{"SourceDiesWhilePrepared", mepSourceDiesWhilePrepared},
	{"CoordinatorFailoverWhilePreparing", mepCoordinatorFailoverWhilePreparing},
	{"CoordinatorFailoverWhilePrepared", mepCoordinatorFailoverWhilePrepared},
	{"PrepareKeysLeftBehind", mepPrepareKeysLeftBehind},
	{"PrepareMoveLimit", mepPrepareMoveLimit},
	{"PrepareOnDrain", mepPrepareOnDrain},
	{"PrepareFailsOnDrain", mepPrepareFailsOnDrain},
	{"CorruptRequestOnDrain", mepCorruptRequestOnDrain},
	{"RandomizedChurn", mepRandomizedChurn},
}

// RunMEP runs the MEP 7 protocol scenarios against the chanwatch components
// (channelmgr's Coordinator, nodewatch's Node) on the backend f provides,
// as subtests of t named after the scenario. Each scenario gets a fresh
// Env, runs its processes on handles from Env.Open (so a crash is a closed
// handle whose lease expires on its own), records every handler call with a
// RecordingHandler, and checks the protocol's invariants throughout with a
// Checker and the Recorder:
//
//  1. a channel has at most one key under channel/;
//  2. at most one process runs a channel at any instant (from its handler's
//     Watch start to its Release returning), and the fencing tokens of a
//     channel only grow;
//  3. no registered channel is lost (once placed, it keeps a key under
//     channel/ at every revision while registered);
//  4. with one healthy node alive, every registered channel reaches Watched
//     (checked whenever a scenario waits for the cluster to settle).
//
// When Env.Clock is a clockwork.FakeClock every component runs on it and the
// suite advances it in steps whenever the store is quiet, so lease TTLs and
// timeouts cost no real time; otherwise the components use short real TTLs
// (1-3 s), which the backend must grant.
//
// Scenarios run one after another: some compact the store, which on a
// shared server (etcd) is global.
func RunMEP(t *testing.T, f Factory) {
	for _, s := range mepScenarios {
		t.Run(s.name, func(t *testing.T) {
			m := newMEP(t, f(t))
			s.run(t, m)
			m.finish()
		})
	}
}
