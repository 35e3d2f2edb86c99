/* clone -> execve(init), the only code that runs between a clone and an exec
 * in the Python process.  The child shares the parent's memory (CLONE_VM), so
 * it uses only async-signal-safe system calls on data the parent prepared. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "spawn.h"
#include "proto.h"
#include "mount_api.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

#define CHILD_STACK_SIZE (32 * 1024)

struct child_ctx {
    const struct ps_spawn_args *a;
    int sigrtmin; /* the C library's first usable real-time signal */
    int sync_fd;  /* read end: one byte when the maps are written */
    int sync_w;   /* its write end: the child's copy is closed at once */
    int err_fd;   /* write end, CLOEXEC: a ps_error on failure, EOF on exec */
};

static void child_fail(int err_fd, int step, int err)
{
    struct ps_error e = { step, err };
    ssize_t n;
    do {
        n = write(err_fd, &e, sizeof e);
    } while (n < 0 && errno == EINTR);
    _exit(127);
}

/* Signals the parent ignores stay ignored across execve (handled ones are
 * reset by it); init and the commands get them default.  Done while the
 * parent writes the id maps.  Only signals sigaction() accepts (not KILL,
 * STOP, nor the C library's own between 32 and SIGRTMIN, which the parent
 * read): a failing call would write errno, and the child shares the
 * parent's thread and so its errno, which the parent may be about to
 * read. */
static void reset_ignored_signals_in_child(int sigrtmin)
{
    for (int s = 1; s <= 64; s++) {
        struct sigaction sa;
        if (s == SIGKILL || s == SIGSTOP || (s >= 32 && s < sigrtmin) ||
            sigaction(s, NULL, &sa) < 0 || sa.sa_handler != SIG_IGN)
            continue;
        sa.sa_handler = SIG_DFL;
        sa.sa_flags = 0;
        sigemptyset(&sa.sa_mask);
        sigaction(s, &sa, NULL);
    }
}

