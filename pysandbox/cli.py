"""pysandbox run [options] -- CMD [ARG...]

Exit status: the command's; 128+N when it died of signal N; 124 when it
timed out; 125 when the sandbox could not be built (or the options are
wrong); 126 when the command cannot be executed; 127 when it is not found."""
import argparse
import sys

EXIT_TIMEOUT, EXIT_SETUP, EXIT_NOEXEC, EXIT_NOTFOUND = 124, 125, 126, 127


def _bind(spec):
    from . import Bind
    parts = spec.split(":")
    if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("rw", "ro")):
        raise argparse.ArgumentTypeError(f"--bind takes SRC[:DST[:rw|ro]], not {spec!r}")
    src = parts[0]
    dst = parts[1] if len(parts) > 1 and parts[1] else None
    return Bind(src, dst, read_only=not (len(parts) == 3 and parts[2] == "rw"))


def _tmpfs(spec):
    from . import Tmpfs
    dst, _, size = spec.partition(":")
    return Tmpfs(dst, size or None)


def _kv(spec):
    k, sep, v = spec.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {spec!r}")
    return k, v


def _rlimit_value(v):
    if v.isdigit():
        return int(v)
    if ":" in v:
        return tuple(int(x) if x.isdigit() else x for x in v.split(":", 1))
    return v


def build_parser():
    p = argparse.ArgumentParser(prog="pysandbox", description="Run commands in Linux containers.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("bench", help="compare spawn latency with subprocess and other runtimes "
                   "(pysandbox bench --help)", add_help=False)
    r = sub.add_parser("run", help="run a command in a fresh sandbox",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--rootfs", help="root directory (default: a read-only view of the host's system dirs)")
    r.add_argument("--bind", action="append", type=_bind, default=[], metavar="SRC[:DST[:rw]]",
                   help="bind a host path (read-only unless :rw)")
    r.add_argument("--tmpfs", action="append", type=_tmpfs, default=[], metavar="DST[:SIZE]")
    r.add_argument("--read-only", action="store_true", help="make / read-only")
    r.add_argument("--network", choices=("none", "host"), default="none")
    r.add_argument("--hostname", default="sandbox")
    r.add_argument("--env", action="append", type=_kv, default=None, metavar="K=V",
                   help="environment variable (repeatable; replaces the default environment)")
    r.add_argument("--cwd", default="/")
    r.add_argument("--user", default=None, help="uid, uid:gid or name inside")
    r.add_argument("--timeout", type=float, default=None, help="seconds")
    r.add_argument("--rlimit", action="append", type=_kv, default=[], metavar="NAME=VALUE",
                   help="rlimit for the command, e.g. nofile=256, fsize=10M, cpu=2:3 (soft:hard)")
    r.add_argument("--memory", help="memory limit (bytes, or 256M, 1G); needs a cgroup")
    r.add_argument("--pids", type=int, help="process limit; needs a cgroup")
    r.add_argument("--cpus", type=float, help="CPU limit in cores (0.5 = half a core); needs a cgroup")
    r.add_argument("--cgroup-parent", help="cgroup directory to create the sandbox's cgroup in")
    r.add_argument("--capability", action="append", default=None, metavar="NAME",
                   help="capability the command keeps (repeatable; default: Docker's set)")
    r.add_argument("--no-capabilities", action="store_true", help="drop every capability")
    r.add_argument("--no-seccomp", action="store_true", help="no seccomp filter")
    out = r.add_mutually_exclusive_group()
    out.add_argument("--stats", action="store_true", help="print the run's statistics to stderr")
    out.add_argument("--json", action="store_true", help="print the statistics as JSON to stderr")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    return p


def main(argv=None):
    from . import Sandbox, SandboxError, TimeoutExpired
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    command = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("pysandbox: no command given (pysandbox run [options] -- CMD [ARG...])", file=sys.stderr)
        return EXIT_SETUP
    env = None
    if args.env is not None:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
        env.update(dict(args.env))
    rlimits = {k: _rlimit_value(v) for k, v in args.rlimit} or None
    user = args.user
    if user is not None and user.isdigit():
        user = int(user)
    caps = [] if args.no_capabilities else args.capability
    try:
        sb = Sandbox(args.rootfs, mounts=args.bind + args.tmpfs, read_only=args.read_only,
                     network=args.network, hostname=args.hostname, env=env, cwd=args.cwd,
                     user=user, rlimits=rlimits, memory=args.memory, pids=args.pids,
                     cpus=args.cpus, cgroup_parent=args.cgroup_parent, capabilities=caps,
                     seccomp=None if args.no_seccomp else "default")
    except (OSError, ValueError, TypeError, NotImplementedError, SandboxError) as exc:
        print(f"pysandbox: {exc}", file=sys.stderr)
        return EXIT_SETUP
    with sb:
        try:
            r = sb.run(command, timeout=args.timeout)
        except TimeoutExpired as exc:
            print(f"pysandbox: timed out after {exc.timeout} s", file=sys.stderr)
            return EXIT_TIMEOUT
        except FileNotFoundError as exc:
            print(f"pysandbox: {exc}", file=sys.stderr)
            return EXIT_NOTFOUND
        except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            print(f"pysandbox: {exc}", file=sys.stderr)
            return EXIT_NOEXEC if exc.filename == command[0] else EXIT_NOTFOUND
        except OSError as exc:
            print(f"pysandbox: {exc}", file=sys.stderr)
            return EXIT_NOEXEC
        except KeyboardInterrupt:
            return 130
    if args.stats or args.json:
        _print_stats(r, args.json)
    return r.returncode if r.returncode >= 0 else 128 - r.returncode


def _print_stats(r, as_json):
    stats = {
        "returncode": r.returncode,
        "wall_time": round(r.wall_time, 6),
        "cpu_time": round(r.cpu_time, 6),
        "max_rss": r.max_rss,
        "timed_out": r.timed_out,
        "oom_killed": r.oom_killed,
        "pids_peak": r.pids_peak,
    }
    if as_json:
        import json
        print(json.dumps(stats), file=sys.stderr)
    else:
        print(f"pysandbox: exit {r.returncode}, wall {r.wall_time * 1e3:.1f} ms, "
              f"cpu {r.cpu_time * 1e3:.1f} ms, max rss {r.max_rss / 2**20:.1f} MiB"
              + (", OOM-killed" if r.oom_killed else "")
              + (f", pids peak {r.pids_peak}" if r.pids_peak is not None else ""),
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
