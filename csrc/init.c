/* pysandbox-init: PID 1 of every sandbox.
 *
 * Started by the Python parent (csrc/spawn.c) inside fresh namespaces with
 * the control socket on fd 3.  It reads the plan, builds the root, enters it,
 * and then serves run requests: each run gets a supervisor (a fork of init,
 * subreaper of everything the command starts) that execs the command and
 * reports its pid and its exit status on a per-run pipe.
 *
 * Init never formats a message: a failure is a (step, errno, index) record.
 * Init exits when the control socket closes; the kernel then kills every
 * process of the pid namespace, and the mounts go with the mount namespace. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include "mount_api.h"
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/sockios.h>
#include <unistd.h>

#define CTRL_FD PS_CTRL_FD
#define RUNQ_FD PS_RUNQ_FD

/* ------------------------------------------------------------------ */
/* records                                                             */

/* To Python: on the control socket, or on a run's record pipe (one write
 * of less than PIPE_BUF: whole or not at all).  SIGPIPE is blocked in init
 * and its supervisors (a reader gone is EPIPE here); commands start with
 * no signal blocked. */
static void send_record(int fd, const struct ps_record *r)
{
    ssize_t n;
    do {
        n = write(fd, r, sizeof *r);
    } while (n < 0 && errno == EINTR);
}

static void send_simple(int fd, uint32_t type, int step, int err, int index,
                        int64_t pid)
{
    struct ps_record r;
    memset(&r, 0, sizeof r);
    r.type = type;
    r.step = (uint32_t)step;
    r.err = err;
    r.index = index;
    r.pid = pid;
    send_record(fd, &r);
}

/* The fds of a received message (SCM_RIGHTS), up to max_fds; the rest are
 * closed. */
static void collect_fds(struct msghdr *msg, int *fds, int max_fds, int *n_fds)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *in = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (*n_fds < max_fds)
                fds[(*n_fds)++] = in[i];
            else
                close(in[i]);
        }
    }
}

/* Room for the fds of a run request (record pipe, stdio, cgroup.procs files). */
union request_cbuf {
    struct cmsghdr h;
    char b[CMSG_SPACE(sizeof(int) * (4 + PS_MAX_CGROUP_FDS))];
};

/* A message header over one buffer, with a control buffer (NULL, 0: none). */
static void set_msg(struct msghdr *msg, struct iovec *iov, void *buf, size_t len,
                    void *ctl, size_t ctl_len)
{
    memset(msg, 0, sizeof *msg);
    iov->iov_base = buf;
    iov->iov_len = len;
    msg->msg_iov = iov;
    msg->msg_iovlen = 1;
    msg->msg_control = ctl;
    msg->msg_controllen = ctl_len;
}

/* Receive one SEQPACKET message of any size, with up to max_fds fds. */
static ssize_t recv_message(int fd, char **buf_out, int *fds, int max_fds,
                            int *n_fds)
{
    union request_cbuf cbuf;
    struct msghdr msg;
    struct iovec iov;
    char peek;
    ssize_t size, n;
    char *buf;

    *n_fds = 0;
    set_msg(&msg, &iov, &peek, 1, NULL, 0);
    do {
        size = recvmsg(fd, &msg, MSG_PEEK | MSG_TRUNC);
    } while (size < 0 && errno == EINTR);
    if (size <= 0)
        return size;
    buf = malloc((size_t)size + 1);
    if (!buf)
        return -1;
    set_msg(&msg, &iov, buf, (size_t)size, cbuf.b, sizeof cbuf.b);
    do {
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        free(buf);
        return -1;
    }
    collect_fds(&msg, fds, max_fds, n_fds);
    buf[n] = 0;
    *buf_out = buf;
    return n;
}

/* ------------------------------------------------------------------ */
/* the plan                                                            */

struct op {
    uint32_t kind, flags, mode;
    const char *src, *dst, *data;
    int src_fd; /* detached clone of the bind source, opened in phase 1 */
};

struct plan {
    int netns;                  /* from init's argv, not the wire */
    int dev_fd;                 /* the parent's device nodes (a detached
                                 * tmpfs, sent with the plan), or -1 */
    uint32_t flags;
    uint64_t cap_bound;
    struct sock_fprog filter;   /* len 0: none */
    const char *hostname;
    const char *staging;
    uint32_t n_ops;
    struct op *ops;
};

/* what every supervisor and command needs from the plan, kept after setup */
static uint32_t plan_flags;
static uint64_t plan_cap_bound;
static struct sock_fprog plan_filter;

static int take_string(const char **p, const char *end, uint32_t len,
                       const char **out)
{
    if (len == 0) {
        *out = NULL;
        return 0;
    }
    if ((size_t)(end - *p) < len || (*p)[len - 1] != 0)
        return -1;
    *out = *p;
    *p += len;
    return 0;
}