/* Child of clone: async-signal-safe calls only, nothing allocated. */
static int init_child_main(void *p)
{
    const struct child_ctx *c = p;
    const struct ps_spawn_args *a = c->a;
    char go;
    ssize_t n;
    int ctrl, runq, err, image, null;

    /* 0. the child has its own copy of the fd table: with its copy of the
     * sync pipe's write end open, a parent that gives up (closes its end)
     * would leave it reading for ever; ignored signals back to default */
    close(c->sync_w);
    reset_ignored_signals_in_child(c->sigrtmin);

    /* 1. wait for the parent to write the uid/gid maps and put us in the
     * sandbox's cgroups */
    do {
        n = read(c->sync_fd, &go, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1)
        _exit(127);

    /* 2. the cgroup namespace, rooted where we now are (made by the clone,
     * its root would be the caller's cgroup: the sandbox would see the
     * host's names of its own and its runs' cgroups) */
    if (unshare(CLONE_NEWCGROUP) < 0)
        child_fail(c->err_fd, PS_STEP_CGROUP_NS, errno);

    /* 3. fds: 0-2 /dev/null, 3 control socket, 4 run queue, nothing else */
    ctrl = fcntl(a->ctrl_fd, F_DUPFD, 10);
    runq = fcntl(a->runq_fd, F_DUPFD, 10);
    err = fcntl(c->err_fd, F_DUPFD_CLOEXEC, 10);
    image = fcntl(a->init_fd, F_DUPFD_CLOEXEC, 10);
    null = fcntl(a->null_fd, F_DUPFD, 10);
    if (err < 0)
        child_fail(c->err_fd, PS_STEP_CHILD_FDS, errno);
    if (ctrl < 0 || runq < 0 || image < 0 || null < 0)
        child_fail(err, PS_STEP_CHILD_FDS, errno);
    if (dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0 ||
        dup2(ctrl, PS_CTRL_FD) < 0 || dup2(runq, PS_RUNQ_FD) < 0 ||
        dup3(err, 5, O_CLOEXEC) < 0 || dup3(image, 6, O_CLOEXEC) < 0)
        child_fail(err, PS_STEP_CHILD_FDS, errno);
    if (syscall(SYS_close_range, 7U, ~0U, 0U) < 0)
        child_fail(5, PS_STEP_CHILD_FDS, errno);

    /* 4. exec the sealed init */
    syscall(SYS_execveat, 6, "", a->argv, a->envp, AT_EMPTY_PATH);
    child_fail(5, PS_STEP_EXEC_INIT, errno);
    return 127;
}

static int write_file(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    size_t len = strlen(data);
    ssize_t n;
    if (fd < 0)
        return -1;
    n = write(fd, data, len);
    if (n != (ssize_t)len) {
        int saved = n < 0 ? errno : EIO;
        close(fd);
        errno = saved;
        return -1;
    }
    return close(fd);
}

static int write_maps_from_parent(pid_t pid, const struct ps_spawn_args *a,
                                  struct ps_error *e)
{
    char path[64];
    if (a->deny_setgroups) {
        snprintf(path, sizeof path, "/proc/%d/setgroups", (int)pid);
        if (write_file(path, "deny") < 0) {
            e->step = PS_STEP_SETGROUPS;
            e->err = errno;
            return -1;
        }
    }
    snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
    if (write_file(path, a->gid_map) < 0) {
        e->step = PS_STEP_GID_MAP;
        e->err = errno;
        return -1;
    }
    snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
    if (write_file(path, a->uid_map) < 0) {
        e->step = PS_STEP_UID_MAP;
        e->err = errno;
        return -1;
    }
    return 0;
}

/* Put the child in the sandbox's cgroups before it runs anything. */
static int join_cgroups_from_parent(pid_t pid, const struct ps_spawn_args *a,
                                    struct ps_error *e)
{
    char num[32];
    int len = snprintf(num, sizeof num, "%d\n", (int)pid);
    for (int i = 0; i < a->n_cgroup_fds; i++) {
        if (pwrite(a->cgroup_fds[i], num, (size_t)len, 0) != len) {
            e->step = PS_STEP_CGROUP;
            e->err = errno;
            return -1;
        }
    }
    return 0;
}

int ps_spawn_init_from_parent(const struct ps_spawn_args *a, pid_t *pid_out,
                              int *pidfd_out, struct ps_error *e)
{
    /* The child runs on this buffer while this frame waits for its exec. */
    char stack[CHILD_STACK_SIZE] __attribute__((aligned(16)));
    struct child_ctx ctx;
    int sync_pipe[2], err_pipe[2];
    int pidfd = -1, status;
    sigset_t all, old;
    pid_t pid;
    ssize_t n;
    struct ps_error child_err;

    if (pipe2(sync_pipe, O_CLOEXEC) < 0) {
        e->step = PS_STEP_PIPE;
        e->err = errno;
        return -1;
    }
    if (pipe2(err_pipe, O_CLOEXEC) < 0) {
        e->step = PS_STEP_PIPE;
        e->err = errno;
        close(sync_pipe[0]);
        close(sync_pipe[1]);
        return -1;
    }
    ctx.a = a;
    ctx.sigrtmin = SIGRTMIN;
    ctx.sync_fd = sync_pipe[0];
    ctx.sync_w = sync_pipe[1];
    ctx.err_fd = err_pipe[1];

    /* No Python signal handler may run in the child: block everything
     * around clone; init sets its own mask and dispositions. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* exit signal 0: neither SIGCHLD handlers nor waitpid(-1) in the
     * application can reap init behind our back; we wait on the pidfd */
    pid = clone(init_child_main, stack + sizeof stack,
                CLONE_VM | CLONE_PIDFD | (int)a->ns_flags, &ctx, &pidfd);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(sync_pipe[0]);
    close(err_pipe[1]);
    if (pid < 0) {
        close(sync_pipe[1]);
        close(err_pipe[0]);
        e->step = PS_STEP_CLONE;
        e->err = clone_errno;
        return -1;
    }

    if (write_maps_from_parent(pid, a, e) < 0 || join_cgroups_from_parent(pid, a, e) < 0) {
        close(sync_pipe[1]); /* the child reads EOF and exits */
        close(err_pipe[0]);
        while (waitpid(pid, &status, __WALL) < 0 && errno == EINTR)
            ;
        close(pidfd);
        return -1;
    }
    do {
        n = write(sync_pipe[1], "g", 1);
    } while (n < 0 && errno == EINTR);
    close(sync_pipe[1]);
    if (n != 1) {
        e->step = PS_STEP_CHILD_FDS;
        e->err = n < 0 ? errno : EIO;
        close(err_pipe[0]);
        syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
        while (waitpid(pid, &status, __WALL) < 0 && errno == EINTR)
            ;
        close(pidfd);
        return -1;
    }

    do {
        n = read(err_pipe[0], &child_err, sizeof child_err);
    } while (n < 0 && errno == EINTR);
    close(err_pipe[0]);
    if (n != 0) {
        if (n == (ssize_t)sizeof child_err) {
            *e = child_err;
        } else {
            e->step = PS_STEP_EXEC_INIT;
            e->err = n < 0 ? errno : EIO;
        }
        while (waitpid(pid, &status, __WALL) < 0 && errno == EINTR)
            ;
        close(pidfd);
        return -1;
    }
    *pid_out = pid;
    *pidfd_out = pidfd;
    return 0;
}

int ps_seal_init_from_parent(const char *path, int *fd_out, struct ps_error *e)
{
    char buf[65536];
    int src, mem;
    ssize_t n;

    src = open(path, O_RDONLY | O_CLOEXEC);
    if (src < 0) {
        e->step = PS_STEP_EXEC_INIT;
        e->err = errno;
        return -1;
    }
    mem = memfd_create("pysandbox-init", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
    if (mem < 0 && errno == EINVAL)
        mem = memfd_create("pysandbox-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mem < 0)
        goto fail;
    while ((n = read(src, buf, sizeof buf)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            goto fail;
        }
        char *p = buf;
        while (n > 0) {
            ssize_t w = write(mem, p, (size_t)n);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                goto fail;
            }
            p += w;
            n -= w;
        }
    }
    if (fchmod(mem, 0555) < 0 ||
        fcntl(mem, F_ADD_SEALS,
              F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
        goto fail;
    close(src);
    *fd_out = mem;
    return 0;
fail:
    e->step = PS_STEP_EXEC_INIT;
    e->err = errno;
    close(src);
    if (mem >= 0)
        close(mem);
    return -1;
}

int ps_dev_nodes_from_parent(const char *const *names, const unsigned long *rdevs,
                             const unsigned *modes, int n, int *fd_out, struct ps_error *e)
{
    int fs = fsopen("tmpfs", FSOPEN_CLOEXEC), mnt = -1;
    if (fs < 0)
        goto fail;
    if (fsconfig(fs, FSCONFIG_SET_STRING, "mode", "0755", 0) < 0 ||
        fsconfig(fs, FSCONFIG_SET_STRING, "size", "4k", 0) < 0 ||
        fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
        goto fail;
    mnt = fsmount(fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC);
    if (mnt < 0)
        goto fail;
    close(fs);
    fs = -1;
    for (int i = 0; i < n; i++) {
        /* (the umask does not apply to fchmodat) */
        if (mknodat(mnt, names[i], S_IFCHR | 0600, (dev_t)rdevs[i]) < 0 ||
            fchmodat(mnt, names[i], modes[i] & 07777, 0) < 0)
            goto fail;
    }
    *fd_out = mnt;
    return 0;
fail:
    e->step = PS_STEP_DEV_NODES;
    e->err = errno;
    if (fs >= 0)
        close(fs);
    if (mnt >= 0)
        close(mnt);
    return -1;
}

int ps_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int n_fds)
{
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int) * PS_MAX_SEND_FDS)];
    } cbuf;
    struct iovec iov = { (void *)buf, len };
    struct msghdr msg;
    ssize_t n;

    if (n_fds < 0 || n_fds > PS_MAX_SEND_FDS) {
        errno = EINVAL;
        return -1;
    }
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (n_fds > 0) {
        memset(&cbuf, 0, sizeof cbuf);
        msg.msg_control = cbuf.b;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n_fds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n_fds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n_fds);
    }
    do
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    if ((size_t)n != len) {
        errno = EMSGSIZE;
        return -1;
    }
    return 0;
}
