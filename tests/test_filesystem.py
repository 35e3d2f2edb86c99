"""The filesystem inside: / is the rootfs behind a throwaway layer, the old
root is gone, user mounts apply in order and stay inside the root, and /dev,
/tmp, /sys are what the design promises."""
import os
import shutil
import socket
import subprocess
import sys

import pytest

from sbxutil import tree_snapshot
from sbxutil import sh_ok as ok, sh_run as sh
import pysandbox
from pysandbox import Bind, Sandbox, SetupError, Tmpfs

pytestmark = pytest.mark.timeout(60)

EROFS_TEXT = "Read-only file system"




def mountinfo(text):
    """[(mount_root, mount_point, options, fstype, super_options)]"""
    out = []
    for line in text.splitlines():
        left, right = line.split(" - ", 1)
        f = left.split()
        r = right.split()
        unesc = lambda p: p.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        out.append({"dev": f[2], "root": unesc(f[3]), "point": unesc(f[4]),
                    "opts": f[5].split(","), "fstype": r[0],
                    "super": r[2] if len(r) > 2 else ""})
    return out


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return mountinfo(f.read())


@pytest.fixture
def own_rootfs(rootfs, tmp_path):
    """A private copy of the rootfs, for tests that change it or must not
    risk the shared one."""
    dst = str(tmp_path / "rootfs")
    shutil.copytree(rootfs, dst, symlinks=True)
    return dst


def root_state(root):
    st = os.stat(root)
    return tree_snapshot(root), (st.st_mtime_ns, st.st_size, st.st_mode)


# -- / is the rootfs --------------------------------------------------------

def test_root_is_the_rootfs(rootfs):
    with Sandbox(rootfs) as s:
        canary = ok(s, "cat /canary")
        listing = set(ok(s, "ls -A /").split())
        etc = set(ok(s, "ls -A /etc").split())
    assert canary == "original\n"
    assert set(os.listdir(rootfs)) <= listing
    assert listing - set(os.listdir(rootfs)) <= {"proc", "dev", "tmp"}
    assert etc == set(os.listdir(os.path.join(rootfs, "etc")))


