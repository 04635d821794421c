"""Operating-system limits the configuration needs: file descriptors, and how the C library's
allocator keeps memory.

Each association (and each connection that has not associated yet) holds a socket, each store
in progress a spool file, the database pool and the forwarders a few more. At the limit the
kernel refuses new connections, so senders see the gateway as down: the limit is raised to what
the configuration needs at start-up, and ``check-config`` says when the hard limit is too low.
"""

from __future__ import annotations

import ctypes
import os
import resource

from gateway.settings import Settings

# glibc gives each thread that allocates its own arena (up to 8 per core), and what one thread
# frees stays in its arena for that thread. With a thread per association and half a megabyte
# instances passing through each, resident memory grows with every thread that ever received.
# Two arenas shared by all threads keep it near what is in use (measured: see bench/README.md).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)
BASE_DESCRIPTORS = 128  # listener, logs, database pool, metrics, the forwarding process's pipe


def descriptors_needed(settings: Settings) -> int:
    g = settings.gateway
    # a socket and a spool file per association; a socket per pending connection
    return BASE_DESCRIPTORS + 2 * g.max_associations + g.max_pending_connections


def raise_descriptor_limit(needed: int) -> tuple[int, int]:
    """Raise the soft limit towards ``needed`` (never above the hard limit, never lower it);
    the soft and hard limits in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
        except OSError:  # a sandbox may forbid it (systemd's SystemCallFilter=~@resources)
            pass
    return soft, hard


def check_descriptor_limit(settings: Settings) -> None:
    """A ValueError naming the keys and the fix when the hard limit cannot fit the config."""
    needed = descriptors_needed(settings)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(
            f"the file-descriptor limit is {hard} and gateway.max_associations and "
            f"gateway.max_pending_connections need {needed}; raise it (LimitNOFILE= in the "
            "systemd unit, --ulimit nofile= for Docker, `ulimit -n` in a shell) or lower them")


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (before threads start); False where that cannot be done (another
    C library) or the administrator chose a value (``MALLOC_ARENA_MAX`` in the environment)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))
