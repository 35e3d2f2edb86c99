"""Identity: the caller is root inside its own user namespace; user= picks
another id where one can be mapped; files written through a bind belong to
the caller on the host."""
import os

import pytest

from sbxutil import IS_ROOT, init_pids
from sbxutil import sh_ok as ok, sh_run as sh
from pysandbox import Bind, Sandbox

pytestmark = pytest.mark.timeout(60)




def ids(s, **kw):
    return tuple(int(x) for x in ok(s, "id -u; id -g", **kw).split())


def parse_map(text):
    return [tuple(int(x) for x in line.split()) for line in text.splitlines()]


def test_caller_is_root_inside(rootfs):
    with Sandbox(rootfs) as s:
        assert ids(s) == (0, 0)
        status = ok(s, "grep -E '^(Uid|Gid):' /proc/self/status")
    for line in status.splitlines():
        assert line.split()[1:] == ["0", "0", "0", "0"], line


def test_uid_map_maps_root_to_caller(rootfs):
    with Sandbox(rootfs) as s:
        uid_map = parse_map(ok(s, "cat /proc/self/uid_map"))
        gid_map = parse_map(ok(s, "cat /proc/self/gid_map"))
    assert uid_map[0][:2] == (0, os.geteuid())
    assert gid_map[0][:2] == (0, os.getegid())
    if not IS_ROOT:
        # an ordinary user owns exactly one id: its own
        assert uid_map == [(0, os.geteuid(), 1)]
        assert gid_map == [(0, os.getegid(), 1)]


def test_user_namespace_owned_by_caller(rootfs):
    with Sandbox(rootfs) as s:
        st = os.stat(f"/proc/{s.pid}")
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


@pytest.mark.skipif(not IS_ROOT, reason="only root can map ids other than its own")
@pytest.mark.parametrize("user, want", [
    (1000, (1000, 1000)),
    ("user", (1000, 1000)),
    ("1000", (1000, 1000)),
    ("1000:1000", (1000, 1000)),
    ("1000:1234", (1000, 1234)),
    ((4242, 4343), (4242, 4343)),
    ("nobody", (65534, 65534)),
    (0, (0, 0)),
])
def test_user_sets_ids_inside(rootfs, user, want):
    with Sandbox(rootfs, user=user) as s:
        assert ids(s) == want
        status = ok(s, "grep -E '^(Uid|Gid):' /proc/self/status")
    uid_line, gid_line = status.splitlines()
    assert uid_line.split()[1:] == [str(want[0])] * 4
    assert gid_line.split()[1:] == [str(want[1])] * 4


@pytest.mark.skipif(not IS_ROOT, reason="only root can map ids other than its own")
def test_user_per_run(rootfs):
    with Sandbox(rootfs) as s:
        assert ids(s, user=1000) == (1000, 1000)
        assert ids(s) == (0, 0)          # the sandbox default is unchanged
    with Sandbox(rootfs, user="user") as s:
        assert ids(s, user=0) == (0, 0)
        assert ids(s) == (1000, 1000)


@pytest.mark.skipif(not IS_ROOT, reason="only root can map ids other than its own")
def test_user_drops_root_powers(rootfs):
    with Sandbox(rootfs, user=1000) as s:
        r = sh(s, "echo x > /etc/passwd")
        assert r.returncode != 0 and "Permission denied" in r.stderr
        assert ok(s, "echo y > /tmp/y; stat -c '%u:%g' /tmp/y") == "1000:1000\n"


@pytest.mark.skipif(not IS_ROOT, reason="only root can map ids other than its own")
def test_user_name_resolved_from_rootfs_passwd(rootfs, tmp_path):
    import shutil
    own = str(tmp_path / "rootfs")
    shutil.copytree(rootfs, own, symlinks=True)
    with open(os.path.join(own, "etc", "passwd"), "a") as f:
        f.write("judge:x:2345:3456::/tmp:/bin/sh\n")
    with Sandbox(own, user="judge") as s:
        assert ids(s) == (2345, 3456)
    with pytest.raises(ValueError):
        Sandbox(rootfs, user="judge")     # not in the shared rootfs' passwd


