"""Child side of the code reward's sandbox: run as a script, never imported.

    python -I -S -B sandbox_runner.py WORKDIR CPU_S MEMORY_MB FILE_MB OPEN_FILES

Reads a one-time token from stdin, sets resource limits, installs an audit hook (PEP 578), then
runs ``solution.py`` and ``tests.py`` from WORKDIR in one namespace. Only when both finish
without an exception does it write the token to stdout and exit 0, so a solution that exits
early (``sys.exit(0)``, ``os._exit(0)``) does not pass. The token lives only in a local of
``main``: code that walks the interpreter's frames could find it, since ordinary library code
(``collections.namedtuple``, ``typing``) needs frame access and it stays allowed.

Best effort only: audit hooks and resource limits are not a security boundary. A process can
still use CPU and memory up to the limits and read the standard library; the hook's path checks
call ``os.path`` code that the solution could patch; native code or an interpreter bug can get
past the hook. Run untrusted code in a container or VM. POSIX only (``resource``).
"""

import contextlib
import os
import resource
import sys

# Events blocked whatever their arguments: starting processes or signalling them, raising
# resource limits, changing folder (see MUTATING), and building code objects from raw bytes
# (crafted bytecode can corrupt the interpreter and get past the hook).
BLOCKED = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill",
    "resource.setrlimit", "resource.prlimit", "code.__new__", "marshal.loads", "marshal.load",
    "os.chdir",
}
BLOCKED_PREFIXES = ("socket.", "ctypes.", "winreg.", "webbrowser.")
BLOCKED_IMPORTS = {"_posixsubprocess", "_ctypes", "_xxsubinterpreters", "_testcapi"}
# Events that change the file system: each path argument must lie inside the work folder. Paths
# are resolved against the current folder, which stays the work folder's top (os.chdir is
# blocked): a ``dir_fd`` can only be a folder inside it (the hook lets no other folder be
# opened), so a path relative to one resolves no further out than the same path from the top.
MUTATING = {
    "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.utime", "os.rename",
    "os.link", "os.symlink", "os.truncate", "os.chflags", "os.setxattr", "os.removexattr",
    "shutil.rmtree", "shutil.move", "shutil.copyfile", "shutil.copytree", "shutil.copymode",
    "shutil.copystat", "shutil.make_archive", "shutil.unpack_archive",
}
EXTRA_TASKS = 32
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def set_limits(cpu_s: int, memory_mb: int, file_mb: int, open_files: int) -> None:
    """Soft and hard limits alike, so that the code cannot raise them again."""
    mb = 1024 * 1024
    limits = [(resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, memory_mb * mb),
              (resource.RLIMIT_FSIZE, file_mb * mb), (resource.RLIMIT_NOFILE, open_files),
              (resource.RLIMIT_CORE, 0)]
    tasks = user_tasks()
    if tasks is not None and hasattr(resource, "RLIMIT_NPROC"):
        # counts all of this user's tasks: room for some threads, no process trees (the hook
        # blocks fork; this holds if it is bypassed). Root is exempt from it.
        limits.append((resource.RLIMIT_NPROC, tasks + EXTRA_TASKS))
    for which, value in limits:
        # a limit the platform lacks, or a hard limit already lower, stays as it is
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (value, value))


def user_tasks() -> int | None:
    """Threads of all processes of this user (what RLIMIT_NPROC counts), from /proc."""
    if not os.path.isdir("/proc/self"):
        return None
    uid, total = str(os.getuid()), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/status") as fh:
                    fields = dict(line.split(":", 1) for line in fh if ":" in line)
            except OSError:
                continue  # gone meanwhile
            if fields.get("Uid", "").split()[:1] == [uid]:
                total += int(fields.get("Threads", "1"))
    return total


def make_hook(workdir: str, readable: list[str]):
    def inside(path, roots) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return any(real == r or real.startswith(r + os.sep) for r in roots)

    writable = [workdir]
    readable = readable + writable

    def hook(event: str, args: tuple) -> None:
        if event in BLOCKED or event.startswith(BLOCKED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in BLOCKED_IMPORTS:
            raise PermissionError(f"sandbox: import {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writes = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
            if not inside(path, writable if writes else readable) or not writes and \
                    not inside(path, writable) and os.path.isdir(path):
                # a directory outside could serve as a dir_fd, which the event does not show
                raise PermissionError(f"sandbox: cannot open {path!r} here")
        elif event in MUTATING:
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
            if not all(inside(p, writable) for p in paths):
                raise PermissionError(f"sandbox: {event} outside the work folder")

    return hook


def main() -> None:
    run, write, exit_now = exec, os.write, os._exit  # bound before the solution can patch them
    token = b""
    while chunk := os.read(0, 64):
        token += chunk
    os.close(0)
    workdir = os.path.realpath(sys.argv[1])
    cpu_s, memory_mb, file_mb, open_files = (int(a) for a in sys.argv[2:6])
    os.chdir(workdir)
    sources = []
    for name in ("solution.py", "tests.py"):
        with open(name, encoding="utf-8") as fh:
            sources.append(fh.read())
    try:
        solution, tests = (compile(src, name, "exec", dont_inherit=True, optimize=0)
                           for src, name in zip(sources, ("solution.py", "tests.py")))
    except (SyntaxError, ValueError) as e:
        print(f"sandbox: does not compile: {e}", file=sys.stderr)
        exit_now(1)
    readable = [os.path.realpath(p) for p in sys.path if p and os.path.exists(p)]
    # Imports from here on compile from source: reading cached bytecode goes through
    # marshal.loads, which the hook blocks (it builds code objects from raw bytes).
    sys.pycache_prefix = os.path.join(workdir, ".no-pycache")
    set_limits(cpu_s, memory_mb, file_mb, open_files)
    sys.addaudithook(make_hook(workdir, readable))
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        run(solution, namespace)
        run(tests, namespace)
    except BaseException as e:  # noqa: BLE001 - SystemExit included: exiting early fails
        print(f"sandbox: {type(e).__name__}: {e}", file=sys.stderr)
        exit_now(1)
    write(1, b"\n" + token + b"\n")
    exit_now(0)  # skips atexit handlers and finalizers the solution may have registered


if __name__ == "__main__":
    main()
