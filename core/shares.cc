// Shares: one block, many read-only holders (memchannel.share; docs/design.md, "Shares").
//
// share() turns a block B this holder owns into n share tokens. A token is a small block of its
// own (flag kBlockFlagShare, payload a ShareToken {B, B's generation while shared, index}) that
// travels as any message: sent, received, forwarded (the share moves), reclaimed with a dead
// holder, dropped with a closed channel. Its receiver's Buffer views B's payload, read-only
// (Arena::view). B itself is kBlockShared, owned by no holder, and its `shares` word counts the
// tokens out: generation (16) | next index (6) | one bit per outstanding token (42).
//
//   share (B normal)          tokens allocated and filled (kReserved, ours, flagged)
//                             B.shares = gen' | n | (1 << n) - 1; B: kReserved/kReceived(gen) -> kShared(gen')
//   share (B a token T)       tokens allocated, filled with indices next..next+n-1
//                             CAS B.shares: clear T's bit, set the n new bits, next += n
//                             flag the new tokens; unflag T and free it (its share moved)
//   a token freed             (free_block, before the token is marked free) drop_share:
//                             CAS B.shares: clear the token's bit if the generation matches
//                             bits now 0: CAS B kShared(gen') -> kReserved(us), free it
//
// Crash safety. Every step is a CAS on B's words or a write to a block that is still only
// ours. drop_share is idempotent (the generation is in the word, a cleared bit stays cleared),
// so a reclaimer that frees the token of a holder killed inside drop_share drops it again
// harmlessly, and if that holder had cleared the last bit but not freed B, the reclaimer's
// drop sees zero bits and frees B. A sharer killed before B became kShared leaves tokens whose
// generation B never had: their drop does nothing, and the reclaimer frees B as the dead
// holder's. The one leak window: a holder killed between the index CAS of a re-share and
// flagging its new tokens (three stores) leaves B allocated, never freed (the new tokens are
// reclaimed as plain blocks). Indices are never reused within one shared lifetime, so a stale
// token can never clear another's bit.
//
// Trust: a token's payload is peer-written: magic, index and the block it names are checked,
// and the named block must be kShared with the token's generation and bit before any Buffer
// sees it (shared_of); a mismatch is corruption (counted; CorruptionError for the receiver).
#include <cstring>

#include "core/arena.h"