def test_old_root_is_gone(rootfs, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("host only\n")
    here = os.path.dirname(os.path.abspath(__file__))
    host = host_mounts()
    host_root = [m for m in host if m["point"] == "/"][-1]
    with Sandbox(rootfs) as s:
        inside = mountinfo(ok(s, "cat /proc/self/mountinfo"))
        probes = sh(s, f"cat {secret}; cat /../../../..{secret}; ls {here}; "
                       f"ls /proc/1/root{secret}; ls /proc/self/root{here}")
    # exactly one root, and it is not the host's root mount
    assert [m["point"] for m in inside].count("/") == 1
    assert not any(m["dev"] == host_root["dev"] and m["root"] == "/" for m in inside)
    # no mount point of the host survives apart from the ones built fresh
    fresh = {"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/tmp"}
    leftover = {m["point"] for m in inside} & {m["point"] for m in host}
    assert leftover <= fresh, leftover
    # no mount point and no mount root names the rootfs directory or its parents
    for m in inside:
        assert rootfs not in m["point"] and rootfs not in m["root"], m
        assert str(tmp_path) not in m["point"], m
    # host files outside the rootfs are unreachable, also through /proc
    assert "host only" not in probes.stdout
    assert probes.stdout == ""
    assert probes.stderr.count("No such file or directory") + \
        probes.stderr.count("Permission denied") >= 5, probes.stderr


# -- writes never reach the rootfs ------------------------------------------

def test_writes_to_root_work_and_vanish(own_rootfs):
    before = root_state(own_rootfs)
    with Sandbox(own_rootfs) as s:
        ok(s, "echo new > /newfile; mkdir -p /newdir/sub; echo x > /newdir/sub/f; "
              "echo changed > /canary; echo more >> /etc/passwd; rm /bin/true; "
              "chmod 700 /etc; touch /bin")
        out = ok(s, "cat /newfile /canary /newdir/sub/f; test -e /bin/true || echo gone")
        assert out == "new\nchanged\nx\ngone\n"
        # the change is visible to other runs of the same sandbox
        assert ok(s, "cat /canary") == "changed\n"
    assert root_state(own_rootfs) == before
    with open(os.path.join(own_rootfs, "canary")) as f:
        assert f.read() == "original\n"
    with Sandbox(own_rootfs) as s:
        assert ok(s, "cat /canary") == "original\n"
        assert sh(s, "test -e /newfile").returncode == 1
        assert sh(s, "test -e /bin/true").returncode == 0


def test_deleting_canary_does_not_touch_disk(own_rootfs):
    before = root_state(own_rootfs)
    with Sandbox(own_rootfs) as s:
        ok(s, "rm /canary")
        assert sh(s, "test -e /canary").returncode == 1
    assert root_state(own_rootfs) == before
    assert os.path.exists(os.path.join(own_rootfs, "canary"))


def test_overwriting_canary_does_not_touch_disk(own_rootfs):
    before = root_state(own_rootfs)
    with Sandbox(own_rootfs) as s:
        ok(s, "echo overwritten > /canary")
        assert ok(s, "cat /canary") == "overwritten\n"
    assert root_state(own_rootfs) == before


def test_shared_rootfs_unchanged_after_writes(rootfs):
    before = root_state(rootfs)
    with Sandbox(rootfs) as s:
        ok(s, "echo scribble > /canary; rm -r /etc; mkdir /zzz")
    assert root_state(rootfs) == before


def test_concurrent_sandboxes_do_not_see_each_others_writes(own_rootfs):
    before = root_state(own_rootfs)
    with Sandbox(own_rootfs) as a, Sandbox(own_rootfs) as b:
        ok(a, "echo A > /canary; echo a > /only-a")
        ok(b, "echo b > /only-b")
        assert ok(b, "cat /canary") == "original\n"
        assert sh(b, "test -e /only-a").returncode == 1
        assert sh(a, "test -e /only-b").returncode == 1
        ok(b, "echo B > /canary")
        assert ok(a, "cat /canary") == "A\n"
        assert ok(b, "cat /canary") == "B\n"
    assert root_state(own_rootfs) == before


# -- read_only ----------------------------------------------------------------

def test_read_only_root_refuses_writes(rootfs):
    before = root_state(rootfs)
    with Sandbox(rootfs, read_only=True) as s:
        for script in ("echo x > /f", "echo x > /canary", "rm /canary", "mkdir /d",
                       "touch /etc/passwd"):
            r = sh(s, script)
            assert r.returncode != 0, script
            assert EROFS_TEXT in r.stderr, (script, r.stderr)
        assert ok(s, "cat /canary") == "original\n"
        # the fresh mounts stay writable
        assert ok(s, "echo t > /tmp/f; cat /tmp/f") == "t\n"
        assert ok(s, "echo m > /dev/shm/f; cat /dev/shm/f") == "m\n"
        root = [m for m in mountinfo(ok(s, "cat /proc/self/mountinfo")) if m["point"] == "/"]
        assert "ro" in root[0]["opts"]
    assert root_state(rootfs) == before


def test_read_only_root_keeps_user_mounts_writable(rootfs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with Sandbox(rootfs, read_only=True,
                 mounts=[Bind(str(data), "/data", read_only=False), Tmpfs("/scratch")]) as s:
        ok(s, "echo w > /data/f; echo s > /scratch/f; cat /scratch/f")
        assert EROFS_TEXT in sh(s, "echo x > /f").stderr
    assert (data / "f").read_text() == "w\n"


def test_writable_by_default(rootfs):
    with Sandbox(rootfs) as s:
        root = [m for m in mountinfo(ok(s, "cat /proc/self/mountinfo")) if m["point"] == "/"]
        assert "rw" in root[0]["opts"]


# -- the default root ---------------------------------------------------------

def test_default_root_hides_secrets():
    assert os.path.exists("/etc/shadow"), "host has no /etc/shadow: test proves nothing"
    with Sandbox() as s:
        r = sh(s, "test -e /etc/shadow; echo $?; test -e /etc/gshadow; echo $?; "
                  "ls -A /etc")
    codes = r.stdout.split("\n")[:2]
    assert codes == ["1", "1"]
    assert "shadow" not in r.stdout.split()
    assert "gshadow" not in r.stdout.split()


def test_default_root_has_passwd():
    with open("/etc/passwd") as f:
        host = f.read()
    with Sandbox() as s:
        assert ok(s, "cat /etc/passwd") == host


def test_default_root_system_dirs_read_only():
    with Sandbox() as s:
        # creating names fails on the mount before any permission check
        for script in ("touch /usr/pysandbox-probe", "mkdir /usr/lib/pysandbox-probe"):
            r = sh(s, script)
            assert r.returncode != 0, script
            assert EROFS_TEXT in r.stderr, (script, r.stderr)
        # existing files: as an ordinary user the host's root-owned files are
        # also unwritable by permission, so check the mount flag too
        r = sh(s, "echo x >> /etc/passwd")
        assert r.returncode != 0
        if os.geteuid() == 0:
            assert EROFS_TEXT in r.stderr, r.stderr
        mounts = {m["point"]: m for m in mountinfo(ok(s, "cat /proc/self/mountinfo"))}
    assert not os.path.exists("/usr/pysandbox-probe")
    assert "ro" in mounts["/usr"]["opts"]
    assert "ro" in mounts["/etc/passwd"]["opts"]


def test_default_root_is_writable_and_throwaway():
    existed = os.path.exists("/f")
    with Sandbox() as s:
        assert ok(s, "echo hi > /f; cat /f") == "hi\n"
    assert os.path.exists("/f") == existed
    with Sandbox() as s:
        assert sh(s, "test -e /f").returncode == 1


def test_default_root_hostname_file_not_leaked():
    # /etc/hostname is not on the allow-list: the host's name stays outside
    with Sandbox() as s:
        r = sh(s, "cat /etc/hostname")
    assert socket.gethostname() not in r.stdout


# -- Bind -------------------------------------------------------------------

@pytest.fixture
def hostdir(tmp_path):
    d = tmp_path / "hostdir"
    d.mkdir()
    (d / "marker").write_text("from host\n")
    return d


def test_bind_read_only_by_default(rootfs, hostdir):
    before = tree_snapshot(str(hostdir))
    with Sandbox(rootfs, mounts=[Bind(str(hostdir), "/data")]) as s:
        assert ok(s, "cat /data/marker") == "from host\n"
        for script in ("echo x > /data/new", "rm /data/marker", "echo x >> /data/marker"):
            r = sh(s, script)
            assert r.returncode != 0, script
            assert EROFS_TEXT in r.stderr, (script, r.stderr)
    assert tree_snapshot(str(hostdir)) == before


def test_bind_read_write_reaches_host(rootfs, hostdir):
    with Sandbox(rootfs, mounts=[Bind(str(hostdir), "/data", read_only=False)]) as s:
        ok(s, "echo written > /data/new; rm /data/marker; mkdir /data/sub")
    assert (hostdir / "new").read_text() == "written\n"
    assert not (hostdir / "marker").exists()
    assert (hostdir / "sub").is_dir()


def test_bind_target_defaults_to_source(rootfs, hostdir):
    with Sandbox(rootfs, mounts=[Bind(str(hostdir))]) as s:
        assert ok(s, f"cat {hostdir}/marker") == "from host\n"


def test_bind_single_file(own_rootfs, tmp_path):
    f = tmp_path / "single.txt"
    f.write_text("one file\n")
    before = root_state(own_rootfs)
    with Sandbox(own_rootfs, mounts=[Bind(str(f), "/etc/motd"),
                                     Bind(str(f), "/canary"),
                                     Bind(str(f), "/new/dir/file")]) as s:
        assert ok(s, "cat /etc/motd /canary /new/dir/file") == "one file\n" * 3
        assert ok(s, "ls -A /etc").split().count("motd") == 1
        assert ok(s, "stat -c %F /etc/motd").strip() == "regular file"
        r = sh(s, "echo x >> /etc/motd")
        assert r.returncode != 0 and EROFS_TEXT in r.stderr
    assert f.read_text() == "one file\n"
    # the targets were made in the throwaway layer, not in the rootfs
    assert root_state(own_rootfs) == before


def test_bind_single_file_read_write(rootfs, tmp_path):
    f = tmp_path / "rw.txt"
    f.write_text("a\n")
    with Sandbox(rootfs, mounts=[Bind(str(f), "/rw.txt", read_only=False)]) as s:
        ok(s, "echo b >> /rw.txt")
    assert f.read_text() == "a\nb\n"


# -- Tmpfs ------------------------------------------------------------------

def test_tmpfs_mount_is_writable_and_fresh(own_rootfs):
    before = root_state(own_rootfs)
    with Sandbox(own_rootfs, mounts=[Tmpfs("/scratch"), Tmpfs("/etc")]) as s:
        assert ok(s, "echo s > /scratch/f; cat /scratch/f") == "s\n"
        assert ok(s, "ls -A /etc") == ""   # hides the rootfs /etc
        mounts = {m["point"]: m for m in mountinfo(ok(s, "cat /proc/self/mountinfo"))}
        assert mounts["/scratch"]["fstype"] == "tmpfs"
        assert mounts["/etc"]["fstype"] == "tmpfs"
    assert root_state(own_rootfs) == before


def test_tmpfs_size_limit(rootfs):
    with Sandbox(rootfs, mounts=[Tmpfs("/small", size="1M"), Tmpfs("/big")]) as s:
        r = sh(s, "dd if=/dev/zero of=/small/f bs=64k count=32")
        assert r.returncode != 0
        assert "No space left on device" in r.stderr
        # below the limit works, and without a size the same write fits
        ok(s, "rm -f /small/f; dd if=/dev/zero of=/small/f bs=64k count=8")
        ok(s, "dd if=/dev/zero of=/big/f bs=64k count=32")


def test_tmpfs_size_accepts_bytes(rootfs):
    with Sandbox(rootfs, mounts=[Tmpfs("/small", size=256 * 1024)]) as s:
        r = sh(s, "dd if=/dev/zero of=/small/f bs=64k count=8")
    assert r.returncode != 0 and "No space left on device" in r.stderr


# -- order and confinement ----------------------------------------------------

def test_mounts_apply_in_order(rootfs, hostdir):
    with Sandbox(rootfs, mounts=[Bind(str(hostdir), "/data"), Tmpfs("/data")]) as s:
        assert ok(s, "ls -A /data") == ""
    with Sandbox(rootfs, mounts=[Tmpfs("/data"), Bind(str(hostdir), "/data")]) as s:
        assert ok(s, "ls -A /data") == "marker\n"


def test_bind_inside_tmpfs_inside_bind(rootfs, hostdir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "o").write_text("o\n")
    with Sandbox(rootfs, mounts=[Tmpfs("/a"), Bind(str(other), "/a/b/c")]) as s:
        assert ok(s, "cat /a/b/c/o") == "o\n"


def _other_dir(tmp_path, name="other"):
    d = tmp_path / name
    d.mkdir()
    (d / "o").write_text(name + "\n")
    return d


def test_mount_over_the_parent_of_earlier_targets(rootfs, hostdir, tmp_path):
    # targets made one after another in one directory reuse its fd; a mount
    # over that directory (or above it) must send later targets to the new
    # mount, not to the covered directory
    other = _other_dir(tmp_path)
    mounts = [Bind(str(hostdir), "/data/a"), Tmpfs("/data"), Bind(str(other), "/data/b")]
    with Sandbox(rootfs, mounts=mounts) as s:
        assert ok(s, "ls -A /data; cat /data/b/o") == "b\nother\n"
    mounts = [Bind(str(hostdir), "/g/p/a"), Tmpfs("/g"), Bind(str(other), "/g/p/b")]
    with Sandbox(rootfs, mounts=mounts) as s:
        assert ok(s, "ls -A /g /g/p; cat /g/p/b/o") == "/g:\np\n\n/g/p:\nb\nother\n"


def test_many_targets_in_one_directory(rootfs, tmp_path):
    dirs = [_other_dir(tmp_path, f"d{i}") for i in range(20)]
    files = []
    for i in range(5):
        f = tmp_path / f"f{i}"
        f.write_text(f"file{i}\n")
        files.append(Bind(str(f), f"/many/f{i}"))
    mounts = [Bind(str(d), f"/many/{d.name}") for d in dirs] + files
    with Sandbox(rootfs, mounts=mounts) as s:
        listing = ok(s, "ls -A /many").split()
        text = ok(s, "cat /many/d*/o /many/f*").split()
    assert sorted(listing) == sorted([d.name for d in dirs] + [f"f{i}" for i in range(5)])
    assert sorted(text) == sorted([d.name for d in dirs] + [f"file{i}" for i in range(5)])


def test_existing_symlink_next_to_created_target_stays_inside(own_rootfs, hostdir, tmp_path):
    # /d/new is created in /d (whose fd is then reused); /d/l exists, as a
    # link to /etc: it is resolved inside the root like any existing target
    os.makedirs(os.path.join(own_rootfs, "d"))
    os.symlink("/etc", os.path.join(own_rootfs, "d", "l"))
    other = _other_dir(tmp_path)
    before_root = root_state(own_rootfs)
    mounts = [Bind(str(other), "/d/new"), Bind(str(hostdir), "/d/l")]
    with Sandbox(own_rootfs, mounts=mounts) as s:
        assert ok(s, "cat /d/new/o /etc/marker /d/l/marker") == "other\n" + "from host\n" * 2
    assert root_state(own_rootfs) == before_root
    assert not os.path.exists("/etc/marker")


def _escape_links(host_path):
    """Three spellings of a link, placed at /escape in the rootfs copy, that
    all reach host_path when followed on the host."""
    return {
        "absolute": str(host_path),
        "absolute-dotdot": "/../../../../../../.." + str(host_path),
        "relative": "../" * 20 + str(host_path).lstrip("/"),
    }


FORMS = ["absolute", "absolute-dotdot", "relative"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", ["tmpfs-below-link", "bind-at-link"])
def test_symlink_to_host_dir_never_touches_it(own_rootfs, tmp_path, hostdir, form, kind):
    """/escape links to a host directory that does not exist inside the
    root: the mount is refused or confined, and the host directory gets
    nothing (no mount target created in it)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(_escape_links(victim)[form], os.path.join(own_rootfs, "escape"))
    before_victim = root_state(str(victim))
    before_root = root_state(own_rootfs)
    before_host = tree_snapshot(str(hostdir))
    if kind == "tmpfs-below-link":
        mounts = [Tmpfs("/escape/sub")]
        probe, want = "touch /escape/sub/x && ls -A /escape/sub", "x\n"
    else:
        mounts = [Bind(str(hostdir), "/escape")]
        probe, want = "cat /escape/marker", "from host\n"
    try:
        s = Sandbox(own_rootfs, mounts=mounts)
    except SetupError:
        pass  # refusing the target is as good as confining it
    else:
        with s:
            assert ok(s, probe) == want
    assert os.listdir(victim) == []
    assert root_state(str(victim)) == before_victim
    assert root_state(own_rootfs) == before_root
    assert tree_snapshot(str(hostdir)) == before_host


@pytest.mark.parametrize("form", FORMS)
def test_symlink_to_etc_binds_inside_root(own_rootfs, hostdir, tmp_path, form):
    """/escape links to /etc, which exists both on the host and in the
    rootfs: the mounts must land on the sandbox's /etc.  Followed on the
    host they would cover the host's /etc in the (then dropped) old root,
    and the sandbox's /etc would show the rootfs files instead."""
    os.symlink(_escape_links("/etc")[form], os.path.join(own_rootfs, "escape"))
    f = tmp_path / "passwd"
    f.write_text("bound passwd\n")
    before_root = root_state(own_rootfs)
    with Sandbox(own_rootfs, mounts=[Bind(str(hostdir), "/escape")]) as s:
        assert ok(s, "cat /etc/marker /escape/marker") == "from host\n" * 2
        assert sh(s, "test -e /etc/group").returncode == 1
    with Sandbox(own_rootfs, mounts=[Tmpfs("/escape")]) as s:
        assert ok(s, "ls -A /etc") == ""
    with Sandbox(own_rootfs, mounts=[Bind(str(f), "/escape/passwd")]) as s:
        assert ok(s, "cat /etc/passwd") == "bound passwd\n"
        assert ok(s, "cat /etc/group").startswith("root:")
    assert root_state(own_rootfs) == before_root
    assert not os.path.exists("/etc/marker")



def test_symlinked_parent_of_bind_target_stays_inside(own_rootfs, tmp_path, hostdir):
    """An /etc that is a link to a host directory: binding /etc/x must not
    create x in the host directory."""
    victim = tmp_path / "hostetc"
    victim.mkdir()
    shutil.rmtree(os.path.join(own_rootfs, "etc"))
    os.symlink(str(victim), os.path.join(own_rootfs, "etc"))
    f = tmp_path / "file"
    f.write_text("bound\n")
    try:
        s = Sandbox(own_rootfs, mounts=[Bind(str(f), "/etc/x"), Bind(str(hostdir), "/etc/d")])
    except SetupError:
        pass
    else:
        with s:
            assert ok(s, "cat /etc/x /etc/d/marker") == "bound\nfrom host\n"
    assert os.listdir(victim) == []


@pytest.mark.parametrize("target", ["/a/../etc", "/../x", "/tmp/../../x", "/..", "relative/x"])
def test_bad_targets_are_refused_at_construction(rootfs, hostdir, target):
    with pytest.raises(ValueError):
        Bind(str(hostdir), target)
    with pytest.raises(ValueError):
        Tmpfs(target)


# -- /dev, /tmp, /sys -----------------------------------------------------------

@pytest.mark.parametrize("root", ["rootfs", "default"])
def test_dev_contents(request, root):
    r = request.getfixturevalue("rootfs") if root == "rootfs" else None
    with Sandbox(r) as s:
        names = set(ok(s, "ls -A /dev").split())
        assert {"null", "zero", "full", "random", "urandom", "tty", "pts"} <= names
        types = ok(s, "stat -c '%n|%F|%t:%T' /dev/* /dev/pts")
        assert ok(s, "echo gone > /dev/null; cat /dev/null | wc -c").strip() == "0"
        assert ok(s, "head -c 16 /dev/zero | wc -c").strip() == "16"
        assert ok(s, "head -c 16 /dev/urandom | wc -c").strip() == "16"
        assert ok(s, "head -c 16 /dev/random | wc -c").strip() == "16"
        full = sh(s, "dd if=/dev/zero of=/dev/full bs=1 count=1")
        assert full.returncode != 0 and "No space left on device" in full.stderr
        mounts = {m["point"]: m for m in mountinfo(ok(s, "cat /proc/self/mountinfo"))}
        assert ok(s, "echo s > /dev/shm/f; cat /dev/shm/f") == "s\n"
        assert ok(s, "echo t > /tmp/f; cat /tmp/f") == "t\n"
    kinds = {}
    for line in types.splitlines():
        name, kind, devno = line.split("|")
        kinds[name] = (kind, devno)
    assert kinds["/dev/null"] == ("character special file", "1:3")
    assert kinds["/dev/zero"] == ("character special file", "1:5")
    assert kinds["/dev/pts"][0] == "directory"
    # no other device node of the host (no disks, /dev/mem, /dev/kmsg...)
    devices = {n.rsplit("/", 1)[1] for n, (k, _) in kinds.items() if "special" in k}
    assert devices <= {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "console"}
    assert mounts["/dev/shm"]["fstype"] == "tmpfs"
    assert mounts["/tmp"]["fstype"] == "tmpfs"
    assert mounts["/dev/pts"]["fstype"] == "devpts"


def test_tmp_is_fresh_and_private(rootfs, tmp_path):
    (tmp_path / "host-tmp-file").write_text("x")
    with Sandbox(rootfs) as a, Sandbox(rootfs) as b:
        assert ok(a, "ls -A /tmp") == ""
        ok(a, "echo a > /tmp/a")
        assert sh(b, "test -e /tmp/a").returncode == 1


@pytest.mark.parametrize("root", ["rootfs", "default"])
def test_sys_absent_or_not_writable(request, root):
    r = request.getfixturevalue("rootfs") if root == "rootfs" else None
    with Sandbox(r) as s:
        mounts = mountinfo(ok(s, "cat /proc/self/mountinfo"))
        present = sh(s, "test -e /sys/kernel").returncode == 0
        write = sh(s, "echo 1 > /sys/kernel/uevent_helper") if present else None
    for m in mounts:
        if m["fstype"] == "sysfs":
            assert "ro" in m["opts"], m
    if present:
        assert write.returncode != 0


def test_plan_too_large_to_queue_before_the_clone(rootfs, hostdir):
    # plans up to PLAN_EARLY_MAX wait in the socket before init exists;
    # a larger one is sent once init reads
    from pysandbox import _engine
    deep = "/" + "/".join(["d" * 250] * 14)
    mounts = [Bind(str(hostdir), f"{deep}/{i:03d}") for i in range(20)]
    from pysandbox import _plan
    from pysandbox._config import SandboxConfig
    cfg = SandboxConfig.from_kwargs(rootfs, mounts=mounts)
    assert len(_plan.pack_plan(cfg, _plan.build_ops(cfg))) > _engine.PLAN_EARLY_MAX
    with Sandbox(rootfs, mounts=mounts) as s:
        assert ok(s, f"cat {deep}/019/marker") == "from host\n"


def test_deeply_nested_missing_target(rootfs):
    # every missing component is one level of the init's target creation:
    # a deep path must not exhaust its stack
    deep = "/" + "a/" * 1100 + "b"
    with Sandbox(rootfs, mounts=[Tmpfs(deep)]) as s:
        assert ok(s, f"touch {deep}/x && ls {deep}") == "x\n"


DEEP_TARGET = r"""
import resource, sys
sys.path.insert(0, sys.argv[1])
hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
resource.setrlimit(resource.RLIMIT_STACK, (int(sys.argv[3]) << 10, hard))
import os
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard == resource.RLIM_INFINITY or hard >= 1200:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    ballast = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]   # fds past 1023
from pysandbox import Sandbox, Tmpfs
n = int(sys.argv[2])
try:
    with Sandbox(mounts=[Tmpfs("/d" * n)]) as s:
        r = s.run(["sh", "-c", "cd /" + "d/" * n + " && pwd | wc -c"], capture_output=True,
                  text=True)
        print("ok", r.stdout.strip())
except Exception as e:
    print("error", e)
"""


@pytest.mark.parametrize("components, stack_kib, expect", [
    (1000, 512, "ok 2001"),
    (2000, 256, "error [Errno 0] none (the init was killed by SIGSEGV before reporting)"),
])
def test_deep_mount_target(components, stack_kib, expect):
    """A target 1000 missing directories deep is made with a 512 KiB stack
    (init inherits the caller's stack limit: each level of its recursion
    kept a copy of the path, and init died past ~120).  Where init does
    crash, the error says how it died."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(pysandbox.__file__)))
    r = subprocess.run([sys.executable, "-c", DEEP_TARGET, here, str(components),
                        str(stack_kib)], capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith(expect), (r.stdout, r.stderr)
