"""Process memory: hand freed heap back to the system, and (opt-in) a leaner glibc heap.

``release_memory`` returns freed memory to the system (harmless anywhere). ``lean_heap`` changes
glibc's allocator settings for the whole process, so the library never does it on its own: the
command line enables it (``allow_lean_heap()`` in ``cli.main``), and the library's steps then
call ``maybe_lean_heap()`` before their large temporaries. A Python user who wants the same
calls ``graphprune.memory.lean_heap()`` (or ``allow_lean_heap()``) once.
"""

from __future__ import annotations

import os

def release_memory(collect: bool = True) -> None:
    """Hand freed heap memory back to the system: glibc keeps what a dropped session freed,
    and the next session or batch would stack on top of it. ``collect``: run the garbage
    collector first (skip it where many live objects make that slow and nothing is cyclic)."""
    import ctypes
    import gc

    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
LEAN_MMAP_THRESHOLD = 1 << 16
_lean = False


def lean_heap() -> None:
    """Make glibc serve every allocation of LEAN_MMAP_THRESHOLD (64 KB) or more with its own mapping, returned to the
    system as soon as it is freed. By default glibc raises that threshold each time a large
    block is freed, after which activation-sized arrays come from the heap and stay resident
    when freed (fragmented): on MiniLM calibration that was 50-70 MB of the peak. Process-wide
    and permanent (it also turns off glibc's threshold adjustment); a no-op without glibc or
    with the environment variable GRAPHPRUNE_LEAN_HEAP=0."""
    global _lean
    if _lean or os.environ.get("GRAPHPRUNE_LEAN_HEAP", "1") == "0":
        return
    _lean = True
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, 0)
    except (OSError, AttributeError):
        pass


_allowed = False


def allow_lean_heap(on: bool = True) -> None:
    """Let the library's steps switch to the lean heap (``maybe_lean_heap``): for programs that
    own their process, like the command line."""
    global _allowed
    _allowed = bool(on)


def lean_heap_active() -> bool:
    """Whether ``lean_heap`` changed this process's allocator settings."""
    return _lean


def maybe_lean_heap() -> None:
    """``lean_heap()`` when the program allowed it (``allow_lean_heap``), else nothing."""
    if _allowed:
        lean_heap()