@pytest.mark.skipif(IS_ROOT, reason="root can map other ids")
@pytest.mark.parametrize("user", [1000, "user", "1000:1000", "0:1000", (0, 1000), 65534])
def test_unmappable_user_refused_at_construction(rootfs, user):
    before = set(init_pids())
    with pytest.raises(ValueError):
        Sandbox(rootfs, user=user)
    assert set(init_pids()) == before


def test_unknown_user_name_refused(rootfs):
    with pytest.raises(ValueError):
        Sandbox(rootfs, user="no-such-user")


@pytest.mark.parametrize("user", [-1, "-1", "a:b", "1000:"])
def test_bad_user_refused(rootfs, user):
    with pytest.raises(ValueError):
        Sandbox(rootfs, user=user)


@pytest.mark.parametrize("user", [1.5, True, [0, 0], object()])
def test_bad_user_type_refused(rootfs, user):
    with pytest.raises(TypeError):
        Sandbox(rootfs, user=user)


def test_files_in_rw_bind_belong_to_caller(rootfs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "from-host").write_text("h")
    with Sandbox(rootfs, mounts=[Bind(str(out), "/out", read_only=False)]) as s:
        ok(s, "echo x > /out/file; mkdir /out/dir; touch /out/dir/inner")
        # the caller's files appear as root's inside
        assert ok(s, "stat -c '%u:%g' /out/from-host") == "0:0\n"
    for p in (out / "file", out / "dir", out / "dir" / "inner"):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), p


@pytest.mark.skipif(not IS_ROOT, reason="only root can map ids other than its own")
def test_files_in_rw_bind_belong_to_mapped_user(rootfs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    with Sandbox(rootfs, user=1000,
                 mounts=[Bind(str(out), "/out", read_only=False)]) as s:
        ok(s, "echo x > /out/file")
    st = os.stat(out / "file")
    assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_host_files_of_other_users_are_unmapped(rootfs, tmp_path):
    """Inside, a host file owned by an id that is not mapped shows as the
    overflow id (65534), never as root."""
    if IS_ROOT:
        f = tmp_path / "foreign"
        f.write_text("x")
        os.chown(f, 100000, 100000)     # outside root's 0..65535 map
        src = str(f)
    else:
        src = "/etc/passwd"             # owned by host root, not mapped for us
    with Sandbox(rootfs, mounts=[Bind(src, "/probe")]) as s:
        assert ok(s, "stat -c '%u:%g' /probe") == "65534:65534\n"


# -- inside a user namespace that maps few ids ---------------------------------

IN_ONE_ID_ROOT = r"""
import errno, sys, pysandbox
what = sys.argv[1]
if what != "plain":
    with open(f"/proc/sys/user/max_{what}_namespaces", "w") as f:
        f.write("0")
for attempt in ("one-shot", "sandbox"):
    try:
        if attempt == "one-shot":
            r = pysandbox.run(["sh", "-c", "id -u; cat /proc/self/uid_map"], capture_output=True,
                              text=True, timeout=20)
            print(attempt, "ok", " ".join(r.stdout.split()))
        else:
            with pysandbox.Sandbox() as s:
                print(attempt, "ok")
    except pysandbox.SetupError as e:
        print(attempt, "SetupError", e.step, errno.errorcode.get(e.errno))
"""


def _in_one_id_root(what):
    # root of a user namespace that maps a single id (a rootless container,
    # `unshare --map-root-user`): the sandbox maps what it can
    import subprocess
    import sys
    r = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c",
                        IN_ONE_ID_ROOT, what], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_root_of_a_one_id_namespace_maps_one_id():
    out = _in_one_id_root("plain")
    assert out[0].split()[:3] == ["one-shot", "ok", "0"], out     # root inside
    assert out[0].split()[3:6] == ["0", "0", "1"], out          # one id mapped
    assert out[1] == "sandbox ok", out


@pytest.mark.parametrize("ns, step", [("net", "network namespace"), ("time", "time namespace"),
                                      ("ipc", "clone (new namespaces)")])
def test_namespace_limit_is_a_setup_error(ns, step):
    # a namespace the kernel refuses (its user.max_*_namespaces is 0) is a
    # SetupError naming that step and the errno, for a one-shot run and for
    # a Sandbox alike -- not a hang, not a reset socket, not "init is gone"
    out = _in_one_id_root(ns)
    assert len(out) == 2, out
    for line in out:
        assert "SetupError" in line and step in line and line.endswith("ENOSPC"), out
