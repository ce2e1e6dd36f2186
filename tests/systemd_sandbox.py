"""Run a command inside the kernel-side part of the systemd unit's sandbox, where no systemd runs (this machine).

    python tests/systemd_sandbox.py UNIT_FILE -- COMMAND...

From the rendered unit it applies what the kernel enforces per process: NoNewPrivileges, SystemCallFilter
(the groups expanded by `systemd-analyze syscall-filter`, other calls answering SystemCallErrorNumber=EPERM),
RestrictAddressFamilies (on socket()) and MemoryDenyWriteExecute (prctl PR_SET_MDWE, the same rule), then execs
COMMAND. The mount side (ProtectSystem=strict) is set up by the caller with `unshare`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def unit_settings(unit: str) -> dict[str, list[str]]:
    """Each `Key=value` of the unit, values of repeated keys in order."""
    settings: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """systemd's named groups (@system-service, ...) and what each lists: calls and further groups."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                             check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        calls |= expand(groups[name], groups) if name.startswith("@") else {name}
    return calls


def allowed_syscalls(filters: list[str]) -> set[str]:
    """The calls a sequence of SystemCallFilter= lines allows (an allow list first, then `~` removals)."""
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in filters:
        if value.startswith("~"):
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    return allowed


def apply(unit: str) -> None:
    settings = unit_settings(unit)
    libc = ctypes.CDLL(None, use_errno=True)
    if settings.get("NoNewPrivileges") == ["true"] and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if settings.get("MemoryDenyWriteExecute") == ["true"] and libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN,
                                                                        0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE (Linux >= 6.3)")
    error = getattr(errno, settings.get("SystemCallErrorNumber", ["EPERM"])[0])
    seccomp = ctypes.CDLL("libseccomp.so.2")
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(ArgCmp)]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    context = seccomp.seccomp_init(scmp_act_errno(error))
    families = [getattr(socket, name) for value in settings.get("RestrictAddressFamilies", [])
                for name in value.split()]
    for name in sorted(allowed_syscalls(settings.get("SystemCallFilter", []))):
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # a call this architecture does not have
            continue
        if name == "socket" and families:
            for family in families:
                compare = ArgCmp(0, SCMP_CMP_EQ, int(family), 0)
                if seccomp.seccomp_rule_add_array(context, SCMP_ACT_ALLOW, number, 1, ctypes.byref(compare)) != 0:
                    raise OSError(f"seccomp rule for socket({family!r})")
        elif seccomp.seccomp_rule_add_array(context, SCMP_ACT_ALLOW, number, 0, None) != 0:
            raise OSError(f"seccomp rule for {name}")
    if seccomp.seccomp_load(context) != 0:
        raise OSError("seccomp_load")


def main() -> None:
    unit_file, separator, *command = sys.argv[1:]
    if separator != "--" or not command:
        sys.exit(__doc__)
    apply(Path(unit_file).read_text())
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
