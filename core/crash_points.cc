#include "core/crash_points.h"

namespace memchannel {

#if defined(MEMCHANNEL_TEST_HOOKS)
namespace detail {
std::atomic<CrashHook> g_crash_hook{nullptr};
}  // namespace detail
#endif

const char* to_string(CrashPoint p) {
  switch (p) {
    case CrashPoint::kAllocPopped: return "alloc_popped";
    case CrashPoint::kAllocCarveLocked: return "alloc_carve_locked";
    case CrashPoint::kAllocCarved: return "alloc_carved";
    case CrashPoint::kAllocClaimed: return "alloc_claimed";
    case CrashPoint::kReleaseRefDropped: return "release_ref_dropped";
    case CrashPoint::kReleaseTrackingEnded: return "release_tracking_ended";
    case CrashPoint::kShareTokensReady: return "share_tokens_ready";
    case CrashPoint::kShareIndicesClaimed: return "share_indices_claimed";
    case CrashPoint::kShareBitDropped: return "share_bit_dropped";
    case CrashPoint::kPoolPopped: return "pool_popped";
    case CrashPoint::kPoolMarkedFree: return "pool_marked_free";
    case CrashPoint::kReleaseMarkedFree: return "release_marked_free";
    case CrashPoint::kReleasePushed: return "release_pushed";
    case CrashPoint::kNodePopped: return "node_popped";
    case CrashPoint::kNodeCarveLocked: return "node_carve_locked";
    case CrashPoint::kNodeCarved: return "node_carved";
    case CrashPoint::kNodeClaimed: return "node_claimed";
    case CrashPoint::kNodeConvertClaimed: return "node_convert_claimed";
    case CrashPoint::kNodeConvertCells: return "node_convert_cells";
    case CrashPoint::kNodeConverted: return "node_converted";
    case CrashPoint::kNodeMarkedFree: return "node_marked_free";
    case CrashPoint::kSendNodeAllocated: return "send_node_allocated";
    case CrashPoint::kSendNamed: return "send_named";
    case CrashPoint::kSendMarkedSending: return "send_marked_sending";
    case CrashPoint::kSendLinked: return "send_linked";
    case CrashPoint::kSendTailSwung: return "send_tail_swung";
    case CrashPoint::kSendMarkedQueued: return "send_marked_queued";
    case CrashPoint::kSendNotified: return "send_notified";
    case CrashPoint::kRecvClaimed: return "recv_claimed";
    case CrashPoint::kRecvTaken: return "recv_taken";
    case CrashPoint::kRecvHeadAdvanced: return "recv_head_advanced";
    case CrashPoint::kRecvTransferred: return "recv_transferred";
    case CrashPoint::kRecvOldHeadFreed: return "recv_old_head_freed";
    case CrashPoint::kGrowSegmentClaimed: return "grow_segment_claimed";
    case CrashPoint::kGrowSegmentCreated: return "grow_segment_created";
    case CrashPoint::kAttachSlotClaimed: return "attach_slot_claimed";
    case CrashPoint::kAttachCounted: return "attach_counted";
    case CrashPoint::kSyncLockTaken: return "sync_lock_taken";
    case CrashPoint::kSyncLockTakeover: return "sync_lock_takeover";
    case CrashPoint::kSyncLockReleased: return "sync_lock_released";
    case CrashPoint::kSyncSemIntent: return "sync_sem_intent";
    case CrashPoint::kSyncSemTaken: return "sync_sem_taken";
    case CrashPoint::kSyncSemReleased: return "sync_sem_released";
    case CrashPoint::kSyncCondRegistered: return "sync_cond_registered";
    case CrashPoint::kSyncCondLeaving: return "sync_cond_leaving";
    case CrashPoint::kSyncBarrierArrived: return "sync_barrier_arrived";
    case CrashPoint::kSyncEventSet: return "sync_event_set";
    case CrashPoint::kSyncSemReclaimed: return "sync_sem_reclaimed";
    case CrashPoint::kNodesStashed: return "nodes_stashed";
    case CrashPoint::kCount: break;
  }
  return "unknown crash point";
}

}  // namespace memchannel