namespace memchannel {
namespace {

constexpr uint64_t kAllTokenBits = (uint64_t{1} << kMaxShareTokens) - 1;

bool read_token(BlockHeader* token, ShareToken* out) {
  if (token->meta_bytes.load(std::memory_order_relaxed) != 0 ||
      token->length.load(std::memory_order_relaxed) < sizeof(ShareToken)) {
    return false;
  }
  std::memcpy(out, reinterpret_cast<uint8_t*>(token) + sizeof(BlockHeader), sizeof(ShareToken));
  return out->magic == kShareTokenMagic && out->index < kMaxShareTokens;
}

}  // namespace

bool Arena::is_share_token(BlockHandle h) {
  BlockHeader* hdr = block_header(h.ref);
  return hdr != nullptr && (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagShare) != 0;
}

BlockHeader* Arena::shared_of(BlockHeader* token, uint32_t* generation, BlockRef* ref) {
  ShareToken t;
  if (!read_token(token, &t)) return nullptr;
  BlockHeader* shared = block_header(t.shared);
  if (shared == nullptr || (shared->flags.load(std::memory_order_relaxed) & (kBlockFlagArena | kBlockFlagShare)) != 0) {
    return nullptr;
  }
  const uint32_t gen = t.generation & kGenerationMask;
  const uint32_t word = shared->state.load(std::memory_order_acquire);
  if (state_kind(word) != kBlockShared || state_generation(word) != gen) return nullptr;
  const uint64_t w = shared->shares.load(std::memory_order_acquire);
  if (shares_generation(w) != gen || (shares_bits(w) & (uint64_t{1} << t.index)) == 0) return nullptr;
  *generation = gen;
  *ref = t.shared;
  return shared;
}

void Arena::drop_share(BlockHeader* token) {
  ShareToken t;
  if (!read_token(token, &t)) {
    note_corruption();
    return;
  }
  BlockHeader* shared = block_header(t.shared);
  if (shared == nullptr || (shared->flags.load(std::memory_order_relaxed) & (kBlockFlagArena | kBlockFlagShare)) != 0) {
    note_corruption();
    return;
  }
  const uint32_t gen = t.generation & kGenerationMask;
  const uint64_t bit = uint64_t{1} << t.index;
  uint64_t w = shared->shares.load(std::memory_order_acquire);
  for (;;) {
    if (shares_generation(w) != gen) return;  // a share of another lifetime of the block
    if ((shares_bits(w) & bit) == 0) break;   // dropped already (a freer that died after it)
    if (shared->shares.compare_exchange_weak(w, w & ~bit, std::memory_order_acq_rel)) {
      w &= ~bit;
      break;
    }
  }
  if (shares_bits(w) != 0) return;
  // The last share: whoever moves the block out of kShared frees it.
  uint32_t expected = make_state(gen, 0, kBlockShared);
  const uint32_t mine = make_state(gen, holder_, kBlockReserved);
  if (!shared->state.compare_exchange_strong(expected, mine, std::memory_order_acq_rel)) return;
  shared->refcount.store(1, std::memory_order_relaxed);
  (void)free_block(t.shared, shared, mine);
}

Result<std::vector<BlockHandle>> Arena::share(BlockHandle h, uint32_t n) {
  Result<std::vector<BlockHandle>> out;
  if (n == 0 || n > kMaxShareTokens) return {Status::kInvalidArgument, {}};
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return {Status::kCorruptedOffset, {}};
  }
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  const BlockState kind = state_kind(word);
  if (state_generation(word) != h.generation || (kind != kBlockReserved && kind != kBlockReceived) ||
      (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
    return {Status::kCorruptedState, {}};
  }
  if (state_holder(word) != (holder_ & 0xff)) return {Status::kNotHolder, {}};
  if (hdr->refcount.load(std::memory_order_relaxed) != 1) return {Status::kInvalidArgument, {}};
  const bool resharing = (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagShare) != 0;

  std::vector<BlockHandle>& tokens = out.value;
  tokens.reserve(n);
  const auto give_back = [&](Status s) {
    for (BlockHandle t : tokens) {
      if (BlockHeader* th = block_header(t.ref)) th->flags.fetch_and(~kBlockFlagShare, std::memory_order_relaxed);
      (void)release(t);
    }
    tokens.clear();
    out.status = s;
    return out;
  };
  for (uint32_t i = 0; i < n; ++i) {
    auto t = allocate(sizeof(ShareToken), PayloadLayout{});
    if (!t.ok()) return give_back(t.status);
    tokens.push_back(t.value);
  }
  const auto fill = [&](BlockRef shared, uint32_t gen, uint32_t first) {
    for (uint32_t i = 0; i < n; ++i) {
      const ShareToken t{kShareTokenMagic, shared, gen, first + i};
      std::memcpy(payload(tokens[i]), &t, sizeof t);
    }
  };
  const auto flag_tokens = [&] {
    for (BlockHandle t : tokens) block_header(t.ref)->flags.fetch_or(kBlockFlagShare, std::memory_order_relaxed);
  };

  if (!resharing) {
    const uint32_t gen = (h.generation + 1) & kGenerationMask;
    fill(h.ref, gen, 0);
    flag_tokens();
    hdr->shares.store(make_shares(gen, n, (uint64_t{1} << n) - 1), std::memory_order_release);
    uint32_t expected = word;
    if (!hdr->state.compare_exchange_strong(expected, make_state(gen, 0, kBlockShared), std::memory_order_acq_rel)) {
      note_corruption();
      return give_back(Status::kCorruptedState);
    }
    return out;
  }

  // A received share shared again: its bit is replaced by n new ones in one CAS.
  uint32_t gen = 0;
  BlockRef shared_ref = 0;
  BlockHeader* shared = shared_of(hdr, &gen, &shared_ref);
  ShareToken mine;
  if (shared == nullptr || !read_token(hdr, &mine)) {
    note_corruption();
    return give_back(Status::kCorruptedState);
  }
  uint64_t w = shared->shares.load(std::memory_order_acquire);
  for (;;) {
    const uint64_t my_bit = uint64_t{1} << mine.index;
    if (shares_generation(w) != gen || (shares_bits(w) & my_bit) == 0) {
      note_corruption();
      return give_back(Status::kCorruptedState);
    }
    const uint32_t next = shares_next(w);
    if (next + n > kMaxShareTokens) return give_back(Status::kInvalidArgument);
    fill(shared_ref, gen, next);
    const uint64_t bits = ((shares_bits(w) & ~my_bit) | (((uint64_t{1} << n) - 1) << next)) & kAllTokenBits;
    if (shared->shares.compare_exchange_weak(w, make_shares(gen, next + n, bits), std::memory_order_acq_rel)) break;
  }
  flag_tokens();
  // This token's share moved to the new ones: it is freed without dropping it.
  hdr->flags.fetch_and(~kBlockFlagShare, std::memory_order_relaxed);
  (void)release(h);
  return out;
}

}  // namespace memchannel
