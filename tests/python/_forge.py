"""A hostile peer's view of a live shm arena: maps segment 0 and finds and forges its words.

Offsets are the byte-exact specs in core/arena_layout.h, core/node.h and core/block.h (the
tests pin them there with static_asserts). Used by tests/python/test_hostile*.py only.
"""

import mmap
import os
import struct

HEADER_BYTES = 16192          # sizeof(ArenaHeader), rounded to 64 (core/arena_layout.h)
CARVE_OFFSET = 64
SEGMENT_COUNT_OFFSET = 72
CORRUPTION_COUNT_OFFSET = 640
ATTACHED_HOLDERS_OFFSET = 1736
NODE_MAGIC = 0x4D434E44       # "MCND", at byte 28 of a cell
BLOCK_MAGIC_OFFSET = 28
NODE_NEXT, NODE_BLOCK, NODE_GEN, NODE_LENGTH, NODE_STATE, NODE_SEQ, NODE_POSITION = 0, 8, 12, 16, 32, 40, 48
KIND_LINKED, KIND_CLAIMED = 2, 3
CHANNEL_MAGIC = 0x314C4E4843434D4D  # "MMCCHNL1", at byte 0 of a ChannelHeader (core/channel.h)
# ChannelHeader words: limits on the identity line, the queue's ends, the attach count.
CH_MAXSIZE, CH_MAXBYTES, CH_LIMITS_CHECK, CH_HEAD, CH_TAIL, CH_ATTACHED = 16, 24, 12, 64, 128, 384


class Forger:
    """Maps segment 0 of the arena `name` read-write, as any process of the same user can."""

    def __init__(self, name):
        self.path = "/dev/shm/" + name
        self.fd = os.open(self.path, os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        self.m = mmap.mmap(self.fd, self.size)

    def close(self):
        self.m.close()
        os.close(self.fd)

    def u64(self, off):
        return struct.unpack_from("<Q", self.m, off)[0]

    def u32(self, off):
        return struct.unpack_from("<I", self.m, off)[0]

    def put64(self, off, v):
        struct.pack_into("<Q", self.m, off, v & 0xFFFFFFFFFFFFFFFF)

    def put32(self, off, v):
        struct.pack_into("<I", self.m, off, v & 0xFFFFFFFF)

    def carve_end(self):
        cur = self.u64(CARVE_OFFSET)
        return min(cur & 0xFFFFFFFF, self.size) if (cur >> 32) == 0 else self.size

    def channel_headers(self):
        """Offsets of the channel headers in segment 0 (a scan for the channel magic)."""
        return [off for off in range(HEADER_BYTES, self.carve_end() - 447, 64) if self.u64(off) == CHANNEL_MAGIC]

    def nodes(self, kinds=(KIND_LINKED,)):
        """{offset: (tag, kind, seq)} of the queue nodes in segment 0 (a scan for the node magic)."""
        found = {}
        for off in range(HEADER_BYTES, self.carve_end() - 63, 64):
            if self.u32(off + 28) != NODE_MAGIC:
                continue
            state = self.u64(off + NODE_STATE)
            kind = state & 0xFF
            if kind in kinds:
                found[off] = (state >> 32, kind, self.u64(off + NODE_SEQ))
        return found

    def channel_nodes(self, tag=None):
        """Linked nodes of one channel (the most common tag if not given), by seq."""
        nodes = self.nodes()
        if not nodes:
            return tag, {}
        if tag is None:
            tags = [t for t, _, _ in nodes.values()]
            tag = max(set(tags), key=tags.count)
        return tag, {seq: off for off, (t, _, seq) in nodes.items() if t == tag}

    def link(self, from_off, to_off):
        """Forges `from`'s next link to name the cell at `to_off` (tag bumped like an honest link)."""
        old = self.u64(from_off + NODE_NEXT)
        self.put64(from_off + NODE_NEXT, (((old >> 32) + 1) & 0x7FFFFFFF) << 32 | (to_off >> 6))