static int parse_plan(char *buf, size_t size, struct plan *pl)
{
    const char *p = buf, *end = buf + size;
    struct ps_plan_hdr h;
    if (size < sizeof h)
        return -1;
    memcpy(&h, p, sizeof h);
    p += sizeof h;
    if (h.magic != PS_PLAN_MAGIC || h.n_ops > 100000)
        return -1;
    pl->flags = h.flags;
    pl->cap_bound = h.cap_bound;
    pl->n_ops = h.n_ops;
    if (take_string(&p, end, h.hostname_len, &pl->hostname) < 0 ||
        take_string(&p, end, h.staging_len, &pl->staging) < 0 || !pl->staging)
        return -1;
    if (h.filter_len % sizeof(struct sock_filter) != 0 ||
        h.filter_len / sizeof(struct sock_filter) > BPF_MAXINSNS ||
        (size_t)(end - p) < h.filter_len)
        return -1;
    pl->filter.len = (unsigned short)(h.filter_len / sizeof(struct sock_filter));
    pl->filter.filter = NULL;
    if (h.filter_len) {
        pl->filter.filter = malloc(h.filter_len);   /* kept for the sandbox's life */
        if (!pl->filter.filter)
            return -1;
        memcpy(pl->filter.filter, p, h.filter_len);
        p += h.filter_len;
    }
    pl->ops = calloc(h.n_ops ? h.n_ops : 1, sizeof *pl->ops);
    if (!pl->ops)
        return -1;
    for (uint32_t i = 0; i < h.n_ops; i++) {
        struct ps_op_hdr oh;
        struct op *o = &pl->ops[i];
        if ((size_t)(end - p) < sizeof oh)
            return -1;
        memcpy(&oh, p, sizeof oh);
        p += sizeof oh;
        o->kind = oh.kind;
        o->flags = oh.flags;
        o->mode = oh.mode;
        o->src_fd = -1;
        if (take_string(&p, end, oh.src_len, &o->src) < 0 ||
            take_string(&p, end, oh.dst_len, &o->dst) < 0 ||
            take_string(&p, end, oh.data_len, &o->data) < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* building the root: every step returns 0 or sets *step and errno      */

static unsigned int mount_attrs(uint32_t flags)
{
    unsigned int a = 0;
    if (flags & PS_F_RDONLY)
        a |= MOUNT_ATTR_RDONLY;
    if (flags & PS_F_NOSUID)
        a |= MOUNT_ATTR_NOSUID;
    if (flags & PS_F_NODEV)
        a |= MOUNT_ATTR_NODEV;
    if (flags & PS_F_NOEXEC)
        a |= MOUNT_ATTR_NOEXEC;
    return a;
}

/* A new detached filesystem mount: fsopen, options "k=v,k,...", fsmount. */
static int new_fs_mount(const char *type, const char *options, uint32_t flags)
{
    int fs = fsopen(type, FSOPEN_CLOEXEC);
    int m;
    if (fs < 0)
        return -1;
    if (options && *options) {
        char opts[4096];
        char *save = NULL, *kv;
        if (strlen(options) >= sizeof opts) {
            close(fs);
            errno = E2BIG;
            return -1;
        }
        strcpy(opts, options);
        for (kv = strtok_r(opts, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(kv, '=');
            int rc;
            if (eq) {
                *eq = 0;
                rc = fsconfig(fs, FSCONFIG_SET_STRING, kv, eq + 1, 0);
            } else {
                rc = fsconfig(fs, FSCONFIG_SET_FLAG, kv, NULL, 0);
            }
            if (rc < 0) {
                int saved = errno;
                close(fs);
                errno = saved;
                return -1;
            }
        }
    }
    if (fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        int saved = errno;
        close(fs);
        errno = saved;
        return -1;
    }
    m = fsmount(fs, FSMOUNT_CLOEXEC, mount_attrs(flags));
    int saved = errno;
    close(fs);
    errno = saved;
    return m;
}

/* The writable layer: a private tmpfs holding upper/ and work/, and the
 * overlay over the (never written) rootfs. */
static int overlay_root_mount(const char *lower, const char *staging)
{
    char opts[8192];
    int layer = new_fs_mount("tmpfs", "mode=0755", 0);
    int root;
    if (layer < 0)
        return -1;
    if (mkdirat(layer, "upper", 0755) < 0 || mkdirat(layer, "work", 0755) < 0)
        goto fail;
    if ((size_t)snprintf(opts, sizeof opts,
                         "lowerdir=%s,upperdir=/proc/self/fd/%d/upper,"
                         "workdir=/proc/self/fd/%d/work",
                         lower, layer, layer) >= sizeof opts) {
        errno = ENAMETOOLONG;
        goto fail;
    }
    {
        /* lowerdir may hold escaped commas: hand the options over whole. */
        int fs = fsopen("overlay", FSOPEN_CLOEXEC);
        if (fs < 0)
            goto fail;
        char lowerbuf[4200], upper[64], work[64];
        snprintf(upper, sizeof upper, "/proc/self/fd/%d/upper", layer);
        snprintf(work, sizeof work, "/proc/self/fd/%d/work", layer);
        if (strlen(lower) >= sizeof lowerbuf) {
            close(fs);
            errno = ENAMETOOLONG;
            goto fail;
        }
        strcpy(lowerbuf, lower);
        if (fsconfig(fs, FSCONFIG_SET_STRING, "lowerdir", lowerbuf, 0) < 0 ||
            fsconfig(fs, FSCONFIG_SET_STRING, "upperdir", upper, 0) < 0 ||
            fsconfig(fs, FSCONFIG_SET_STRING, "workdir", work, 0) < 0 ||
            fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
            int saved = errno;
            close(fs);
            errno = saved;
            goto fail;
        }
        root = fsmount(fs, FSMOUNT_CLOEXEC, 0);
        int saved = errno;
        close(fs);
        errno = saved;
        if (root < 0)
            goto fail;
    }
    /* the layer is attached at the staging directory, under where the root
     * goes: it leaves with the old root's detach.  (Closing it detached
     * would be an unmount of its own, and each unmount waits for an RCU
     * grace period.) */
    if (move_mount(layer, "", AT_FDCWD, staging, MOVE_MOUNT_F_EMPTY_PATH) < 0) {
        int saved = errno;
        close(root);
        errno = saved;
        goto fail;
    }
    close(layer);
    return root;
fail:;
    int saved = errno;
    close(layer);
    errno = saved;
    return -1;
}

/* The directory the last missing target was created in.  Targets come in
 * runs under one parent (/dev/null, /dev/zero ...; /etc/passwd, /etc/group
 * ...; a hundred binds under /mnt): the next one is created from this fd,
 * without resolving the parent again, nor probing the target first.  The
 * fd stays right while nothing is mounted over that directory or above it:
 * run_op() drops it before any mount except one on a target just created
 * in it. */
static struct {
    int fd;           /* O_RDONLY | O_DIRECTORY, or -1 */
    char path[4096];  /* relative to the root, no leading '/' */
} parent_cache = { -1, "" };

static void drop_parent_cache(void)
{
    if (parent_cache.fd >= 0)
        close(parent_cache.fd);
    parent_cache.fd = -1;
    parent_cache.path[0] = 0;
}

static int parent_cached(const char *parent)
{
    return parent_cache.fd >= 0 && strcmp(parent_cache.path, parent) == 0;
}

static int resolve_in_root(int root, char *path, int create, int want_file,
                           int *step, mode_t mode, const char **created);

/* A directory fd for `parent` (relative to root; created if missing),
 * owned by the cache.  Returns -1 with errno and *step. */
static int parent_dir(int root, char *parent, int *step)
{
    if (parent_cached(parent))
        return parent_cache.fd;
    int pfd = resolve_in_root(root, parent, 1, 0, step, 0755, NULL);
    if (pfd < 0)
        return -1;
    /* O_PATH fds cannot be used for mkdirat: reopen as a directory */
    int dir = openat(pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int saved = errno;
    close(pfd);
    if (dir < 0) {
        errno = saved;
        *step = PS_STEP_CREATE_TARGET;
        return -1;
    }
    drop_parent_cache();
    parent_cache.fd = dir;
    strcpy(parent_cache.path, parent); /* shorter than path[]: checked by the caller */
    return dir;
}

/* Resolve `path` (absolute, inside) below root, creating what is missing:
 * directories, and the last component as a file when want_file.  Symlinks
 * and ".." cannot leave the root (RESOLVE_IN_ROOT).  Returns an O_PATH fd
 * of the target; or, when the target is made here and `created` is not
 * NULL, the directory it was made in (parent_cache's fd: not to be closed)
 * with *created set to its name (within path), so that the caller uses it
 * by name without opening it (an entry this call makes is nothing but
 * what it made: no symlink to follow).  Else *created is NULL.
 *
 * `path` is cut in place at its last slash while its parent is resolved
 * (a level of recursion per missing component, each working on the same
 * buffer: a small frame each, not a copy of the path, so that a target
 * thousands of components deep needs no more stack than init has) and
 * restored before return. */
static int resolve_in_root(int root, char *path, int create, int want_file,
                           int *step, mode_t mode, const char **created)
{
    static char top[1]; /* the parent of a name at the root: "" */
    struct open_how how;
    char *parent;
    const char *base;
    int fd, dir, rc, cached;

    if (created)
        *created = NULL;
    while (*path == '/')
        path++;
    if (!*path) {
        fd = dup(root);
        if (fd < 0)
            *step = PS_STEP_RESOLVE_TARGET;
        return fd;
    }
    if (strlen(path) >= sizeof parent_cache.path) {
        errno = ENAMETOOLONG;
        *step = PS_STEP_RESOLVE_TARGET;
        return -1;
    }
    /* the parent is path up to its last slash: cut there while it is used */
    char *slash = strrchr(path, '/');
    parent = slash ? path : top;
    base = slash ? slash + 1 : path;
    if (slash)
        *slash = 0;
    cached = parent_cached(parent);
    if (slash)
        *slash = '/';
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;

    /* an existing target is opened as it is (following symlinks inside);
     * in a cached parent, creating is tried first (EEXIST: it exists) */
    if (!create || !cached) {
        fd = (int)syscall(SYS_openat2, root, path, &how, sizeof how);
        if (fd >= 0 || errno != ENOENT || !create) {
            if (fd < 0)
                *step = PS_STEP_RESOLVE_TARGET;
            return fd;
        }
    }
    if (slash)
        *slash = 0;
    dir = parent_dir(root, parent, step);
    if (slash)
        *slash = '/';
    if (dir < 0)
        return -1;
    if (want_file) {
        rc = openat(dir, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (rc >= 0)
            close(rc);
    } else {
        rc = mkdirat(dir, base, mode);
    }
    if (rc >= 0) {
        if (created) {
            *created = base;
            return dir;
        }
        fd = openat(dir, base, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            *step = PS_STEP_RESOLVE_TARGET;
        return fd;
    }
    if (errno != EEXIST) {
        *step = PS_STEP_CREATE_TARGET;
        return -1;
    }
    fd = (int)syscall(SYS_openat2, root, path, &how, sizeof how);
    if (fd < 0)
        *step = PS_STEP_RESOLVE_TARGET;
    return fd;
}

static int attach(int mnt, int target)
{
    return move_mount(mnt, "", target, "",
                      MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
}

/* Phase 1, in the host view: a detached clone of every bind source, so that
 * mounting the new root over the staging directory hides nothing we need. */
static int open_sources(struct plan *pl, int *step, int *index)
{
    for (uint32_t i = 0; i < pl->n_ops; i++) {
        struct op *o = &pl->ops[i];
        if (o->kind != PS_OP_BIND)
            continue;
        uint32_t flags = o->flags;
        o->src_fd = -1;
        if ((flags & PS_F_DEV_NODE) && pl->dev_fd >= 0) {
            const char *slash = strrchr(o->src, '/');
            o->src_fd = open_tree(pl->dev_fd, slash ? slash + 1 : o->src,
                                  OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
        }
        if (o->src_fd < 0) {
            /* the host's node itself: read-only (writing to a device
             * goes on; chmod, chown and touch of the host's node do not) */
            if (flags & PS_F_DEV_NODE)
                flags |= PS_F_RDONLY;
            o->src_fd = open_tree(AT_FDCWD, o->src,
                                  OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
        }
        if (o->src_fd < 0) {
            if (errno == ENOENT && (o->flags & PS_F_OPTIONAL))
                continue;
            *step = PS_STEP_OPEN_SOURCE;
            *index = (int)i;
            return -1;
        }
        if (mount_setattr(o->src_fd, "", AT_EMPTY_PATH | AT_RECURSIVE,
                          &(struct mount_attr){ .attr_set = mount_attrs(flags) },
                          sizeof(struct mount_attr)) < 0) {
            *step = PS_STEP_MOUNT;
            *index = (int)i;
            return -1;
        }
    }
    return 0;
}

static int run_op(int root, struct op *o, int *step)
{
    int target, mnt = -1, rc = 0;
    int want_file = (o->flags & PS_F_FILE) != 0;

    switch (o->kind) {
    case PS_OP_SYMLINK: {
        /* create the parent, then the link itself (never followed) */
        char parent[4096];
        const char *slash = strrchr(o->dst, '/');
        size_t plen = slash ? (size_t)(slash - o->dst) : 0;
        if (plen >= sizeof parent) {
            errno = ENAMETOOLONG;
            *step = PS_STEP_SYMLINK;
            return -1;
        }
        memcpy(parent, o->dst, plen);
        parent[plen] = 0;
        char *p = parent;
        while (*p == '/')
            p++;
        int dir = parent_dir(root, p, step); /* owned by the cache */
        if (dir < 0)
            return -1;
        if (symlinkat(o->data, dir, slash ? slash + 1 : o->dst) < 0 && errno != EEXIST) {
            *step = PS_STEP_SYMLINK;
            return -1;
        }
        return 0;
    }
    case PS_OP_BIND:
        if (o->src_fd < 0)
            return 0; /* optional source missing */
        if (!want_file) {
            struct stat st;
            if (fstat(o->src_fd, &st) == 0 && !S_ISDIR(st.st_mode))
                want_file = 1;
        }
        break;
    default:
        break;
    }

    /* a target made here is mounted on by name in its directory (one open
     * and close less a mount); bind-self and remount need it open */
    const char *made = NULL;
    int by_name = o->kind != PS_OP_BIND_SELF && o->kind != PS_OP_REMOUNT_RO;
    /* (dst points into the plan's buffer, init's own: cut and restored) */
    target = resolve_in_root(root, (char *)o->dst, !(o->flags & PS_F_NO_CREATE), want_file,
                             step, o->mode ? (mode_t)o->mode : 0755,
                             by_name ? &made : NULL);
    if (target < 0) {
        if (errno == ENOENT && (o->flags & PS_F_NO_CREATE))
            return 0;
        return -1;
    }
    /* a mount anywhere but on a target just made in the cached directory
     * may cover that directory: forget it */
    if (!made && o->kind != PS_OP_MKDIR && o->kind != PS_OP_REMOUNT_RO)
        drop_parent_cache();

    switch (o->kind) {
    case PS_OP_MKDIR:
        if (!made)
            close(target);
        return 0;
    case PS_OP_REMOUNT_RO:
        rc = mount_setattr(target, "", AT_EMPTY_PATH,
                           &(struct mount_attr){ .attr_set = MOUNT_ATTR_RDONLY },
                           sizeof(struct mount_attr));
        if (rc < 0)
            *step = PS_STEP_REMOUNT_RO;
        close(target);
        return rc;
    case PS_OP_BIND:
        mnt = o->src_fd;
        o->src_fd = -1;
        break;
    case PS_OP_BIND_SELF:
        mnt = open_tree(target, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC |
                                    AT_EMPTY_PATH | AT_RECURSIVE);
        if (mnt >= 0 &&
            mount_setattr(mnt, "", AT_EMPTY_PATH | AT_RECURSIVE,
                          &(struct mount_attr){ .attr_set = mount_attrs(o->flags) },
                          sizeof(struct mount_attr)) < 0) {
            int saved = errno;
            close(mnt);
            errno = saved;
            mnt = -1;
        }
        break;
    case PS_OP_TMPFS:
        mnt = new_fs_mount("tmpfs", o->data, o->flags);
        break;
    case PS_OP_PROC:
        mnt = new_fs_mount("proc", o->data, o->flags);
        break;
    case PS_OP_DEVPTS:
        mnt = new_fs_mount("devpts", o->data, o->flags);
        break;
    case PS_OP_MQUEUE:
        mnt = new_fs_mount("mqueue", o->data, o->flags);
        break;
    default:
        errno = EINVAL;
        break;
    }
    if (mnt >= 0)
        rc = made ? move_mount(mnt, "", target, made, MOVE_MOUNT_F_EMPTY_PATH)
                  : attach(mnt, target);
    if (mnt < 0 || rc < 0) {
        int saved = errno;
        if (mnt >= 0)
            close(mnt);
        if (!made)
            close(target);
        errno = saved;
        *step = PS_STEP_MOUNT;
        return -1;
    }
    close(mnt);
    if (!made)
        close(target);
    return 0;
}

static int loopback_up(void)
{
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        goto fail;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        goto fail;
    close(s);
    return 0;
fail:;
    int saved = errno;
    close(s);
    errno = saved;
    return -1;
}

/* The network namespace is made by the first supervisor, forked as soon as
 * init starts (see init_start_early_supervisor): creating one is the
 * costliest single step of a sandbox (~0.5 ms of kernel time, mostly lo's
 * sysctl tables), and it needs nothing from the mounts.  The supervisor is a
 * plain fork (own memory, own copy of the fd table: a table shared with a
 * live process makes every growth of it wait for an RCU grace period,
 * milliseconds, and init opens an fd per bind source meanwhile).  It sends
 * its result with the namespace fd (SIOCGSKNS on the socket that brought lo
 * up; no /proc needed) as the first message on its socket pair with init,
 * for init to setns() into. */
struct netns_result {
    int32_t step, err;
};

/* Room for one passed fd. */
union one_fd_cbuf {
    struct cmsghdr h;
    char b[CMSG_SPACE(sizeof(int))];
};

/* In the early supervisor: make the namespace, tell init.  Returns only on
 * success. */
static void early_make_netns(int sock)
{
    struct netns_result r = { 0, 0 };
    int s = -1, ns = -1;
    union one_fd_cbuf cbuf;
    struct iovec iov;
    struct msghdr msg;

    if (unshare(CLONE_NEWNET) < 0)
        r.step = PS_STEP_NETNS;
    else if (loopback_up() < 0)
        r.step = PS_STEP_LOOPBACK;
    else if ((s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0 ||
             (ns = ioctl(s, SIOCGSKNS)) < 0)
        r.step = PS_STEP_NETNS;
    if (r.step)
        r.err = errno;
    memset(&cbuf, 0, sizeof cbuf);
    set_msg(&msg, &iov, &r, sizeof r, ns >= 0 ? cbuf.b : NULL, ns >= 0 ? sizeof cbuf.b : 0);
    if (ns >= 0) {
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &ns, sizeof ns);
    }
    ssize_t sent;
    do
        sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    /* not sent: ending here is what init reads (EOF: EIO) */
    if (sent != (ssize_t)sizeof r)
        _exit(0);
    /* failed: init reports it and exits, which ends this process.  (Not
     * exiting here: a socket closed with a message unread, init's config,
     * makes init's next receive fail with ECONNRESET, before the result.) */
    if (r.step)
        for (;;)
            pause();
    close(ns);
    close(s);
}

static int early_sup_sock = -1;   /* init's end, until the go */

/* Join the early supervisor's namespace (or make one here if there is no
 * early supervisor).  Returns 0, or -1 with errno and *step. */
static int init_finish_netns(int *step)
{
    struct netns_result r = { PS_STEP_NETNS, EIO };
    int fds[1], n_fds = 0;
    union one_fd_cbuf cbuf;
    struct iovec iov;
    struct msghdr msg;
    ssize_t n;

    *step = PS_STEP_NETNS;
    if (early_sup_sock < 0) {
        if (unshare(CLONE_NEWNET) < 0)
            return -1;
        *step = PS_STEP_LOOPBACK;
        return loopback_up();
    }
    /* its first message; one that died before sending closed its end, the
     * only other copy (init closed its own after the fork): EOF */
    set_msg(&msg, &iov, &r, sizeof r, cbuf.b, sizeof cbuf.b);
    int resets = 0;
    do
        n = recvmsg(early_sup_sock, &msg, MSG_CMSG_CLOEXEC);
    /* (ECONNRESET is said once, ahead of what is still queued) */
    while (n < 0 && (errno == EINTR || (errno == ECONNRESET && resets++ == 0)));
    if (n > 0)
        collect_fds(&msg, fds, 1, &n_fds);
    if (n != (ssize_t)sizeof r || (r.step == 0 && n_fds != 1)) {
        if (n_fds == 1)
            close(fds[0]);
        errno = EIO;
        return -1;
    }
    if (r.step) {
        if (n_fds == 1)
            close(fds[0]);
        *step = r.step;
        errno = r.err;
        return -1;
    }
    int rc = setns(fds[0], CLONE_NEWNET);
    int saved = errno;
    close(fds[0]);
    errno = saved;
    return rc;
}

/* The container, as a flat checklist.  Returns 0, or -1 with step/index. */
static int build_container(struct plan *pl, int *step, int *index)
{
    int root_mnt = -1, root = -1;
    uint32_t first = 0;

    *index = -1;
    *step = PS_STEP_MAKE_PRIVATE;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return -1;

    if (open_sources(pl, step, index) < 0)
        return -1;

    /* the root mount: first op */
    *step = PS_STEP_ROOT_MOUNT;
    *index = 0;
    if (pl->n_ops == 0) {
        errno = EINVAL;
        return -1;
    }
    if (pl->ops[0].kind == PS_OP_ROOT_TMPFS)
        root_mnt = new_fs_mount("tmpfs", pl->ops[0].data, pl->ops[0].flags);
    else if (pl->ops[0].kind == PS_OP_ROOT_OVERLAY)
        root_mnt = overlay_root_mount(pl->ops[0].src, pl->staging);
    else
        errno = EINVAL;
    if (root_mnt < 0)
        return -1;
    first = 1;

    *step = PS_STEP_ATTACH_ROOT;
    if (move_mount(root_mnt, "", AT_FDCWD, pl->staging, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        return -1;
    close(root_mnt);
    root = open(pl->staging, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return -1;

    for (uint32_t i = first; i < pl->n_ops; i++) {
        *index = (int)i;
        if (run_op(root, &pl->ops[i], step) < 0)
            return -1;
    }
    *index = -1;
    drop_parent_cache();

    if (pl->hostname) {
        *step = PS_STEP_HOSTNAME;
        if (sethostname(pl->hostname, strlen(pl->hostname)) < 0)
            return -1;
    }
    if (pl->netns && init_finish_netns(step) < 0)
        return -1;

    /* enter the root and drop the old one */
    *step = PS_STEP_PIVOT_ROOT;
    if (fchdir(root) < 0 && chdir(pl->staging) < 0)
        return -1;
    close(root);
    if (chdir(pl->staging) < 0)
        return -1;
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        return -1;
    if (umount2(".", MNT_DETACH) < 0)
        return -1;
    if (chdir("/") < 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* runs                                                                */

struct run_request {
    struct ps_request_hdr h;
    const struct ps_rlimit *rlimits;
    const char *cwd;
    char **argv;
    char **envp;
    int chan, in, out, err;
    int cgroup_fds[PS_MAX_CGROUP_FDS];
    int n_cgroup_fds;
};

struct exec_status {
    volatile int step;
    volatile int err;
    volatile int index;   /* which rlimit, for PS_STEP_RLIMIT */
};

static const char *env_path(char **envp)
{
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            return *e + 5;
    return "/bin:/usr/bin";
}

/* Child of vfork in the supervisor: system calls only, then execve. */
static void exec_command(const struct run_request *r, struct exec_status *st)
{
    sigset_t none;
    sigemptyset(&none);

    /* the run's cgroups first: everything after is accounted there */
    st->step = PS_STEP_CGROUP;
    for (int i = 0; i < r->n_cgroup_fds; i++)
        if (pwrite(r->cgroup_fds[i], "0\n", 2, 0) != 2)
            goto fail;

    st->step = PS_STEP_STDIO;
    if (setsid() < 0)
        goto fail;
    if (dup2(r->in, 0) < 0 || dup2(r->out, 1) < 0 || dup2(r->err, 2) < 0)
        goto fail;
    if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0)
        goto fail;

    st->step = PS_STEP_RLIMIT;
    for (uint32_t i = 0; i < r->h.n_rlimits; i++) {
        struct rlimit rl = { r->rlimits[i].soft, r->rlimits[i].hard };
        st->index = (int)i;
        if (setrlimit((int)r->rlimits[i].resource, &rl) < 0)
            goto fail;
    }

    /* raw system calls: glibc's set*id wrappers may signal other threads */
    if (r->h.flags & PS_RUN_SETID) {
        st->step = PS_STEP_SETID;
        if (syscall(SYS_setgroups, 0, NULL) < 0 && errno != EPERM)
            goto fail;
        if (syscall(SYS_setresgid, r->h.gid, r->h.gid, r->h.gid) < 0 ||
            syscall(SYS_setresuid, r->h.uid, r->h.uid, r->h.uid) < 0)
            goto fail;
    }

    /* capabilities: permitted/effective within the set, inheritable empty;
     * the bounding set was dropped by the supervisor (drop_bounding_set), and
     * root's execve takes its set from it */
    if (r->h.flags & PS_RUN_CAPS) {
        struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
        struct __user_cap_data_struct data[2];
        st->step = PS_STEP_CAPS;
        if (syscall(SYS_capget, &hdr, data) < 0)
            goto fail;
        for (int i = 0; i < 2; i++) {
            uint32_t keep = (uint32_t)(r->h.cap_keep >> (32 * i));
            data[i].permitted &= keep;
            data[i].effective &= keep;
            data[i].inheritable = 0;
        }
        if (syscall(SYS_capset, &hdr, data) < 0)
            goto fail;
    }
    if (r->h.flags & PS_RUN_NO_NEW_PRIVS) {
        st->step = PS_STEP_CAPS;
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            goto fail;
    }

    st->step = PS_STEP_CHDIR;
    if (chdir(r->cwd) < 0)
        goto fail;
    umask(022);

    sigprocmask(SIG_SETMASK, &none, NULL);

    /* seccomp last: nothing of ours runs under the filter but execve */
    if (plan_filter.len) {
        st->step = PS_STEP_SECCOMP;
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &plan_filter) < 0)
            goto fail;
    }
    st->step = PS_STEP_EXEC;
    const char *file = r->argv[0];
    if (strchr(file, '/')) {
        execve(file, r->argv, r->envp);
        goto fail;
    }
    /* PATH search as execvp does it, without the /bin/sh fallback
     * (subprocess does not have it either) */
    {
        const char *p = env_path(r->envp);
        size_t flen = strlen(file);
        int saw_eacces = 0;
        int last = ENOENT;
        char buf[4096];
        while (1) {
            const char *colon = strchr(p, ':');
            size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
            if (dlen + flen + 2 <= sizeof buf) {
                size_t k = 0;
                if (dlen == 0) {
                    buf[k++] = '.';
                } else {
                    memcpy(buf, p, dlen);
                    k = dlen;
                }
                buf[k++] = '/';
                memcpy(buf + k, file, flen + 1);
                execve(buf, r->argv, r->envp);
                switch (errno) {
                case EACCES:
                    saw_eacces = 1;
                    /* fall through */
                case ENOENT:
                case ENOTDIR:
                case ESTALE:
                case ENODEV:
                case ETIMEDOUT:
                case ELOOP:
                case ENAMETOOLONG:
                    last = errno;
                    break;
                default:
                    goto fail;
                }
            }
            if (!colon)
                break;
            p = colon + 1;
        }
        errno = saw_eacces ? EACCES : last;
    }
fail:
    st->err = errno ? errno : EINVAL;
    _exit(127);
}

static void send_exit(int chan, pid_t pid, int status, const struct rusage *ru)
{
    struct ps_record r;
    memset(&r, 0, sizeof r);
    r.type = PS_REC_EXIT;
    r.pid = pid;
    r.status = status;
    r.utime_us = (int64_t)ru->ru_utime.tv_sec * 1000000 + ru->ru_utime.tv_usec;
    r.stime_us = (int64_t)ru->ru_stime.tv_sec * 1000000 + ru->ru_stime.tv_usec;
    r.maxrss_kb = ru->ru_maxrss;
    send_record(chan, &r);
}

/* A wait status (as wait4 gives it) from waitid's siginfo. */
static int wait_status(const siginfo_t *si)
{
    switch (si->si_code) {
    case CLD_EXITED:
        return (si->si_status & 0xff) << 8;
    case CLD_DUMPED:
        return (si->si_status & 0x7f) | 0x80;
    default:
        return si->si_status & 0x7f;
    }
}

static void sup_board_done(void);

/* The command's exit, reaped during a tree kill: its record waits until
 * the whole tree is gone (the caller's run or wait() returns then). */
struct held_exit {
    int held;
    int status;
    struct rusage ru;
};

/* Reap what is ready (or block for one when `block`).  Returns -1 when the
 * supervisor has no child left.  At the command's exit (not blocking):
 * reaped, and when it left nothing the supervisor back on the board, then
 * the record sent: the caller's next request finds it idle.  With `hold`,
 * the command's exit is kept there instead of sent. */
static int reap_children(pid_t cmd, int *cmd_reaped, int chan, int block,
                         struct held_exit *hold)
{
    if (!*cmd_reaped && !block && !hold) {
        siginfo_t si;
        struct rusage ru;
        memset(&si, 0, sizeof si);
        if (syscall(SYS_waitid, P_PID, cmd, &si, WEXITED | WNOHANG | __WALL, &ru) == 0 &&
            si.si_pid == cmd) {
            *cmd_reaped = 1;
            /* the command left nothing (the usual end of a run): the
             * supervisor is back on the board before the caller hears of
             * the exit, so that its next request finds it idle */
            siginfo_t more;
            memset(&more, 0, sizeof more);
            if (syscall(SYS_waitid, P_ALL, 0, &more, WEXITED | WNOHANG | WNOWAIT | __WALL,
                        NULL) < 0 && errno == ECHILD)
                sup_board_done();
            send_exit(chan, cmd, wait_status(&si), &ru);
        }
    }
    for (;;) {
        int status;
        struct rusage ru;
        pid_t w = wait4(-1, &status, __WALL | (block ? 0 : WNOHANG), &ru);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1; /* ECHILD */
        }
        if (w == 0)
            return 0;
        if (w == cmd && !*cmd_reaped) {
            *cmd_reaped = 1;
            if (hold) {
                hold->held = 1;
                hold->status = status;
                hold->ru = ru;
            } else {
                send_exit(chan, cmd, status, &ru);
            }
        }
        block = 0;
    }
}

/* SIGKILL every child listed in `children` (an fd of a /proc/.../children
 * file) for which skip() is false.  Returns how many were signalled, or -1
 * when the list cannot be read.  Init and supervisors are single-threaded:
 * the buffer is kept and grown as needed. */
static int kill_listed_children(int children, int (*skip)(pid_t))
{
    static char *buf;
    static size_t cap;
    size_t total = 0;
    ssize_t n;
    int killed = 0;

    if (!buf) {
        cap = 4096;
        buf = malloc(cap);
    }
    if (!buf || children < 0 || lseek(children, 0, SEEK_SET) != 0)
        return -1;
    while ((n = read(children, buf + total, cap - 1 - total)) > 0) {
        total += (size_t)n;
        if (total == cap - 1) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger)
                return -1;
            buf = bigger;
            cap *= 2;
        }
    }
    buf[total] = 0;
    for (char *p = buf; *p;) {
        char *endp;
        long pid = strtol(p, &endp, 10);
        if (endp == p || (*endp != ' ' && *endp != '\n' && *endp != 0))
            break;
        p = endp;
        if (!skip || !skip((pid_t)pid)) {
            kill((pid_t)pid, SIGKILL);
            killed++;
        }
    }
    return killed;
}

/* Kill every process of this run: the supervisor is their subreaper, so
 * each orphan comes back to it; repeat until nothing is left.  `children`
 * is /proc/self/task/<tid>/children, opened before the command started.
 * The command's exit record (when it had not exited yet) is sent once the
 * whole tree is gone: the command dies in the first round, what it started
 * comes back to the supervisor only then, and is killed in later rounds. */
static void kill_tree(int children, pid_t cmd, int *cmd_reaped, int chan)
{
    struct held_exit hold;
    int left;
    memset(&hold, 0, sizeof hold);
    do {
        if (kill_listed_children(children, NULL) < 0) {
            /* cannot list (no /proc?): kill what we know, reap what is
             * ready, and leave the rest to the run's cgroup or to close()
             * rather than block on it */
            if (!*cmd_reaped)
                kill(cmd, SIGKILL);
            while (!*cmd_reaped && reap_children(cmd, cmd_reaped, chan, 1, &hold) == 0)
                ;
            left = reap_children(cmd, cmd_reaped, chan, 0, &hold) == 0;
            break;
        }
        left = reap_children(cmd, cmd_reaped, chan, 1, &hold) == 0;
    } while (left);
    if (hold.held) {
        if (!left)
            sup_board_done(); /* nothing of the run is left */
        send_exit(chan, cmd, hold.status, &hold.ru);
    }
}

static int parse_request(char *buf, size_t size, struct run_request *r)
{
    const char *p = buf, *end = buf + size;
    if (size < sizeof r->h)
        return -1;
    memcpy(&r->h, p, sizeof r->h);
    p += sizeof r->h;
    if (r->h.type != PS_REQ_RUN)
        return 0;
    if (r->h.argc == 0 || r->h.argc > (1u << 20) || r->h.envc > (1u << 20) ||
        r->h.n_rlimits > 64)
        return -1;
    if ((size_t)(end - p) < r->h.n_rlimits * sizeof(struct ps_rlimit))
        return -1;
    r->rlimits = (const struct ps_rlimit *)p;
    p += r->h.n_rlimits * sizeof(struct ps_rlimit);
    r->argv = calloc(r->h.argc + 1, sizeof(char *));
    r->envp = calloc(r->h.envc + 1, sizeof(char *));
    if (!r->argv || !r->envp)
        return -1;
    const char *s = p;
    uint32_t want = 1 + r->h.argc + r->h.envc;
    for (uint32_t i = 0; i < want; i++) {
        const char *z = memchr(s, 0, (size_t)(end - s));
        if (!z)
            return -1;
        if (i == 0)
            r->cwd = s;
        else if (i <= r->h.argc)
            r->argv[i - 1] = (char *)s;
        else
            r->envp[i - 1 - r->h.argc] = (char *)s;
        s = z + 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* supervisors                                                          */
/*
 * A supervisor is a fork of init that serves runs, one at a time: it waits
 * on the run queue (fd 4, where Python sends run requests), takes one,
 * vforks and execs the command, reports the exit on the run's record pipe,
 * reaps what the command left (it is their subreaper), and then goes back
 * to the queue.  Init forks supervisors on demand (a request waits and none
 * is idle) and keeps one in reserve once runs come one after another
 * (not under a pids limit or an nproc rlimit: it would take a process from
 * the commands; see max_idle()).
 *
 * What a supervisor is doing is written on the board, a page init and
 * its supervisors share: per supervisor, whether it waits on the queue and
 * the run it serves (the idle count is counted there, never kept apart, so
 * that no death between two stores can make it drift).  A run does not wake
 * init: a supervisor rings init's doorbell (an eventfd) only when it took
 * the last idle place (init then watches the queue itself, and keeps a
 * spare) or gave the first one back.  A supervisor that waits beyond
 * max_idle() idle ones leaves after SURPLUS_IDLE_MS without a run: bursts
 * keep their supervisors, a calm sandbox gets back to two (one).  Init reads the
 * board to route a signal request to the run's supervisor (over their
 * private socketpair, which also brings the early supervisor its set-up); a
 * tree kill for a run no supervisor has taken yet waits on the board, where
 * the supervisor that takes the run finds it.  Commands can reach none of
 * this (no fd, no mapping: execve drops it).
 */

enum { SUP_SIGNAL = 1, SUP_GO = 3, SUP_CONFIG = 4 }; /* init -> supervisor */
#define SIGREQ_TREE 0xffffffffu                   /* "what": kill the tree */
#define MAX_IDLE_SUPS 2
#define SURPLUS_IDLE_MS 1000
#define MAX_SUPS 4096          /* supervisors at once (board slots) */
#define MAX_PENDING_KILLS 64

struct board {
    _Atomic int n_slots;           /* slots in use are below this (init's) */
    _Atomic int served;            /* a run has ended: runs come in turn */
    _Atomic int no_spare;          /* a run had an nproc rlimit (see max_idle) */
    _Atomic int kills_waiting;     /* pending[] has been used */
    _Atomic uint32_t pending[MAX_PENDING_KILLS]; /* tree kills for untaken runs */
    struct {
        _Atomic uint32_t run_id;   /* the run served, 0 when none */
        _Atomic uint32_t last_run; /* the last run it finished */
        _Atomic int idle;          /* waiting on the queue */
    } slot[MAX_SUPS];
};
/* (shared between processes: only lock-free atomics work there) */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "lock-free atomic int");
static struct board *board;
static int doorbell = -1;          /* eventfd, init reads it */
static int my_slot = -1;           /* in a supervisor: its place on the board */

/* No spare and one idle supervisor kept, not two, when processes are
 * counted against the commands: a pids limit (the plan says so) or an
 * nproc rlimit (counts the uid's processes, init's and the supervisors'
 * too; the sandbox's and a run's own come in the request, and the
 * supervisor that takes it says so on the board). */
static int no_spare(void)
{
    return (plan_flags & PS_PLAN_NO_SPARE) || atomic_load(&board->no_spare);
}

static int max_idle(void)
{
    return no_spare() ? 1 : MAX_IDLE_SUPS;
}

/* Supervisors waiting on the queue now. */
static int idle_count(void)
{
    int n = atomic_load(&board->n_slots), idle = 0;
    for (int i = 0; i < n; i++)
        idle += atomic_load(&board->slot[i].idle);
    return idle;
}

struct sup_msg {
    uint32_t kind;
    uint32_t run_id;
    uint32_t what;   /* SUP_SIGNAL: a signal number, or SIGREQ_TREE */
    uint32_t reserved;
};

static int sig_fd = -1;
/* init's own children list (sweep_unowned), opened in the finished
 * container before READY, as the supervisors open theirs: a command that
 * could mount over /proc cannot hide its orphans from the sweep */
static int init_children = -1;

/* In a supervisor, once: the commands' bounding set, ambient cleared.  The
 * supervisor keeps its own permitted set (it may raise rlimits, set ids);
 * only what an execve can gain is limited. */
static int drop_bounding_set(void)
{
    if (!(plan_flags & PS_PLAN_CAPS))
        return 0;
    for (unsigned long cap = 0; cap < 64; cap++) {
        if (plan_cap_bound & (1ULL << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL)
                break; /* past the kernel's last capability */
            return -1;
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return -1;
    return 0;
}

/* A supervisor waits for `fd` or for a message from init; it exits when
 * init is gone.  Returns the revents of fd and of sock. */
static void wait_fd_or_init(int fd, int sock, short *fd_ev, short *sock_ev)
{
    struct pollfd pfd[2] = {
        { .fd = fd, .events = POLLIN },
        { .fd = sock, .events = POLLIN },
    };
    while (poll(pfd, 2, -1) < 0)
        ;
    if (pfd[1].revents & (POLLHUP | POLLERR))
        _exit(0); /* init is gone: the sandbox is closing */
    *fd_ev = pfd[0].revents;
    *sock_ev = pfd[1].revents;
}

/* init's doorbell: it looks at the board when it wakes */
static void ring_doorbell(void)
{
    uint64_t one = 1;
    while (write(doorbell, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

/* In a supervisor that has taken a request (run_id 0: an unusable one):
 * off the idle places (the last one to go rings: init watches the queue
 * from now on), onto its run.  Returns 1 when a tree kill waits for it. */
static uint32_t my_run;    /* in a supervisor: the run it took */
static int my_run_open;    /* ...and it is not back on the board yet */

static int sup_board_take(uint32_t run_id)
{
    my_run = run_id;
    my_run_open = 1;
    atomic_store(&board->slot[my_slot].run_id, run_id);
    atomic_store(&board->slot[my_slot].idle, 0);
    /* (two taking at once: the later of the two sees both places gone) */
    if (idle_count() == 0)
        ring_doorbell();
    /* (after the run_id store: init stores a pending kill, then looks for
     * the run in the slots; one of the two sees the other) */
    if (run_id == 0 || !atomic_load(&board->kills_waiting))
        return 0;
    for (int i = 0; i < MAX_PENDING_KILLS; i++) {
        uint32_t want = run_id;
        if (atomic_load(&board->pending[i]) == run_id &&
            atomic_compare_exchange_strong(&board->pending[i], &want, 0))
            return 1;
    }
    return 0;
}

/* The run is over: back on an idle place (the first one back rings, so
 * that init stops watching the queue).  Once per run. */
static void sup_board_done(void)
{
    if (!my_run_open)
        return;
    my_run_open = 0;
    atomic_store(&board->slot[my_slot].last_run, my_run);
    atomic_store(&board->slot[my_slot].run_id, 0);
    if (my_run)
        atomic_store(&board->served, 1);
    atomic_store(&board->slot[my_slot].idle, 1);
    if (idle_count() == 1)
        ring_doorbell();
}

/* An idle supervisor beyond max_idle() after SURPLUS_IDLE_MS without a
 * run: it leaves if as many others still wait, and no request does (a
 * timeout takes no wakeup from the others; on older kernels an exclusive
 * wakeup could come with the timeout: the request is served first). */
static void sup_leave_if_surplus(void)
{
    char c;
    atomic_store(&board->slot[my_slot].idle, 0);
    if (idle_count() >= max_idle() && recv(RUNQ_FD, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0)
        _exit(0); /* init reaps it and frees the slot */
    atomic_store(&board->slot[my_slot].idle, 1);
}

/* Serve one run.  Returns when the command and everything it left are
 * gone (or have been killed).  `events`: a signalfd for SIGCHLD. */
static void serve_run(struct run_request *r, int children, int sock, int events,
                      int kill_waiting)
{
    struct exec_status st = { 0, 0, -1 };
    pid_t cmd;
    int cmd_reaped = 0;

    cmd = vfork();
    if (cmd == 0) {
        exec_command(r, &st);
        _exit(127);
    }
    int vfork_errno = errno;
    close(r->in);
    close(r->out);
    close(r->err);
    for (int i = 0; i < r->n_cgroup_fds; i++)
        close(r->cgroup_fds[i]);
    /* (a run that never started is over: back on the board before the
     * caller hears of it, as after an exit) */
    if (cmd < 0) {
        sup_board_done();
        send_simple(r->chan, PS_REC_SPAWN_FAILED, PS_STEP_FORK, vfork_errno, -1, 0);
        return;
    }
    if (st.err) {
        int status;
        while (waitpid(cmd, &status, __WALL) < 0 && errno == EINTR)
            ;
        sup_board_done();
        send_simple(r->chan, PS_REC_SPAWN_FAILED, st.step, st.err, st.index, 0);
        return;
    }
    /* run() does not need the pid before the exit: one wakeup less */
    if (!(r->h.flags & PS_RUN_QUIET_SPAWN))
        send_simple(r->chan, PS_REC_SPAWNED, 0, 0, -1, cmd);
    if (kill_waiting) {
        /* its tree kill came before it was taken */
        kill_tree(children, cmd, &cmd_reaped, r->chan);
        return;
    }

    for (;;) {
        short ev_events, ev_sock;
        wait_fd_or_init(events, sock, &ev_events, &ev_sock);
        if (ev_sock & POLLIN) {
            struct sup_msg m;
            while (recv(sock, &m, sizeof m, MSG_DONTWAIT) == (ssize_t)sizeof m) {
                /* a late request for the last run: ignored */
                if (m.kind != SUP_SIGNAL || m.run_id != r->h.run_id)
                    continue;
                if (m.what == SIGREQ_TREE) {
                    kill_tree(children, cmd, &cmd_reaped, r->chan);
                    return;
                }
                if (!cmd_reaped && m.what > 0)
                    kill(cmd, (int)m.what);
            }
        }
        if (ev_events & POLLIN) {
            struct signalfd_siginfo si;
            while (read(events, &si, sizeof si) > 0)
                ;
            if (reap_children(cmd, &cmd_reaped, r->chan, 0, NULL) < 0)
                return; /* nothing of the run is left */
        }
    }
}

/* Take one run request from the shared queue, if one is there: a single
 * receive into a buffer of the largest size a request may have (several
 * supervisors read the queue: no peek-then-read).  Returns its size, -1
 * when there is none, -2 when it was too large, -3 at end of queue. */
static ssize_t take_request(char *buf, size_t size, int *fds, int *n_fds)
{
    union request_cbuf cbuf;
    struct iovec iov;
    struct msghdr msg;
    ssize_t n;

    *n_fds = 0;
    set_msg(&msg, &iov, buf, size - 1, cbuf.b, sizeof cbuf.b);
    do {
        n = recvmsg(RUNQ_FD, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    if (n == 0 && msg.msg_controllen == 0)
        return -3; /* end of the queue: the sandbox is closing */
    collect_fds(&msg, fds, 4 + PS_MAX_CGROUP_FDS, n_fds);
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        errno = EMSGSIZE;
        return -2; /* taken, but unusable */
    }
    buf[n] = 0;
    return n;
}

/* An idle supervisor waits for the run queue or for init.  All idle
 * supervisors wait on the one queue: with EPOLLEXCLUSIVE a request wakes one
 * of them, not all (each woken loser would burn a CPU slice per run). */
static int make_idle_wait(int sock)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev;
    if (ep < 0)
        return -1;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLEXCLUSIVE;
    ev.data.fd = RUNQ_FD;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, RUNQ_FD, &ev) == 0) {
        ev.events = EPOLLIN;
        ev.data.fd = sock;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, sock, &ev) == 0)
            return ep;
    }
    close(ep);
    return -1;
}

/* Returns 0 when timeout_ms (-1: none) passed without an event. */
static int wait_for_request(int ep, int sock, short *queue_ev, short *sock_ev,
                            int timeout_ms)
{
    struct epoll_event evs[2];
    int n;
    if (ep < 0) {
        wait_fd_or_init(RUNQ_FD, sock, queue_ev, sock_ev);
        return 1;
    }
    while ((n = epoll_wait(ep, evs, 2, timeout_ms)) < 0)
        ;
    *queue_ev = *sock_ev = 0;
    for (int i = 0; i < n; i++) {
        if (evs[i].data.fd == RUNQ_FD) {
            *queue_ev = POLLIN;
        } else {
            if (evs[i].events & (EPOLLHUP | EPOLLERR))
                _exit(0); /* init is gone: the sandbox is closing */
            *sock_ev = POLLIN;
        }
    }
    return n;
}

/* A supervisor's own set-up, before it serves: nothing here depends on the
 * finished container (the early supervisor does it while init builds). */
struct sup_setup {
    int events;      /* signalfd for SIGCHLD */
    int cap_err;     /* the bounding set could not be dropped */
    char *buf;       /* one request */
};

static void supervisor_prepare(struct sup_setup *su)
{
    sigset_t set;

    close(CTRL_FD);
    if (sig_fd >= 0)
        close(sig_fd);
    if (init_children >= 0)
        close(init_children);
    prctl(PR_SET_NAME, "pysandbox-run");
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != 1)
        _exit(0); /* init died before the prctl */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    su->cap_err = drop_bounding_set() < 0 ? errno : 0;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    su->events = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    su->buf = malloc(PS_MAX_REQUEST + 1);
    if (su->events < 0 || !su->buf)
        _exit(0);
    {
        /* take the copy-on-write faults of the stack (the vfork child runs
         * on it) now, not during the first run */
        volatile char stack[64 * 1024];
        for (size_t i = 0; i < sizeof stack; i += 4096)
            stack[i] = 0;
        memset(su->buf, 0, 8192);
    }
}

/* The list of this supervisor's children (kill_tree reads it), opened in
 * the finished container, before any command runs: a command that could
 * remount /proc cannot hide its processes from it. */
static int open_children_list(void)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
    return open(path, O_RDONLY | O_CLOEXEC);
}

static void supervisor_serve(int sock, struct sup_setup *su, int children);

static void supervisor_main(int sock)
{
    struct sup_setup su;
    supervisor_prepare(&su);
    supervisor_serve(sock, &su, open_children_list());
}

/* The first supervisor, forked as soon as init starts: it makes the network
 * namespace (when init's argv asks for one) and its own set-up on
 * another CPU while init reads the plan and builds the mounts, then waits
 * for init's go: by then the root it shares with init has been pivoted
 * (pivot_root moves every process of the mount namespace that was at the
 * old root; the working directory it changes here).  What a supervisor
 * forked later inherits from init, it gets here: what it needs of the plan
 * (init sends it once parsed), the seccomp filter (inherited only at fork;
 * installed before the go) and the CPUs init was allowed (it ran off init's
 * until the go).  A failure here ends it; init forks a supervisor from
 * itself when a run waits. */
struct early_sup {
    cpu_set_t all;      /* init's CPUs */
    cpu_set_t others;   /* without the one init was on: init pins the early
                         * supervisor to these until the go */
    int netns;          /* make the network namespace */
};

/* init -> early supervisor, once the plan is parsed; the filter follows */
struct sup_config {
    uint32_t kind;         /* SUP_CONFIG */
    uint32_t flags;
    uint64_t cap_bound;
    uint32_t filter_len;   /* instructions */
    uint32_t reserved;
};

static void early_take_config(int sock)
{
    static union {
        struct sup_config c;
        char b[sizeof(struct sup_config) + BPF_MAXINSNS * sizeof(struct sock_filter)];
    } in;
    ssize_t n;
    do
        n = recv(sock, &in, sizeof in, 0);
    while (n < 0 && errno == EINTR);
    if (n < (ssize_t)sizeof in.c || in.c.kind != SUP_CONFIG || in.c.filter_len > BPF_MAXINSNS ||
        (size_t)n != sizeof in.c + in.c.filter_len * sizeof(struct sock_filter))
        _exit(0); /* init is gone (setup failed), or not a config */
    plan_flags = in.c.flags;
    plan_cap_bound = in.c.cap_bound;
    plan_filter.len = (unsigned short)in.c.filter_len;
    plan_filter.filter = (struct sock_filter *)(in.b + sizeof in.c);
}

static void early_supervisor_main(int sock, const struct early_sup *e)
{
    struct sup_setup su;
    struct sup_msg m;
    ssize_t n;

    if (e->netns)
        early_make_netns(sock);
    early_take_config(sock);
    supervisor_prepare(&su);
    /* the filter now, off init's path: the default one (the only one
     * installed in init) allows everything below */
    if ((plan_flags & PS_PLAN_FILTER_IN_INIT) && plan_filter.len) {
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &plan_filter) < 0)
            _exit(0);
        plan_filter.len = 0;
    }
    do
        n = recv(sock, &m, sizeof m, 0);
    while ((n < 0 && errno == EINTR) || (n == (ssize_t)sizeof m && m.kind != SUP_GO));
    if (n != (ssize_t)sizeof m)
        _exit(0); /* init is gone: setup failed */
    /* the pivot moved the root, not the working directory: that was
     * Python's, on the host, and it would keep the old tree alive */
    if (chdir("/") < 0)
        _exit(0);
    if (sched_setaffinity(0, sizeof e->all, &e->all) < 0)
        _exit(0);
    supervisor_serve(sock, &su, open_children_list());
}

static void supervisor_serve(int sock, struct sup_setup *su, int children)
{
    char *buf = su->buf;
    int events = su->events, cap_err = su->cap_err;

    int ep = make_idle_wait(sock);
    for (;;) {
        int fds[4 + PS_MAX_CGROUP_FDS], n_fds = 0;
        struct run_request r;
        short ev_queue, ev_sock;
        int timeout = idle_count() > max_idle() ? SURPLUS_IDLE_MS : -1;
        if (wait_for_request(ep, sock, &ev_queue, &ev_sock, timeout) == 0) {
            sup_leave_if_surplus();
            continue;
        }
        if (ev_sock & POLLIN) {
            /* a late signal request for a run already over: dropped */
            struct sup_msg m;
            while (recv(sock, &m, sizeof m, MSG_DONTWAIT) > 0)
                ;
        }
        if (!(ev_queue & POLLIN))
            continue;
        ssize_t n = take_request(buf, PS_MAX_REQUEST + 1, fds, &n_fds);
        if (n == -3)
            _exit(0); /* the sandbox is closing (else poll() would say so again and again) */
        if (n == -1)
            continue; /* another supervisor took it */
        memset(&r, 0, sizeof r);
        uint32_t run_id = 0;
        int err = n == -2 ? EMSGSIZE : EINVAL;
        if (n >= 0 && n_fds >= 4 && parse_request(buf, (size_t)n, &r) == 0 &&
            r.h.type == PS_REQ_RUN)
            run_id = r.h.run_id;
        for (uint32_t i = 0; run_id && i < r.h.n_rlimits; i++)
            if (r.rlimits[i].resource == RLIMIT_NPROC)
                atomic_store(&board->no_spare, 1); /* (see max_idle) */
        int kill_waiting = sup_board_take(run_id);
        if (run_id == 0 || cap_err) {
            sup_board_done();
            if (n_fds >= 1)
                send_simple(fds[0], PS_REC_SPAWN_FAILED,
                            cap_err ? PS_STEP_CAPS : PS_STEP_FORK,
                            cap_err ? cap_err : err, -1, 0);
            for (int i = 0; i < n_fds; i++)
                close(fds[i]);
        } else {
            r.chan = fds[0];
            r.in = fds[1];
            r.out = fds[2];
            r.err = fds[3];
            r.n_cgroup_fds = n_fds - 4;
            memcpy(r.cgroup_fds, fds + 4, sizeof(int) * (size_t)r.n_cgroup_fds);
            serve_run(&r, children, sock, events, kill_waiting);
            close(r.chan);
        }
        free(r.argv);
        free(r.envp);
        sup_board_done(); /* (unless done at the command's exit) */
    }
}

/* init's view of its supervisors: what each does is on the board */
struct sup {
    pid_t pid;
    int sock;           /* init's end of the supervisor's socketpair */
    int slot;           /* on the board */
    struct sup *next;
};
static struct sup *sups;
static int sup_count;
static unsigned char slot_used[MAX_SUPS];

/* where init stores the next tree kill for an untaken run (the oldest
 * goes when all are in use) */
static unsigned next_pending;

/* A free slot (the board's n_slots raised past it), or -1. */
static int take_slot(void)
{
    for (int i = 0; i < MAX_SUPS; i++) {
        if (!slot_used[i]) {
            slot_used[i] = 1;
            if (i >= atomic_load(&board->n_slots))
                atomic_store(&board->n_slots, i + 1);
            return i;
        }
    }
    return -1;
}

static void free_slot(int slot)
{
    atomic_store(&board->slot[slot].idle, 0);
    atomic_store(&board->slot[slot].run_id, 0);
    slot_used[slot] = 0;
    int n = atomic_load(&board->n_slots);
    while (n > 0 && !slot_used[n - 1])
        n--;
    atomic_store(&board->n_slots, n);
}

/* Fork a supervisor; `early`: the first one, forked before the plan is read
 * (see early_supervisor_main).  It starts idle. */
static int make_supervisor_as(const struct early_sup *early)
{
    int sv[2];
    pid_t p;
    int slot = take_slot();
    if (slot < 0) {
        errno = EAGAIN;
        return -1;
    }
    struct sup *s = malloc(sizeof *s);
    if (!s)
        goto fail;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        goto fail;
    atomic_store(&board->slot[slot].run_id, 0);
    atomic_store(&board->slot[slot].idle, 1);
    p = fork();
    if (p == 0) {
        my_slot = slot;
        close(sv[0]);
        for (struct sup *o = sups; o; o = o->next)
            close(o->sock);
        if (early)
            early_supervisor_main(sv[1], early);
        supervisor_main(sv[1]);
    }
    close(sv[1]);
    if (p < 0) {
        int saved = errno;
        close(sv[0]);
        errno = saved;
        goto fail;
    }
    s->pid = p;
    s->sock = sv[0];
    s->slot = slot;
    s->next = sups;
    sups = s;
    sup_count++;
    return 0;
fail:;
    int saved = errno;
    free(s);
    free_slot(slot);
    errno = saved;
    return -1;
}

static int make_supervisor(void)
{
    return make_supervisor_as(NULL);
}

/* The first supervisor, at once (see early_supervisor_main); only worth it
 * with a second CPU to run on, else it is forked after READY and the
 * network namespace is made in line by init_finish_netns(). */
static void init_start_early_supervisor(int netns)
{
    static struct early_sup e;
    if (sched_getaffinity(0, sizeof e.all, &e.all) < 0 || CPU_COUNT(&e.all) < 2)
        return;
    int cpu = sched_getcpu();
    e.others = e.all;
    if (cpu >= 0 && cpu < CPU_SETSIZE)
        CPU_CLR(cpu, &e.others);
    if (CPU_COUNT(&e.others) == 0)
        e.others = e.all;
    e.netns = netns;
    if (make_supervisor_as(&e) < 0)
        return;
    early_sup_sock = sups->sock;
    /* off this CPU: left to the scheduler, it queues behind init (and it
     * cannot move itself before it runs) */
    sched_setaffinity(sups->pid, sizeof e.others, &e.others);
}

static void drop_early_supervisor(void);

/* The plan is parsed: what the early supervisor needs of it.  One that
 * cannot be told is dropped: init makes the network namespace itself and
 * forks a supervisor when a run waits. */
static void init_configure_early_supervisor(void)
{
    struct sup_config c = { SUP_CONFIG, plan_flags, plan_cap_bound, plan_filter.len, 0 };
    struct iovec iov[2] = {
        { &c, sizeof c },
        { plan_filter.filter, plan_filter.len * sizeof(struct sock_filter) },
    };
    struct msghdr msg;
    ssize_t n;
    if (early_sup_sock < 0)
        return;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = plan_filter.len ? 2 : 1;
    do
        n = sendmsg(early_sup_sock, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)(sizeof c + iov[1].iov_len))
        drop_early_supervisor();
}

/* An early supervisor that cannot be told what to do would wait for ever
 * while init counted it idle: killed (reaped and replaced later, when a
 * run waits), and forgotten as the early one. */
static void drop_early_supervisor(void)
{
    for (struct sup *s = sups; s; s = s->next)
        if (s->sock == early_sup_sock)
            kill(s->pid, SIGKILL);
    early_sup_sock = -1;
}

/* The build is done (root pivoted, network joined): the early supervisor
 * may serve. */
static void init_release_early_supervisor(void)
{
    if (early_sup_sock < 0)
        return;
    struct sup_msg m = { SUP_GO, 0, 0, 0 };
    ssize_t n;
    do
        n = send(early_sup_sock, &m, sizeof m, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof m)
        drop_early_supervisor();
    early_sup_sock = -1; /* released (or dropped): no longer the early one */
}

static struct sup *find_sup(pid_t pid)
{
    for (struct sup *s = sups; s; s = s->next)
        if (s->pid == pid)
            return s;
    return NULL;
}

static int is_supervisor(pid_t pid)
{
    return find_sup(pid) != NULL;
}

/* An idle supervisor died (one killed from inside may have taken a
 * request's wakeup with it: one idle supervisor is woken per request). */
static int lost_idle_sup;

/* a supervisor is gone (reaped): forget it, and its place on the board */
static void drop_sup(pid_t pid)
{
    for (struct sup **p = &sups; *p; p = &(*p)->next) {
        if ((*p)->pid == pid) {
            struct sup *dead = *p;
            *p = dead->next;
            if (atomic_load(&board->slot[dead->slot].idle))
                lost_idle_sup = 1; /* (one that leaves clears its flag first) */
            free_slot(dead->slot);
            sup_count--;
            close(dead->sock);
            free(dead);
            return;
        }
    }
}

static int sup_busy(const struct sup *s)
{
    return atomic_load(&board->slot[s->slot].run_id) != 0;
}

static void send_to_sup(struct sup *s, uint32_t kind, uint32_t run_id, uint32_t what)
{
    struct sup_msg m = { kind, run_id, what, 0 };
    send(s->sock, &m, sizeof m, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Send a signal request to the supervisor serving run_id; 0: none does. */
static int signal_run(uint32_t run_id, uint32_t what)
{
    int found = 0;
    for (struct sup *s = sups; s; s = s->next) {
        if (atomic_load(&board->slot[s->slot].run_id) == run_id) {
            found = 1;
            send_to_sup(s, SUP_SIGNAL, run_id, what);
        }
    }
    return found;
}

/* A tree kill for a run no supervisor serves: left on the board for the
 * supervisor that takes it (sup_board_take), unless one took it meanwhile. */
static void leave_tree_kill(uint32_t run_id)
{
    /* a kill that came after its run was over (a timeout that crossed the
     * exit, kill_tree() after wait()) would wait for ever: a supervisor
     * that served the run says so */
    int n = atomic_load(&board->n_slots);
    for (int k = 0; k < n; k++) /* (a freed slot keeps its last run) */
        if (atomic_load(&board->slot[k].last_run) == run_id)
            return;
    unsigned i = next_pending++ % MAX_PENDING_KILLS;
    atomic_store(&board->pending[i], run_id);
    atomic_store(&board->kills_waiting, 1);
    /* (after the stores: see sup_board_take) */
    uint32_t want = run_id;
    for (struct sup *s = sups; s; s = s->next) {
        if (atomic_load(&board->slot[s->slot].run_id) == run_id) {
            /* taken meanwhile: whoever clears the entry delivers it */
            if (atomic_compare_exchange_strong(&board->pending[i], &want, 0))
                send_to_sup(s, SUP_SIGNAL, run_id, SIGREQ_TREE);
            return;
        }
    }
}

/* No supervisor could be forked: answer a queued run request with the
 * error (if an idle one took it meanwhile, nothing is waiting: fine). */
static void fail_queued_run(int err)
{
    static char buf[PS_MAX_REQUEST + 1];
    int fds[4 + PS_MAX_CGROUP_FDS], n_fds = 0;
    ssize_t n = take_request(buf, sizeof buf, fds, &n_fds);
    if (n != -1 && n_fds >= 1)
        send_simple(fds[0], PS_REC_SPAWN_FAILED, PS_STEP_FORK, err, -1, 0);
    for (int i = 0; i < n_fds; i++)
        close(fds[i]);
}

static void sweep_unowned(void);

static void handle_request(void)
{
    char *buf = NULL;
    int fds[4], n_fds = 0;
    struct run_request r;
    ssize_t n = recv_message(CTRL_FD, &buf, fds, 4, &n_fds);

    if (n <= 0) {
        if (n == 0 || (errno != EINTR && errno != EAGAIN))
            _exit(0); /* parent gone: the kernel ends the whole sandbox */
        return;
    }
    memset(&r, 0, sizeof r);
    if (parse_request(buf, (size_t)n, &r) == 0 && r.h.type == PS_REQ_SIGNAL) {
        int tree = (r.h.flags & PS_SIGNAL_TREE) != 0;
        if (r.h.run_id != 0 && !signal_run(r.h.run_id, tree ? SIGREQ_TREE : r.h.sig) &&
            tree) {
            /* not taken yet (delivered when it is), or its supervisor is
             * gone (kill what it left) */
            leave_tree_kill(r.h.run_id);
            sweep_unowned();
        }
    }
    for (int i = 0; i < n_fds; i++)
        close(fds[i]);
    free(r.argv);
    free(r.envp);
    free(buf);
}

/* Every command descends from a supervisor, which is its subreaper, so init
 * adopts a command's process only when its supervisor was killed from
 * inside.  Such a run has lost its tracking: kill every process that no
 * live supervisor owns (and what they leave behind), until none is left. */
static void sweep_unowned(void)
{
    int children = init_children >= 0
        ? init_children : open("/proc/self/task/1/children", O_RDONLY | O_CLOEXEC);
    for (int round = 0; round < 10000; round++) {
        int killed = kill_listed_children(children, is_supervisor);
        if (killed <= 0)
            break;
        /* reap what died (supervisors too, when they die meanwhile) */
        while (killed > 0) {
            int status;
            pid_t w = waitpid(-1, &status, __WALL);
            if (w <= 0)
                break;
            if (is_supervisor(w)) {
                drop_sup(w);
                continue;
            }
            killed--;
        }
    }
    if (children >= 0 && children != init_children)
        close(children);
}

/* Is a run request waiting on the queue?  Notes the end of the queue (the
 * parent closed it): nothing more will come, so init stops watching it
 * (else it would fork supervisor after supervisor, each reading the end). */
static int runq_ended;

static int request_waiting(void)
{
    char c;
    ssize_t n = recv(RUNQ_FD, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        runq_ended = 1;
    return n >= 0 && !runq_ended;
}

static void reap_orphans(int sfd)
{
    struct signalfd_siginfo si;
    int sweep = 0;
    while (read(sfd, &si, sizeof si) > 0)
        ;
    for (;;) {
        int status;
        pid_t w = waitpid(-1, &status, WNOHANG | WUNTRACED | __WALL);
        if (w <= 0)
            break;
        struct sup *s = find_sup(w);
        if (WIFSTOPPED(status)) {
            /* only a command stops a supervisor: it loses it */
            if (s)
                kill(w, SIGKILL);
            continue;
        }
        if (s) {
            if (WIFSIGNALED(status) && sup_busy(s))
                sweep = 1;
            drop_sup(w);
        }
    }
    if (sweep)
        sweep_unowned();
}

/* init's argv[1] "netns": the sandbox gets its own network namespace (the
 * first supervisor starts making it before the plan is read). */
int main(int argc, char **argv)
{
    struct plan pl;
    char *buf = NULL;
    int want_netns = argc > 1 && strcmp(argv[1], "netns") == 0;
    int fds[1], n_fds, step = PS_STEP_READ_PLAN, index = -1;
    sigset_t mask;
    ssize_t n;

    /* (signals Python ignored were set back to default before the exec) */
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGPIPE);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    prctl(PR_SET_DUMPABLE, 0);
    umask(0); /* modes in the plan are exact; commands get 022 */
    prctl(PR_SET_NAME, "pysandbox-init");

    /* a new time namespace is for init's children: made before any (a
     * kernel without time namespaces: none) */
    if (unshare(CLONE_NEWTIME) < 0 && errno != EINVAL) {
        send_simple(CTRL_FD, PS_REC_SETUP_FAILED, PS_STEP_TIME_NS, errno, -1, 0);
        _exit(1);
    }
    /* the supervisors' board and init's doorbell, before any is forked */
    board = mmap(NULL, sizeof *board, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (board == MAP_FAILED ||
        (doorbell = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        send_simple(CTRL_FD, PS_REC_SETUP_FAILED, PS_STEP_BOARD, errno, -1, 0);
        _exit(1);
    }
    /* the first supervisor, working while the plan is read and built */
    init_start_early_supervisor(want_netns);

    /* (the plan is usually waiting already: the parent queues it before
     * the clone) */
    n = recv_message(CTRL_FD, &buf, fds, 1, &n_fds);
    if (n <= 0)
        _exit(0);
    memset(&pl, 0, sizeof pl);
    pl.dev_fd = n_fds == 1 ? fds[0] : -1;
    if (parse_plan(buf, (size_t)n, &pl) < 0) {
        send_simple(CTRL_FD, PS_REC_SETUP_FAILED, PS_STEP_READ_PLAN, EINVAL, -1, 0);
        _exit(1);
    }
    pl.netns = want_netns;
    /* what every supervisor and command needs */
    plan_flags = pl.flags;
    plan_cap_bound = pl.cap_bound;
    plan_filter = pl.filter;
    init_configure_early_supervisor();
    if (build_container(&pl, &step, &index) < 0) {
        send_simple(CTRL_FD, PS_REC_SETUP_FAILED, step, errno, index, 0);
        _exit(1);
    }
    for (uint32_t i = 0; i < pl.n_ops; i++)
        if (pl.ops[i].src_fd >= 0)
            close(pl.ops[i].src_fd);
    if (pl.dev_fd >= 0)
        close(pl.dev_fd);
    free(pl.ops);
    free(buf);

    init_children = open("/proc/self/task/1/children", O_RDONLY | O_CLOEXEC);
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    sig_fd = sfd;
    if (sfd < 0) {
        send_simple(CTRL_FD, PS_REC_SETUP_FAILED, PS_STEP_SIGNALS, errno, -1, 0);
        _exit(1);
    }
    /* The early supervisor (it has its own filter) may serve now: a run
     * queued during the build (pysandbox.run) starts while init installs
     * its filter, once for the whole sandbox (supervisors forked from here
     * on inherit it; attaching it per command costs more than the rest of
     * a run's setup).  A failure is still reported before READY (the
     * queued run may have started meanwhile, under the early supervisor's
     * copy of the filter; init's exit ends it). */
    int had_early_sup = sup_count > 0;
    init_release_early_supervisor();
    if ((plan_flags & PS_PLAN_FILTER_IN_INIT) && plan_filter.len) {
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &plan_filter) < 0) {
            send_simple(CTRL_FD, PS_REC_SETUP_FAILED, PS_STEP_SECCOMP, errno, -1, 0);
            _exit(1);
        }
        plan_filter.len = 0; /* inherited, not installed again per run */
    }
    send_simple(CTRL_FD, PS_REC_READY, 0, 0, -1, getpid());
    if (!had_early_sup)
        make_supervisor(); /* the first, while the parent reads READY */

    for (;;) {
        /* supervisors are forked on demand: when a run request waits and
         * none is idle (a one-shot sandbox forks none but the first), and
         * one in reserve when runs come in turn: a run then takes and gives
         * back an idle place without waking init */
        int idle = idle_count();
        struct pollfd pfd[4] = {
            { .fd = CTRL_FD, .events = POLLIN },
            { .fd = sfd, .events = POLLIN },
            { .fd = idle > 0 || runq_ended ? -1 : RUNQ_FD, .events = POLLIN },
            { .fd = doorbell, .events = POLLIN },
        };
        if (poll(pfd, 4, -1) > 0) {
            if (pfd[3].revents & POLLIN) {
                uint64_t rings;
                if (read(doorbell, &rings, sizeof rings) < 0) { /* (EAGAIN: read already) */ }
                if (idle_count() == 0 && atomic_load(&board->served) && !runq_ended &&
                    !no_spare())
                    make_supervisor(); /* the spare (failing: forked on demand) */
            }
            if (pfd[1].revents)
                reap_orphans(sfd);
            if ((pfd[2].revents & POLLIN) && idle_count() == 0 &&
                request_waiting() && make_supervisor() < 0)
                fail_queued_run(errno ? errno : EAGAIN);
            if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))
                handle_request();
        }
        /* an idle supervisor died (reaped above or in a sweep): if a
         * request's wakeup went with it, the request waits with the others
         * asleep; a new supervisor sees it as soon as it waits */
        if (lost_idle_sup) {
            lost_idle_sup = 0;
            if (idle_count() > 0 && request_waiting())
                make_supervisor();
        }
    }
}
