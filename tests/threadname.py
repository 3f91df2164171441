"""The name the OS shows for the calling thread, read from the OS itself
(/proc on Linux, pthread_getname_np on macOS, GetThreadDescription on
Windows): pool workers name themselves "backgrounder" (src/platform.h)."""

from __future__ import annotations

import ctypes
import sys
import threading


def thread_comm() -> str:
    """The OS name of the calling thread (pool workers are 'backgrounder')."""
    if sys.platform == "win32":
        from ctypes import wintypes

        kernel32 = ctypes.windll.kernel32
        kernel32.GetCurrentThread.restype = wintypes.HANDLE
        kernel32.GetThreadDescription.argtypes = [wintypes.HANDLE, ctypes.POINTER(ctypes.c_wchar_p)]
        kernel32.LocalFree.argtypes = [ctypes.c_void_p]
        text = ctypes.c_wchar_p()
        assert kernel32.GetThreadDescription(kernel32.GetCurrentThread(), ctypes.byref(text)) >= 0
        try:
            return text.value or ""
        finally:
            kernel32.LocalFree(ctypes.cast(text, ctypes.c_void_p))
    if sys.platform == "darwin":
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_void_p
        name = ctypes.create_string_buffer(64)
        assert libc.pthread_getname_np(ctypes.c_void_p(libc.pthread_self()), name, 64) == 0
        return name.value.decode()
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        return f.read().strip()
